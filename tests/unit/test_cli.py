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


def test_help_lists_the_command_groups():
    out = circuit("--help").stdout
    for group in ("circuit network", "circuit network qos", "circuit lb", "circuit hook",
                  "circuit restore", "circuit version", "circuit doctor"):
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
                                 "circuit-lb", "circuit-hook", "circuit-netlink")} == {VERSION}
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


@pytest.mark.parametrize("args", [("--help",), ("version",), ("network", "list"),
                                  ("network", "list", "--format", "json"), ("lb", "list"),
                                  ("network", "qos", "--help")])
def test_help_version_and_list_do_not_import_pyroute2(args, tmp_path):
    proc = circuit("--state", tmp_path, *args, importtime=True)
    assert "pyroute2" not in proc.stderr


def test_each_tool_is_usable_alone(tmp_path):
    for tool in ("circuit-net", "circuit-qos", "circuit-lb", "circuit-hook"):
        assert "Usage:" in circuit("--help", tool=tool).stdout
    assert circuit("--state", tmp_path, "list", tool="circuit-net").returncode == 0


@pytest.mark.parametrize(("args", "message", "code"), [
    (("network", "conect", "1", "x"), "unknown command 'conect'", 2),
    (("network", "connect", "1"), "usage: circuit-net connect TARGET NETWORK", 2),
    (("frobnicate",), "unknown command 'frobnicate'", 2),
    (("network", "inspect", "../etc"), "invalid network name", 3),
    (("network", "inspect", "nope"), "no network named 'nope'", 4),
    (("network", "list", "--format", "xml"), "unknown format 'xml'", 3),
    (("network", "list", "--state"), "--state needs a value", 3),
])
def test_mistakes_are_one_line_with_a_stable_code(args, message, code, tmp_path):
    proc = circuit("--state", tmp_path, *args)
    assert proc.returncode == code
    assert proc.stderr.startswith("circuit: ") and message in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = circuit("--state", tmp_path, "--debug", "network", "inspect", "nope")
    assert "Traceback" in proc.stderr and proc.returncode == 4


def test_unknown_command_runs_circuit_foo_from_path(tmp_path):
    (tmp_path / "circuit-hello").write_text("#!/bin/sh\necho hello \"$@\"\n")
    (tmp_path / "circuit-hello").chmod(0o755)
    proc = circuit("hello", "world", env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert proc.stdout == "hello world\n"


def test_restore_is_a_noop_while_nothing_is_stored(tmp_path):
    assert circuit("--state", tmp_path, "restore").returncode == 0


def test_hook_mode_reads_oci_state_from_stdin(tmp_path):
    proc = circuit("--state", tmp_path, input="not json")
    assert proc.returncode == 3 and "not the OCI state" in proc.stderr


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
