"""Messages and outcomes that left a user stuck or misled (issue 27 §3, §5): what a plugin
says when it exits 0 with an error, output beyond any result, a 50 MB "line", the disconnect
that finishes an interrupted one, prune over an unreadable record, a global option whose
value was left out."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cni import FakeExec
from test_networks import me, nets  # noqa: F401 (the fixture)

from circuit_common.cli import MAX_ERROR_LINE, one_line
from circuit_common.config import split_global_options
from circuit_common.errors import InvalidInput, PluginError
from circuit_lb.cli import read_stdin_targets
from circuit_net import cni

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def plugins(**answers) -> cni.Plugins:
    return cni.Plugins(["/fake"], executor=FakeExec(**answers))


def test_a_plugin_that_exits_0_with_a_cni_error_has_failed():
    found = plugins(bridge_ADD={"code": 7, "msg": "no address", "details": "range full"})
    with pytest.raises(PluginError, match=r"bridge failed during ADD \(though it exited 0\): "
                                          r"no address: range full \(CNI error code 7\)"):
        found.exec_plugin("bridge", "ADD", {"cniVersion": "1.0.0"}, None)


def test_a_plugin_output_beyond_any_result_is_refused_not_stored():
    big = cni.Outcome(0, b'{"cniVersion": "1.0.0", "x": "' + b"a" * (2 << 20) + b'"}', b"")
    found = plugins(bridge_ADD=big)
    with pytest.raises(PluginError, match="more than a result can be"):
        found.exec_plugin("bridge", "ADD", {"cniVersion": "1.0.0"}, None)


@pytest.mark.parametrize("outcome", [cni.Outcome(1, b"", b"x" * (50 << 20)),
                                     cni.Outcome(1, b'{"code": 7, "msg": "' + b"m" * (5 << 20)
                                                 + b'"}', b"")])
def test_a_plugins_huge_message_is_cut(outcome):
    with pytest.raises(PluginError) as raised:
        plugins(bridge_ADD=outcome).exec_plugin("bridge", "ADD", {"cniVersion": "1.0.0"}, None)
    assert len(str(raised.value)) < 1000 and "characters cut" in str(raised.value)


def test_an_error_line_is_one_line_and_cut():
    line = one_line("bad target " + "9" * (10 << 20) + "\nend")
    assert len(line) <= MAX_ERROR_LINE and "\n" not in line and line.endswith("end")


def test_the_lb_cli_echoes_no_10_mb_line(tmp_path):
    proc = subprocess.run([sys.executable, str(BIN / "circuit"), "--state", tmp_path, "lb",
                           "add", "web", "-"], input="1" * (10 << 20) + "\n",
                          capture_output=True, text=True)
    assert proc.returncode == 3 and len(proc.stderr) <= MAX_ERROR_LINE + 20, proc.stderr[:200]


def test_a_bad_weight_on_stdin_names_its_line():
    with pytest.raises(InvalidInput, match=r"stdin line 2: invalid weight '99999'"):
        read_stdin_targets("10.1.0.3:80 1\n10.1.0.4:80 99999\n")


def test_the_disconnect_that_finishes_an_interrupted_disconnect_succeeds(nets):  # noqa: F811
    nets.plugins.executor.go.set()
    record = nets.connect("n", me())
    dead = {"pid": 1 << 22, "start_time": 1}
    nets.store.write(nets.journal.path(record), {"op": "del", "owner": dead,
                                                "attachment": record})
    nets.store.remove(nets.record_path(record))  # killed after the record went
    assert [a["containerId"] for a in nets.disconnect("n", me())] == ["c1"]
    assert ("bridge", "DEL") in nets.plugins.executor.sequence()
    assert nets.journal.listing("n").records == [] and nets.attachments("n").records == []


def test_prune_reports_an_unreadable_record_and_keeps_its_network(tmp_path):
    (tmp_path / "networks").mkdir(mode=0o700)
    (tmp_path / "networks" / "broken.json").write_text("{")
    os.chmod(tmp_path / "networks" / "broken.json", 0o600)
    proc = subprocess.run([sys.executable, str(BIN / "circuit"), "--state", tmp_path, "network",
                           "prune", "--force"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 9 and "broken.json" in proc.stderr, proc.stderr
    assert (tmp_path / "networks" / "broken.json").exists()


@pytest.mark.parametrize("argv", [["--state", "network", "list"], ["--config", "lb", "list"],
                                  ["network", "list", "--state", "network"]])
def test_a_global_option_whose_value_was_left_out_says_so(argv):
    with pytest.raises(InvalidInput, match=r"option --\w+ needs a value \(not the command word"):
        split_global_options(argv)
    assert split_global_options(["--state", "./network", "list"])[0] == {"state": "./network"}


def test_a_result_that_puts_the_container_on_the_host_is_refused(tmp_path):
    netns = tmp_path / "netns"  # stands in for the container's netns: not circuit's own
    netns.write_text("")
    container = {"name": "eth0", "sandbox": str(netns)}
    fine = {"cniVersion": "1.0.0", "interfaces": [container],
            "ips": [{"address": "10.255.255.77/24", "interface": 0}]}
    cni.check_placed(fine, str(netns))
    with pytest.raises(ValueError, match=r"in network namespace /proc/1/ns/net, not the "):
        cni.check_placed({**fine, "interfaces": [{**container, "sandbox": "/proc/1/ns/net"}]},
                         str(netns))
    with pytest.raises(ValueError, match=r"127.0.0.1/8 is an address of the host"):
        cni.check_placed({**fine, "ips": [{"address": "127.0.0.1/8", "interface": 0}]},
                         str(netns))
    host_side = {"cniVersion": "1.0.0", "interfaces": [{"name": "veth0"}, container],
                 "ips": [{"address": "127.0.0.1/8", "interface": 0}]}
    cni.check_placed(host_side, str(netns))  # an address on a host-side interface is the host's
    in_circuits = {"name": "eth0", "sandbox": "/proc/self/ns/net"}  # connect --host-netns
    cni.check_placed({"interfaces": [in_circuits], "ips": [{"address": "127.0.0.1/8"}]},
                     "/proc/self/ns/net")


def test_the_chain_is_undone_when_a_result_names_the_host_netns():
    found = plugins(bridge_ADD={"cniVersion": "1.0.0", "interfaces": [
        {"name": "eth0", "sandbox": "/proc/1/ns/net"}]})
    netconf = {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}
    with pytest.raises(PluginError, match="invalid result during ADD: interfaces"):
        cni.add_chain(found, netconf, cni.Runtime("c1", "/proc/self/ns/net", "eth0"))
    assert ("bridge", "DEL") in found.executor.sequence()
