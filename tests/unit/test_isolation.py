"""Table inet circuit_isolation as computed from network configs (no nft run)."""

import json

import pytest
from test_networks import NETWORK, nets  # noqa: F401 (a fixture)

from circuit_common import nft
from circuit_common.errors import InvalidInput, PluginError, UsageError
from circuit_net import isolation, spec
from circuit_net.records import check_network
from circuit_netlink import NLM_F_ACK, attributes, rtnl

pytestmark = pytest.mark.unit


def net(name: str, mode: str, *subnets: str) -> dict:
    conf = {"name": name, "plugins": [{"type": "bridge", "ipam": {
        "type": "host-local", "ranges": [[{"subnet": s}] for s in subnets]}}]}
    return {**conf, isolation.KEY: mode} if mode != "none" else conf


def test_normal_blocks_isolated_peers_and_strict_blocks_everyone():
    confs = [net("a", "normal", "10.1.0.0/24", "fd01::/64"), net("b", "normal", "10.2.0.0/24"),
            net("c", "none", "10.3.0.0/24"), net("d", "strict", "10.4.0.0/24")]
    pairs = {(a["name"], b["name"]) for a, b in isolation.blocked_pairs(confs)}
    assert pairs == {("a", "b"), ("a", "d"), ("b", "d"), ("c", "d")}
    comments = [r["comment"] for r in isolation.rules(confs)]
    assert comments == ["a to b", "b to a", "a to d", "d to a", "b to d", "d to b", "c to d",
                        "d to c"]  # IPv6 only where both sides have it: none here


def test_both_families_and_the_dnat_exemption_in_one_transaction():
    confs = [net("a", "normal", "10.1.0.0/24", "fd01::/64"),
            net("b", "strict", "10.2.0.0/24", "fd02::/64", "fd03::/64")]
    cmds = isolation.commands(confs, present=False)
    assert [next(iter(c)) for c in cmds[:4]] == ["add", "delete", "add", "add"]
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    assert rules[0]["expr"][0]["match"]["right"] == "dnat"
    six = [r for r in rules[1:] if r["expr"][0]["match"]["left"]["payload"]["protocol"] == "ip6"]
    assert len(six) == 2 and six[1]["expr"][0]["match"]["right"]["set"] == [
        {"prefix": {"addr": "fd02::", "len": 64}}, {"prefix": {"addr": "fd03::", "len": 64}}]


def test_no_isolated_network_deletes_the_table_or_does_nothing():
    table = {"table": isolation.TABLE}
    assert isolation.commands([net("c", "none", "10.3.0.0/24")], present=True) == [
        {"add": table}, {"delete": table}]
    assert isolation.commands([], present=False) == []


def test_an_unknown_mode_is_a_usage_error_and_none_stays_out_of_the_config():
    with pytest.raises(UsageError, match="unknown --isolate 'total'"):
        spec.Flags("x", ["10.1.0.0/24"], isolate="total")
    assert spec.Flags("x", ["10.1.0.0/24"], isolate="none").isolate == "none"


def test_macvlan_and_ipvlan_are_refused_an_isolate_mode():
    with pytest.raises(UsageError, match="--isolate is for networks routed through this host"):
        spec.Flags("x", ["10.1.0.0/24"], driver="macvlan", parent="eth9", isolate="strict")
    assert spec.Flags("x", ["10.1.0.0/24"], driver="ptp", isolate="normal").isolate == "normal"


def test_a_config_file_with_an_unknown_mode_is_refused_and_nothing_is_stored(nets, tmp_path):  # noqa: F811
    path = tmp_path / "bad.conflist"
    path.write_text(json.dumps({**NETWORK, "name": "bad", isolation.KEY: "total"}))
    with pytest.raises(InvalidInput, match="circuitIsolate 'total' is not one of none"):
        nets.create(str(path))
    assert [n["name"] for n in nets.all().records] == ["n"]
    with pytest.raises(ValueError, match="circuitIsolate"):
        check_network({"name": "n", "config": {**NETWORK, isolation.KEY: 1}}, "n.json")


