"""What TARGET may name, over a fake /proc tree (circuit_common.proc.PROC): never a kernel
thread, never a process in the host's network namespace unless asked, never a PID spelled
otherwise than the kernel spells it; each refused before any plugin runs."""

import os

import pytest
from test_cni import FakeExec

from circuit_common import proc
from circuit_common.cli import Context
from circuit_common.config import Settings
from circuit_common.errors import InvalidInput
from circuit_net import networks
from circuit_net.attach import check_connectable
from circuit_net.networks import Networks
from circuit_net.target import Target, resolve

NETWORK = {"cniVersion": "1.1.0", "name": "n",
           "plugins": [{"type": "bridge", "ipam": {"type": "host-local",
                                                   "subnet": "10.1.0.0/24"}}]}


def stat_line(pid: int, ppid: int, flags: int, comm: str = "sleep") -> str:
    """/proc/PID/stat as the kernel writes it (start time 1000 + pid)."""
    fields = ["S", ppid, pid, pid, 0, -1, flags] + [0] * 12 + [1000 + pid] + [0] * 10
    return f"{pid} ({comm}) " + " ".join(map(str, fields)) + "\n"


@pytest.fixture
def fake_proc(tmp_path, monkeypatch):
    """A /proc with init (PID 1) in the host netns, kthreadd (2), a kernel thread (12, child
    of kthreadd), a container (300, in a netns of its own) and a host daemon (400, in PID 1's
    netns). add(pid, ...) adds another."""
    root = tmp_path / "proc"

    def add(pid, ppid=1, flags=0, netns="host", exe=True, comm="sleep"):
        directory = root / str(pid)
        (directory / "ns").mkdir(parents=True)
        (directory / "stat").write_text(stat_line(pid, ppid, flags, comm))
        namespaces = root / "namespaces"
        namespaces.mkdir(exist_ok=True)
        (namespaces / netns).touch()
        os.link(namespaces / netns, directory / "ns" / "net")  # one inode per netns
        if exe:
            (directory / "exe").symlink_to("/bin/sleep")

    add(1, ppid=0, comm="init")
    add(2, ppid=0, flags=proc.PF_KTHREAD, exe=False, comm="kthreadd")
    add(12, ppid=2, flags=proc.PF_KTHREAD, exe=False, comm="kworker/0:1")
    add(300, netns="container")
    add(400)
    monkeypatch.setattr(proc, "PROC", str(root))
    return add


def target(pid: int) -> Target:
    return resolve(str(pid))


@pytest.mark.unit
@pytest.mark.parametrize("text", ["00012", "012", "0300", "+12", " 12", "12 ", "\t12", "+ 12",
                                  "-12", " 300"])
def test_a_pid_spelled_otherwise_than_the_kernel_spells_it_is_refused(text, fake_proc):
    with pytest.raises(InvalidInput, match="not a PID as the kernel writes it"):
        resolve(text)


@pytest.mark.unit
def test_a_leading_zero_pid_says_what_to_give_instead(fake_proc):
    with pytest.raises(InvalidInput, match="give 12, without leading zeros"):
        resolve("00012")


@pytest.mark.unit
def test_a_kernel_thread_is_refused_even_with_host_netns(fake_proc):
    for host_netns in (False, True):
        with pytest.raises(InvalidInput, match="PID 12 is a kernel thread"):
            check_connectable(target(12), host_netns)
    with pytest.raises(InvalidInput, match="PID 2 is a kernel thread"):
        check_connectable(target(2), True)


@pytest.mark.unit
def test_a_kernel_thread_is_known_by_its_flags_its_parent_or_no_executable(fake_proc):
    fake_proc(13, ppid=2, netns="container")  # kthreadd's child, no PF_KTHREAD: still one
    fake_proc(14, flags=proc.PF_KTHREAD, netns="container")
    fake_proc(15, exe=False, netns="container")  # no executable behind it
    for pid in (13, 14, 15):
        assert proc.kernel_thread(pid), pid
        with pytest.raises(InvalidInput, match="kernel thread"):
            check_connectable(target(pid), True)
    assert not proc.kernel_thread(300)


@pytest.mark.unit
def test_a_child_of_pid_2_is_no_kernel_thread_in_a_pid_namespace(fake_proc, tmp_path):
    """In circuit's own PID namespace PID 2 may be a plain process: its children are not
    kernel threads."""
    root = tmp_path / "proc"
    (root / "2" / "stat").write_text(stat_line(2, 1, 0))
    fake_proc(16, ppid=2, netns="container")
    assert not proc.kernel_thread(16)
    check_connectable(target(16))


@pytest.mark.unit
@pytest.mark.parametrize("pid", [1, 400])
def test_a_process_in_the_host_netns_is_refused_unless_asked(pid, fake_proc):
    with pytest.raises(InvalidInput, match=r"host's network namespace \(PID 1's or the "
                                           r"kernel's\).*--host-netns"):
        check_connectable(target(pid))
    check_connectable(target(pid), host_netns=True)


