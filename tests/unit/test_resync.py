"""In a cluster, the lb and qos extensions' resync(ctx, before) bring this host's kernel to the
shared records another host changed, deletions included, and write nothing to the store (every
shared write is an etcd transaction). etcd and the kernel are recording fakes (no root)."""

import copy
import json
from collections import namedtuple

import pytest
from test_lb_consistency import Kernel as RecordingKernel

from circuit_cluster import replica
from circuit_common import cli, extensions
from circuit_common.config import load_settings
from circuit_common.errors import Conflict
from circuit_common.store import encode
from circuit_lb import extension as lb
from circuit_lb import ipvs, table
from circuit_lb.address import Endpoint
from circuit_lb.services import Services
from circuit_qos import devices, plan, policy, tc
from circuit_qos import extension as qos

KV = namedtuple("KV", "key value")


class FakeEtcd:
    """Keys in a dict, the store lock's create and lease calls; what was written."""

    def __init__(self):
        self.kv: dict[bytes, bytes] = {}
        self.writes: list[bytes] = []  # keys of shared records written (swap)
        self.locked = 0

    def key(self, *parts):
        return "/".join(("/circuit", *parts)).encode()

    def record(self, name: str) -> bytes:
        return self.key(replica.RECORDS, name)

    def swap(self, key, expected, value):
        self.writes.append(key)
        if self.kv.get(key) != expected:
            return False
        if value is None:
            self.kv.pop(key, None)
        else:
            self.kv[key] = value
        return True

    def range(self, prefix):
        return 1, [KV(k, v) for k, v in sorted(self.kv.items()) if k.startswith(prefix)]

    def get(self, key):
        return KV(key, self.kv[key]) if key in self.kv else None

    def create(self, key, value, lease=0):
        if key in self.kv:
            return False
        self.kv[key] = value
        self.locked += 1
        return True

    def grant(self, ttl):
        return 7

    def keepalive(self, lease):
        return 15

    def revoke(self, lease):
        self.kv.pop(self.key("locks", "store"), None)


@pytest.fixture
def store(tmp_path):
    settings = load_settings({"state": "etcd://h:1", "local_state": str(tmp_path / "state")},
                             env={"CIRCUIT_CONFIG": str(tmp_path / "none.toml")})
    s = replica.ReplicatedStore(settings)
    s.__dict__["etcd"] = FakeEtcd()
    return s


def another_host(store, **records) -> list[str]:
    """Records as another host left them in etcd (name: record, None: deleted), then this
    host's pass: mirror and resync; the extensions that resynced."""
    for name, record in records.items():
        key = store.etcd.record(name.replace("__", "/") + ".json")
        if record is None:
            store.etcd.kv.pop(key, None)
        else:
            store.etcd.kv[key] = encode(record)
    with store.local_lock_all():
        before = store.refresh()
    return store.resync(before)


# -- lb ---------------------------------------------------------------------------------------

class Kernel(RecordingKernel):
    """A kernel that keeps IPVS services as they are made and removed (read back through
    /proc/net/ip_vs), besides what the recording one keeps."""

    def __init__(self, monkeypatch):
        super().__init__(monkeypatch)
        self.services: dict[tuple, dict] = {}
        monkeypatch.setattr(ipvs, "read_proc", lambda: copy.deepcopy(self.services))

    @staticmethod
    def _key(record):
        return record["protocol"], Endpoint(record["addr"], record["port"])

    def add_service(self, record):
        self.services[self._key(record)] = {"scheduler": record["scheduler"], "targets": {}}

    def set_service(self, record):
        self.services[self._key(record)]["scheduler"] = record["scheduler"]

    def del_service(self, record):
        self.services.pop(self._key(record), None)

    def set_target(self, record, target, exists):
        self.services[self._key(record)]["targets"][(target["addr"], target["port"])] = (
            target["forward"], target["weight"])

    def del_target(self, record, target):
        self.services[self._key(record)]["targets"].pop((target["addr"], target["port"]), None)

    def commit(self):
        pass

    def table(self) -> list[dict]:
        """The last nft transaction (each resync rebuilds table circuit_lb in one)."""
        return self.transactions[-1]


@pytest.fixture
def kernel(monkeypatch):
    return Kernel(monkeypatch)


def service(name, addr="10.250.0.10", port=80, backend="ipvs", targets=(), vip_added=True):
    return {"name": name, "addr": addr, "port": port, "protocol": "tcp", "scheduler": "rr",
            "persistent": None, "backend": backend, "vip_added": vip_added,
            "created": "2024-01-01T00:00:00Z",
            "targets": [{"addr": ip, "port": 80, "weight": 1, "forward": "masq"}
                        for ip in targets]}