def test_nft_refusing_the_table_stores_no_network(nets, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setattr(isolation, "present", lambda: False)

    def refuse(commands):
        raise nft.NftRefused("Operation not permitted")

    monkeypatch.setattr(nft, "transaction", refuse)
    path = tmp_path / "iso.conflist"
    conf = {**NETWORK, "name": "iso", isolation.KEY: "strict", "plugins": [
        {"type": "bridge", "ipam": {"type": "host-local", "subnet": "10.2.0.0/24"}}]}
    path.write_text(json.dumps(conf))
    monkeypatch.setattr(nets, "check_new", lambda netconf: None)
    with pytest.raises(nft.NftRefused):
        nets.create(str(path))
    assert [n["name"] for n in nets.all().records] == ["n"]


def test_deleting_the_last_isolated_network_rebuilds_from_what_is_left(nets, monkeypatch):  # noqa: F811
    synced = []
    monkeypatch.setattr(isolation, "sync", lambda netconfs: synced.append(
        [n["name"] for n in netconfs]))
    conf = {**NETWORK, "name": "iso", isolation.KEY: "normal"}
    nets.store.write(nets.network_path("iso"), {"name": "iso", "config": conf,
                                                "source": "test", "created": "now"})
    nets.delete("iso")
    nets.delete("n")  # nothing isolated is left: no rebuild
    assert synced == [["n"]]


def test_drift_names_what_is_missing_and_what_is_extra(monkeypatch):
    confs = [net("a", "normal", "10.1.0.0/24"), net("b", "normal", "10.2.0.0/24")]
    listed = [{"table": isolation.TABLE}, {"rule": {"comment": "published ports and LB VIPs"}},
              {"rule": {"comment": "a to b"}}, {"rule": {"comment": "a to z"}}]
    monkeypatch.setattr(nft, "objects", lambda *what: listed)
    assert isolation.drift(confs) == ("table inet circuit_isolation differs: missing b to a; "
                                     "extra a to z")
    assert isolation.drift([confs[0]]) == ("table inet circuit_isolation is there, no network "
                                          "is isolated")
    monkeypatch.setattr(nft, "objects", lambda *what: [])
    assert isolation.drift(confs) == "table inet circuit_isolation is missing"
    assert isolation.drift([]) is None


def test_no_icc_drops_within_the_network_in_name_order_however_read():
    confs = [{**net("q", "none", "10.5.0.0/24", "fd05::/64"), isolation.NO_ICC_KEY: True},
             net("o", "none", "10.6.0.0/24"), net("a", "strict", "10.7.0.0/24")]
    comments = [r["comment"] for r in isolation.rules(confs)]
    assert comments == ["a to o", "o to a", "a to q", "q to a", "q within", "q within"]
    assert comments == [r["comment"] for r in isolation.rules(confs[::-1])]
    six = isolation.rules(confs)[-1]["expr"]
    fd05 = {"prefix": {"addr": "fd05::", "len": 64}}
    assert [m["match"]["right"] for m in six[:2]] == [fd05, fd05]
    assert isolation.isolated(confs[0]) and not isolation.isolated(confs[1])


def test_no_icc_is_refused_where_its_traffic_passes_elsewhere_and_kept_in_the_config():
    for flags in ({"driver": "macvlan", "parent": "eth9"}, {"overlay": "vxlan"}):
        with pytest.raises(UsageError, match="--no-icc is for --driver bridge or ptp"):
            spec.Flags("x", ["10.1.0.0/16"], icc=False, **flags)
    assert not spec.Flags("x", ["10.1.0.0/24"], icc=False).icc
    with pytest.raises(ValueError, match="circuitNoIcc must be true, or left out"):
        isolation.check_config({isolation.NO_ICC_KEY: "yes"})


def test_a_bridge_result_without_a_host_side_port_cannot_be_isolated():
    conf = {**net("q", "none", "10.5.0.0/24"), isolation.NO_ICC_KEY: True}
    with pytest.raises(PluginError, match="names no host-side port to isolate"):
        isolation.isolate_ports(conf, {"interfaces": [{"name": "eth0", "sandbox": "/x"}]})


def test_isolate_port_is_one_af_bridge_setlink_with_protinfo_isolated():
    sent = []

    class Batch:
        def query_bytes(self, kind, body, flags=0):
            sent.append((kind, body, flags))
            return []

    rtnl.isolate_port(Batch(), 7)
    (kind, body, flags), = sent
    assert kind == rtnl.RTM_SETLINK and flags == NLM_F_ACK
    assert body[0] == rtnl.AF_BRIDGE and rtnl.IFINFOMSG.unpack_from(body)[2] == 7
    protinfo = attributes(body, rtnl.IFINFOMSG.size)[rtnl.IFLA_PROTINFO]
    assert attributes(protinfo) == {rtnl.IFLA_BRPORT_ISOLATED: b"\1"}
