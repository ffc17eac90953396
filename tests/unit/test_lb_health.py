"""lb health checks without root: what `lb check` refuses (one line, exit 3), how a record is
programmed while targets are down, ramping or all down (health.live), and exec checks' commands
run for real: arguments, environment, exit status, the process group killed."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from circuit_lb import agent, health

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("args, message", [
    (["tcp", "--interval", "0"], "0.1..3600"),
    (["tcp", "--interval", "fast"], "0.1..3600"),
    (["tcp", "--interval", "1", "--timeout", "2"], "no longer than the interval"),
    (["tcp", "--rise", "0"], "1..100"),
    (["tcp", "--fall", "x"], "1..100"),
    (["udp"], "use tcp, http:PATH"),
    (["http:healthz"], "absolute path"),
    (["http:/a b"], "absolute path"),
    (["http:/healthz=99"], "100..599"),
    (["http:/healthz=ok"], "100..599"),
    (["none", "--fall", "2"], "takes no"),
    (["none", "--sorry", "10.1.1.1:80"], "takes no"),
    (["exec:"], "exec: needs a command"),
    (["exec:   "], "exec: needs a command"),
    (["exec:no-such-check-program"], "not an executable file on PATH"),
    (["exec:/etc/passwd"], "not an executable file:"),
    (["exec:/"], "not an executable file:"),
    (["exec:/bin/true 'a"], "No closing quotation"),
    (["exec:" + "x" * 5000], "longer than 4096"),
    (["tcp", "--slow-start", "0"], "--slow-start '0': give seconds"),
    (["tcp", "--slow-start", "soon"], "--slow-start 'soon'"),
    (["tcp", "--sorry", "10.1.1.1"], "invalid sorry target '10.1.1.1'"),
    (["tcp", "--sorry", "10.1.1.1:0"], "sorry target"),
])
def test_bad_check_is_one_line_exit_3(tmp_path, args, message):
    proc = subprocess.run([BIN / "circuit", "--state", tmp_path, "lb", "check", "web", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 3 and message in proc.stderr, (args, proc.stderr)
    assert len(proc.stderr.splitlines()) == 1 and proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_exec_resolves_its_program_and_splits_like_a_shell():
    check = health.parse_check("exec:true 'a b' c", None, None, None, None, "30",
                               "[2001:db8::9]:80")
    program = check["command"][0]
    assert os.path.isabs(program) and os.access(program, os.X_OK)
    assert check["command"][1:] == ["a b", "c"]
    assert check["slow_start"] == 30 and check["sorry"] == {"addr": "2001:db8::9", "port": 80}
    health.check_check(check)
    with pytest.raises(ValueError):
        health.check_check({**check, "command": []})


RECORD = {"name": "web", "check": {"kind": "tcp"}, "targets": [
    {"addr": "10.0.0.2", "port": 80, "weight": 10, "forward": "masq"},
    {"addr": "10.0.0.3", "port": 80, "weight": 4, "forward": "masq"},
    {"addr": "10.0.0.4", "port": 80, "weight": 0, "forward": "masq"}]}


def weights(record):
    return {f"{t['addr']}:{t['port']}": t["weight"] for t in record["targets"]}


def test_live_down_ramping_and_sorry():
    state = {"targets": {"10.0.0.2:80": {"up": True, "ramp": 0.0},
                         "10.0.0.3:80": {"up": True}}}
    assert weights(health.live(RECORD, state)) == {"10.0.0.2:80": 1, "10.0.0.3:80": 4,
                                                   "10.0.0.4:80": 0}
    state["targets"]["10.0.0.2:80"]["ramp"] = 0.55
    assert weights(health.live(RECORD, state))["10.0.0.2:80"] == 5
    state["targets"]["10.0.0.3:80"]["up"] = False
    assert weights(health.live(RECORD, state)) == {"10.0.0.2:80": 5, "10.0.0.3:80": 0,
                                                   "10.0.0.4:80": 0}
    every = {"targets": {"10.0.0.2:80": {"up": False}, "10.0.0.3:80": {"up": False}}}
    assert health.live(RECORD, every) is RECORD  # no sorry: left as it is
    sorry = {**RECORD, "check": {"kind": "tcp", "sorry": {"addr": "10.0.0.9", "port": 8080}}}
    assert weights(health.live(sorry, every)) == {"10.0.0.2:80": 0, "10.0.0.3:80": 0,
                                                  "10.0.0.4:80": 0, "10.0.0.9:8080": 1}
    assert weights(health.live(sorry, state)) == weights(health.live(RECORD, state))


def script(tmp_path, body: str) -> list[str]:
    path = tmp_path / "check"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return [str(path)]


def target(command) -> agent.Target:
    one = agent.Target("web", "10.0.0.2", 8080, {})
    one.check = {"kind": "exec", "command": command}
    return one


def wait_exited(run, seconds=5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, run.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            return
        time.sleep(0.01)
    raise AssertionError("check command did not exit")


def test_exec_gets_the_target_as_arguments_and_environment(tmp_path):
    out = tmp_path / "out"
    run = agent.Run(target(script(tmp_path, f'echo "$# $1 $2 $CIRCUIT_TARGET_IP '
                                            f'$CIRCUIT_TARGET_PORT" > {out}; exit 3')), 0)
    wait_exited(run)
    assert run.result() == (False, "exit status 3")
    run.close()
    assert out.read_text() == "2 10.0.0.2 8080 10.0.0.2 8080\n"
    passing = agent.Run(target(["/bin/true"]), 0)
    wait_exited(passing)
    assert passing.result() == (True, "")
    passing.close()


def test_a_timed_out_exec_check_loses_its_whole_process_group(tmp_path):
    pids = tmp_path / "pids"
    run = agent.Run(target(script(tmp_path, f"sleep 30 & echo $$ $! > {pids}; wait")), 0)
    deadline = time.monotonic() + 5
    while not (pids.exists() and pids.read_text().endswith("\n")):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    shell, sleeper = map(int, pids.read_text().split())
    assert os.getpgid(sleeper) == run.pid == shell
    run.close()  # what the agent does on a timeout
    assert not Path(f"/proc/{shell}").exists()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{sleeper}/stat").exists() and \
            Path(f"/proc/{sleeper}/stat").read_text().split(") ")[1][0] not in "ZX":
        assert time.monotonic() < deadline, "the check's background child survived"
        time.sleep(0.01)
