"""The cluster's pieces without etcd or a kernel: the state URL, the overlay flags and a host's
config, the shared-record write path against a fake etcd, a snapshot's parsing, VTEP MACs."""

import json
import os

import pytest
from test_resync import FakeEtcd

from circuit_cluster import overlay, placement, replica
from circuit_cluster.etcd import prefix_end
from circuit_cluster.sync import Snapshot
from circuit_common.backend import StateBackend, open_backend
from circuit_common.config import load_settings
from circuit_common.errors import Conflict, InvalidInput, UsageError
from circuit_common.store import encode
from circuit_net import spec


def settings(tmp_path, **options):
    return load_settings(options, env={"CIRCUIT_CONFIG": str(tmp_path / "none.toml")})


def backend(tmp_path, **options):
    return open_backend(settings(tmp_path, **options))


def test_state_urls(tmp_path):
    s = backend(tmp_path, state="etcd://10.0.0.1:2379,[fd00::2]:2379/team/a",
                local_state=str(tmp_path))
    assert isinstance(s, replica.ReplicatedStore)
    assert (s.etcd_state.endpoints, s.etcd_state.prefix) == (
        ["10.0.0.1:2379", "[fd00::2]:2379"], "/team/a")
    assert s.root == str(tmp_path)
    assert backend(tmp_path, state="etcd://h:2379").etcd_state.prefix == "/circuit"
    assert backend(tmp_path, state="etcd://h:2379").root == "/var/lib/circuit"
    s = backend(tmp_path, state=f"file://{tmp_path}")
    assert (type(s), s.root) == (StateBackend, str(tmp_path))
    conf = tmp_path / "circuit.toml"
    conf.write_text('state = "etcd://h:1/x"\nlocal_state_dir = "/srv/circuit"\n')
    s = open_backend(load_settings({}, env={"CIRCUIT_CONFIG": str(conf)}))
    assert (s.etcd_state.prefix, s.root) == ("/x", "/srv/circuit")


def test_etcd_tls_and_credentials_come_from_options_environment_and_config(tmp_path):
    s = backend(tmp_path, state="etcds://h:2379/p")
    assert isinstance(s, replica.ReplicatedStore)
    s = s.etcd_state
    assert (s.tls, s.scheme, s.cafile, s.username) == (True, "https", None, None)
    assert backend(tmp_path, state="etcd://h:2379").etcd_state.scheme == "http"
    password_file = tmp_path / "password"
    password_file.write_text("from the file\nsecond line\n")
    conf = tmp_path / "circuit.toml"
    conf.write_text('state = "etcds://h:1"\netcd_cafile = "/conf/ca.pem"\n'
                    'etcd_certfile = "/conf/c.pem"\netcd_keyfile = "/conf/c.key"\n'
                    f'etcd_username = "conf"\netcd_password_file = "{password_file}"\n')
    env = {"CIRCUIT_CONFIG": str(conf)}
    s = open_backend(load_settings({}, env=env)).etcd_state
    assert (s.cafile, s.certfile, s.keyfile, s.username) == ("/conf/ca.pem", "/conf/c.pem",
                                                             "/conf/c.key", "conf")
    assert s.read_password() == "from the file"
    env |= {"CIRCUIT_ETCD_CAFILE": "/env/ca.pem", "CIRCUIT_ETCD_PASSWORD": "from env"}
    s = open_backend(load_settings({}, env=env)).etcd_state
    assert (s.cafile, s.password_file, s.read_password()) == ("/env/ca.pem", None, "from env")
    s = load_settings({"etcd_cafile": "/opt/ca.pem", "etcd_password_file": str(password_file),
                       "etcd_username": "opt"}, env=env)
    s = open_backend(s).etcd_state
    assert (s.cafile, s.username, s.password, s.read_password()) == (
        "/opt/ca.pem", "opt", None, "from the file")


@pytest.mark.parametrize(("options", "message"), [
    ({"etcd_cafile": "/ca.pem"}, "use an etcds:// state URL"),
    ({"state": "etcds://h:1", "etcd_certfile": "/c.pem"}, "go together"),
    ({"state": "etcds://h:1", "etcd_cafile": "ca.pem"}, "must be an absolute path"),
    ({"etcd_username": "u"}, "go together"),
    ({"etcd_password": "hunter2"}, "go together"),
    ({"etcd_username": "u", "etcd_password": "hunter2", "etcd_password_file": "/p"},
     "not both"),
])
def test_etcd_access_that_cannot_work_is_refused_in_one_line(tmp_path, options, message):
    with pytest.raises(InvalidInput, match=message) as refused:
        backend(tmp_path, **({"state": "etcd://h:1"} | options))
    assert "hunter2" not in str(refused.value)


