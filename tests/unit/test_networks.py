"""The attachment lifecycle's locking, with plugins that run nothing (FakeExec): the ADD runs
without the network's lock, and while it does, nothing else may act on that attachment."""

import os
import threading

import pytest
from test_cni import FakeExec, failure

from circuit_common.cli import Context
from circuit_common.config import Settings
from circuit_common.errors import (
    Conflict,
    EnvironmentFault,
    NotFound,
    PluginError,
    StateCorrupt,
)
from circuit_common.proc import process
from circuit_net import attach
from circuit_net.networks import Networks
from circuit_net.target import Target

RESULT = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0",
                                                 "sandbox": f"/proc/{os.getpid()}/ns/net"}],
          "ips": [{"address": "10.1.0.2/24", "interface": 0}]}
NETWORK = {"cniVersion": "1.1.0", "name": "n",
           "plugins": [{"type": "bridge", "ipam": {"type": "host-local",
                                                   "subnet": "10.1.0.0/24"}}]}


class HeldExec(FakeExec):
    """A FakeExec whose ADD waits until the test lets it go."""

    def __init__(self, **answers):
        super().__init__(**answers)
        self.adding, self.go = threading.Event(), threading.Event()

    def run(self, path, stdin, env, timeout, started=None):
        if env["CNI_COMMAND"] == "ADD":
            self.adding.set()
            assert self.go.wait(10)
        return super().run(path, stdin, env, timeout, started)


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """Networks over a temp store with network n, plugins that run nothing, and this test's
    own process standing in for a container in a netns of its own."""
    monkeypatch.setattr(attach, "check_connectable", lambda target, host_netns=False: None)
    monkeypatch.setattr(attach, "interfaces", lambda pid: set())
    settings = Settings()
    settings.state_dir, settings.cni_cache_dir = str(tmp_path / "state"), str(tmp_path / "cni")
    nets = Networks(Context(settings))
    nets.plugins.executor = HeldExec(bridge_ADD=RESULT)
    nets.store.write(nets.network_path("n"), {"name": "n", "config": NETWORK,
                                              "source": "test", "created": "now"})
    return nets


def me() -> Target:
    return Target("c1", "c1", process(os.getpid()))


def test_while_an_add_runs_unlocked_nothing_else_acts_on_that_attachment(nets):
    connected = []
    adding = threading.Thread(target=lambda: connected.append(nets.connect("n", me())))
    adding.start()
    try:
        assert nets.plugins.executor.adding.wait(10)
        with pytest.raises(Conflict, match=r"circuit \(PID \d+\) is connecting container c1"):
            nets.connect("n", me())
        with pytest.raises(Conflict, match=r"circuit \(PID \d+\) is attaching container c1"):
            nets.disconnect("n", me())
        with pytest.raises(Conflict, match="is attaching"):
            nets.delete("n", force=True)
        assert list(nets.gc()) == []  # neither repaired nor collected
        gc = [call.conf for call in nets.plugins.executor.calls if call.command == "GC"]
        assert gc[-1]["cni.dev/valid-attachments"] == [{"containerID": "c1", "ifname": "eth0"}]
    finally:
        nets.plugins.executor.go.set()
        adding.join()
    assert connected and connected[0]["result"] == RESULT
    assert [a["containerId"] for a in nets.attachments("n").records] == ["c1"]
    assert nets.journal.listing("n").records == []


def test_a_second_network_at_the_same_time_gets_the_next_ifname(nets):
    nets.store.write(nets.network_path("m"), {"name": "m", "config": {**NETWORK, "name": "m"},
                                              "source": "test", "created": "now"})
    adding = threading.Thread(target=lambda: nets.connect("n", me()))
    adding.start()
    try:
        assert nets.plugins.executor.adding.wait(10)
        nets.plugins.executor.go.set()
    finally:
        adding.join()
    assert nets.connect("m", me())["ifName"] == "eth1"


