"""A guard on the hot path that cannot flake: what the hook, `network list` and `connect` import.
Timing varies with the machine; the set of modules loaded does not."""

import subprocess
import sys
from pathlib import Path

import pytest

CIRCUIT = str(Path(sys.executable).parent / "circuit")

# Top-level modules these paths may load beyond the interpreter's own start: the stdlib they
# need, and circuit's own dispatcher, net and common packages.
ALLOWED = {
    "__future__", "_collections", "_functools", "_json", "_locale", "_operator",
    "_posixsubprocess", "_sre", "_typing", "_weakrefset", "binascii", "collections",
    "contextlib", "copyreg", "enum", "errno", "fcntl", "functools", "importlib", "ipaddress",
    "itertools", "json", "keyword", "locale", "math", "msvcrt", "operator", "re", "reprlib",
    "select", "selectors", "signal", "socket", "_socket", "array", "subprocess", "threading",
    "types", "typing", "warnings",
    "circuit_common", "circuit_net", "circuit_hook", "circuit_dispatch", "docopt",
}
NEVER = ("pyroute2", "circuit_netlink", "circuit_qos", "circuit_lb", "importlib.metadata",
         "toml", "dataclasses", "pathlib", "traceback", "asyncio")
STOPPED = '{"ociVersion": "1.0.2", "id": "never-started", "status": "stopped"}'


def imported(args: list[str], stdin: str | None = None) -> set[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], input=stdin,
                          capture_output=True, text=True, stdin=None if stdin else
                          subprocess.DEVNULL)
    return {line.split("|")[2].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:") and "self [us]" not in line}


@pytest.mark.parametrize("path", ["hook", "list", "connect"])
def test_the_hot_path_imports_only_its_allow_list(path, tmp_path):
    state = ["--state", str(tmp_path)]
    args = {"hook": ([CIRCUIT, *state], STOPPED),
            "list": ([CIRCUIT, *state, "network", "list"], None),
            "connect": ([CIRCUIT, *state, "network", "connect", "1", "nosuch"], None)}[path]
    modules = imported(*args) - imported(["-c", "pass"])
    assert {m.split(".")[0] for m in modules} <= ALLOWED, sorted(modules)
    forbidden = [m for m in modules if m.startswith(NEVER)]
    if path == "hook":  # runc passes no arguments: no docopt, no typing on every start
        forbidden += [m for m in modules if m.split(".")[0] in ("docopt", "typing")]
    assert forbidden == []


SHAPED_HOOK = """
import os, sys, types
import circuit_netlink
from circuit_common import extensions, proc
from circuit_common.extensions import Attachment
from circuit_common.store import Store
from circuit_qos import devices

devices.driver = {"vethhot0": "veth", "cni0": "bridge"}.get  # the netns has no such links:
devices.index = {"vethhot0": 7}.get                          # stand-ins, and nothing is sent
circuit_netlink.Batch.send = lambda batch: len(batch.pending)
store = Store(sys.argv[1])
ctx = types.SimpleNamespace(store=store)
result = {"interfaces": [{"name": "cni0"}, {"name": "vethhot0"}, {"name": "eth0", "sandbox": "x"}]}
attachment = Attachment("sandbox", "c1", "eth0", os.getpid(), proc.start_time(os.getpid()), result)
module = extensions.load(store, "sandbox", "qos")
module.attached(ctx, attachment)
module.detached(ctx, attachment)
print(sorted(m for m in sys.modules if m.startswith(("pyroute2", "importlib.metadata"))))
"""


def test_the_shaped_hook_path_imports_no_pyroute2(tmp_path):
    """attached and detached of a network whose policy keeps its plan: the extension found by
    its marker (no entry-point scan), the requests stamped without pyroute2."""
    from circuit_common.store import Store
    from circuit_qos import policy

    policy.save(Store(tmp_path), "sandbox", {"network": {"rate": 5_000_000, "ceil": 5_000_000},
                                             "attachments": {}})
    proc = subprocess.run([sys.executable, "-c", SHAPED_HOOK, str(tmp_path)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_cluster_network_with_its_lease_here_needs_no_etcd_client(tmp_path):
    """With etcd state, a connect to a cluster network this host holds a lease of, and the
    poststop hook, read local files only: no etcd3gw, no requests, no pyroute2."""
    from circuit_common.store import Store

    store = Store(tmp_path)
    overlay = {"type": "vxlan", "vni": 1, "subnet": "10.200.0.0/16", "hostSubnetSize": 24,
               "masquerade": True}
    netconf = {"cniVersion": "1.0.0", "name": "blue", "plugins": [
        {"type": "bridge", "bridge": "cni-blue", "ipam": {
            "type": "host-local", "ranges": [[{"subnet": "10.200.0.0/16"}]]}}]}
    store.write(store.path("networks", "blue.json"), {
        "name": "blue", "config": netconf, "source": "flags", "created": "now",
        "bridges": ["cni-blue"], "overlay": overlay})
    store.write(store.path("cluster", "host.json"), {
        "name": "h0", "address": "10.99.0.1", "ttl": 10, "joined": 1, "lease": 0,
        "prefix": "/x"})
    store.write(store.path("cluster", "leases", "blue.json"), {
        "network": "blue", "subnet": "10.200.3.0/24", "vni": 1, "mtu": 1450,
        "cidr": "10.200.0.0/16", "hostSubnetSize": 24, "created": "now", "masquerade": True,
        "bridge": "cni-blue"})
    state = ["--state", "etcd://127.0.0.1:9/x", "--local-state", str(tmp_path)]
    for args, stdin in (([CIRCUIT, *state, "network", "connect", "1", "blue"], None),
                        ([CIRCUIT, *state], STOPPED)):
        modules = imported(args, stdin) - imported(["-c", "pass"])
        assert {m.split(".")[0] for m in modules} <= ALLOWED | {"circuit_cluster"}, \
            sorted(modules)
        assert [m for m in modules if m.startswith((*NEVER, "etcd3gw", "requests"))] == []
        assert "circuit_cluster.member" in modules or stdin  # it did read the lease
