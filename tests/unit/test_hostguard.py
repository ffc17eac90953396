"""The guard of the machine's own netns (harness.hostguard, run by tests/conftest.py after each
module): what it reports, what it tolerates (the ifb module's own devices), what it removes
(only circuit tables that appeared)."""

import json
import subprocess
import sys
from pathlib import Path

from harness import hostguard
from harness.hostguard import Snapshot

TESTS = Path(__file__).resolve().parents[1]


def snap(tables=(), chains=None, links=None, qdiscs=(), ifb_loaded=False, **kw) -> Snapshot:
    base = {"addresses": set(), "routes": set(), "switches": {}, "kernel": set()} | kw
    return Snapshot(set(tables), chains or {}, {"lo": ("", True, 65536, None), **(links or {})},
                    base["addresses"], base["routes"], set(qdiscs), base["switches"],
                    base["kernel"], ifb_loaded)


def test_only_circuit_tables_that_appeared_are_removed(monkeypatch):
    removed = []
    monkeypatch.setattr(hostguard, "remove_tables", lambda tables: removed.extend(tables) or [])
    before = snap(tables={("inet", "circuit_isolation"), ("ip", "filter")})
    after = snap(tables={("inet", "circuit_isolation"), ("ip", "filter"), ("inet", "circuit_lb"),
                         ("ip", "nat")},
                 chains={("inet", "circuit_lb", "prerouting"): 2, ("ip", "nat", "CNI-1a"): 1},
                 addresses={"10.1.2.3/32 dev lo"})
    message = hostguard.verdict("tests/unit/test_x.py", before, after)
    assert removed == [("inet", "circuit_lb")]  # not the one from before, not iptables' nat
    assert message.splitlines() == [
        "tests/unit/test_x.py changed the machine's own network namespace (tests must run circuit "
        "in namespaces of their own; on a shared machine another process may have done it: "
        "`nft monitor` names the process of an nftables change):",
        "  nftables table inet circuit_lb appeared", "  nftables table ip nat appeared",
        "  address 10.1.2.3/32 dev lo appeared",
        "  removed (they were not there before): table inet circuit_lb"]
    assert hostguard.verdict("m", after, after) is None and removed == [("inet", "circuit_lb")]


def test_chain_and_link_changes_are_named():
    before = snap(chains={("ip", "nat", "POSTROUTING"): 1},
                  links={"eth0": ("", True, 1500, None)})
    after = snap(chains={("ip", "nat", "POSTROUTING"): 2, ("ip", "nat", "CNI-9f"): 2},
                 links={"eth0": ("", True, 1500, "cni0"), "cni0": ("bridge", True, 1500, None)},
                 switches={"/proc/sys/net/ipv4/ip_forward": "1"})
    assert hostguard.differences(before, after) == [
        "nftables chain ip nat CNI-9f: none → 2 rules",
        "nftables chain ip nat POSTROUTING: 1 → 2 rules",
        "link cni0: none → bridge UP mtu 1500", "link eth0: link UP mtu 1500 → link UP mtu 1500 "
        "master cni0", "/proc/sys/net/ipv4/ip_forward None → 1"]


def test_only_the_ifb_modules_own_devices_are_tolerated():
    down = ("ifb", False, 1500, None)
    loaded = snap(links={"ifb0": down, "ifb1": down}, ifb_loaded=True,
                  qdiscs={"noop 0: parent 0xffffffff dev ifb0"})
    assert hostguard.differences(snap(), loaded) == []  # the module loaded meanwhile
    assert hostguard.differences(snap(ifb_loaded=True), loaded) == [  # it was there before
        "link ifb0: none → ifb DOWN mtu 1500", "link ifb1: none → ifb DOWN mtu 1500",
        "qdisc noop 0: parent 0xffffffff dev ifb0 appeared"]
    for name, link in (("ifb0", ("ifb", True, 1500, None)), ("ifb0", ("ifb", False, 1500, "br0")),
                       ("ifb0", ("veth", False, 1500, None)), ("cq0123", down)):
        assert hostguard.differences(snap(), snap(links={name: link}, ifb_loaded=True)), name


def test_a_netns_is_read_and_a_circuit_table_in_it_removed():
    """The real reads and removal, in a throwaway netns (a user namespace's: no root needed)."""
    script = """if 1:
        import json, subprocess
        from harness import hostguard
        before = hostguard.take()
        subprocess.run(["nft", "add table inet circuit_lb; add table ip nat"], check=True)
        subprocess.run("ip link add guard0 type veth peer name guard1 && "
                       "ip addr add 10.1.2.3/32 dev lo", shell=True, check=True)
        after = hostguard.take()
        message = hostguard.verdict("m", before, after)
        print(json.dumps([message, sorted(hostguard.take().tables)]))"""
    proc = subprocess.run(["unshare", "--map-root-user", "--net", sys.executable, "-c", script],
                          capture_output=True, text=True, cwd=TESTS, check=False)
    assert proc.returncode == 0, proc.stderr
    message, tables = json.loads(proc.stdout)
    assert "\n  nftables table inet circuit_lb appeared\n  nftables table ip nat appeared\n  " \
           "link guard0: none → veth DOWN mtu 1500\n  link guard1: none → veth DOWN mtu " \
           "1500\n  address 10.1.2.3/32 dev lo appeared\n  route 10.1.2.3/32 table 255 type 2 " \
           "dev lo appeared\n  removed (they were not there before): table inet circuit_lb" \
           in message, message
    assert tables == [["ip", "nat"]]