def test_a_corrupt_intent_is_reported_not_skipped(nets):
    path = nets.store.path("intents", "n", "c1@eth0.json")
    nets.store.write(path, {"op": "add"})
    with pytest.raises(StateCorrupt, match=r"c1@eth0\.json"):
        list(nets.gc())
    with pytest.raises(StateCorrupt, match=r"c1@eth0\.json"):
        nets.connect("n", me())


def test_an_intent_whose_owner_died_is_undone_by_gc(nets):
    nets.plugins.executor.go.set()
    dead = {"pid": 1 << 22, "start_time": 1}
    attachment = {"kind": "cniCacheV1", "containerId": "c9", "ifName": "eth0",
                  "networkName": "n", "netns": "", "cniArgs": [], "capabilityArgs": {},
                  "config": "", "result": None,
                  "circuit": {"pid": 1 << 22, "start_time": 1, "target": "c9", "created": "x"}}
    nets.store.write(nets.store.path("intents", "n", "c9@eth0.json"),
                     {"op": "add", "owner": dead, "attachment": attachment})
    assert [a["containerId"] for _, a in nets.gc()] == ["c9"]
    assert ("bridge", "DEL") in nets.plugins.executor.sequence()
    assert nets.journal.listing("n").records == []


def dead_attachment(cid: str, result=None) -> dict:
    """An attachment record (or, without result, an intent's) of a process that is gone."""
    return {"kind": "cniCacheV1", "containerId": cid, "ifName": "eth0", "networkName": "n",
            "netns": "", "cniArgs": [], "capabilityArgs": {}, "config": "", "result": result,
            "circuit": {"pid": 1 << 22, "start_time": 1, "target": cid, "created": "x"}}


def test_a_repair_whose_del_fails_keeps_its_intent_as_found_and_gc_says_so(nets):
    nets.plugins.executor.go.set()
    nets.plugins.executor.answers[("bridge", "DEL")] = failure("CHAIN_DEL busy")
    intent = {"op": "add", "owner": {"pid": 1 << 22, "start_time": 1},
              "attachment": dead_attachment("c9")}
    path = nets.store.path("intents", "n", "c9@eth0.json")
    nets.store.write(path, intent)
    with pytest.raises(PluginError, match=r"^could not release c9 eth0 from network n: plugin "
                       r"bridge failed during DEL: CHAIN_DEL busy .*the next gc tries again$"):
        list(nets.gc())
    assert nets.store.read(path) == {**intent, "schema": 1}
    with pytest.raises(PluginError, match="could not release c9"):
        nets.delete("n")  # a network is never deleted under an attach left half undone
    del nets.plugins.executor.answers[("bridge", "DEL")]
    assert [a["containerId"] for _, a in nets.gc()] == ["c9"]
    assert nets.journal.listing("n").records == []


def test_gc_keeps_the_record_of_an_attachment_whose_del_failed(nets):
    nets.plugins.executor.go.set()
    nets.plugins.executor.answers[("bridge", "DEL")] = failure("timed out")
    record = dead_attachment("c8", RESULT)
    nets.store.write(nets.record_path(record), record)
    with pytest.raises(PluginError, match="could not release c8 eth0 from network n"):
        list(nets.gc())
    assert [a["containerId"] for a in nets.attachments("n").records] == ["c8"]
    del nets.plugins.executor.answers[("bridge", "DEL")]
    assert [a["containerId"] for _, a in nets.gc()] == ["c8"]
    assert nets.attachments("n").records == [] and nets.journal.listing("n").records == []


def test_delete_leaves_no_lock_file_listing_cache_or_host_local_dir(nets, tmp_path):
    """Nothing of a deleted network stays (issues 26, 27): host-local's dir under its dataDir
    (a file host-local never writes keeps it), its lock file, its listing cache; a name that
    was never created gets no lock file at all."""
    data_dir = tmp_path / "cni" / "networks"
    config = {**NETWORK, "name": "m", "plugins": [{"type": "bridge", "ipam": {
        "type": "host-local", "subnet": "10.1.0.0/24", "dataDir": str(data_dir)}}]}
    for name in ("m", "k"):
        nets.store.write(nets.network_path(name), {"name": name, "config": {**config,
                         "name": name}, "source": "test", "created": "now"})
        (data_dir / name).mkdir(parents=True)
        for leftover in ("lock", "last_reserved_ip.0", "10.1.0.7", "fd00__7"):
            (data_dir / name / leftover).write_text("x")
    (data_dir / "k" / "mine.txt").write_text("not host-local's")
    nets.attachments_listed("m")
    assert os.path.exists(nets.listing_cache("m"))
    nets.delete("m")
    nets.delete("k")
    assert not (data_dir / "m").exists() and (data_dir / "k" / "mine.txt").exists()
    assert not os.path.exists(nets.listing_cache("m"))
    with pytest.raises(NotFound):
        nets.delete("nonexistent")
    with pytest.raises(NotFound):
        nets.disconnect("never", me())
    assert sorted(os.listdir(nets.store.path("locks"))) == ["store.lock"]


