"""Hostile input to the commands that name containers and their addresses (issues 26, 27)."""
import os
import re
from types import SimpleNamespace

import pytest
from test_networks import me, nets  # noqa: F401 (the fixture)

from circuit_common import extensions
from circuit_common.cli import Context
from circuit_common.config import Settings
from circuit_common.errors import Conflict, InvalidInput, NotFound
from circuit_common.proc import process, start_time
from circuit_lb.address import Endpoint, Named, parse_target
from circuit_lb.health import parse_check
from circuit_lb.services import container_target
from circuit_net import networks
from circuit_net.networks import in_use
from circuit_net.runtime import parse_ips
from circuit_net.spec import check_overlap, check_requested_ips, check_usable
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


@pytest.mark.parametrize(("text", "parsed"), [
    ("c1:80", Named("c1", 80)), ("web-00.x_y:443", Named("web-00.x_y", 443)),
    ("7553:80", Named("7553", 80)), ("10.1.2.3:80", Endpoint("10.1.2.3", 80)),
    ("[fd00::1]:80", Endpoint("fd00::1", 80))])
def test_a_target_is_an_address_or_a_container(text, parsed):
    assert parse_target(text) == parsed


@pytest.mark.parametrize(("text", "why"), [
    ("c1:0", "invalid port '0'"), ("c1:", "invalid port ''"), ("c1:99999", "use 1-65535"),
    ("c1:\uff18\uff10", "invalid port"), ("10.1.2:80", "use ADDR:PORT"), (":80", "use ADDR:PORT"),
    ("ü:80", "use ADDR:PORT"), ("c1", "use ADDR:PORT"), (" c1:80", "use ADDR:PORT"),
    ("-c1:80", "use ADDR:PORT or CONTAINER:PORT"), ("c" * 129 + ":80", "use ADDR:PORT")])
def test_a_bad_container_target_is_one_line(text, why):
    with pytest.raises(InvalidInput, match=re.escape(why)):
        parse_target(text)


@pytest.fixture
def store(tmp_path):
    settings = Settings()
    settings.state_dir = str(tmp_path / "state")
    return Context(settings).store


def attach(store, network: str, cid: str, ifname: str, ips: list[str], pid: int | None = None,
           started: int | None = None, **meta) -> None:
    """An attachment record as circuit-net writes it (this process standing in for the
    container unless pid names another)."""
    pid = os.getpid() if pid is None else pid
    record = {"networkName": network, "containerId": cid, "ifName": ifname,
              "result": {"cniVersion": "1.0.0", "ips": [{"address": a} for a in ips]},
              "circuit": {"pid": pid, "start_time": started or start_time(pid), **meta}}
    store.write(store.path("attachments", network, f"{cid}@{ifname}.json"), record)


SERVICE = {"name": "web", "addr": "10.100.99.1", "port": 80}


def test_a_container_target_is_its_address_on_its_one_network(store):
    attach(store, "n1", "c1", "eth0", ["10.1.0.2/24", "fd00:1::2/64"], target="c1")
    attach(store, "n2", "pid1-1", "eth0", ["10.2.0.2/24"], pid=1, aliases=["web"])
    assert container_target(store, Named("c1", 80), SERVICE).network == "n1"
    assert container_target(store, Named("c1", 80), {**SERVICE, "addr": "fd10::1"}).ip \
        == "fd00:1::2"
    assert container_target(store, Named("web", 80), SERVICE).ip == "10.2.0.2"
    assert container_target(store, Named(str(os.getpid()), 80), {
        **SERVICE, "addr": "fd10::1"}).network == "n1"


def test_a_container_on_two_networks_is_refused_naming_them(store):
    attach(store, "n1", "c1", "eth0", ["10.1.0.2/24"], target="c1")
    attach(store, "n2", "c1", "eth1", ["10.2.0.2/24"], target="c1")
    with pytest.raises(InvalidInput, match=re.escape(
            "container c1 has 2 IPv4 addresses: 10.1.0.2 on n1 (eth0), 10.2.0.2 on n2 "
            "(eth1); give the one to balance to as ADDR:PORT")):
        container_target(store, Named("c1", 80), SERVICE)