@pytest.mark.unit
def test_the_host_netns_is_the_kernels_when_pid_1_hides_its_own(fake_proc, tmp_path):
    """A VM's init that is not dumpable hides /proc/1/ns even from root (seen: a firecracker
    guest's process_api): the host's netns is then kthreadd's, and when neither can be read
    nothing is connected, since a process in the host's netns could not be told apart."""
    from circuit_common.errors import EnvironmentFault

    os.unlink(tmp_path / "proc" / "1" / "ns" / "net")
    with pytest.raises(InvalidInput, match="host's network namespace"):
        check_connectable(target(400))
    check_connectable(target(300))
    os.unlink(tmp_path / "proc" / "2" / "ns" / "net")
    with pytest.raises(EnvironmentFault, match="cannot tell whether container 300 is in the "
                                               "host's network namespace"):
        check_connectable(target(300))
    check_connectable(target(400), host_netns=True)


@pytest.mark.unit
def test_a_netns_circuit_cannot_look_at_is_not_taken_for_an_exit(fake_proc, tmp_path):
    from circuit_common.errors import EnvironmentFault

    fake_proc(500, netns="container")
    ns = tmp_path / "proc" / "500" / "ns"
    os.unlink(ns / "net")
    ns.rmdir()
    ns.write_text("")  # stat fails, and not with ENOENT (as /proc/1/ns/net in a VM: EACCES)
    with pytest.raises(EnvironmentFault, match=r"cannot look at the network namespace of "
                                               r"container 500 \(.*: Not a directory\)"):
        check_connectable(target(500))


@pytest.mark.unit
def test_a_container_in_a_netns_of_its_own_passes(fake_proc):
    check_connectable(target(300))


@pytest.fixture
def nets(tmp_path) -> Networks:
    """Networks over a temp state holding network n, whose plugins are never run for real."""
    settings = Settings()
    settings.state_dir, settings.cni_cache_dir = str(tmp_path / "state"), str(tmp_path / "cni")
    nets = Networks(Context(settings))
    nets.plugins.executor = FakeExec()
    nets.store.write(nets.network_path("n"), {"name": "n", "config": NETWORK,
                                              "source": "test", "created": "now"})
    return nets


@pytest.mark.unit
@pytest.mark.parametrize(("pid", "message"), [(12, "kernel thread"), (400, "host's network")])
def test_connect_refuses_before_any_plugin_runs(pid, message, fake_proc, nets):
    """An interrupted attach waits for repair (a DEL) on the network: the refusal comes before
    it, so no plugin runs at all and nothing is written."""
    pending = {"op": "add", "owner": {"pid": 4_000_000, "start_time": 1},
               "attachment": {"containerId": "gone", "ifName": "eth0", "networkName": "n",
                              "circuit": {"pid": 4_000_001, "start_time": 1, "target": "gone",
                                          "created": "now"}}}
    nets.store.write(os.path.join(nets.store.path("intents", "n"), "gone@eth0.json"), pending)
    with pytest.raises(InvalidInput, match=message):
        nets.connect("n", target(pid))
    assert nets.plugins.executor.calls == []
    assert nets.attachments("n").records == []
    assert [i["attachment"]["containerId"] for i in nets.journal.listing("n").records] == ["gone"]


@pytest.mark.unit
def test_the_hook_refuses_a_kernel_thread_and_a_string_pid(fake_proc, nets, monkeypatch):
    import io

    from circuit_hook import cli as hook

    with pytest.raises(InvalidInput, match="invalid pid in the OCI state '2'"):
        hook.read_state(io.TextIOWrapper(io.BytesIO(b'{"id": "c", "pid": "2"}')))
    monkeypatch.setenv("CIRCUIT_NETWORK", "n")
    monkeypatch.delenv("CNI_CONF", raising=False)
    monkeypatch.delenv("CIRCUIT_PUBLISH", raising=False)
    for pid, message in ((12, "kernel thread"), (400, "host's network"), (1, "host's network")):
        with pytest.raises(InvalidInput, match=message):
            hook.attach(nets, {"id": "c", "pid": pid})
    assert nets.plugins.executor.calls == []
    assert networks.Networks.attachments(nets, "n").records == []


@pytest.mark.parametrize("meta, shown", [
    ({"pid": 7553, "target": "web-00"}, "web-00"),  # connected by runc id
    ({"pid": 7553, "target": "7553", "aliases": ["web", "www"]}, "web"),  # by PID, --name web
    ({"pid": 7553, "target": "7553"}, "7553"),  # by PID, no name: the PID is all there is
    ({"pid": 7553, "target": "web-00", "aliases": ["web"]}, "web-00"),
])
def test_tables_name_a_container_by_its_runc_id_else_its_name(meta, shown):
    from circuit_net.cli import describe_peer
    from circuit_net.records import container_name

    assert container_name(meta) == shown
    peer = {"ips": ["10.100.10.2/24"], "pid": 7553, "name": container_name(meta),
            "state": "attached", "ports": []}
    assert describe_peer(peer) == f"10.100.10.2 ({shown})"