def test_a_password_is_never_printed(tmp_path):
    conf = tmp_path / "circuit.toml"
    conf.write_text('state = "etcd://h:1"\netcd_username = "u"\netcd_password = 12345678\n')
    with pytest.raises(InvalidInput, match="etcd_password in config file") as refused:
        load_settings({}, env={"CIRCUIT_CONFIG": str(conf)})
    assert "12345678" not in str(refused.value)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    s = backend(tmp_path, state="etcd://h:1", etcd_username="u", etcd_password_file=str(empty))
    with pytest.raises(InvalidInput, match="is empty"):
        s.etcd_state.read_password()


@pytest.mark.parametrize(("url", "message"), [
    ("etcd://", "no etcd endpoint"),
    ("etcd://host", "bad etcd endpoint 'host'"),
    ("etcd://h:99999", "bad etcd endpoint 'h:99999'"),
    ("etcd://h:1/a/../b", "bad etcd key prefix"),
    ("etcd://h;rm:1", "bad etcd endpoint"),
    ("etcds://", "no etcd endpoint in 'etcds://': use etcds://HOST:PORT"),
    ("consul://h:1", "unknown state URL 'consul://h:1': no installed tool serves consul://; "
                     r"use a directory, file://DIR or etcd://HOST:PORT\[,HOST:PORT\.\.\.\]"),
    ("file://", "file:// needs a directory"),
])
def test_bad_state_urls_are_one_line(tmp_path, url, message):
    with pytest.raises(InvalidInput, match=message):
        backend(tmp_path, state=url)


def flags(**kw):
    return spec.Flags("blue", kw.pop("subnets", ["10.200.0.0/16"]), overlay="vxlan", **kw)


def test_overlay_flags_and_a_hosts_config():
    requested = spec.requested_overlay(flags())
    assert requested == {"type": "vxlan", "vni": None, "subnet": "10.200.0.0/16",
                         "hostSubnetSize": 24, "masquerade": True}
    with_vnis = [{"overlay": {"vni": 1}}, {"overlay": {"vni": 2}}, {"name": "single-host"}]
    assert placement.place_overlay(requested, with_vnis) == {**requested, "vni": 3}
    assert placement.place_overlay(spec.requested_overlay(
        flags(vni="7", host_subnet_size="26")), [])["hostSubnetSize"] == 26
    with pytest.raises(Conflict, match="--vni 7 is another cluster network's"):
        placement.place_overlay(spec.requested_overlay(flags(vni="7")),
                                [{"overlay": {"vni": 7}}])
    netconf = {"cniVersion": "1.0.0", "name": "blue", "plugins": [
        {"type": "bridge", "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.200.0.0/16"}]]}}]}
    local = placement.host_config(netconf, {"subnet": "10.200.3.0/24", "mtu": 1450},
                                  "/srv/ipam")
    assert local["plugins"][0]["ipam"] == {
        "type": "host-local", "ranges": [[{"subnet": "10.200.3.0/24", "gateway": "10.200.3.1"}]],
        "dataDir": "/srv/ipam"}
    assert "dataDir" not in placement.host_config(
        local, {"subnet": "10.200.3.0/24", "mtu": 1450}, None)["plugins"][0]["ipam"]
    assert local["plugins"][0]["mtu"] == 1450
    assert netconf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.200.0.0/16"}]]


@pytest.mark.parametrize(("kw", "error", "message"), [
    ({"overlay": "geneve"}, InvalidInput, "unknown --overlay 'geneve'"),
    ({"driver": "ptp"}, UsageError, "--overlay vxlan is for --driver bridge"),
    ({"subnets": ["fd00::/48"]}, InvalidInput, "one IPv4 --subnet"),
    ({"subnets": ["10.1.0.0/16", "10.2.0.0/16"]}, InvalidInput, "one IPv4 --subnet"),
    ({"host_subnet_size": "16"}, InvalidInput, "must be longer than the subnet's /16"),
    ({"vni": "16777216"}, InvalidInput, "bad --vni"),
    ({"gateway": "10.200.0.1"}, UsageError, "--gateway is chosen per host"),
])
def test_bad_overlay_flags(kw, error, message):
    with pytest.raises(error, match=message):
        spec.Flags("blue", kw.pop("subnets", ["10.200.0.0/16"]), **{"overlay": "vxlan", **kw})