def rebuilt(*records) -> list[dict]:
    return json.loads(json.dumps(table.rebuild(table.build(list(records)))))  # as nft reads it


def test_a_service_deleted_elsewhere_leaves_no_ipvs_service_vip_or_table(kernel, store):
    web = service("web", targets=["10.200.1.2", "10.200.2.2"])
    assert another_host(store, services__web=web) == ["lb"]
    assert kernel.services == {("tcp", Endpoint("10.250.0.10", 80)): {
        "scheduler": "rr", "targets": {("10.200.1.2", 80): ("masq", 1),
                                       ("10.200.2.2", 80): ("masq", 1)}}}
    assert kernel.local == {"10.250.0.10"} and kernel.table() == rebuilt(web)

    assert another_host(store, services__web=None) == ["lb"]
    assert kernel.services == {} and kernel.local == set()
    assert kernel.table() == [{"add": {"table": {"family": "inet", "name": "circuit_lb"}}},
                              {"delete": {"table": {"family": "inet", "name": "circuit_lb"}}}]
    assert store.etcd.writes == []  # resync wrote nothing: no etcd transaction
    assert store.etcd.locked == 2  # under the cluster's store lock, as every lb command


def test_a_target_removed_elsewhere_goes_from_ipvs(kernel, store):
    another_host(store, services__web=service("web", targets=["10.200.1.2", "10.200.2.2"]))
    another_host(store, services__web=service("web", targets=["10.200.1.2"]))
    assert kernel.services[("tcp", Endpoint("10.250.0.10", 80))]["targets"] == {
        ("10.200.1.2", 80): ("masq", 1)}
    assert store.etcd.writes == []


def test_a_vip_stays_while_a_service_still_has_it(kernel, store):
    web, tls = service("web", backend="nftables"), service("tls", port=443, backend="nftables")
    another_host(store, services__web=web, services__tls=tls)
    another_host(store, services__web=None)
    assert kernel.local == {"10.250.0.10"} and kernel.table() == rebuilt(tls)
    another_host(store, services__tls=None)
    assert kernel.local == set()


def test_a_vip_circuit_did_not_add_stays(kernel, store):
    kernel.local.add("10.250.0.10")  # the host's own address
    another_host(store, services__web=service("web", vip_added=False))
    another_host(store, services__web=None)
    assert kernel.local == {"10.250.0.10"}


def test_a_service_made_again_elsewhere_with_another_backend_and_vip(kernel, store):
    another_host(store, services__web=service("web"))
    moved = service("web", addr="10.250.0.11", backend="nftables", targets=["10.200.1.2"])
    another_host(store, services__web=moved)  # deleted and made again between two passes
    assert kernel.services == {} and kernel.local == {"10.250.0.11"}
    assert kernel.table() == rebuilt(moved)


def test_an_lb_command_here_first_removes_what_another_host_deleted(kernel, store):
    """lock_all mirrors etcd and resyncs, re-entering the lock, before the command's change."""
    another_host(store, services__web=service("web", backend="nftables"))
    store.etcd.kv.pop(store.etcd.record("services/web.json"))
    Services(cli.Context(store.settings, store=store)).create(
        "api", Endpoint("10.250.0.20", 80), "rr", "tcp", None, "nftables")
    assert kernel.local == {"10.250.0.20"}
    assert [name for name, _ in store.local_records().items()] == ["services/api.json"]
    assert store.etcd.writes == [store.etcd.record("services/api.json")]  # the create's own


def test_a_malformed_record_from_before_is_passed_over(kernel, store):
    ctx = cli.Context(store.settings, store=store)
    lb.resync(ctx, {"services/web.json": {"name": "web", "addr": "nonsense"},
                    "services/x.json": ["not", "a", "record"]})
    assert kernel.table() == rebuilt() and store.etcd.writes == []


# -- qos --------------------------------------------------------------------------------------

RATE = {"rate": 5_000_000, "ceil": 5_000_000}


def attachment(cid, pid=1):
    return extensions.Attachment("blue", cid, "eth0", pid, 0,
                                 {"interfaces": [{"name": f"veth-{cid}"}]})


