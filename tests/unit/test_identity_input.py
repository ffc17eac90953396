"""Hostile input to the commands that name containers and their addresses (issues 26, 27)."""
import os
import re

import pytest
from test_networks import me, nets  # noqa: F401 (the fixture)

from circuit_common.errors import Conflict, InvalidInput
from circuit_common.proc import process, start_time
from circuit_lb.health import parse_check
from circuit_net.networks import in_use
from circuit_net.runtime import parse_ips
from circuit_net.spec import check_overlap, check_requested_ips
from circuit_net.target import Target

pytestmark = pytest.mark.unit


def record(cid: str, pid: int, started: int, target: str | None = None,
           aliases: tuple = ()) -> dict:
    """An attachment record as connect writes it, for in_use()."""
    return {"networkName": "n1", "containerId": cid, "ifName": "eth0", "result": {},
            "circuit": {"pid": pid, "start_time": started, "target": target,
                        "aliases": list(aliases)}}


def test_network_in_use_names_containers_not_internal_ids():
    me = os.getpid()
    records = [record(f"pid{me}-1", me, start_time(me), aliases=("web",)),
               record("c7", me, start_time(me), target="c7"),
               record("pid1-2", 1, -1, aliases=("gone",))]
    line = in_use("n1", records)
    assert line.startswith("network n1 is in use by 2 container(s): web, c7 (and 1 exited")
    assert "pid" not in line.replace("--", "")


def test_only_exited_containers_are_named_by_name():
    line = in_use("n1", [record("pid1-2", 1, -1, aliases=("gone",))])
    assert "exited container(s): gone;" in line


@pytest.mark.parametrize("spec", ["http://x/", "http://x/healthz=204", "http:////"])
def test_a_check_url_is_refused_saying_give_the_path_alone(spec):
    with pytest.raises(InvalidInput, match="give the path alone"):
        parse_check(spec, None, None, None, None)


def test_a_check_path_is_still_taken():
    assert parse_check("http:/x//y", None, None, None, None)["path"] == "/x//y"


DUAL = {"cniVersion": "1.0.0", "name": "d", "plugins": [{"type": "bridge", "ipam": {
    "type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}],
                                     [{"subnet": "fd00:1::/64", "gateway": "fd00:1::9"}]]}}]}


@pytest.mark.parametrize(("ip", "why"), [
    ("10.2.0.5", "is outside network d's subnet"),
    ("10.1.0.0", "is the network address"), ("10.1.0.255", "is the broadcast address"),
    ("10.1.0.1", "is the gateway"), ("10.1.0.1/24", "is the gateway"),
    ("fd00:1::", "is the network address"), ("fd00:1::9", "is the gateway"),
    ("fd00:2::5", "is outside network d's subnet"), ("::", "is outside"),
    ("0.0.0.0", "is outside"), ("255.255.255.255", "is outside")])
def test_an_ip_the_ipam_cannot_hand_out_is_refused_naming_the_range(ip, why):
    with pytest.raises(InvalidInput, match=why) as caught:
        check_requested_ips(DUAL, [ip])
    assert "10.1.0.0/24: 10.1.0.2-10.1.0.254, gateway 10.1.0.1" in str(caught.value) \
        or "fd00:1::/64: fd00:1::1-fd00:1::ffff:ffff:ffff:ffff, gateway fd00:1::9" \
        in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("ips", "why"), [
    (["10.1.0.7/16"], "subnet is 10.1.0.0/24; give 10.1.0.7 or 10.1.0.7/24"),
    (["10.1.0.5", "10.1.0.6"], "2 IPv4 addresses asked for with --ip, but network d gives"),
    (["fd00:1::5"], None), (["10.1.0.254", "fd00:1::ffff:ffff:ffff:ffff"], None),
    (["fd00:1::1/64"], None)])
def test_prefixes_and_counts(ips, why):
    if why is None:
        check_requested_ips(DUAL, ips)
        return
    with pytest.raises(InvalidInput, match=re.escape(why)):
        check_requested_ips(DUAL, ips)


def test_an_ipv6_ip_on_an_ipv4_network_names_what_it_has():
    v4 = {**DUAL, "plugins": [{"type": "bridge", "ipam": {"type": "host-local",
                                                          "subnet": "10.1.0.0/24",
                                                          "rangeStart": "10.1.0.10"}}]}
    with pytest.raises(InvalidInput, match="is IPv6 but network d has no IPv6 subnet"):
        check_requested_ips(v4, ["fd00::5"])
    with pytest.raises(InvalidInput, match="outside the range network d hands out"):
        check_requested_ips(v4, ["10.1.0.5"])


def test_static_ipam_is_left_to_its_plugin():
    static = {**DUAL, "plugins": [{"type": "bridge", "ipam": {"type": "static"}}]}
    check_requested_ips(static, ["192.0.2.1/24"])


@pytest.mark.parametrize("values", [["10.1.0.5", "10.1.0.5/24"], ["fd00::5", "fd00:0::5"]])
def test_the_same_ip_twice_is_refused(values):
    with pytest.raises(InvalidInput, match="given twice"):
        parse_ips(values)


def test_a_refused_ip_runs_no_plugin_and_writes_nothing(nets):  # noqa: F811
    with pytest.raises(InvalidInput, match="is the gateway"):
        nets.connect("n", me(), ips=("10.1.0.1",))
    assert nets.plugins.executor.calls == []
    assert not os.path.exists(nets.attachment_dir("n"))
    assert not os.listdir(nets.store.path("intents", "n")) \
        if os.path.exists(nets.store.path("intents", "n")) else True


def test_an_ip_another_container_holds_is_refused_naming_it(nets):  # noqa: F811
    nets.plugins.executor.go.set()
    nets.connect("n", me())  # gets 10.1.0.2
    calls = len(nets.plugins.executor.calls)
    with pytest.raises(Conflict, match=r"--ip 10\.1\.0\.2 is taken on network n, by container c1"):
        nets.connect("n", Target("c2", "c2", process(os.getpid())), ips=("10.1.0.2/24",))
    assert len(nets.plugins.executor.calls) == calls


def test_an_overlapping_file_network_says_to_edit_the_file():
    other = {"name": "a", "plugins": [{"type": "bridge", "ipam": {"type": "host-local",
                                                                  "subnet": "10.1.0.0/16"}}]}
    with pytest.raises(Conflict, match=r"overlaps 10.1.0.0/16 of network a; edit the ipam "
                                       r"subnet \(or ranges\) in /x/d.conflist"):
        check_overlap(DUAL, [other], "/x/d.conflist")
    with pytest.raises(Conflict, match="choose another --subnet"):
        check_overlap(DUAL, [other])