def test_vni_without_overlay_is_a_usage_error():
    with pytest.raises(UsageError, match="are for --overlay vxlan"):
        spec.Flags("blue", ["10.200.0.0/16"], vni="3")


@pytest.fixture
def store(tmp_path):
    s = replica.ReplicatedStore(settings(tmp_path, state="etcd://h:1",
                                         local_state=str(tmp_path / "state")))
    s.__dict__["etcd"] = FakeEtcd()
    return s


def test_shared_records_go_to_etcd_first_local_ones_never(store):
    path = store.path("networks", "blue.json")
    store.write(path, {"name": "blue"})
    assert store.etcd.kv == {b"/circuit/records/networks/blue.json": encode({"name": "blue"})}
    store.write(store.path("attachments", "blue", "c@eth0.json"), {"x": 1})
    assert len(store.etcd.kv) == 1
    assert store.remove(path) and store.etcd.kv == {}


def test_a_write_over_what_another_host_changed_is_refused_and_changes_nothing(store):
    path = store.path("qos", "blue.json")
    store.write(path, {"network": None, "attachments": {}})
    store.etcd.kv[b"/circuit/records/qos/blue.json"] = b"changed elsewhere"
    with pytest.raises(Conflict, match=r"qos/blue\.json was changed on another host"):
        store.write(path, {"network": {"rate": 1}, "attachments": {}})
    with pytest.raises(Conflict):
        store.remove(path)
    assert store.read(path) == {"schema": 1, "network": None, "attachments": {}}


def network(name: str, plugin: str = "bridge") -> dict:
    return {"name": name, "source": "test", "created": "now",
            "config": {"cniVersion": "1.0.0", "name": name, "plugins": [{"type": plugin}]}}


def test_refresh_mirrors_etcd_and_never_writes_outside_the_shared_directories(store, tmp_path):
    store.write(store.path("networks", "old.json"), network("old"))
    marker = {"extension": "qos", "module": "circuit_qos.extension"}
    changed = store.refresh({"networks/new.json": encode(network("new")),
                             "extensions/new/qos.json": encode(marker),
                             "networks/../../escape.json": b"{}", "attachments/x.json": b"{}",
                             "networks/.hidden.json": b"{}"})
    assert changed == {"networks/new.json": None, "extensions/new/qos.json": None,
                       "networks/old.json": encode(network("old"))}
    assert sorted(store.local_records()) == ["extensions/new/qos.json", "networks/new.json"]
    assert not (tmp_path / "escape.json").exists()
    assert store.rejected == []


@pytest.mark.parametrize(("name", "body", "message"), [
    ("networks/evil.json", encode(network("evil", "../../bin/sh")), "plugin type"),
    ("networks/evil.json", encode(network("other")), "not the one its file is for"),
    ("networks/evil.json", b"<html>hello</html>", "not valid JSON"),
    ("networks/evil.json", b'{"name": "evil"}', "has no schema 1"),
    ("qos/evil.json", encode({"network": {"rate": "fast"}, "attachments": {}}), "policy"),
    ("services/evil.json", encode({"name": "evil", "addr": "10.0.0.1", "port": 0}), "port 0"),
    ("extensions/evil/qos.json", encode({"extension": "lb"}), "another extension"),
])
def test_a_record_from_etcd_is_checked_as_a_local_one_and_never_mirrored(store, name, body,
                                                                         message):
    """Every kind of shared record, with its own tool's check: one that fails is StateCorrupt
    naming its etcd key; it is never written here, the others are, and the host's own copy
    of it stays as it was."""
    from circuit_common.errors import StateCorrupt

    store.write(store.path("networks", "evil.json"), network("evil"))  # this host's copy
    kept = store.local_records()["networks/evil.json"]
    etcd = {name: body, "networks/good.json": encode(network("good"))}
    changed = store.refresh({"networks/evil.json": kept, **etcd})
    assert "networks/good.json" in changed and name not in changed
    assert store.local_records().get("networks/evil.json") == kept
    assert name == "networks/evil.json" or name not in store.local_records()
    assert len(store.rejected) == 1 and message in store.rejected[0]
    assert f"state record /circuit/records/{name} in etcd" in store.rejected[0]
    with pytest.raises(StateCorrupt, match=f"/circuit/records/{name} in etcd"):
        store.refuse_rejected()
    store.etcd.kv[b"/circuit/records/" + name.encode()] = body
    if name.startswith("networks/"):
        os.unlink(store.path("networks", "evil.json"))  # as on a host that never saw it
        with pytest.raises(StateCorrupt, match=f"/circuit/records/{name} in etcd"):
            store.fetch(store.path(*name.split("/")))
        assert "networks/evil.json" not in store.local_records()


