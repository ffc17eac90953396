"""Shell completion: bash's complete -p and a scripted COMP_WORDS call, zsh's Tab in a real
interactive zsh (zpty), candidates from usage and the state."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.fixture
def state(tmp_path):
    """A state dir with networks front and back, and service web."""
    for kind, name in (("networks", "front"), ("networks", "back"), ("services", "web")):
        (tmp_path / kind).mkdir(exist_ok=True)
        (tmp_path / kind / f"{name}.json").write_text("{}")
    (tmp_path / "networks" / ".front.123.tmp.json").write_text("{}")  # never listed
    return tmp_path


def bash_complete(*words: str, env: dict | None = None) -> list[str]:
    """COMPREPLY of circuit's bash completion for words (the last one being completed)."""
    array = " ".join(f"'{w}'" for w in words)
    script = (f'source <(circuit completion bash)\nCOMP_WORDS=({array})\n'
              f'COMP_CWORD={len(words) - 1}\n_circuit\nprintf "%s\\n" "${{COMPREPLY[@]}}"\n')
    proc = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})})
    return [line for line in proc.stdout.splitlines() if line]


def test_bash_registers_circuit_and_every_tool():
    script = subprocess.run([BIN / "circuit", "completion", "bash"], capture_output=True,
                            text=True).stdout
    proc = subprocess.run(["bash", "--norc", "-c", script + "complete -p"],
                          capture_output=True, text=True)
    for tool in ("circuit", "circuit-net", "circuit-qos", "circuit-lb", "circuit-hook",
                 "circuit-cluster"):
        assert f"complete -F _circuit {tool}\n" in proc.stdout


@pytest.mark.parametrize(("words", "expected"), [
    (("circuit", ""), ["cluster", "completion", "dns", "doctor", "forkserver", "hook", "lb",
                       "manpages", "metrics", "network", "restore", "top", "version"]),
    (("circuit", "cl"), ["cluster"]),
    (("circuit", "cluster", "j"), ["join"]),
    (("circuit", "cluster", ""), ["agent", "forget", "join", "leave", "list", "sync"]),
    (("circuit", "cluster", "join", "--"), ["--address", "--cni-cache-dir", "--cni-path",
                                            "--config", "--debug", "--etcd-cafile",
                                            "--etcd-certfile", "--etcd-keyfile",
                                            "--etcd-password", "--etcd-password-file",
                                            "--etcd-username", "--help", "--local-state",
                                            "--lock-timeout", "--name", "--runc-root",
                                            "--state", "--ttl"]),
    (("circuit", "cluster", "list", "--format", ""), ["table", "json"]),
    (("circuit", "top", "--format", ""), ["table", "json"]),
    (("circuit", "top", "--"), ["--cni-cache-dir", "--cni-path", "--config", "--debug",
                                "--etcd-cafile", "--etcd-certfile", "--etcd-keyfile",
                                "--etcd-password", "--etcd-password-file", "--etcd-username",
                                "--format", "--help", "--interval", "--local-state",
                                "--lock-timeout", "--once", "--runc-root", "--state"]),
    (("circuit-cluster", "l"), ["leave", "list"]),
    (("circuit", "network", "c"), ["check", "connect", "create"]),
    (("circuit", "network", ""), ["check", "connect", "create", "delete", "disconnect", "gc",
                                  "inspect", "list", "prune", "qos", "spec"]),
    (("circuit", "network", "qos", "s"), ["set", "show"]),
    (("circuit", "hook", ""), ["attach", "detach", "install", "uninstall"]),
    (("circuit", "network", "list", "--format", ""), ["table", "json"]),
    (("circuit", "lb", "create", "x", "1.2.3.4:80", "--forward", ""), ["masq", "route",
                                                                      "tunnel"]),
    (("circuit", "lb", "create", "x", "1.2.3.4:80", "--scheduler", "w"), ["wrr", "wlc"]),
    (("circuit", "network", "list", "--f"), ["--format"]),
    (("circuit-lb", "list", "--"), ["--cni-cache-dir", "--cni-path", "--config", "--debug",
                                    "--details", "--etcd-cafile", "--etcd-certfile",
                                    "--etcd-keyfile", "--etcd-password", "--etcd-password-file",
                                    "--etcd-username", "--format", "--help", "--local-state",
                                    "--lock-timeout", "--runc-root", "--state", "--stats"]),
])
def test_commands_flags_and_values_come_from_the_usage(words, expected):
    assert bash_complete(*words) == expected


