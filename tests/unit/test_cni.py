"""CNI chains with a fake executor (libcni's invoke.Exec: no processes), the error paths of real
plugin execution (pytest-subprocess, and one real process tree), and config validation."""

import json
import time
from collections import namedtuple

import pytest

from circuit_common.errors import InvalidInput, NotFound, PluginError
from circuit_net import cni

BRIDGE = {"type": "bridge", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}
TUNING = {"type": "tuning", "mtu": 1400}
RESULT = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/24"}]}
TUNED = {**RESULT, "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:02"}]}
RT = cni.Runtime("c1", "/proc/1/ns/net", "eth0", [("IP", "10.1.0.9")])


@pytest.fixture
def plugin_dir(tmp_path):
    """A CNI path with a bridge plugin that pytest-subprocess answers for."""
    (tmp_path / "bridge").write_text("#!/bin/sh\n")
    (tmp_path / "bridge").chmod(0o755)
    return tmp_path


@pytest.fixture
def plugins(plugin_dir):
    return cni.Plugins([str(plugin_dir)], timeout=0.2)


def netconf(*plugins, version="1.0.0"):
    return {"cniVersion": version, "name": "n", "plugins": list(plugins)}


Call = namedtuple("Call", "kind command conf env")


class FakeExec:
    """An executor that runs nothing: a plugin answers from answers[(kind, command)] (a CNI
    result, or an Outcome), or with empty success; every call is kept with what it received."""

    def __init__(self, **answers):
        self.answers = {tuple(key.split("_")): value for key, value in answers.items()}
        self.calls: list[Call] = []

    def find_plugin(self, kind: str, cni_path: list[str]) -> str:
        return f"/fake/{kind}"

    def run(self, path: str, stdin: bytes, env: dict[str, str], timeout: float,
            started=None) -> cni.Outcome:
        kind, command = path.rsplit("/", 1)[1], env["CNI_COMMAND"]
        self.calls.append(Call(kind, command, json.loads(stdin), env))
        answer = self.answers.get((kind, command))
        if isinstance(answer, cni.Outcome):
            return answer
        return cni.Outcome(0, json.dumps(answer).encode() if answer else b"", b"")

    def sequence(self) -> list[tuple[str, str]]:
        return [(call.kind, call.command) for call in self.calls]


def failure(message: str) -> cni.Outcome:
    """What a plugin that fails prints: a CNI error on stdout, exit 1."""
    return cni.Outcome(1, json.dumps({"code": 999, "msg": message}).encode(), b"")


def fake_plugins(**answers) -> tuple[cni.Plugins, FakeExec]:
    executor = FakeExec(**answers)
    return cni.Plugins(["/fake"], executor=executor), executor


def test_add_hands_each_plugin_the_previous_result_and_returns_the_last():
    plugins, executor = fake_plugins(bridge_ADD=RESULT, tuning_ADD=TUNED)
    assert cni.add_chain(plugins, netconf(BRIDGE, TUNING), RT) == TUNED
    assert executor.sequence() == [("bridge", "ADD"), ("tuning", "ADD")]
    first, second = (call.conf for call in executor.calls)
    assert "prevResult" not in first
    assert second == {**TUNING, "name": "n", "cniVersion": "1.0.0", "prevResult": RESULT}


def test_a_failed_add_deletes_the_whole_chain_in_reverse_with_the_last_result():
    plugins, executor = fake_plugins(bridge_ADD=RESULT, tuning_ADD=failure("bad sysctl"),
                                     tuning_DEL=failure("still bad"))
    with pytest.raises(PluginError, match="plugin tuning failed during ADD: bad sysctl"):
        cni.add_chain(plugins, netconf(BRIDGE, TUNING), RT)
    assert executor.sequence() == [("bridge", "ADD"), ("tuning", "ADD"), ("tuning", "DEL"),
                                   ("bridge", "DEL")]
    assert [call.conf["prevResult"] for call in executor.calls[2:]] == [RESULT, RESULT]