def test_request_bytes_in_a_qos_record_from_etcd_are_mirrored_but_never_read(store):
    """A qos record in etcd carrying a "plan" (request bytes, tagged as this host tags its
    own, for 1 Mbit/s where the policy says 5) passes as the policy it also holds: the plan is
    not the policy's, is never read from the record, and never reaches this host's plan cache,
    so nothing of it can be sent (the hook and restore then encode from the policy)."""
    from circuit_qos import plan, policy

    wanted = {"rate": 5_000_000, "ceil": 5_000_000}
    planted = plan.build({"rate": 1_000_000, "ceil": 1_000_000}) | {
        "policy": wanted, "tag": plan.kept_at(store, "blue").tag()}
    store.refresh({"qos/blue.json": encode({"network": wanted, "attachments": {},
                                            "plan": planted})})
    assert store.rejected == [] and "qos/blue.json" in store.local_records()
    assert policy.load(store, "blue") == {"network": wanted, "attachments": {}}
    assert plan.ready(store, "blue", wanted) is None
    assert not os.path.exists(store.path("cache", "qos-plans", "blue.json"))


def test_a_snapshot_sorts_keys_by_kind():
    prefix = b"/circuit/"

    class KV:
        def __init__(self, key, value):
            self.key, self.value = prefix + key.encode(), value

    snap = Snapshot(42, [
        KV("records/networks/blue.json", b"{}"),
        KV("hosts/h0", json.dumps({"name": "h0", "address": "10.99.0.1"}).encode()),
        KV("alive/h0", b"10.99.0.1"),
        KV("subnets/blue/10.200.0.0-24", json.dumps({"subnet": "10.200.0.0/24"}).encode()),
        KV("attachments/h0/blue/c@eth0", b'{"ips": []}'),
    ], prefix)
    assert snap.revision == 42 and list(snap.records) == ["networks/blue.json"]
    assert snap.alive == {"h0": "10.99.0.1"} and snap.hosts["h0"]["address"] == "10.99.0.1"
    assert snap.subnets == [("blue", b'{"subnet": "10.200.0.0/24"}')]
    assert snap.attachments == {"h0": {"blue/c@eth0": b'{"ips": []}'}}


def test_vteps_and_ranges():
    assert overlay.vtep("10.200.3.0/24") == "10.200.3.0"
    assert overlay.vtep_mac("10.200.3.0") == "0a:58:0a:c8:03:00"
    assert overlay.device_name(16777215) == "cvx16777215"
    assert prefix_end(b"/circuit/") == b"/circuit0"


def test_a_failed_resync_is_done_with_the_next(store, monkeypatch):
    calls = []

    def failing(before):
        calls.append(before)
        raise Conflict("the kernel refused")

    monkeypatch.setattr(store, "_resync", failing)
    with pytest.raises(Conflict):
        store.resync({"services/web.json": b"old web"})
    monkeypatch.setattr(store, "_resync", lambda before: calls.append(before) or ["lb"])
    assert store.resync({"qos/blue.json": None, "services/web.json": b"newer"}) == ["lb"]
    assert calls[-1] == {"qos/blue.json": None, "services/web.json": b"old web"}
    assert store.resync({}) == ["lb"] and calls[-1] == {}  # nothing pending any more


def test_a_resync_of_some_kinds_leaves_the_others_for_later(store, monkeypatch):
    calls = []
    monkeypatch.setattr(store, "_resync", lambda before: calls.append(before) or [])
    store.resync({"qos/blue.json": b"old policy", "services/web.json": None},
                 kinds=("services",))  # as under lock_all(): QoS takes network locks
    assert calls[-1] == {"services/web.json": None}
    store.resync({})
    assert calls[-1] == {"qos/blue.json": b"old policy"}
    store.resync({})
    assert calls[-1] == {}


