"""Namespaces and hosts: a throwaway "host" netns per test with circuit's state in a temp dir,
containers as processes in netns of their own, and the session-wide leak check."""

import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from harness.forked import ROOT, dispatcher, run_forked

CIRCUIT = str(ROOT / ".venv" / "bin" / "circuit")
PREFIX = "ctest-"


def sh(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=check, **kw)


def terminate(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End a process the test started: SIGTERM, then SIGKILL if it lingers past grace."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def root_links() -> set[str]:
    lines = sh("ip", "-o", "link").stdout.splitlines()
    return {line.split(": ")[1].split("@")[0] for line in lines}


def netns_names() -> set[str]:
    return {line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line}


MADE: set[str] = set()  # the named netns this process made: the leak check's, not a neighbour's


def add_netns(name: str) -> None:
    """Make named netns name (`ip netns add`), remembered for the leak check."""
    sh("ip", "netns", "add", name)
    MADE.add(name)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file below directory but the lock files, with its content."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and "locks" not in p.parts}


def machine_circuit_state() -> set[str]:
    """What is in the machine's own state dirs for circuit and libcni's result cache."""
    found = set()
    for directory in ("/var/lib/circuit", "/var/lib/cni/results"):
        if os.path.isdir(directory):
            found |= {directory, *(os.path.join(directory, n) for n in os.listdir(directory))}
    return found


@pytest.fixture(scope="session")
def leak_check():
    """Fail the run if the tests leave namespaces they made, runc containers or circuit state on
    the machine behind (the network tiers' conftests make it autouse; the machine's own netns is
    tests/conftest.py's, after each module)."""
    if os.geteuid() != 0:
        pytest.skip("network tests need root")
    machine_state = machine_circuit_state()
    yield
    assert machine_circuit_state() == machine_state, \
        "tests wrote circuit's or libcni's state on the machine itself: give circuit --state " \
        "and CIRCUIT_CNI_CACHE_DIR in the test's temp dir"
    leaked_runc = [c for c in sh("runc", "list", "-q").stdout.split() if c.startswith(PREFIX)]
    assert not leaked_runc, f"tests left runc containers {leaked_runc}"
    leaked_ns = MADE & netns_names()  # other runs' ctest- namespaces on a shared machine aside
    assert not leaked_ns, f"tests left namespaces {leaked_ns}"


class Container:
    """A process in a netns of its own, as runc would give a container."""

    def __init__(self, pid: int, popen: subprocess.Popen | None = None):
        self.pid = pid
        self.popen = popen  # set when the test started the process and must end it

    @classmethod
    def spawn(cls, args=("busybox", "sleep", "3600")) -> "Container":
        """args in a new netns, started by the test (killed by its PID at the end)."""
        popen = subprocess.Popen(["unshare", "--net", "--", *map(str, args)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{popen.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare did not make a netns"
            time.sleep(0.01)
        return cls(popen.pid, popen)

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def run(self, *cmd, check=True, **kw) -> subprocess.CompletedProcess:
        return sh("nsenter", f"--net={self.netns}", *cmd, check=check, **kw)

    def ping(self, ip: str, count: int = 1) -> bool:
        return self.run("busybox", "ping", "-c", count, "-W", "2", ip, check=False).returncode == 0

    def links(self) -> set[str]:
        return {line.split(": ")[1].split("@")[0]
                for line in self.run("ip", "-o", "link").stdout.splitlines()}

    def addresses(self, ifname: str = "eth0", version: int = 4) -> list[str]:
        out = self.run("ip", "-j", f"-{version}", "addr", "show", "dev", ifname, "scope",
                       "global").stdout
        return [a["local"] for link in json.loads(out) for a in link["addr_info"] if "local" in a]

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


class Host:
    """A throwaway netns standing in for the machine, with circuit's state in a temp dir."""

    def __init__(self, tmp: Path):
        self.name = PREFIX + secrets.token_hex(4)
        self.tmp = tmp
        self.state = tmp / "state"
        self.cni_cache = tmp / "cni"  # libcni's cache dir (circuit's CIRCUIT_CNI_CACHE_DIR)
        self.ipam = self.cni_cache / "networks"  # host-local's reservations
        self.containers: list[Container] = []
        add_netns(self.name)
        sh("ip", "-n", self.name, "link", "set", "lo", "up")

    @property
    def netns(self) -> str:
        return f"/run/netns/{self.name}"

    def run(self, *cmd, check=True, **kw) -> subprocess.CompletedProcess:
        return sh("nsenter", f"--net={self.netns}", *cmd, check=check, **kw)

    fork_circuit = False  # the kernel tier sets it: see harness.forked.run_forked

    def state_args(self) -> list:
        """The global options that give circuit its state (harness.cluster's hosts override)."""
        return ["--state", self.state]

    def circuit(self, *args, check=True, env=None, **kw) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if k != "CNI_PATH"} | {
            "CIRCUIT_CNI_CACHE_DIR": str(self.cni_cache)} | (env or {})
        argv = [str(a) for a in (*self.state_args(), *args)]
        if self.fork_circuit:
            proc = run_forked(self.netns, lambda: dispatcher().main(argv), full_env,
                              kw.get("input"))
        else:
            proc = self.run(CIRCUIT, *argv, check=False, env=full_env, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"circuit {' '.join(map(str, args))} failed "
                                 f"({proc.returncode}): {proc.stderr}")
        return proc

    def container(self, args=("busybox", "sleep", "3600")) -> Container:
        c = Container.spawn(args)
        self.containers.append(c)
        return c

    def outside_client(self, host_ip="198.51.100.1", client_ip="198.51.100.2") -> Container:
        """A container wired to this host by a veth of the test's own (not through circuit),
        standing for a client elsewhere: it reaches the host's address host_ip (a /24)."""
        c = self.container()
        self.run("ip", "link", "add", "outside0", "type", "veth", "peer", "name", "eth0",
                 "netns", c.pid)
        self.run("ip", "addr", "add", f"{host_ip}/24", "dev", "outside0")
        self.run("ip", "link", "set", "outside0", "up")
        c.run("ip", "addr", "add", f"{client_ip}/24", "dev", "eth0")
        c.run("ip", "link", "set", "eth0", "up")
        c.run("ip", "link", "set", "lo", "up")
        return c

    def conf(self, conf: dict, filename: str | None = None) -> Path:
        """Write a network config, keeping host-local's reservations in this test's temp dir."""
        conf = json.loads(json.dumps(conf))
        for plugin in conf.get("plugins", [conf]):
            if plugin.get("ipam", {}).get("type") == "host-local":
                plugin["ipam"]["dataDir"] = str(self.ipam)
        path = self.tmp / (filename or f"{conf['name']}.conf")
        path.write_text(json.dumps(conf))
        return path

    def reserved_ips(self, network: str) -> set[str]:
        directory = self.ipam / network
        if not directory.exists():
            return set()
        return {p.name for p in directory.iterdir() if p.name[0].isdigit()}

    def close(self) -> None:
        for c in self.containers:
            c.kill()
        sh("ip", "netns", "del", self.name, check=False)


@pytest.fixture
def host(tmp_path):
    h = Host(tmp_path)
    try:
        yield h
    finally:
        h.close()


def host_veth(host: Host, network: str, pid: int) -> str:
    """The host-side veth of a container's attachment, from circuit's inspect."""
    attachment = next(a for a in json.loads(host.circuit("network", "inspect", network).stdout)
                      ["attachments"] if a["pid"] == pid)
    return next(i["name"] for i in attachment["result"]["interfaces"]
                if not i.get("sandbox") and i["name"].startswith("veth"))


def bridge_conf(name="sandbox", bridge="cni0", subnet="10.100.10.0/24", version="0.3.0"):
    """The seed README's bridge network."""
    return {"cniVersion": version, "name": name, "type": "bridge", "bridge": bridge,
            "ipMasq": True, "isGateway": True,
            "ipam": {"type": "host-local", "subnet": subnet, "routes": [{"dst": "0.0.0.0/0"}]}}


def ipv6_bridge_conf(name="sandbox", subnet="fd10:100::/64"):
    """The seed's bridge network on an IPv6 subnet (no ipMasq: nothing to masquerade to)."""
    conf = bridge_conf(name)
    conf["ipMasq"] = False
    conf["ipam"] = {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "::/0"}]}
    return conf