@pytest.mark.parametrize(("tuning_result", "message"), [
    (None, "invalid result during ADD: the result is NoneType"),
    ({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.300/24"}]}, r"ips\[0\]\.address"),
])
def test_a_chain_without_a_valid_result_is_undone(tuning_result, message):
    plugins, executor = fake_plugins(bridge_ADD=RESULT, tuning_ADD=tuning_result)
    with pytest.raises(PluginError, match=message):
        cni.add_chain(plugins, netconf(BRIDGE, TUNING), RT)
    assert executor.sequence()[-2:] == [("tuning", "DEL"), ("bridge", "DEL")]


@pytest.mark.parametrize(("version", "prev_result"), [("0.3.1", None), ("0.4.0", RESULT),
                                                      ("1.0.0", RESULT)])
def test_delete_passes_the_cached_result_from_0_4_0(version, prev_result):
    plugins, executor = fake_plugins()
    cni.del_chain(plugins, netconf(BRIDGE, TUNING, version=version), RT, RESULT)
    assert executor.sequence() == [("tuning", "DEL"), ("bridge", "DEL")]
    assert [call.conf.get("prevResult") for call in executor.calls] == [prev_result] * 2


def test_delete_tries_every_plugin_and_reports_the_first_failure():
    plugins, executor = fake_plugins(tuning_DEL=failure("tuning gone"),
                                     bridge_DEL=failure("bridge gone"))
    with pytest.raises(PluginError, match="plugin tuning failed during DEL: tuning gone"):
        cni.del_chain(plugins, netconf(BRIDGE, TUNING), RT, RESULT)
    assert executor.sequence() == [("tuning", "DEL"), ("bridge", "DEL")]


def test_check_hands_every_plugin_the_cached_result_in_order():
    plugins, executor = fake_plugins()
    cni.check_chain(plugins, netconf(BRIDGE, TUNING), RT, TUNED)
    assert executor.sequence() == [("bridge", "CHECK"), ("tuning", "CHECK")]
    assert all(call.conf["prevResult"] == TUNED for call in executor.calls)


def test_gc_names_the_attachments_to_keep():
    valid = [{"containerID": "c1", "ifname": "eth0"}]
    plugins, executor = fake_plugins()
    cni.gc_chain(plugins, netconf(BRIDGE, version="1.1.0"), valid)
    (call,) = executor.calls
    assert call.command == "GC" and call.conf["cni.dev/valid-attachments"] == valid
    assert "CNI_CONTAINERID" not in call.env


def test_a_plugin_gets_a_clean_and_complete_environment():
    plugins, executor = fake_plugins(bridge_ADD=RESULT)
    cni.add_chain(plugins, netconf(BRIDGE), RT)
    assert executor.calls[0].env == {
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/1/ns/net",
        "CNI_IFNAME": "eth0", "CNI_ARGS": "IP=10.1.0.9", "CNI_PATH": "/fake",
        "PATH": executor.calls[0].env["PATH"]}


def test_runtime_config_only_for_declared_capabilities():
    rt = cni.Runtime("c", "/ns", "eth0", capability_args={"ips": ["10.1.0.5"], "mac": "x"})
    declaring = {**BRIDGE, "capabilities": {"ips": True}}
    plugins, executor = fake_plugins(bridge_ADD=RESULT, tuning_ADD=TUNED)
    cni.add_chain(plugins, netconf(declaring, TUNING), rt)
    assert executor.calls[0].conf["runtimeConfig"] == {"ips": ["10.1.0.5"]}
    assert "runtimeConfig" not in executor.calls[1].conf


# Real execution (ProcessExec): pytest-subprocess stands in for the plugin's process.

def test_plugin_error_json_becomes_its_message(fp, plugins, plugin_dir):
    err = {"cniVersion": "1.0.0", "code": 11, "msg": "failed to allocate", "details": "no IPs"}
    fp.register([str(plugin_dir / "bridge")], stdout=json.dumps(err), returncode=1)
    with pytest.raises(PluginError, match=r"plugin bridge failed during ADD: failed to allocate: "
                                          r"no IPs \(CNI error code 11\)"):
        plugins.exec_plugin("bridge", "ADD", {}, RT)


def test_result_that_is_not_json(fp, plugins, plugin_dir):
    fp.register([str(plugin_dir / "bridge")], stdout="hello")
    with pytest.raises(PluginError, match="not JSON"):
        plugins.exec_plugin("bridge", "ADD", {}, RT)


def test_a_plugin_past_its_timeout_is_killed_with_its_children(tmp_path):
    """A real process tree: the plugin's own child must not outlive the timeout."""
    from circuit_common.proc import process

    child = tmp_path / "child.pid"
    plugin = tmp_path / "bridge"
    plugin.write_text(f"#!/bin/sh\nsleep 30 &\necho $! > {child}\nwait\n")
    plugin.chmod(0o755)
    plugins = cni.Plugins([str(tmp_path)], timeout=0.3)
    with pytest.raises(PluginError, match=r"timed out after 0\.3s during ADD; it was killed"):
        plugins.exec_plugin("bridge", "ADD", {}, RT)
    pid = int(child.read_text())
    deadline = time.monotonic() + 2
    while process(pid) is not None:  # killed: gone, or a zombie no init has reaped
        assert time.monotonic() < deadline, f"the plugin's child {pid} outlived the timeout"
        time.sleep(0.01)


def test_go_panic_is_shown_as_the_panic_line(fp, plugins, plugin_dir):
    fp.register([str(plugin_dir / "bridge")], returncode=2,
                stderr="panic: runtime error: nil pointer\n\ngoroutine 1 [running]:\nmain.go:1\n")
    with pytest.raises(PluginError, match=r"crashed: panic: runtime error: nil pointer$"):
        plugins.exec_plugin("bridge", "CHECK", {}, RT)


def test_missing_plugin(plugins):
    with pytest.raises(NotFound, match="CNI plugin 'macvlan' not found"):
        plugins.exec_plugin("macvlan", "ADD", {}, RT)


@pytest.mark.parametrize(("conf", "message"), [
    ("{", r"not valid JSON \(.*\): make it a CNI network configuration"),
    (" \n\t", "is empty: give it a CNI network configuration"),
    ("[]", "must hold a JSON object"),
    ('{"cniVersion": "0.3.0", "type": "bridge"}', "has no 'name'"),
    ('{"cniVersion": "0.2.0", "name": "n", "plugins": [{"type": "bridge"}, {"type": "tuning"}]}',
     "cniVersion '0.2.0'"),
    ('{"cniVersions": "1.0.0", "name": "n", "type": "bridge"}', "must be a list"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": []}', "non-empty list"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{}]}', "plugin 1 has no 'type'"),
    ('{"cniVersion": "1.0.0", "name": "n", "type": "/bin/sh"}', "plain plugin name"),
    ('{"cniVersion": "1.0.0", "name": "n", "type": ".."}', "plain plugin name"),
    ('{"cniVersion": "1.0.0", "name": "../x", "type": "bridge"}', "invalid network name"),
])
def test_bad_configs(conf, message):
    with pytest.raises(InvalidInput, match=message):
        cni.load_netconf(conf.encode(), "x.conf")


def test_a_single_conf_becomes_a_list():
    conf = cni.load_netconf(json.dumps({"cniVersion": "0.3.0", "name": "n", **BRIDGE}).encode(),
                            "x.conf", name="renamed")
    assert conf == {"cniVersion": "0.3.0", "name": "renamed", "plugins": [BRIDGE]}




@pytest.mark.parametrize("conf, version", [
    ({"cniVersion": "0.4.0", "cniVersions": ["1.0.0", "0.3.1", "9.9.9"]}, "1.0.0"),
    ({"cniVersions": ["0.3.1", "1.1.0"]}, "1.1.0"),
    ({"cniVersion": "1.0.0", "cniVersions": ["0.3.1"]}, "1.0.0"),
    ({}, ""),
])
def test_the_version_is_picked_as_libcni_picks_it(conf, version):
    netconf = cni.load_netconf(json.dumps({**conf, "name": "n", "type": "bridge"}).encode(), "x")
    assert netconf["cniVersion"] == version


def test_a_legacy_result_reads_as_a_current_one():
    legacy = {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.2/24", "gateway": "10.1.0.1",
                                             "routes": [{"dst": "0.0.0.0/0"}]}, "dns": {}}
    cni.check_result(legacy)
    assert cni.result_ips(legacy) == ["10.1.0.2/24"]
    assert cni.current_result(legacy)["routes"] == [{"dst": "0.0.0.0/0"}]


def test_a_plugin_dies_with_a_killed_circuit(tmp_path):
    """SIGKILL of circuit mid-ADD must not leave the plugin running: its ADD finishing after the
    repair's DEL would hold an address nothing records."""
    import os
    import signal
    import subprocess
    import sys

    from circuit_common.proc import process

    pidfile = tmp_path / "plugin.pid"
    plugin = tmp_path / "bridge"
    plugin.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    plugin.chmod(0o755)
    circuit = subprocess.Popen([sys.executable, "-c",
                                "import sys; from circuit_net.cni import ProcessExec\n"
                                "ProcessExec.run(sys.argv[1], b'', {}, 30)", str(plugin)])
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the plugin never started"
        time.sleep(0.01)
    os.kill(circuit.pid, signal.SIGKILL)
    circuit.wait()
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while process(pid) is not None:  # gone, or a zombie no init reaps
        assert time.monotonic() < deadline, f"plugin {pid} outlived the circuit that ran it"
        time.sleep(0.01)


def test_end_group_kills_what_a_killed_plugin_left_running_and_nothing_else():
    """A "plugin" in a session of its own whose child outlives it (as bridge's iptables
    outlives the bridge plugin's PR_SET_PDEATHSIG): end_group kills the child and returns once
    nothing of the group runs; a process of another group is left alone."""
    import subprocess
    import time

    from circuit_common.proc import start_time

    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    plugin = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], start_new_session=True,
                              stdout=subprocess.PIPE, text=True)
    try:
        child = int(plugin.stdout.readline())
        began = start_time(plugin.pid)
        plugin.kill()
        plugin.wait()
        assert start_time(child) is not None  # orphaned, still running
        assert cni.group_members(plugin.pid, began, 30) == [child]
        assert cni.end_group(plugin.pid, began, 30, 5)
        assert start_time(child) is None and cni.group_members(plugin.pid, began, 30) == []
        assert other.poll() is None
        time.sleep(0.05)
        assert cni.group_members(other.pid, start_time(other.pid) - 1000, 1) == []  # too late
    finally:
        other.kill()
        other.wait()
