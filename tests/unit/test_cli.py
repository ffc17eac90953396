"""The dispatcher and the shared error policy, run as users run them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from circuit_common.output import render_table

BIN = Path(sys.executable).parent


def circuit(*args, tool="circuit", env=None, input=None, importtime=False):
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), str(BIN / tool)]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, input=input,
                          env={**os.environ, **(env or {})}, stdin=None if input else
                          subprocess.DEVNULL)


def oci_state(**fields) -> str:
    """The OCI state runc hands a createRuntime hook, for this (running) test process."""
    return json.dumps({"ociVersion": "1.0.2", "id": "web", "pid": os.getpid(),
                       "status": "creating", "bundle": "/nonexistent", **fields})


NO_NETWORK_ENV = {"CNI_CONF": "", "CIRCUIT_NETWORK": ""}


def test_help_lists_the_command_groups():
    proc = circuit("--help")
    assert proc.returncode == 0
    out = proc.stdout
    for group in ("circuit network", "circuit network qos", "circuit lb", "circuit hook",
                  "circuit cluster", "circuit restore", "circuit version", "circuit doctor"):
        assert group in out


def fake_plugins(directory: Path) -> Path:
    """A CNI path with one plugin that answers VERSION and one program that is no plugin."""
    directory.mkdir()
    (directory / "good").write_text('#!/bin/sh\ncat >/dev/null\n'
                                    'echo \'{"cniVersion": "1.0.0", "supportedVersions": '
                                    '["0.4.0", "1.0.0"]}\'\n')
    (directory / "junk").write_text("#!/bin/sh\necho hello\n")
    for plugin in directory.iterdir():
        plugin.chmod(0o755)
    return directory


def test_version_names_what_circuit_runs_against(tmp_path):
    from circuit_common import VERSION

    plugins = fake_plugins(tmp_path / "cni")
    text = circuit("--cni-path", plugins, "version").stdout
    assert text.startswith(f"circuit {VERSION}\npython ")
    assert "pyroute2 " in text and "kernel " in text and "ipvs " in text
    proc = circuit("--cni-path", plugins, "version", "--format", "json")
    facts = json.loads(proc.stdout)
    assert facts["circuit"] == VERSION and set(facts["kernel"]) >= {"ipvs", "netem", "nftables"}
    assert facts["cni_plugins"] == [
        {"name": "good", "path": str(plugins / "good"), "cniVersion": "1.0.0",
         "supportedVersions": ["0.4.0", "1.0.0"]},
        {"name": "junk", "path": str(plugins / "junk"),
         "error": "no CNI VERSION answer (not a CNI plugin?)"}]


def test_the_version_is_kept_in_one_place():
    from importlib.metadata import version

    from circuit_common import VERSION

    assert {version(d) for d in ("circuit", "circuit-common", "circuit-net", "circuit-qos",
                                 "circuit-lb", "circuit-hook", "circuit-netlink",
                                 "circuit-cluster")} == {VERSION}
    root = Path(__file__).parents[2]
    for pyproject in [root / "pyproject.toml", *root.glob("packages/*/pyproject.toml")]:
        assert 'dynamic = ["version"]' in pyproject.read_text(), pyproject


def test_doctor_fails_when_a_stored_network_cannot_work(tmp_path):
    plugins = fake_plugins(tmp_path / "cni")
    (tmp_path / "networks").mkdir()
    (tmp_path / "networks" / "web.json").write_text(json.dumps(
        {"schema": 1, "name": "web", "config": {"cniVersion": "1.0.0", "name": "web",
                                                "plugins": [{"type": "good"},
                                                            {"type": "bridge"}]}}))
    proc = circuit("--state", tmp_path, "--cni-path", plugins, "doctor")
    assert proc.returncode == 4, proc.stderr
    assert f"network web needs bridge, not in {plugins}" in proc.stdout
    assert "fix: apt-get install containernetworking-plugins" in proc.stdout
    (tmp_path / "networks" / "web.json").unlink()
    proc = circuit("--state", tmp_path, "--cni-path", plugins, "doctor", "--format", "json")
    assert proc.returncode == 0  # missing kernel features nothing uses are reported, not fatal
    assert {c["feature"] for c in json.loads(proc.stdout)} >= {"networks", "qos delay", "lb"}


@pytest.mark.parametrize(("args", "stdin", "code"), [
    (("--help",), None, 0), (("version",), None, 0), (("network", "list"), None, 0),
    (("network", "list", "--format", "json"), None, 0), (("lb", "list"), None, 0),
    (("network", "qos", "--help"), None, 0),
    (("network", "connect", os.getpid(), "nope"), None, 4),  # as far as a connect goes here
    (("hook",), oci_state(), 4),
    ((), oci_state(), 4),  # the hook as runc runs it: bare circuit, the state on stdin
])
def test_help_version_list_connect_and_the_hook_do_not_import_pyroute2(args, stdin, code,
                                                                       tmp_path):
    proc = circuit("--state", tmp_path, *args, importtime=True, input=stdin,
                   env={"CIRCUIT_NETWORK": "nope", "CNI_CONF": ""})
    assert proc.returncode == code, proc.stderr
    assert "pyroute2" not in proc.stderr


def test_each_tool_is_usable_alone(tmp_path):
    for tool in ("circuit-net", "circuit-qos", "circuit-lb", "circuit-hook", "circuit-cluster"):
        proc = circuit("--help", tool=tool)
        assert proc.returncode == 0 and "Usage:" in proc.stdout
    assert circuit("--state", tmp_path, "list", tool="circuit-net").returncode == 0


@pytest.mark.parametrize(("args", "message", "code"), [
    (("network", "conect", "1", "x"), "unknown command 'conect'", 2),
    (("network", "connect", "1"), "usage: circuit-net connect TARGET NETWORK", 2),
    (("frobnicate",), "unknown command 'frobnicate'", 2),
    (("network", "inspect", "../etc"), "invalid network name", 3),
    (("network", "inspect", "nope"), "no network named 'nope'", 4),
    (("network", "list", "--format", "xml"), "unknown format 'xml'", 3),
    (("network", "list", "--state"), "--state needs a value", 3),
    (("network", "inspect", "nope", "--format", "xml"), "unknown format 'xml'", 3),
    (("network", "connect", os.getpid(), "nope"), "no network named 'nope'", 4),
    (("network", "connect", 999_999_999, "nope"), "invalid pid", 3),
    (("network", "connect", "no-such-container", "nope"), "no running runc container", 4),
    (("network", "connect", "../x", "nope"), "invalid container id", 3),
    (("network", "qos", "show", "nope", "-q"), "no network named 'nope'", 4),
])
def test_mistakes_are_one_line_with_a_stable_code(args, message, code, tmp_path):
    proc = circuit("--state", tmp_path, *args)
    assert proc.returncode == code
    assert proc.stderr.startswith("circuit: ") and message in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = circuit("--state", tmp_path, "--debug", "network", "inspect", "nope")
    assert "Traceback" in proc.stderr and proc.returncode == 4


def test_unknown_command_runs_circuit_foo_from_path_with_its_exit_code(tmp_path):
    (tmp_path / "circuit-hello").write_text("#!/bin/sh\necho hello \"$@\"\nexit 5\n")
    (tmp_path / "circuit-hello").chmod(0o755)
    proc = circuit("hello", "world", env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert proc.stdout == "hello world\n" and proc.returncode == 5


def test_restore_is_a_noop_while_nothing_is_stored(tmp_path):
    assert circuit("--state", tmp_path, "restore").returncode == 0


@pytest.mark.parametrize(("stdin", "env", "message", "code"), [
    ("not json", {}, "not the OCI state", 3),
    (json.dumps({"pid": 1}), {}, "has no container 'id'", 3),
    (oci_state(id="../etc"), {}, "invalid container id", 3),
    (oci_state(pid=-1), {}, "invalid pid in the OCI state", 3),
    (oci_state(), NO_NETWORK_ENV, "no network for the hook", 3),
    (oci_state(), {"CIRCUIT_NETWORK": "nope", "CNI_CONF": ""}, "no network named 'nope'", 4),
    (oci_state(), {"CNI_CONF": "/nonexistent.conf"}, "/nonexistent.conf", 3),
])
@pytest.mark.parametrize("route", [(), ("hook",)], ids=["bare", "hook"])
def test_the_hook_refuses_bad_input_in_one_line(stdin, env, message, code, route, tmp_path):
    proc = circuit("--state", tmp_path, *route, input=stdin, env=env)
    assert (proc.returncode, proc.stdout) == (code, "")
    assert proc.stderr.startswith("circuit: ") and message in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def store_one_network(state, policies: dict | None = None) -> None:
    """A network "good" with two attachments (containers web and db, not running) and the given
    per-attachment QoS policies."""
    config = {"cniVersion": "1.0.0", "name": "good", "plugins": [{"type": "bridge"},
                                                                  {"type": "portmap"}]}
    (state / "networks").mkdir(parents=True)
    (state / "networks" / "good.json").write_text(json.dumps(
        {"schema": 1, "name": "good", "config": config}))
    (state / "attachments" / "good").mkdir(parents=True)
    for number, cid in enumerate(("web", "db"), start=2):
        result = {"cniVersion": "1.0.0", "interfaces": [
            {"name": "eth0", "mac": f"02:00:00:00:00:0{number}", "sandbox": "/proc/1/ns/net"}],
            "ips": [{"address": f"10.1.0.{number}/24", "interface": 0}]}
        (state / "attachments" / "good" / f"{cid}@eth0.json").write_text(json.dumps(
            {"schema": 1, "containerId": cid, "ifName": "eth0", "networkName": "good",
             "result": result, "circuit": {"pid": 4_000_000 + number, "start_time": 0,
                                           "target": cid, "created": "2026-01-01T00:00:00Z"}}))
    if policies is not None:
        (state / "qos").mkdir()
        (state / "qos" / "good.json").write_text(json.dumps(
            {"schema": 1, "network": None, "attachments": policies}))


def test_inspect_is_json_by_default_and_a_summary_as_a_table(tmp_path):
    store_one_network(tmp_path)
    default = circuit("--state", tmp_path, "network", "inspect", "good")
    as_json = circuit("--state", tmp_path, "network", "inspect", "good", "--format", "json")
    assert default.returncode == as_json.returncode == 0 and default.stdout == as_json.stdout
    assert {a["container_id"] for a in json.loads(default.stdout)["attachments"]} == {"web", "db"}
    table = circuit("--state", tmp_path, "network", "inspect", "good", "--format", "table")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0] == "network good: bridge -> portmap (CNI 1.0.0)"
    assert lines[1].split() == ["CONTAINER", "PID", "IFNAME", "IPS", "MAC", "PORTS"]
    assert sorted(line.split() for line in lines[2:]) == [
        ["db", "4000003", "eth0", "10.1.0.3/24", "02:00:00:00:00:03", "-"],
        ["web", "4000002", "eth0", "10.1.0.2/24", "02:00:00:00:00:02", "-"]]


def test_qos_show_q_names_the_shaped_containers(tmp_path):
    store_one_network(tmp_path, {"web@eth0": {"rate": 5_000_000, "ceil": 5_000_000}})
    proc = circuit("--state", tmp_path, "network", "qos", "show", "good", "-q", importtime=True)
    assert (proc.returncode, proc.stdout) == (0, "web\n")
    assert "pyroute2" not in proc.stderr  # the policies are in the store: no netlink


def test_list_reports_a_corrupt_record_and_lists_the_rest(tmp_path):
    (tmp_path / "networks").mkdir(parents=True)
    (tmp_path / "networks" / "good.json").write_text(
        '{"schema": 1, "name": "good", "config": {"cniVersion": "1.0.0", "name": "good",'
        ' "plugins": [{"type": "bridge"}]}}')
    (tmp_path / "networks" / "bad.json").write_text("{")
    proc = circuit("--state", tmp_path, "network", "list")
    assert proc.returncode == 9
    assert "good" in proc.stdout and "bad.json is not valid JSON" in proc.stderr


def test_table_matches_the_seed_layout():
    text = render_table(["name", "addr", "protocol", "scheduler"],
                        [("demo", "192.168.100.235:80", "tcp", "rr")],
                        details={0: ["  -> 10.254.1.196:80"]})
    assert text == ("NAME                ADDR                 PROTOCOL            SCHEDULER\n"
                    "demo                192.168.100.235:80   tcp                 rr\n"
                    "  -> 10.254.1.196:80\n")


@pytest.mark.parametrize("option, argv", [
    ("--ifname", ["network", "connect", "1", "n", "--ifname", ""]),
    ("--alias", ["network", "connect", "1", "n", "--alias", "web", "--alias", ""]),
    ("--mtu", ["network", "create", "n", "--subnet", "10.9.0.0/24", "--mtu="]),
    ("--format", ["lb", "list", "--format", ""])])
def test_an_option_given_an_empty_value_is_refused_not_ignored(tmp_path, option, argv):
    proc = circuit("--state", tmp_path, *argv)
    assert proc.returncode == 2 and proc.stderr == (
        f"circuit: option {option} is given an empty value; give a value or leave the option "
        "out\n"), proc.stderr