def test_the_overlays_requests_are_the_bytes_iproute_sends():
    """The VXLAN device, its address, and a peer's route, neighbour and FDB entry, added and
    removed: circuit's messages (sent through its netlink core) are what pyroute2's IPRoute
    encodes for the same calls (IPBatch: its request compiler, into a buffer)."""
    import struct

    from pyroute2 import IPBatch
    from pyroute2.netlink.rtnl import RTM_DELNEIGH, RTM_DELROUTE, RTM_NEWNEIGH, RTM_NEWROUTE

    from circuit_netlink import CREATE, NETLINK_ROUTE, NLM_F_ACK, REPLACE, Batch

    def normalized(message: bytes) -> bytes:  # as test_tc: no sequence, port, NLM_F_ACK
        (flags,) = struct.unpack_from("=H", message, 6)
        return message[:6] + struct.pack("=H", flags & ~NLM_F_ACK) + bytes(8) + message[16:]

    mac, peer_mac, index = "0a:58:0a:c8:03:00", "0a:58:0a:c8:04:00", 4
    bridge, inet = overlay.AF_BRIDGE, 2
    with Batch(NETLINK_ROUTE) as batch:  # queued, never sent
        batch.add(overlay._vxlan_device("cvx7", 7, "10.99.0.1", mac, 1450), CREATE)
        batch.add(overlay._address(index, "10.200.3.0"), REPLACE)
        batch.add(overlay._route(RTM_NEWROUTE, "10.200.4.0/24", "10.200.4.0", index,
                                 overlay.RTPROT_STATIC, overlay.RTN_UNICAST,
                                 overlay.RTNH_F_ONLINK), REPLACE)
        batch.add(overlay._route(RTM_DELROUTE, "10.200.4.0/24", oif=index))
        batch.add(overlay._neighbour(RTM_NEWNEIGH, inet, index, overlay.NUD_PERMANENT,
                                     dst="10.200.4.0", lladdr=peer_mac), REPLACE)
        batch.add(overlay._neighbour(RTM_DELNEIGH, inet, index, overlay.NUD_PERMANENT,
                                     dst="10.200.4.0"))
        batch.add(overlay._neighbour(RTM_NEWNEIGH, bridge, index, overlay.NUD_PERMANENT,
                                     overlay.NTF_SELF, lladdr=peer_mac, dst="10.99.0.2"), REPLACE)
        batch.add(overlay._neighbour(RTM_DELNEIGH, bridge, index,
                                     overlay.NUD_PERMANENT | overlay.NUD_NOARP, overlay.NTF_SELF,
                                     lladdr=peer_mac, dst="10.99.0.2"))
        ours = [normalized(data) for _, data, _ in batch.pending]
    reference = IPBatch()
    reference.link("add", ifname="cvx7", kind="vxlan", vxlan_id=7, vxlan_local="10.99.0.1",
                   vxlan_port=overlay.VXLAN_PORT, vxlan_learning=0, address=mac, mtu=1450)
    reference.addr("replace", index=index, address="10.200.3.0", prefixlen=32)
    reference.route("replace", dst="10.200.4.0/24", gateway="10.200.4.0", oif=index,
                    flags=overlay.RTNH_F_ONLINK, proto=overlay.RTPROT_STATIC)
    reference.route("del", dst="10.200.4.0/24", oif=index)
    reference.neigh("replace", dst="10.200.4.0", lladdr=peer_mac, ifindex=index,
                    state=overlay.NUD_PERMANENT)
    reference.neigh("del", dst="10.200.4.0", ifindex=index)
    reference.fdb("replace", ifindex=index, lladdr=peer_mac, dst="10.99.0.2",
                  state=overlay.NUD_PERMANENT, flags=overlay.NTF_SELF)
    reference.fdb("del", ifindex=index, lladdr=peer_mac, dst="10.99.0.2", flags=overlay.NTF_SELF)
    data, theirs = bytes(reference.batch), []
    while data:
        (length,) = struct.unpack_from("=I", data)
        theirs.append(normalized(data[:length]))
        data = data[(length + 3) & ~3:]
    assert ours == theirs
