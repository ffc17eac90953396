"""The multi-host lab (harness.cluster) itself: an underlay the hosts share, an etcd cluster across
them that keeps its quorum rules, and circuit's agent run and stopped by PID."""

import os
import sys
import time
from itertools import permutations
from pathlib import Path

import pytest

import harness.cluster
from harness import netns_names, root_links, sh
from harness.cluster import CLIENT_PORT, Lab


def test_hosts_reach_each_other_over_the_underlay_and_only_there(cluster):
    lab = cluster.lab
    assert [h.address for h in cluster.hosts] == ["10.99.0.1", "10.99.0.2", "10.99.0.3"]
    assert lab.endpoints == "10.99.0.1:2379,10.99.0.2:2379,10.99.0.3:2379"
    assert lab.url("/p") == f"etcds://{lab.endpoints}/p"
    for a, b in permutations(cluster.hosts, 2):
        assert a.ping(b.address), f"host {a.index} does not reach host {b.index}"
    ports = sh("ip", "-n", lab.switch, "-o", "link", "show", "master", "underlay0").stdout
    assert sorted(line.split(": ")[1].split("@")[0] for line in ports.splitlines()) == \
        [h.port for h in cluster.hosts]
    for h in cluster.hosts:
        assert {line.split(": ")[1].split("@")[0]
                for line in h.run("ip", "-o", "link").stdout.splitlines()} == {"lo", "eth0"}
    assert not {h.port for h in cluster.hosts} & root_links()


def test_circuit_gets_the_shared_and_the_local_state(cluster):
    h = cluster.hosts[1]
    tls = cluster.lab.tls
    assert h.state_args() == ["--state", f"etcds://{cluster.lab.endpoints}/{h.lab.prefix[1:]}",
                              "--etcd-cafile", tls.cafile, "--etcd-certfile", tls.client[0],
                              "--etcd-keyfile", tls.client[1], "--local-state", h.state]
    assert h.lab.prefix.startswith("/ctest-")
    assert h.state != cluster.hosts[0].state


def test_a_put_on_one_member_is_read_on_another(cluster):
    a, c = cluster.hosts[0], cluster.hosts[2]
    a.put("/ctest/greeting", "hello")
    assert c.get("/ctest/greeting", endpoint=f"{c.address}:{CLIENT_PORT}") == "hello"
    assert c.get("/ctest/nothing") is None


def test_etcd_keeps_its_quorum_rules_and_members_come_back(cluster):
    lab, host0, host2 = cluster.lab, cluster.hosts[0], cluster.hosts[2]
    m0, m1, m2 = lab.members
    assert all(m.running for m in lab.members)

    pid = m2.pid
    m2.stop()
    assert not m2.running and not os.path.exists(f"/proc/{pid}")
    host0.put("/ctest/k", "two of three")  # a quorum is left

    m1.stop()
    started = time.monotonic()
    with pytest.raises(AssertionError):
        host0.put("/ctest/k", "one of three", timeout=2)
    assert time.monotonic() - started < 8
    assert m0.running

    m1.start()
    m2.start()
    lab.wait_healthy()
    host0.put("/ctest/k", "three again")
    assert host2.get("/ctest/k") == "three again"


def test_the_agent_runs_in_its_host_and_must_stop_on_sigterm(cluster, tmp_path, monkeypatch):
    """With a stand-in for circuit: the argv, netns and environment the agent gets; a SIGTERM
    ends it; one that ignores SIGTERM is killed and fails the test."""
    h = cluster.hosts[0]
    standin = tmp_path / "circuit"
    standin.write_text(f"#!{sys.executable}\n"
                       "import os, signal, sys, time\n"
                       "if os.environ.get('IGNORE_TERM'):\n"
                       "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                       "print(repr(sys.argv[1:]), os.readlink('/proc/self/ns/net'),\n"
                       "      os.environ['CIRCUIT_CNI_CACHE_DIR'], flush=True)\n"
                       "time.sleep(60)\n")
    standin.chmod(0o755)
    monkeypatch.setattr(harness.cluster, "CIRCUIT", str(standin))
    monkeypatch.setattr(harness.cluster, "AGENT_STOP_GRACE", 0.5)

    agent = h.start_agent("--interval", 1)
    argv, netns, cni_cache = first_line(h.agent_log).rsplit(" ", 2)
    assert argv == repr([*map(str, h.state_args()), "cluster", "agent", "--interval", "1"])
    assert netns == f"net:[{os.stat(h.netns).st_ino}]" == os.readlink(f"/proc/{agent.pid}/ns/net")
    assert cni_cache == str(h.cni_cache)
    assert h.stop_agent() == -15 and h.agent is None

    h.agent_log.unlink()
    stubborn = h.start_agent(env={"IGNORE_TERM": "1"})
    first_line(h.agent_log)  # its handler is in place
    with pytest.raises(AssertionError, match="ignored SIGTERM"):
        h.stop_agent()
    assert stubborn.returncode == -9 and h.agent is None


def first_line(log, timeout=5.0) -> str:
    deadline = time.monotonic() + timeout
    while not (log.exists() and log.read_text().endswith("\n")):
        assert time.monotonic() < deadline, "the stand-in wrote nothing"
        time.sleep(0.05)
    return log.read_text().splitlines()[0]


def test_a_lab_that_never_gets_healthy_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(harness.cluster, "HEALTHY_WITHIN", 0.5)
    monkeypatch.setattr(Lab, "healthy", lambda self, members=None: False)
    namespaces = netns_names()
    with pytest.raises(AssertionError, match="etcd not healthy within"):
        Lab(tmp_path)
    assert netns_names() == namespaces
    assert not children_named("etcd")


def children_named(comm: str) -> list[int]:
    """This process's children called comm (read from /proc: nothing is ended by name)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
        if name == comm and int(rest.split()[1]) == os.getpid():
            found.append(int(pid))
    return found