def test_no_running_container_of_that_name_is_not_found(store):
    attach(store, "n1", "c1", "eth0", ["10.1.0.2/24"], started=1, target="c1")  # exited
    store.write(store.path("attachments", "n1", "bad@eth0.json"), {"junk": 1})
    store.write(store.path("attachments", "n1", "c2@eth0.json"), {"containerId": "c1"})
    with pytest.raises(NotFound, match="no running container 'c1' with an IPv4 address"):
        container_target(store, Named("c1", 80), SERVICE)
    with pytest.raises(NotFound, match="connect it"):
        container_target(store, Named("c1", 80), {**SERVICE, "addr": "fd10::1"})


def test_released_comes_after_the_network_lock_is_let_go(nets, monkeypatch):  # noqa: F811
    """The poststop hook's detach (detach_container) and disconnect tell the extensions
    released holding no lock: lb takes the store's exclusive lock there."""
    nets.plugins.executor.go.set()
    nets.store.lock_timeout = 0.5
    calls = []

    def released(ctx, attachment):
        with ctx.store.lock_all():  # LockTimeout if this process still held a network lock
            calls.append((attachment.network, attachment.container_id, attachment.ifname))

    monkeypatch.setattr(networks.extensions, "load",
                        lambda store, network, name: SimpleNamespace(released=released))
    extensions.mark(nets.store, "n", "lb", "circuit_lb.extension")
    nets.connect("n", me())
    nets.detach_container("c1")
    nets.connect("n", me())
    nets.disconnect("n", me())
    nets.connect("n", me())
    nets.delete("n", force=True)  # its markers go with it: released is still told
    assert calls == [("n", "c1", "eth0")] * 3


def test_a_container_connected_under_its_other_name_too_is_one_container(store):
    attach(store, "n1", "c1", "eth0", ["10.1.0.2/24"], target="c1")
    attach(store, "n2", f"pid{os.getpid()}-1", "eth0", ["10.2.0.2/24"], target=str(os.getpid()))
    with pytest.raises(InvalidInput, match="container c1 has 2 IPv4 addresses"):
        container_target(store, Named("c1", 80), SERVICE)


def file_conf(**ipam) -> dict:
    return {"cniVersion": "1.0.0", "name": "f", "plugins": [
        {"type": "bridge", "bridge": "cf0", "ipam": {"type": "host-local", **ipam}}]}


@pytest.mark.parametrize(("ipam", "why"), [
    ({"subnet": "10.83.0.0/24", "gateway": "10.99.0.1"},
     "gateway 10.99.0.1 of network f is outside its subnet 10.83.0.0/24; give one in it"),
    ({"ranges": [[{"subnet": "10.84.0.0/24", "rangeStart": "10.84.1.5"}]]},
     "rangeStart 10.84.1.5 of network f is outside its subnet"),
    ({"subnet": "10.85.0.0/24", "rangeEnd": "fd00::1"}, "rangeEnd fd00::1 of network f is outside"),
    ({"subnet": "10.85.0.0/24", "rangeStart": "x"}, "rangeStart 'x' of network f is not an IP"),
    ({"subnet": "10.85.0.0/24", "rangeStart": "10.85.0.200", "rangeEnd": "10.85.0.100"},
     "comes after its rangeEnd 10.85.0.100; swap them"),
    ({"routes": []}, "the host-local ipam of network f has no subnet"),
    ({"ranges": [[{"subnet": "10.86.0.0/24", "gateway": "10.86.0.255"}]]},
     "gateway 10.86.0.255 is the broadcast address of 10.86.0.0/24; choose another"),
    ({"ranges": [[{"subnet": "fd00::/64", "gateway": "fd00::"}]]},
     "gateway fd00:: is the network address of fd00::/64; choose another, as fd00::1"),
    ({"subnet": "fd00:5::/64", "gateway": "fd00:5::"}, "gateway fd00:5:: is the network"),
    ({"ranges": [[{"subnet": "::ffff:10.5.0.0/120"}]]}, "subnet ::ffff:a05:0/120 is in ::/8")])
