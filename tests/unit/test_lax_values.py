"""Values that were accepted though they mean nothing usable (issue 27 §4): each refused with
one clear error where it is read."""

import pytest

from circuit_cluster.url import parse_etcd_url
from circuit_common.errors import InvalidInput, UsageError
from circuit_common.output import check_format
from circuit_common.validate import check_ifname
from circuit_lb.cli import persistent_seconds
from circuit_net import spec
from circuit_net.runtime import capabilities, parse_publish, parse_publish_list


def test_names_only_and_json_are_refused_together():
    with pytest.raises(UsageError, match="-q prints names only, --format json"):
        check_format("json", quiet=True)
    assert check_format("table", quiet=True) == "table"
    assert check_format(None, quiet=True) == "table"


@pytest.mark.parametrize("name", ["all", "default"])
def test_the_kernels_reserved_interface_names_are_refused(name):
    with pytest.raises(InvalidInput, match="the kernel keeps 'all' and 'default'"):
        check_ifname(name)


@pytest.mark.parametrize("value", ["99999999999", "86401"])
def test_a_persistence_beyond_a_day_is_refused(value):
    with pytest.raises(InvalidInput, match="from 1 to 86400"):
        persistent_seconds(value)
    assert persistent_seconds("86400") == 86400


@pytest.mark.parametrize("spec", [" 80:80", "80:80 ", "80 :80", "\t80:80"])
def test_a_publish_spec_with_spaces_is_refused(spec):
    with pytest.raises(InvalidInput, match="bad --publish"):
        parse_publish(spec)


@pytest.mark.parametrize("specs", [["8080:80", "8080:80"], ["8080:80", "8080:81"],
                                   ["8080:80", "127.0.0.1:8080:81"],
                                   ["[::1]:53:53/udp", "53:5353/udp"]])
def test_one_host_port_published_twice_is_refused(specs):
    with pytest.raises(InvalidInput, match=r"host port \d+/\w+ is published twice"):
        capabilities([parse_publish(s) for s in specs], [])
    with pytest.raises(InvalidInput, match="published twice"):
        parse_publish_list(",".join(specs))


def test_one_port_on_two_protocols_or_two_host_ips_is_no_conflict():
    assert len(capabilities([parse_publish(s) for s in ("53:53/udp", "53:53/tcp")],
                            [])["portMappings"]) == 2
    assert len(parse_publish_list("10.0.0.1:80:80, 10.0.0.2:80:80")) == 2


def test_an_empty_cluster_host_name_is_refused_not_replaced_by_the_hostname():
    from circuit_cluster.cli import host_name

    with pytest.raises(InvalidInput, match="invalid host name ''"):
        host_name("")
    assert host_name(None)


HUGE_NUMBER = "9" * 5000  # past int()'s 4,300 digits: a ValueError of its own, exit 70 before


@pytest.mark.parametrize("parse", [
    lambda: parse_publish(f"{HUGE_NUMBER}:80"),
    lambda: spec.parse_mtu(HUGE_NUMBER),
    lambda: spec.parse_number(HUGE_NUMBER, "--vni", 1, 9),
    lambda: parse_etcd_url(f"etcd://h:{HUGE_NUMBER}")])
def test_a_number_of_thousands_of_digits_is_a_bad_value(parse):
    with pytest.raises(InvalidInput):
        parse()


@pytest.mark.parametrize("mac, kind", [("ff:ff:ff:ff:ff:ff", "broadcast"),
                                       ("01:00:5e:00:00:01", "multicast"),
                                       ("33:33:00:00:00:01", "multicast"),
                                       ("00:00:00:00:00:00", "all zeros")])
def test_a_mac_no_interface_can_take_is_refused_before_any_plugin(mac, kind):
    from circuit_common.validate import check_mac

    with pytest.raises(InvalidInput, match=kind):  # the bridge plugin said "cannot assign"
        check_mac(mac)
    assert check_mac("02:42:ac:11:00:02") == "02:42:ac:11:00:02"


