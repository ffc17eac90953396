"""Parsing what a connect asks of the plugins: --publish, --cap, --ip, and where each goes."""

import re

import pytest

from circuit_common.errors import InvalidInput, UsageError
from circuit_net import runtime

PORTMAP = {"name": "web", "cniVersion": "1.0.0", "plugins": [
    {"type": "bridge"}, {"type": "portmap", "capabilities": {"portMappings": True}}]}
STATIC = {"name": "fixed", "cniVersion": "1.0.0", "plugins": [
    {"type": "macvlan", "ipam": {"type": "static"}}]}


@pytest.mark.parametrize("spec, entry", [
    ("8080:80", {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}),
    ("5353:53/udp", {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}),
    ("127.0.0.1:8080:80/tcp",
     {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}),
    ("[::1]:8443:443", {"hostPort": 8443, "containerPort": 443, "protocol": "tcp",
                        "hostIP": "::1"}),
])
def test_publish_specs_become_port_mappings(spec, entry):
    assert runtime.parse_publish(spec) == entry


@pytest.mark.parametrize("spec", ["80", "0:80", "8080:65536", "8080:80/icmp", "x:80",
                                  "1.2.3:80:80", "a:b:c:d", "\uff18\uff10:80", "", "8080:80/"])
def test_bad_publish_specs_are_refused_in_one_line(spec):
    with pytest.raises(InvalidInput, match="bad --publish"):
        runtime.parse_publish(spec)


def test_a_publish_list_is_comma_separated():
    assert [m["hostPort"] for m in runtime.parse_publish_list("8080:80, 5353:53/udp,")] == [
        8080, 5353]


def test_caps_are_json_and_given_once():
    caps = runtime.capabilities([runtime.parse_publish("8080:80")],
                                ['bandwidth={"ingressRate": 1000}'])
    assert caps == {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                    "bandwidth": {"ingressRate": 1000}}
    with pytest.raises(InvalidInput, match="not JSON"):
        runtime.capabilities([], ["bandwidth={"])
    with pytest.raises(InvalidInput, match="NAME=JSON"):
        runtime.capabilities([], ["bandwidth"])
    with pytest.raises(UsageError, match="given twice"):
        runtime.capabilities([runtime.parse_publish("1:1")], ['portMappings=[]'])


@pytest.mark.parametrize("cap, why", [
    ('ips=["10.1.0.1"]', "give addresses with --ip, not --cap ips: circuit checks it"),
    ('mac="02:00:00:00:00:01"', "give the MAC with --mac, not --cap mac"),
    ('portMappings="junk"', "bad --cap portMappings: not a list"),
    ('portMappings=[{"hostPort": 0, "containerPort": 80}]', "hostPort 0 is not a port"),
    ('portMappings=[{"hostPort": "8080", "containerPort": 80}]', "hostPort '8080' is not"),
    ('portMappings=[{"hostPort": 8080, "containerPort": true}]', "containerPort True is not"),
    ('portMappings=[{"hostPort": 1, "containerPort": 1, "protocol": "icmp"}]', "protocol 'icmp'"),
    ('portMappings=[{"hostPort": 1, "containerPort": 1, "hostIP": "x"}]', "hostIP 'x' is not"),
    ('portMappings=[{"hostPort": 8080, "containerPort": 80}, '
     '{"hostPort": 8080, "containerPort": 81}]', "host port 8080/tcp is published twice"),
])
def test_a_cap_that_bypasses_circuits_checks_is_refused(cap, why):
    """--cap ips/mac skipped --ip's and --mac's checks; --cap portMappings -p's (one host port
    mapped twice was connected, exit 0; the rest failed in portmap, exit 7)."""
    with pytest.raises(InvalidInput, match=re.escape(why)):
        runtime.capabilities([], [cap])


def test_an_undeclared_capability_is_refused_naming_the_plugins():
    runtime.check_declared([PORTMAP], {"portMappings": []})
    with pytest.raises(InvalidInput, match=r"network fixed declares capability portMappings "
                                           r"\(plugins: macvlan\)"):
        runtime.check_declared([STATIC], {"portMappings": []})
    runtime.check_declared([STATIC, PORTMAP], {"portMappings": []})  # the hook: any network


def test_ips_keep_their_prefix_and_go_where_the_chain_declares():
    ips = runtime.parse_ips(["10.10.0.7/24", "fd00::7/64"])
    assert runtime.runtime_args(STATIC, ips, None, {}) == (
        {}, [("IgnoreUnknown", "1"), ("IP", "10.10.0.7/24,fd00::7/64")])
    declared = {**STATIC, "plugins": [{**STATIC["plugins"][0], "capabilities": {"ips": True}}]}
    assert runtime.runtime_args(declared, ips, "02:00:00:00:00:01", {"portMappings": []}) == (
        {"ips": ips}, [("IgnoreUnknown", "1"), ("MAC", "02:00:00:00:00:01")])
    bridge = {"name": "b", "plugins": [{"type": "bridge", "ipam": {"type": "host-local"}}]}
    assert runtime.runtime_args(bridge, ["10.0.0.5/24"], None, {})[1][1] == ("IP", "10.0.0.5")
    with pytest.raises(InvalidInput, match="declare the ips capability"):
        runtime.runtime_args(bridge, ips, None, {})
    with pytest.raises(InvalidInput, match="bad --ip"):
        runtime.parse_ips(["10.10.0.300"])


def test_published_ports_read_as_people_write_them():
    assert runtime.describe_ports([runtime.parse_publish(s) for s in (
        "8080:80", "10.0.0.1:53:53/udp", "[::1]:1:2")]) == [
        "8080->80/tcp", "10.0.0.1:53->53/udp", "[::1]:1->2/tcp"]