class Shaper:
    """What qos asked: each apply_all's (attachments' ids, old, new)."""

    def __init__(self, monkeypatch, attachments, foreign=()):
        self.applied = []
        self.locks = []
        monkeypatch.setattr(extensions.Attachment, "running", lambda a: a.pid != 0)
        monkeypatch.setattr(devices, "host_veth", lambda names: names[0])
        monkeypatch.setattr(policy, "select", lambda nets, name: attachments.get(name, []))
        self.real_links = tc.Links  # what records a plan for this host's cache
        monkeypatch.setattr(tc, "Links", self.links)
        monkeypatch.setattr(tc, "foreign_shaping", lambda links, veths: {
            v: "a tbf root qdisc" for v in veths if v in foreign})
        monkeypatch.setattr(policy, "apply_all", self.apply_all)

    def links(self, batch=None):
        return self if batch is None else self.real_links(batch)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def apply_all(self, links, chosen, old, new):
        self.applied.append(([a.container_id for a in chosen], policy.effective(
            old, chosen[0]), policy.effective(new, chosen[0])))


def qos_record(network=None, **own):
    return {"network": network, "attachments": {f"{cid}@eth0": p for cid, p in own.items()}}


def test_a_policy_reset_elsewhere_unshapes_this_hosts_attachments(store, monkeypatch):
    shaper = Shaper(monkeypatch, {"blue": [attachment("a"), attachment("b"),
                                           attachment("gone", pid=0)]})
    assert another_host(store, qos__blue=qos_record(RATE)) == ["qos"]
    assert shaper.applied == [(["a", "b"], None, RATE)]
    assert plan.ready(store, "blue", RATE) is not None  # kept here for the next attach
    assert another_host(store, qos__blue=None) == ["qos"]
    assert shaper.applied[-1] == (["a", "b"], RATE, None)
    assert not plan.kept_at(store, "blue").load()
    assert store.etcd.writes == [] and store.etcd.locked == 0  # network locks only


def test_a_policy_narrowed_or_an_own_policy_dropped_elsewhere(store, monkeypatch):
    shaper = Shaper(monkeypatch, {"blue": [attachment("a"), attachment("b")]})
    delay = {"delay": 50_000}
    another_host(store, qos__blue=qos_record({**RATE, **delay}))
    another_host(store, qos__blue=qos_record(delay))
    assert shaper.applied[-1] == (["a", "b"], {**RATE, **delay}, delay)
    another_host(store, qos__blue=qos_record(None, a=RATE))  # only a's own policy
    assert shaper.applied[-1] == (["a", "b"], delay, RATE)  # b: unshaped from delay
    another_host(store, qos__blue=qos_record(None))
    assert shaper.applied[-1] == (["a"], RATE, None)  # b was unshaped already: left alone
    assert store.etcd.writes == []


def test_an_attachment_another_tool_shapes_is_left_to_it_and_named(store, monkeypatch):
    shaper = Shaper(monkeypatch, {"blue": [attachment("a"), attachment("b")]},
                    foreign={"veth-b"})
    with pytest.raises(Conflict, match="interface veth-b is shaped by another tool"):
        another_host(store, qos__blue=qos_record(RATE))
    assert shaper.applied == [(["a"], None, RATE)]


def test_one_failing_network_does_not_stop_the_others(store, monkeypatch):
    shaper = Shaper(monkeypatch, {"blue": [attachment("a")], "red": [attachment("r")]})
    store.write_bytes(store.path("qos", "blue.json"), b"not json")  # this host's mirror broke
    ctx = cli.Context(store.settings, store=store)
    store.write_bytes(store.path("qos", "red.json"), encode(qos_record(RATE)))
    with pytest.raises(Exception, match="not valid JSON"):
        qos.resync(ctx, {"qos/blue.json": None, "qos/red.json": None,
                         "qos/../escape.json": None, "services/web.json": None})
    assert shaper.applied == [(["r"], None, RATE)]


def test_restore_writes_no_qos_record_that_is_up_to_date(store, monkeypatch):
    """In a cluster each write of a shared record is an etcd transaction: `circuit restore`
    brings older records up to date, and leaves current ones alone."""
    policy.save(store, "blue", {"network": {"rate": 5_000_000, "ceil": 5_000_000},
                                "attachments": {}})
    store.etcd.writes.clear()
    record = policy.load(store, "blue")
    policy.save(store, "blue", record, if_changed=True)
    assert store.etcd.writes == []
    policy.save(store, "blue", {**record, "network": {"rate": 6_000_000, "ceil": 6_000_000}},
                if_changed=True)
    assert store.etcd.writes == [store.etcd.record("qos/blue.json")]