def test_gc_removes_the_listing_cache_a_killed_delete_left(nets):
    path = nets.store.path("cache", "attachments", "gone.json")
    nets.store.write(path, {"entries": {}})
    nets.attachments_listed("n")
    list(nets.gc())
    assert not os.path.exists(path) and os.path.exists(nets.listing_cache("n"))


def test_a_malformed_intent_stops_delete_until_force_removes_it(nets):
    nets.store.write(nets.store.path("intents", "n", "c1@eth0.json"), {"op": "add"})
    with pytest.raises(StateCorrupt, match=r"c1@eth0\.json.*or delete the network with --force"):
        nets.delete("n")
    nets.delete("n", force=True)
    assert not os.path.exists(nets.store.path("intents", "n"))


def test_a_full_disk_between_intent_and_record_rolls_the_attach_back(nets, monkeypatch):
    """Issue 27: the record cannot be written (a full disk): the ADD is undone (DEL), and
    neither record nor intent stays, though the del intent could not be written either."""
    nets.plugins.executor.go.set()
    write_bytes = nets.store.write_bytes
    intents_written = []

    def full(path, body, durable=True):
        if "intents" in str(path) and not intents_written:
            intents_written.append(path)
            return write_bytes(path, body, durable)
        raise EnvironmentFault(f"cannot write state record {path}: No space left on device")

    monkeypatch.setattr(nets.store, "write_bytes", full)
    with pytest.raises(EnvironmentFault, match="No space left"):
        nets.connect("n", me())
    assert nets.plugins.executor.sequence()[-2:] == [("bridge", "ADD"), ("bridge", "DEL")]
    assert nets.attachments("n").records == [] and nets.journal.listing("n").records == []


def by_pid() -> Target:
    """This test's process named by its PID: the same container as me()."""
    from circuit_net.target import pid_container_id

    proc = process(os.getpid())
    return Target(pid_container_id(proc), str(proc.pid), proc)


@pytest.mark.parametrize("first, second", [(me, by_pid), (by_pid, me)])
def test_a_pid_and_its_runc_id_are_one_container(nets, monkeypatch, first, second):
    nets.plugins.executor.go.set()
    assert nets.connect("n", first())["ifName"] == "eth0"
    monkeypatch.setattr(attach, "interfaces", lambda pid: {"lo", "eth0"})
    # found by file name (issue 26): never by reading the network's listing
    monkeypatch.setattr(nets, "attachments_listed", lambda name: pytest.fail("listed"))
    monkeypatch.setattr(nets, "attachments", lambda name: pytest.fail("listed"))
    before = sorted(os.listdir(nets.attachment_dir("n")))
    with pytest.raises(Conflict, match=rf"already connected to network n as {first().label} "
                                       r"\(eth0\); a PID and its runc id are one container"):
        nets.connect("n", second())
    assert sorted(os.listdir(nets.attachment_dir("n"))) == before
    assert nets.connect("n", second(), ifname="eth1")["ifName"] == "eth1"  # asked for
    assert len(os.listdir(nets.process_dir("n"))) == 1  # the runc id's attachment
    gone = nets.disconnect("n", second())  # either name takes both
    assert sorted(a["ifName"] for a in gone) == ["eth0", "eth1"]
    assert os.listdir(nets.attachment_dir("n")) == os.listdir(nets.process_dir("n")) == []


