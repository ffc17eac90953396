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
NEVER = ("pyroute2", "circuit_netlink", "circuit_qos", "circuit_lb", "circuit_dns", "dnslib",
         "importlib.metadata",
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
import json, os, socket, sys, threading, types
import circuit_netlink
from circuit_common import extensions, proc
from circuit_common.extensions import Attachment
from circuit_common.store import Store
from circuit_qos import devices

sent, kinds = [], []  # the requests the kernel was sent, as hex, and their message types


def kernel(far):
    # the far end of a socketpair standing in for the kernel: it keeps every request and
    # acknowledges those that ask (NLM_F_ACK), as the kernel does a batch's last
    while data := far.recv(1 << 16):
        offset = 0
        while offset < len(data):
            length, kind, flags, sequence, _ = circuit_netlink.HEADER.unpack_from(data, offset)
            sent.append(data[offset:offset + length].hex())
            kinds.append(kind)
            if flags & circuit_netlink.NLM_F_ACK:
                far.send(circuit_netlink.HEADER.pack(36, circuit_netlink.NLMSG_ERROR, 0,
                                                     sequence, 0) + bytes(20))
            offset += (length + 3) & ~3


def on_the_fake_kernel(batch, protocol, sock=None):
    near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    threading.Thread(target=kernel, args=(far,), daemon=True).start()
    on_a_netlink_socket(batch, protocol, near)


on_a_netlink_socket = circuit_netlink.Batch.__init__
circuit_netlink.Batch.__init__ = on_the_fake_kernel
IFB = devices.ifb_name("vethhot0")
devices.driver = {"vethhot0": "veth", "cni0": "bridge", IFB: "ifb"}.get  # the netns has none
devices.index = lambda name: 7 if name == "vethhot0" else 8 if name == IFB and 16 in kinds \
    else None  # the IFB's index once RTM_NEWLINK made it
store = Store(sys.argv[1])
ctx = types.SimpleNamespace(store=store)
result = {"interfaces": [{"name": "cni0"}, {"name": "vethhot0"}, {"name": "eth0", "sandbox": "x"}]}
attachment = Attachment("sandbox", "c1", "eth0", os.getpid(), proc.start_time(os.getpid()), result)
module = extensions.load(store, "sandbox", "qos")
module.attached(ctx, attachment)
attached = len(sent)
module.detached(ctx, attachment)
print(json.dumps({"modules": sorted(m for m in sys.modules
                                    if m.startswith(("pyroute2", "importlib.metadata"))),
                  "attached": sent[:attached], "detached": sent[attached:]}))
"""
RTM_NEWLINK, RTM_DELLINK, RTM_NEWQDISC, RTM_NEWTCLASS, RTM_NEWTFILTER = 16, 17, 36, 40, 44


def test_the_shaped_hook_path_imports_no_pyroute2_and_sends_the_shaping(tmp_path):
    """attached and detached of a network whose policy keeps its plan: the extension found by
    its marker (no entry-point scan), the requests stamped without pyroute2 and sent through
    the Batch's real send path to a stand-in kernel, which must receive the IFB device, the
    HTB qdiscs and classes of the policy's rate on the veth and the IFB, the redirect filter,
    and on detach the IFB's deletion."""
    import json

    from circuit_common.store import Store
    from circuit_netlink import lean_pyroute2
    from circuit_qos import devices, policy

    policy.save(Store(tmp_path), "sandbox", {"network": {"rate": 5_000_000, "ceil": 5_000_000},
                                             "attachments": {}})
    proc = subprocess.run([sys.executable, "-c", SHAPED_HOOK, str(tmp_path)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["modules"] == []
    lean_pyroute2()
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    def decoded(request: str):
        data = bytes.fromhex(request)
        msg = (ifinfmsg if int.from_bytes(data[4:6], sys.byteorder) < 20 else tcmsg)(data)
        msg.decode()
        return msg

    attached = [decoded(r) for r in out["attached"]]
    ifb = devices.ifb_name("vethhot0")
    assert (attached[0]["header"]["type"], attached[0].get_attr("IFLA_IFNAME")) \
        == (RTM_NEWLINK, ifb)
    tc = {(m["header"]["type"], m["index"]) for m in attached[1:]}
    assert {(RTM_NEWQDISC, 7), (RTM_NEWTCLASS, 7), (RTM_NEWTFILTER, 7), (RTM_NEWQDISC, 8),
            (RTM_NEWTCLASS, 8)} <= tc
    rates = {m.get_attr("TCA_OPTIONS").get_attr("TCA_HTB_PARMS")["rate"] for m in attached
             if m["header"]["type"] == RTM_NEWTCLASS}
    assert rates == {5_000_000 // 8}  # bytes a second
    detached = [decoded(r) for r in out["detached"]]
    assert [(m["header"]["type"], m.get_attr("IFLA_IFNAME")) for m in detached] \
        == [(RTM_DELLINK, ifb)]


def test_a_cluster_network_with_its_lease_here_needs_no_etcd_client(tmp_path):
    """With etcd state, a connect to a cluster network this host holds a lease of, and the
    poststop hook, read local files only: no etcd3gw, no requests, no pyroute2, and no
    entry-point scan for the backend."""
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
    # the first command finds the etcd backend by its entry point and keeps it in the cache
    subprocess.run([CIRCUIT, *state, "network", "list"], capture_output=True, check=True)
    assert store.read(store.path("cache", "state-backends.json")) == {
        "schema": 1, "etcd": "circuit_cluster.replica:ReplicatedStore"}
    for args, stdin in (([CIRCUIT, *state, "network", "connect", "1", "blue"], None),
                        ([CIRCUIT, *state], STOPPED)):
        modules = imported(args, stdin) - imported(["-c", "pass"])
        assert {m.split(".")[0] for m in modules} <= ALLOWED | {"circuit_cluster"}, \
            sorted(modules)
        assert [m for m in modules if m.startswith((*NEVER, "etcd3gw", "requests"))] == []
        assert "circuit_cluster.member" in modules or stdin  # it did read the lease


DNS_HOOK = """
import os, sys, types
from circuit_common import extensions, proc
from circuit_common.extensions import Attachment
from circuit_common.store import Store

store = Store(sys.argv[1])
extensions.mark(store, "sandbox", "dns", "circuit_dns.extension")
ctx = types.SimpleNamespace(store=store)
result = {"ips": [{"address": "10.1.2.3/24"}], "interfaces": [{"name": "eth0", "sandbox": "x"}]}
attachment = Attachment("sandbox", "c1", "eth0", os.getpid(), proc.start_time(os.getpid()),
                        result, ("web",))
module = extensions.load(store, "sandbox", "dns")
reloads = []
module.control.reload = lambda store, network=None, start=True: reloads.append(start)
module.attached(ctx, attachment)
print(open(store.path("dns", "sandbox", "hosts")).read().splitlines()[-1])
module.detached(ctx, attachment)
print(reloads, sorted(m for m in sys.modules if m.startswith(("dnslib", "importlib.metadata",
                                                              "socket"))))
"""


def test_the_dns_hook_path_imports_no_dnslib(tmp_path):
    """attached and detached of a DNS network: the names stored, the server asked to reload
    (stood in for here: a real one would listen), without dnslib, the socket module or an
    entry-point scan."""
    proc = subprocess.run([sys.executable, "-c", DNS_HOOK, str(tmp_path)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["10.1.2.3\tweb c1", "[True, False] []"]
