"""Plugin execution error paths (pytest-subprocess) and config validation."""

import json
import time

import pytest

from circuit_common.errors import InvalidInput, NotFound, PluginError
from circuit_net import cni

BRIDGE = {"type": "bridge", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}
RESULT = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/24"}]}


@pytest.fixture
def plugin_dir(tmp_path):
    for kind in ("bridge", "tuning"):
        path = tmp_path / kind
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    return tmp_path


@pytest.fixture
def plugins(plugin_dir):
    return cni.Plugins([str(plugin_dir)], timeout=0.2)


def netconf(*plugins):
    return {"cniVersion": "1.0.0", "name": "n", "plugins": list(plugins)}


RT = cni.Runtime("c1", "/proc/1/ns/net", "eth0")


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


def test_failed_add_deletes_the_whole_chain_in_reverse(fp, plugins, plugin_dir):
    bridge, tuning = str(plugin_dir / "bridge"), str(plugin_dir / "tuning")
    fp.register([bridge], stdout=json.dumps(RESULT))
    fp.register([tuning], returncode=1, stdout=json.dumps({"code": 999, "msg": "bad sysctl"}))
    fp.register([tuning], returncode=1, stdout=json.dumps({"code": 999, "msg": "still bad"}))
    fp.register([bridge])
    with pytest.raises(PluginError, match="plugin tuning failed during ADD: bad sysctl"):
        cni.add_chain(plugins, netconf(BRIDGE, {"type": "tuning"}), RT)
    assert [c[0] for c in fp.calls] == [bridge, tuning, tuning, bridge]


def test_environment_is_clean_and_complete(plugins):
    env = plugins.environ("ADD", cni.Runtime("c1", "/ns", "eth1", [("IP", "10.1.0.9")]))
    assert set(env) == {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS",
                        "CNI_PATH", "PATH"}
    assert env["CNI_ARGS"] == "IP=10.1.0.9" and env["CNI_IFNAME"] == "eth1"


def test_missing_plugin(plugins):
    with pytest.raises(NotFound, match="CNI plugin 'macvlan' not found"):
        plugins.exec_plugin("macvlan", "ADD", {}, RT)


def test_runtime_config_only_for_declared_capabilities():
    rt = cni.Runtime("c", "/ns", "eth0", capability_args={"ips": ["10.1.0.5"], "mac": "x"})
    declared = {"type": "host-local", "capabilities": {"ips": True}}
    assert cni.plugin_conf(netconf(declared), declared, None, rt)["runtimeConfig"] == {
        "ips": ["10.1.0.5"]}
    assert "runtimeConfig" not in cni.plugin_conf(netconf(BRIDGE), BRIDGE, RESULT, rt)
    assert cni.plugin_conf(netconf(BRIDGE), BRIDGE, RESULT, rt)["prevResult"] == RESULT


def test_delete_passes_prev_result_from_0_4_0(fp, plugins, plugin_dir):
    seen = []
    fp.register([str(plugin_dir / "bridge")], callback=lambda p: seen.append(p), occurrences=2)
    cni.del_chain(plugins, {**netconf(BRIDGE), "cniVersion": "0.3.1"}, RT, RESULT)
    cni.del_chain(plugins, netconf(BRIDGE), RT, RESULT)
    assert len(seen) == 2


@pytest.mark.parametrize(("conf", "message"), [
    ("{", "not valid JSON"),
    ("[]", "must hold a JSON object"),
    ('{"cniVersion": "0.3.0", "type": "bridge"}', "has no 'name'"),
    ('{"cniVersion": "0.2.0", "name": "n", "type": "bridge"}', "cniVersion '0.2.0'"),
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