def test_the_process_index_is_made_whole_by_gc_and_goes_with_the_network(nets):
    """An entry left by a kill between record and entry goes at gc; one missing (a record
    older than the index) is written for a record gc keeps; delete removes what is left."""
    nets.plugins.executor.go.set()
    record = nets.connect("n", me())
    entry = nets.process_entry(record)
    assert os.path.basename(entry) == f"{by_pid().container_id}@c1@eth0"
    os.unlink(entry)
    gone = nets.disconnect("n", by_pid())  # no entry: the listing finds it
    assert [(a["containerId"], a["ifName"]) for a in gone] == [("c1", "eth0")]
    stale = os.path.join(nets.process_dir("n"), f"{by_pid().container_id}@c9@eth0")
    open(stale, "w").close()
    list(nets.gc())
    assert os.listdir(nets.process_dir("n")) == []
    nets.reindex("n", [record])
    assert os.listdir(nets.process_dir("n")) == [os.path.basename(entry)]
    nets.delete("n")
    assert not os.path.exists(nets.process_dir("n"))


def test_a_connect_under_way_under_the_other_name_is_refused(nets):
    adding = threading.Thread(target=lambda: nets.connect("n", me()))
    adding.start()
    try:
        assert nets.plugins.executor.adding.wait(10)
        with pytest.raises(Conflict, match="as c1 \\(eth0\\)"):
            nets.connect("n", by_pid())
    finally:
        nets.plugins.executor.go.set()
        adding.join()


def test_same_container_id_may_ask_for_a_second_interface_by_name(nets):
    nets.plugins.executor.go.set()
    nets.connect("n", me())
    with pytest.raises(Conflict, match="already connected to network n \\(as eth0\\)"):
        nets.connect("n", me())
    with pytest.raises(Conflict, match="already connected"):
        nets.connect("n", me(), ifname="eth0")
    assert nets.connect("n", me(), ifname="eth1")["ifName"] == "eth1"


@pytest.mark.parametrize("subnets", [["10.89.0.0/24"], []])
def test_a_flags_network_stored_before_the_ips_capability_is_created_again_unchanged(
        nets, monkeypatch, subnets):
    """Flags networks declare ips now: the record an older circuit stored without it is the
    same network (exit 0, 'exists, unchanged', kept as it is), given --subnet or picked."""
    from test_spec import DEBIAN, VersionsOnly

    from circuit_net import spec

    monkeypatch.setattr(spec, "routes", lambda: [])
    monkeypatch.setattr(spec, "interfaces_here", lambda: {})
    nets.plugins.executor = VersionsOnly({k: DEBIAN for k in ("bridge", "portmap", "firewall")})
    conf = spec.conflist(spec.Flags("web", ["10.89.0.0/24"]), nets.plugins, nets.ipam_dir())
    old = {**conf, "plugins": [{k: v for k, v in conf["plugins"][0].items()
                                if k != "capabilities"}, *conf["plugins"][1:]]}
    nets.store.write(nets.network_path("web"), {"name": "web", "config": old,
                                                "source": "flags", "created": "then"})
    record, new = nets.create_from_flags(spec.Flags("web", subnets))
    assert not new and record["config"] == old and record["created"] == "then"
    with pytest.raises(Conflict, match="exists with a different config"):
        nets.create_from_flags(spec.Flags("web", subnets, mtu="1400"))


def test_qos_and_dns_make_no_lock_file_for_a_network_never_created(nets):
    """qos set/reset and dns enable/disable of a name never created left
    locks/network.NAME.lock behind, one per name tried (issue 27)."""
    from circuit_dns import extension as dns
    from circuit_qos import cli as qos

    for call in (lambda: qos.handle(["set", "--rate", "5mbit", "never"], nets.ctx),
                 lambda: qos.handle(["reset", "never"], nets.ctx),
                 lambda: dns.enable(nets.ctx, "never"), lambda: dns.disable(nets.ctx, "never")):
        with pytest.raises(NotFound, match="no network named 'never'"):
            call()
    assert not os.path.exists(nets.store.path("locks", "network.never.lock"))
