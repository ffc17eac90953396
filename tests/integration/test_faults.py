"""Faults: circuit killed with SIGKILL at random points, and hostile hook input. After `gc`
nothing is left: no veth, no IP reservation, no CNI- nat chain, no record or intent."""

import json
import os
import random
import signal
import subprocess
import time

import pytest

from harness import CIRCUIT, Host, bridge_conf, snapshot

KILLS = 30


def host_veths(host: Host) -> set[str]:
    out = host.run("ip", "-o", "link", "show", "type", "veth").stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def cni_chains(host: Host) -> set[str]:
    proc = host.run("nft", "-j", "list", "table", "ip", "nat", check=False)
    if proc.returncode != 0:
        return set()
    return {o["chain"]["name"] for o in json.loads(proc.stdout)["nftables"]
            if "chain" in o and o["chain"]["name"].startswith("CNI-")}


def records(host: Host) -> list[str]:
    return sorted(p for p in snapshot(host.state) if p.startswith(("attachments", "intents")))


def killed_at_random(host: Host, rng: random.Random, *args, stdin: str | None = None) -> None:
    """circuit args, SIGKILLed after a random 0-250 ms (or finishing first)."""
    proc = subprocess.Popen(["nsenter", f"--net={host.netns}", CIRCUIT, "--state", host.state,
                             *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "CIRCUIT_CNI_CACHE_DIR": str(host.cni_cache)})
    if stdin is not None:
        proc.stdin.write(stdin.encode())
    proc.stdin.close()
    time.sleep(rng.uniform(0, 0.25))
    proc.send_signal(signal.SIGKILL)  # nsenter execs circuit: this is circuit's PID
    proc.wait()


def assert_clean(host: Host) -> None:
    host.circuit("network", "gc")
    assert records(host) == []
    assert list(host.cni_cache.glob("results/*")) == []  # libcni's copies went with them
    assert host.reserved_ips("sandbox") == set()
    assert host_veths(host) == set()
    assert cni_chains(host) == set()


def test_connect_killed_anywhere_leaves_nothing_after_gc(host):
    rng = random.Random(11)
    host.circuit("network", "create", host.conf(bridge_conf(version="0.4.0")))
    c = host.container()
    for _ in range(KILLS):
        killed_at_random(host, rng, "network", "connect", c.pid, "sandbox")
        host.circuit("network", "disconnect", c.pid, "sandbox", check=False)
        c.kill()
        c = host.container()
        assert_clean(host)
    host.circuit("network", "connect", c.pid, "sandbox")  # the next command works
    assert c.links() >= {"eth0"}


def test_disconnect_killed_anywhere_is_finished_by_gc(host):
    rng = random.Random(12)
    host.circuit("network", "create", host.conf(bridge_conf(version="0.4.0")))
    for _ in range(KILLS):
        c = host.container()
        host.circuit("network", "connect", c.pid, "sandbox")
        killed_at_random(host, rng, "network", "disconnect", c.pid, "sandbox")
        listed = json.loads(host.circuit("network", "list", "--format", "json").stdout)
        assert all(p["state"] in ("attached", "interrupted (gc finishes it)")
                   for n in listed for p in n["peers"])
        c.kill()
        assert_clean(host)


def test_hook_killed_anywhere_leaves_nothing_after_gc(host):
    rng = random.Random(13)
    host.circuit("network", "create", host.conf(bridge_conf(version="0.4.0")))
    for i in range(KILLS):
        c = host.container()
        state = json.dumps({"ociVersion": "1.0.2", "id": f"crash-{i}", "pid": c.pid,
                            "status": "creating", "annotations": {"circuit.networks": "sandbox"}})
        killed_at_random(host, rng, "hook", stdin=state)
        c.kill()
        assert_clean(host)


@pytest.mark.parametrize("pid", ["true", "1.9", '"abc"', "[1]", "-1", "1", '"1"', "99999999999"])
def test_hook_pids_are_never_coerced_and_pid_1_stays_untouched(host, pid):
    """Run in a PID namespace of its own: were a bug to take PID 1, it is the test's own."""
    host.circuit("network", "create", host.conf(bridge_conf()))
    state = f'{{"id": "evil", "pid": {pid}, "status": "creating", ' \
            '"annotations": {"circuit.networks": "sandbox"}}'
    before = host_veths(host)
    proc = host.run("unshare", "--pid", "--fork", "--mount-proc", CIRCUIT, "--state",
                    host.state, "hook", input=state, check=False)
    if pid == "1":  # PID 1 here is the unshare'd circuit itself: circuit's own netns
        assert proc.returncode == 3 and "circuit's own network namespace" in proc.stderr
    else:
        assert proc.returncode == 3 and "invalid pid in the OCI state" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert host_veths(host) == before and records(host) == []


def test_qos_set_and_reset_killed_anywhere_are_made_whole_by_restore(host):
    """The store is written before the kernel changes: whatever a kill leaves half shaped,
    `circuit restore` makes the kernel match the store, with no IFB device left over."""
    rng = random.Random(14)
    host.circuit("network", "create", host.conf(bridge_conf(version="0.4.0")))
    c = host.container()
    host.circuit("network", "connect", c.pid, "sandbox")
    veth = next(line.split(": ")[1].split("@")[0]
                for line in host.run("ip", "-o", "link", "show", "type", "veth").stdout
                .splitlines())
    for i in range(KILLS):
        change = ("set", "--rate", f"{1000 + i}kbit") if i % 2 == 0 else ("reset",)
        killed_at_random(host, rng, "network", "qos", *change, "sandbox")
        host.circuit("restore")
        policy = json.loads(host.circuit("network", "qos", "show", "sandbox", "--format",
                                         "json").stdout)["policy"]
        ifbs = [line for line in host.run("ip", "-o", "link").stdout.splitlines()
                if ": cq" in line]
        assert len(ifbs) == (1 if policy else 0), (i, policy, ifbs)
        assert ("htb" in host.run("tc", "qdisc", "show", "dev", veth).stdout) == bool(policy)
    host.circuit("network", "disconnect", c.pid, "sandbox")
    assert [line for line in host.run("ip", "-o", "link").stdout.splitlines()
            if ": cq" in line] == []
