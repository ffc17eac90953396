"""Table inet circuit_isolation as computed from network configs (no nft run)."""

import pytest

from circuit_common.errors import UsageError
from circuit_net import isolation, spec

pytestmark = pytest.mark.unit


def net(name: str, mode: str, *subnets: str) -> dict:
    conf = {"name": name, "plugins": [{"type": "bridge", "ipam": {
        "type": "host-local", "ranges": [[{"subnet": s}] for s in subnets]}}]}
    return {**conf, isolation.KEY: mode} if mode != "none" else conf


def test_normal_blocks_isolated_peers_and_strict_blocks_everyone():
    nets = [net("a", "normal", "10.1.0.0/24", "fd01::/64"), net("b", "normal", "10.2.0.0/24"),
            net("c", "none", "10.3.0.0/24"), net("d", "strict", "10.4.0.0/24")]
    pairs = {(a["name"], b["name"]) for a, b in isolation.blocked_pairs(nets)}
    assert pairs == {("a", "b"), ("a", "d"), ("b", "d"), ("c", "d")}
    comments = [r["comment"] for r in isolation.rules(nets)]
    assert comments == ["a to b", "b to a", "a to d", "d to a", "b to d", "d to b", "c to d",
                        "d to c"]  # IPv6 only where both sides have it: none here


def test_both_families_and_the_dnat_exemption_in_one_transaction():
    nets = [net("a", "normal", "10.1.0.0/24", "fd01::/64"),
            net("b", "strict", "10.2.0.0/24", "fd02::/64", "fd03::/64")]
    cmds = isolation.commands(nets, present=False)
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