def test_names_come_from_the_state(state):
    assert bash_complete("circuit", "--state", state, "network", "inspect", "") == ["back",
                                                                                 "front"]
    assert bash_complete("circuit", "network", "connect", "7", "f",
                         env={"CIRCUIT_STATE_DIR": str(state)}) == ["front"]
    assert bash_complete("circuit", "--state", state, "network", "qos", "show", "") == [
        "back", "front"]
    assert bash_complete("circuit", "--state", state, "lb", "delete", "") == ["web"]
    assert bash_complete("circuit-net", "--state", state, "delete", "b") == ["back"]
    assert bash_complete("circuit", "--state", state, "hook", "install", "b", "--network",
                         "f") == ["front"]
    assert bash_complete("circuit", "--state", f"~/{state.name}", "lb", "delete", "",
                         env={"HOME": str(state.parent)}) == ["web"]  # ~ as it was typed


def test_hostile_file_names_in_the_state_or_runc_root_never_reach_the_shell(state, tmp_path,
                                                                          monkeypatch):
    """A glob would expand in bash's completion, a newline split a name, an escape reach the
    terminal: only names circuit (or runc) would make are candidates."""
    runc_root = tmp_path / "runc"
    for name in ("*", "two\nlines", "ev\x1b[31mil", "a b"):
        (state / "networks" / f"{name}.json").write_text("{}")
        (runc_root / name).mkdir(parents=True)
    (runc_root / "web-00").mkdir()
    monkeypatch.chdir(state / "networks")  # where a glob would find files
    assert bash_complete("circuit", "--state", state, "network", "inspect", "") == ["back",
                                                                                 "front"]
    assert bash_complete("circuit", "--runc-root", runc_root, "network", "connect", "") == [
        "web-00"]


def test_targets_are_runc_ids(tmp_path):
    runc_root = tmp_path / "runc"
    for cid in ("web-00", "db-01"):
        (runc_root / cid).mkdir(parents=True)
    config = tmp_path / "circuit.toml"
    config.write_text(f'runc_root = "{runc_root}"\n')
    assert bash_complete("circuit", "--config", config, "network", "connect", "") == [
        "db-01", "web-00"]
    assert bash_complete("circuit", "--config", config, "network", "qos", "set",
                         "--container", "w") == ["web-00"]


def test_paths_are_left_to_the_shell(tmp_path):
    (tmp_path / "a.conflist").write_text("{}")
    (tmp_path / "sub").mkdir()
    assert bash_complete("circuit", "network", "create", f"{tmp_path}/a") == [
        f"{tmp_path}/a.conflist"]
    assert bash_complete("circuit", "--state", f"{tmp_path}/") == [f"{tmp_path}/sub"]


