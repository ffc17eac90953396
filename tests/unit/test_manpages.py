"""Man pages made from the tools' docopt text: every usage line and option is in its page."""

import json
import shutil
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

from circuit_common import VERSION, errors, manpage
from circuit_common.usage import Usage

BIN = Path(sys.executable).parent
TOOLS = {"circuit-net": "circuit_net.cli", "circuit-qos": "circuit_qos.cli",
         "circuit-lb": "circuit_lb.cli", "circuit-hook": "circuit_hook.cli",
         "circuit-cluster": "circuit_cluster.cli", "circuit-metrics": "circuit_metrics.cli"}


def unescape(roff: str) -> str:
    return roff.replace("\\-", "-").replace("\\e", "\\").replace("\\&", "")


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("man1")
    proc = subprocess.run([BIN / "circuit", "manpages", directory], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    return directory


def test_one_page_per_tool(pages):
    assert sorted(p.name for p in pages.iterdir()) == [
        "circuit-cluster.1", "circuit-dns.1", "circuit-hook.1", "circuit-lb.1",
        "circuit-metrics.1", "circuit-net.1", "circuit-network.1", "circuit-qos.1", "circuit.1"]
    assert (pages / "circuit-network.1").read_text() == ".so man1/circuit-net.1\n"


@pytest.mark.parametrize("tool", TOOLS)
def test_a_page_has_examples_environment_and_files(pages, tool):
    text = unescape((pages / f"{tool}.1").read_text())
    examples = text.split(".SH EXAMPLES\n", 1)[1].split(".SH ", 1)[0]
    assert f"circuit {tool.removeprefix('circuit-').replace('net', 'network')}" in examples \
        or "circuit network qos" in examples or "circuit hook install" in examples
    environment = text.split(".SH ENVIRONMENT\n", 1)[1].split(".SH ", 1)[0]
    for name in ("CIRCUIT_STATE", "CIRCUIT_STATE_DIR", "CIRCUIT_CONFIG", "CNI_PATH",
                 "CIRCUIT_RUNC_ROOT", "CIRCUIT_CNI_CACHE_DIR", "CIRCUIT_LOCAL_STATE_DIR"):
        assert f"\\fB{name}\\fR" in environment, name
    assert "/etc/circuit/circuit.toml" in text.split(".SH FILES\n", 1)[1]


def test_options_with_a_short_and_a_long_name_each_keep_their_help(pages):
    text = unescape((pages / "circuit-net.1").read_text())
    assert ".TP\n\\fB-p\\fR, \\fB--publish\\fR \\fISPEC\\fR\npublish a port" in text
    ip_help = text.split("\\fB--ip\\fR", 1)[1].split(".TP", 1)[0]
    assert "--publish" not in ip_help


@pytest.mark.parametrize("tool", TOOLS)
def test_a_page_holds_its_tools_usage_and_options(pages, tool):
    doc = import_module(TOOLS[tool]).__doc__
    text = unescape((pages / f"{tool}.1").read_text())
    usage = Usage(doc)
    assert text.startswith(f'.TH "{tool.upper()}" 1 "" "circuit {VERSION}"')
    assert f"{tool} - {usage.summary}" in text
    for line in usage.lines:
        assert line in text
    for option in usage.options:
        assert option.names[0] in text and option.help in text
    for name in ("--state", "--cni-path", "--lock-timeout"):
        assert name in text
    for code in (4, 8, 70):
        assert f".TP\n\\fB{code}\\fR\n" in text
    assert "circuit(1)" in text.replace("\\fB", "").replace("\\fR", "")


def test_the_dispatchers_help_and_page_name_every_group(pages):
    out = subprocess.run([BIN / "circuit", "--help"], capture_output=True, text=True).stdout
    page = unescape((pages / "circuit.1").read_text())
    for group in ("circuit network", "circuit network qos", "circuit lb", "circuit hook",
                  "circuit cluster join|leave|forget|list|sync|agent"):
        assert f"\n  {group} " in out and f"\n{group} " in page, group


def test_exit_status_lists_every_error_class():
    codes = dict(manpage.exit_codes())
    assert codes[errors.KernelUnsupported.exit_code] == errors.KernelUnsupported.__doc__
    assert codes[70].startswith("An internal error")


def test_roff_requests_in_text_are_escaped():
    page = manpage.render("tool-x: summary.\n\nUsage:\n  tool-x run\n\n.not a request\n"
                          "'neither\nback\\slash", ["tool-x"])
    assert "\n\\&.not a request\n\\&'neither\nback\\eslash\n" in page


@pytest.mark.skipif(not shutil.which("man"), reason="man-db is not installed")
def test_man_renders_the_dispatchers_page(pages):
    proc = subprocess.run(["man", "--warnings", "-l", pages / "circuit.1"], capture_output=True,
                          text=True, env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    assert "circuit completion bash|zsh" in proc.stdout
    assert "circuit cluster join|leave|forget|list|sync|agent" in proc.stdout
    assert "circuit-net(1)" in proc.stdout and "circuit-cluster(1)" in proc.stdout


def test_a_bad_directory_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    proc = subprocess.run([BIN / "circuit", "manpages", tmp_path / "file"], capture_output=True,
                          text=True)
    assert proc.returncode == 10 and proc.stderr.startswith("circuit: cannot write man pages")


def test_circuit_hook_1_shows_the_config_json_install_writes():
    """The example is valid JSON, and its mount is the one circuit-dns asks install for."""
    import circuit_hook.cli
    from circuit_common.cli import Context
    from circuit_common.config import Settings
    from circuit_common.store import Store
    from circuit_dns.extension import bundle_mounts

    doc = circuit_hook.cli.__doc__
    example = json.loads(doc[doc.index("  {\n"):doc.index("\n  }\n") + 4])
    ctx = Context(Settings(), store=Store("/var/lib/circuit"))
    assert bundle_mounts(ctx, "sandbox")[0] in example["mounts"]
    assert set(example["hooks"]) == {"createRuntime", "poststop"}
    assert example["annotations"]["circuit.networks"] == "sandbox"