def test_the_hook_refuses_a_network_named_twice(monkeypatch):
    from circuit_hook.cli import wanted_networks

    monkeypatch.delenv("CNI_CONF", raising=False)
    monkeypatch.delenv("CIRCUIT_NETWORK", raising=False)
    state = {"annotations": {"circuit.networks": "n1, n2,n1"}}
    with pytest.raises(InvalidInput, match="network n1 is given twice"):
        wanted_networks(None, state)


def test_hook_install_refuses_a_network_or_a_host_port_given_twice(tmp_path):
    import json

    from circuit_common.cli import Context
    from circuit_common.config import Settings
    from circuit_hook.install import install
    from circuit_net.networks import Networks

    settings = Settings()
    settings.state_dir, settings.cni_cache_dir = str(tmp_path / "state"), str(tmp_path / "cni")
    nets = Networks(Context(settings))
    netconf = {"cniVersion": "1.0.0", "name": "n1", "plugins": [
        {"type": "bridge", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    nets.store.write(nets.network_path("n1"), {"name": "n1", "config": netconf,
                                               "source": "test", "created": "now"})
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    config = {"ociVersion": "1.0.2", "process": {"args": ["sh"]},
              "linux": {"namespaces": [{"type": "network"}]}}
    (bundle / "config.json").write_text(json.dumps(config))
    before = (bundle / "config.json").read_text()
    with pytest.raises(InvalidInput, match="--network n1 is given twice"):
        install(nets, str(bundle), ["n1", "n1"], [], [])
    with pytest.raises(InvalidInput, match="published twice"):  # the hook refused it at start
        install(nets, str(bundle), ["n1"], ["8080:80", "8080:81"], [])
    assert (bundle / "config.json").read_text() == before


def test_a_fifo_given_as_a_file_is_refused_not_waited_on(tmp_path):
    """network create FIFO, --config FIFO, CNI_CONF=FIFO hung in open() for a writer."""
    import os

    from circuit_common.config import read_small_file

    fifo = tmp_path / "conf"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput, match=f"network config {fifo} is not a regular file"):
        read_small_file(str(fifo), "network config")


@pytest.mark.parametrize("plugin", [
    {"type": "bridge", "bridge": 5}, {"type": "macvlan", "master": ["eth0"]}])
def test_an_interface_name_that_is_no_string_is_a_bad_value(plugin):
    """A config file's "bridge": 5 was an internal error (TypeError, exit 70)."""
    conf = {"cniVersion": "1.0.0", "name": "d", "plugins": [plugin]}
    with pytest.raises(InvalidInput, match="invalid interface name"):
        spec.check_usable(conf, {"eth0": False})


@pytest.mark.parametrize("env, annotation, where", [
    ({}, " , ", "annotation circuit.networks ' , ' names no network"),
    ({"CIRCUIT_NETWORK": ","}, None, "CIRCUIT_NETWORK ',' names no network")])
def test_the_hook_refuses_networks_that_name_none(monkeypatch, env, annotation, where):
    """circuit.networks=' , ' attached nothing and exited 0 (the container started offline)."""
    from circuit_hook.cli import wanted_networks

    monkeypatch.delenv("CNI_CONF", raising=False)
    monkeypatch.delenv("CIRCUIT_NETWORK", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(InvalidInput, match=where):
        wanted_networks(None, {"annotations": {"circuit.networks": annotation}})


def test_hook_annotations_that_are_no_object_are_refused_as_such():
    import io

    from circuit_hook.cli import read_state

    with pytest.raises(InvalidInput, match="annotations in the OCI state must map strings"):
        read_state(io.TextIOWrapper(io.BytesIO(b'{"id": "c", "annotations": []}')))
    assert read_state(io.TextIOWrapper(io.BytesIO(b'{"id": "c", "annotations": null}')))
