"""Flags → conflist: what `network create NAME --subnet ...` writes, and the overlap check."""

import json

import pytest

from circuit_common.errors import Conflict, InvalidInput, UsageError
from circuit_net import cni, spec


class VersionsOnly:
    """An executor whose plugins answer only VERSION, with the versions given per plugin."""

    def __init__(self, versions: dict[str, list[str]]):
        self.versions = versions

    def find_plugin(self, kind, cni_path):
        return kind

    def run(self, path, stdin, env, timeout):
        reply = {"cniVersion": "1.0.0", "supportedVersions": self.versions[path]}
        return cni.Outcome(0, json.dumps(reply).encode(), b"")


DEBIAN = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
PLUGINS = cni.Plugins(["/x"], executor=VersionsOnly(
    {k: DEBIAN for k in ("bridge", "portmap", "firewall", "ptp", "macvlan")}))


def test_a_dual_stack_bridge_network():
    conf = spec.conflist(spec.Flags("web", ["10.89.0.0/24", "fd00:89::/64"],
                                    gateway="10.89.0.254", labels=["a=b"]), PLUGINS, "/d")
    assert conf == {"cniVersion": "1.0.0", "name": "web", "circuitLabels": {"a": "b"},
                    "plugins": [
        {"type": "bridge", "capabilities": {"ips": True}, "bridge": "cni-web",
         "isGateway": True, "ipMasq": True, "hairpinMode": True,
         "dns": {"nameservers": ["10.89.0.254", "fd00:89::1"], "search": ["web"]}, "ipam": {
             "type": "host-local", "dataDir": "/d",
             "ranges": [[{"subnet": "10.89.0.0/24", "gateway": "10.89.0.254"}],
                        [{"subnet": "fd00:89::/64"}]],
             "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "firewall"}]}
    cni.check_netconf(conf)


def test_every_driver_declares_the_ips_capability_so_each_family_gets_its_ip():
    """--ip V4 --ip V6 goes to host-local as runtimeConfig "ips" (CNI_ARGS IP holds one)."""
    from circuit_net import runtime

    for kwargs in ({}, {"driver": "ptp"}, {"driver": "macvlan", "parent": "eth1"}):
        conf = spec.conflist(spec.Flags("web", ["10.89.0.0/24", "fd00:89::/64"], **kwargs),
                             PLUGINS)
        assert conf["plugins"][0]["capabilities"] == {"ips": True}
        assert runtime.runtime_args(conf, ["10.89.0.7", "fd00:89::7"], None, {}) == (
            {"ips": ["10.89.0.7", "fd00:89::7"]}, [])


def test_a_flags_network_stored_before_the_ips_capability_is_the_same_network():
    conf = spec.conflist(spec.Flags("web", ["10.89.0.0/24"]), PLUGINS)
    old = {**conf, "plugins": [{k: v for k, v in conf["plugins"][0].items()
                                if k != "capabilities"}, *conf["plugins"][1:]]}
    assert spec.same_network({"source": "flags", "config": old}, conf)
    assert spec.same_network({"source": "flags", "config": conf}, conf)
    # from a file, a capability added is another definition; so is any other change
    assert not spec.same_network({"source": "/etc/cni/web.conflist", "config": old}, conf)
    other = spec.conflist(spec.Flags("web", ["10.89.0.0/24"], mtu="1400"), PLUGINS)
    assert not spec.same_network({"source": "flags", "config": old}, other)
    assert not spec.same_network({"source": "flags", "config": conf}, old)


def test_internal_means_no_masquerade_no_gateway_no_route():
    plugin = spec.conflist(spec.Flags("int", ["10.89.0.0/24"], internal=True, mtu="1400",
                                      bridge="br-int"), PLUGINS)["plugins"][0]
    assert (plugin["ipMasq"], plugin["isGateway"], plugin["mtu"], plugin["bridge"]) == (
        False, False, 1400, "br-int")
    assert "routes" not in plugin["ipam"] and "dataDir" not in plugin["ipam"]


def test_other_drivers():
    mac = spec.conflist(spec.Flags("m", ["10.89.0.0/24"], driver="macvlan", parent="eth1"),
                        PLUGINS)
    assert [p["type"] for p in mac["plugins"]] == ["macvlan"]
    assert (mac["plugins"][0]["master"], mac["plugins"][0]["mode"]) == ("eth1", "bridge")
    ptp = spec.conflist(spec.Flags("p", ["10.89.0.0/24"], driver="ptp", masquerade=False),
                        PLUGINS)
    assert [p["type"] for p in ptp["plugins"]] == ["ptp", "portmap", "firewall"]
    assert ptp["plugins"][0]["ipMasq"] is False


def test_the_highest_version_every_plugin_supports():
    old_portmap = cni.Plugins(["/x"], executor=VersionsOnly(
        {"bridge": DEBIAN, "portmap": ["0.3.0", "0.3.1"], "firewall": DEBIAN}))
    conf = spec.conflist(spec.Flags("web", ["10.89.0.0/24"]), old_portmap)
    assert conf["cniVersion"] == "0.3.1"
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "portmap"]  # firewall needs 0.4


def test_a_long_name_gets_a_short_bridge():
    bridge = spec.default_bridge("a-very-long-network-name")
    assert len(bridge) == 15 and bridge.startswith("cni-")


@pytest.mark.parametrize("kwargs, error, words", [
    ({"subnets": ["10.89.0.1/24"]}, InvalidInput, "bad --subnet"),
    ({"subnets": ["10.89.0.0/24"], "gateway": "10.90.0.1"}, InvalidInput, "in none of"),
    ({"subnets": ["10.89.0.0/24"], "driver": "vxlan"}, InvalidInput, "unknown --driver"),
    ({"subnets": ["10.89.0.0/24"], "driver": "macvlan"}, UsageError, "needs --parent"),
    ({"subnets": ["10.89.0.0/24"], "parent": "eth0"}, UsageError, "--parent is for"),
    ({"subnets": ["10.89.0.0/24"], "driver": "ptp", "bridge": "b"}, UsageError, "--bridge"),
    ({"subnets": ["10.89.0.0/24"], "mtu": "20"}, InvalidInput, "bad --mtu"),
    ({"subnets": ["10.89.0.0/24"], "labels": ["nolabel"]}, InvalidInput, "bad --label"),
    ({"subnets": [], "gateway": "10.89.0.1"}, UsageError, "--gateway needs the --subnet"),
    ({"subnets": [], "overlay": "vxlan"}, InvalidInput, "takes one IPv4 --subnet"),
    ({"subnets": ["fd00::/64"], "gateway": "fd00::"}, InvalidInput,
     "gateway fd00:: is the network address of fd00::/64"),
    # ::/8: the Debian plugins' ADD failed ('IPNet IP and Mask version mismatch', 'invalid
    # IP address' from addresses that lost their leading zero bytes)
    ({"subnets": ["::ffff:10.5.0.0/120"]}, InvalidInput, r"is in ::/8, which the IETF"),
    ({"subnets": ["64:ff9b::/96"]}, InvalidInput, r"NAT64's 64:ff9b::/96.*as fd00:89::/64"),
    ({"subnets": ["::1:0:0/96"]}, InvalidInput, r"is in ::/8"),
])
def test_bad_flags_are_refused_in_one_line(kwargs, error, words):
    with pytest.raises(error, match=words):
        spec.Flags("web", **kwargs)


def test_overlaps_name_the_other_network_or_the_route(monkeypatch):
    import ipaddress

    mine = {"name": "new", "plugins": [{"type": "bridge", "ipam": {"subnet": "10.1.0.0/25"}}]}
    static = {"name": "fixed", "plugins": [{"type": "macvlan", "ipam": {
        "type": "static", "addresses": [{"address": "10.1.0.7/24"}]}}]}
    monkeypatch.setattr(spec, "routes", lambda: [])
    with pytest.raises(Conflict, match=r"overlaps 10.1.0.0/24 of network fixed"):
        spec.check_overlap(mine, [static])
    monkeypatch.setattr(spec, "routes", lambda: [
        (ipaddress.ip_network("0.0.0.0/0"), "eth0"), (ipaddress.ip_network("10.0.0.0/8"), "eth0")])
    with pytest.raises(Conflict, match=r"the host's route 10.0.0.0/8 \(dev eth0\)"):
        spec.check_overlap(mine, [])


def test_the_networks_own_subnet_left_on_its_own_bridge_is_no_overlap(monkeypatch):
    """A cni0 left by plain CNI's run of the same network (its bridge keeps the route)."""
    import ipaddress

    mine = {"name": "sandbox", "plugins": [{"type": "bridge", "ipam": {"subnet": "10.1.0.0/24"}}]}
    left = [(ipaddress.ip_network("10.1.0.0/24"), "cni0")]
    monkeypatch.setattr(spec, "routes", lambda: left)
    spec.check_overlap(mine, [])
    with pytest.raises(Conflict, match=r"the host's route 10.1.0.0/24 \(dev cni0\)"):
        spec.check_overlap({**mine, "plugins": [{**mine["plugins"][0], "bridge": "br1"}]}, [])
    monkeypatch.setattr(spec, "routes", lambda: [(ipaddress.ip_network("10.1.0.0/16"), "cni0")])
    with pytest.raises(Conflict, match=r"the host's route 10.1.0.0/16 \(dev cni0\)"):
        spec.check_overlap(mine, [])
    other = {"name": "other", "plugins": [{"type": "bridge", "ipam": {"subnet": "10.1.0.0/24"}}]}
    monkeypatch.setattr(spec, "routes", lambda: left)
    with pytest.raises(Conflict, match=r"overlaps 10.1.0.0/24 of network other"):
        spec.check_overlap(mine, [other])


def nets(*texts):
    import ipaddress

    return [ipaddress.ip_network(t) for t in texts]


def test_the_first_free_ipv4_block_of_the_pools_past_what_is_held():
    assert str(spec.free_ipv4([])) == "10.89.0.0/24"
    # nested, unordered, partly outside the pool, and a block held only in part
    held = nets("10.89.0.0/23", "10.89.0.128/25", "10.89.2.77/32", "10.0.0.0/10", "fd00::/8")
    assert str(spec.free_ipv4(held)) == "10.89.3.0/24"
    assert str(spec.free_ipv4(nets("10.89.0.0/16"))) == "10.90.0.0/24"  # the next pool
    assert str(spec.free_ipv4(nets("10.0.0.0/8", "10.128.0.0/9"))) == "None"


def test_a_random_unique_local_ipv6_64_that_overlaps_nothing_held():
    import ipaddress

    picked = {spec.free_ipv6(nets("10.89.0.0/24")) for _ in range(20)}
    assert len(picked) == 20 and all(
        p.prefixlen == 64 and p.subnet_of(ipaddress.ip_network("fd00::/8")) for p in picked)
    assert spec.free_ipv6(nets("fc00::/7")) is None


def test_which_families_are_picked():
    assert spec.Flags("a", []).missing_families() == [4]
    assert spec.Flags("a", [], ipv6=True).missing_families() == [4, 6]
    assert spec.Flags("a", ["10.1.0.0/24"], ipv6=True).missing_families() == [6]
    assert spec.Flags("a", ["fd00:1::/64"], ipv6=True).missing_families() == []
    assert spec.Flags("a", ["10.1.0.0/24"]).missing_families() == []


def test_a_network_created_again_keeps_its_picked_subnets(monkeypatch):
    monkeypatch.setattr(spec, "routes", lambda: [])
    existing = {"name": "db", "plugins": [{"type": "bridge", "ipam": {"ranges": [
        [{"subnet": "10.89.7.0/24"}], [{"subnet": "fd12::/64"}]]}}]}
    other = {"name": "web", "plugins": [{"type": "bridge", "ipam": {"subnet": "10.89.0.0/24"}}]}
    assert spec.pick_subnets(spec.Flags("db", [], ipv6=True), existing, [other]) == nets(
        "10.89.7.0/24", "fd12::/64")
    assert spec.pick_subnets(spec.Flags("new", []), None, [other, existing]) == nets(
        "10.89.1.0/24")
    monkeypatch.setattr(spec, "free_ipv4", lambda held: None)
    with pytest.raises(Conflict, match=r"no free IPv4 subnet left in 10.89.0.0/16, .*--subnet"):
        spec.pick_subnets(spec.Flags("new", []), None, [])