def test_zsh_script_and_a_bad_shell():
    out = subprocess.run([BIN / "circuit", "completion", "zsh"], capture_output=True,
                         text=True).stdout
    assert out.startswith("#compdef circuit circuit-qos circuit-net circuit-lb circuit-hook "
                          "circuit-cluster circuit-dns circuit-metrics\n")
    assert "compdef _circuit circuit" in out and "circuit completion words --" in out
    proc = subprocess.run([BIN / "circuit", "completion", "fish"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr == (
        "circuit: no completion for shell 'fish'; use bash or zsh\n")


def zsh_keys(text: str) -> str:
    """text as a zsh $'...' literal (control keys as \\xHH)."""
    return "$'" + "".join(c if c.isalnum() or c in " -_./:=${}" else f"\\x{ord(c):02x}"
                          for c in text) + "'"


def zsh_session(tmp_path: Path, keys: list[str], capture: bool = False) -> str:
    """What a real interactive `zsh -f` (in a pty, through zpty) prints for keys typed after
    compinit and `source <(circuit completion zsh)`. With capture, every compadd call also
    writes the matches it adds (builtin compadd -O) to the file $CAP. Keys may arrive while
    the pty is still in canonical mode (zsh running the line before): none may be one the
    line discipline acts on (^U, ^W, ^C, ^?, ...); ^A ^E ^K are safe."""
    setup = ("PS1='> '; unset zle_bracketed_paste; autoload -Uz compinit && compinit -u -D && "
             "source <(circuit completion zsh)")
    if capture:
        setup += ('; compadd() { local -a hits; builtin compadd -O hits "$@"; '
                  'print -rl -- "#$#hits" "${(@)hits}" >> $CAP; builtin compadd "$@" }')
    lines = ["zmodload zsh/zpty", "zpty z zsh -f -i", f"zpty -w z {zsh_keys(setup)}",
             *(f"zpty -w -n z {zsh_keys(k)}" for k in keys),
             "zpty -w z 'print -r -- ${:-FINI}SHED'", "zpty -r z out '*FINISHED*'",
             'print -rn -- "$out"', "zpty -d z"]
    proc = subprocess.run(["zsh", "-f", "-c", "\n".join(lines)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
                               "HOME": str(tmp_path), "TERM": "dumb"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.replace("\r", "")


def zsh_tab(tmp_path: Path, *lines: str) -> list[str]:
    """The command line after typing each line and Tab in a real zsh, read back by running it
    under print (no part of the completion system replaced)."""
    keys = [f"{line}\t\x01print -r -- ${{:-RES}}ULT:\x05:END\n" for line in lines]
    out = zsh_session(tmp_path, keys)
    return [" ".join(x.split(":END")[0].split()) for x in out.split("\nRESULT:")[1:]]


needs_zsh = pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed "
                               "(just setup installs it)")


@needs_zsh
def test_zsh_tab_completes_a_command_a_network_a_service_and_a_file(state, tmp_path):
    (tmp_path / "web.conflist").write_text("{}")  # the session's working directory
    assert zsh_tab(tmp_path, "circuit netw", f"circuit --state {state} network inspect fr",
                   f"circuit --state {state} lb delete w", f"circuit-net --state {state} del",
                   "circuit network create web.c", f"circuit --state '{state}' lb delete w") == [
        "circuit network", f"circuit --state {state} network inspect front",
        f"circuit --state {state} lb delete web", f"circuit-net --state {state} delete",
        "circuit network create web.conflist", f"circuit --state {state} lb delete web"]


def compadd_calls(path: Path) -> list[list[str]]:
    """The matches of each compadd call a capturing zsh_session wrote to path."""
    calls: list[list[str]] = []
    for line in path.read_text().splitlines():
        if line.startswith("#") and line[1:].isdigit():
            calls.append([])
        else:
            calls[-1].append(line)
    return calls


@needs_zsh
def test_zsh_offers_every_candidate_and_no_empty_one(state, tmp_path):
    """The matches zsh's completion adds after Tab, recorded by a compadd that calls the
    builtin twice (-O to record, then to add). No name at all is no match, not an empty one
    (which zsh took for a match: no "no matches", no other completer tried)."""
    (tmp_path / "empty").mkdir()
    cases = {"commands": "circuit ", "networks": f"circuit --state {state} network inspect ",
             "services": f"circuit --state {state} lb delete ",
             "formats": "circuit network list --format ", "subcommands": "circuit network qos s",
             "none": f"circuit --state {tmp_path}/empty network inspect "}
    keys = [k for name, line in cases.items() for k in (f"CAP={tmp_path}/cap-{name}\n",
                                                        f"{line}\t\x01\x0b")]
    zsh_session(tmp_path, keys, capture=True)
    offered = {name: compadd_calls(tmp_path / f"cap-{name}") for name in cases}
    assert offered == {
        "commands": [bash_complete("circuit", "")],  # the list itself: bash's test above
        "networks": [["back", "front"]], "services": [["web"]], "formats": [["table", "json"]],
        "subcommands": [["set", "show"]], "none": [[]]}