def test_a_file_networks_host_local_that_fails_every_connect_is_refused(ipam, why):
    with pytest.raises(InvalidInput, match=re.escape(why)):
        check_usable(file_conf(**ipam), {})


def test_a_file_networks_range_inside_its_subnet_is_taken():
    check_usable(file_conf(subnet="10.85.0.0/24", rangeStart="10.85.0.10",
                           rangeEnd="10.85.0.20", gateway="10.85.0.1"), {})


def test_the_hook_never_releases_another_running_containers_attachment(nets):  # noqa: F811
    """Two containers under one id (other runc roots or runtimes): the second's start, or the
    poststop of a stopped one, left the running one without its network."""
    from circuit_common.proc import Process

    nets.plugins.executor.go.set()
    nets.connect("n", me())  # id c1, this process: running
    path = nets.attachment_path("n", "c1", "eth0")
    other = Process(os.getppid(), start_time(os.getppid()))
    with pytest.raises(Conflict, match=re.escape(
            f"container c1 (PID {other.pid}) not attached: eth0 on network n under id c1 "
            f"belongs to running PID {os.getpid()}, another container under the same id")):
        nets.detach_container("c1", hook=True, owner=other)
    with pytest.raises(Conflict, match="container c1 stopped, but eth0 on network n .* left "
                                       f"attached .`circuit network disconnect {os.getpid()} n`"):
        nets.detach_container("c1", hook=True)
    assert nets.store.read(path) is not None
    assert ("bridge", "DEL") not in nets.plugins.executor.sequence()
    mine = process(os.getpid())
    assert [n for n, _ in nets.detach_container("c1", hook=True, owner=mine)] == ["n"]
    assert nets.store.read(path) is None


@pytest.mark.parametrize(("plugin", "why"), [
    ({"ipam": "host-local"}, "ipam 'host-local' of plugin bridge in network f is not an object"),
    ({"capabilities": {"ips": "yes"}}, "capability ips 'yes' of plugin bridge in network f is "
                                       "not true or false; fix it in the config"),
    ({"ipam": {"type": "host-local", "subnet": "10.8.0.0/24", "routes": [{"dst": "garbage"}]}},
     "route {'dst': 'garbage'} of plugin bridge"),
    ({"ipam": {"type": "host-local", "subnet": "10.8.0.0/24",
               "routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}}, "route gw 'x'"),
    ({"ipam": {"type": "static", "addresses": [{"address": "garbage"}]}}, "static address"),
    ({"ipam": {"type": "static", "addresses": [{"address": "10.8.0.5"}]}}, "static address"),
    ({"dns": {"nameservers": "1.1.1.1"}}, "dns {'nameservers': '1.1.1.1'} of plugin bridge"),
])
def test_a_file_network_the_plugins_cannot_load_is_refused_at_create(plugin, why):
    """Each was stored and failed every connect in the bridge plugin (Go's unmarshalling or
    CIDR parsing, exit 7), tried on the Debian plugins."""
    conf = file_conf(subnet="10.8.0.0/24")
    conf["plugins"][0] = {**conf["plugins"][0], **plugin}
    with pytest.raises(InvalidInput, match=re.escape(why)):
        check_usable(conf, {})


def test_well_shaped_routes_static_addresses_and_dns_are_taken():
    conf = file_conf(subnet="10.8.0.0/24", routes=[{"dst": "0.0.0.0/0", "gw": "10.8.0.1"},
                                                   {"dst": "10.9.0.1/16"}])
    conf["plugins"][0].update(dns={"nameservers": ["10.8.0.1"], "search": ["x"]},
                              capabilities={"ips": True, "mac": False})
    check_usable(conf, {})
    check_usable({**conf, "plugins": [{"type": "bridge", "ipam": {
        "type": "static", "addresses": [{"address": "10.8.0.5/24"}]}}]}, {})
    check_usable({**conf, "plugins": [{"type": "loopback", "ipam": None}]}, {})
