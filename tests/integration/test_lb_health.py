"""circuit lb's health checks with real traffic on the nftables backend: busybox httpd backends
on a circuit bridge, `circuit lb agent` started by the test in its host netns (ended by PID on
every path), one backend's httpd killed and started again in the same netns (same address);
slow start, an exec check and a sorry target. Parse errors are unit tests (test_lb_health)."""

import json
import shutil
import signal
import time

import pytest

from harness import (
    Backend,
    answered_by,
    http_backends,
    lb_agent,
    lb_health,
    snapshot,
    states,
    wait_for,
)

VIP = "10.100.99.1"
INTERVAL, FALL, RISE = 0.5, 2, 2
SLOW_START = 2  # weight 2 is 1 for its first 2 s back (ramped once a second)


@pytest.fixture
def backends(host, tmp_path):
    made = http_backends(host, tmp_path)
    try:
        yield made
    finally:
        for backend in made.values():
            backend.stop()


@pytest.fixture
def agent(host, tmp_path):
    """`circuit lb agent` in the host netns; SIGTERM at the end (SIGKILL if it lingers)."""
    with lb_agent(host, tmp_path / "agent.log") as proc:
        yield proc


def test_a_dead_backend_leaves_and_comes_back_with_its_weight(host, backends, agent):
    host.circuit("lb", "create", "web", f"{VIP}:80", "--scheduler", "wrr")
    weights = {"alpha": 2, "beta": 2, "gamma": 1}
    host.circuit("lb", "add", "web", "-", input="".join(
        f"{backends[n].ip}:80 {w}\n" for n, w in weights.items()))
    host.circuit("lb", "check", "web", "http:/index.html", "--interval", INTERVAL,
                 "--timeout", "0.4", "--rise", RISE, "--fall", FALL, "--slow-start", SLOW_START)
    assert wait_for(lambda: set(states(host).values()) == {"up"}, timeout=5)
    assert answered_by(host.netns, VIP, 25) == {"alpha": 10, "beta": 10, "gamma": 5}

    alpha = f"{backends['alpha'].ip}:80"
    backends["alpha"].stop()
    died = time.monotonic()
    assert wait_for(lambda: states(host)[alpha] == "down", timeout=FALL * INTERVAL + 1)
    removal = time.monotonic() - died
    assert removal <= FALL * INTERVAL + 1, removal
    # none reaches it and none fails (http_get_bodies asserts every request was answered)
    assert answered_by(host.netns, VIP, 30) == {"beta": 20, "gamma": 10}
    assert lb_health(host)[alpha]["failures"] >= FALL
    listed = host.circuit("lb", "list", "--details")
    assert listed.stderr == ""  # weight 0 in the kernel is no drift
    assert f"{alpha}" in listed.stdout and "weight 2" in listed.stdout  # the stored weight kept
    stats = host.circuit("lb", "list", "--stats").stdout
    assert next(line for line in stats.splitlines() if alpha in line).split()[-5:-3] == \
        ["down", "checked"]

    # an lb command while it is down keeps it out of the kernel
    host.circuit("lb", "add", "web", f"{backends['gamma'].ip}:80", "--weight", "1")
    assert answered_by(host.netns, VIP, 3) == {"beta": 2, "gamma": 1}

    backends["alpha"].start()
    started = time.monotonic()
    assert wait_for(lambda: states(host)[alpha] == "up", timeout=RISE * INTERVAL + 2)
    assert time.monotonic() - started <= RISE * INTERVAL + 2
    # slow start: back with weight 1 of its 2, then all of it
    assert answered_by(host.netns, VIP, 4) == {"alpha": 1, "beta": 2, "gamma": 1}
    assert wait_for(lambda: "slow_start" not in lb_health(host)[alpha], timeout=SLOW_START + 2)
    assert answered_by(host.netns, VIP, 25) == {"alpha": 10, "beta": 10, "gamma": 5}

    agent.send_signal(signal.SIGTERM)
    assert agent.wait(5) == 0
    agent.log.seek(0)
    lines = agent.log.read().splitlines()
    assert len(lines) == 2, lines  # only the two changes
    assert lines[0].startswith(f"service web: target {alpha} down after {FALL} failed checks")
    assert lines[1] == f"service web: target {alpha} up after {RISE} passed checks"

    host.circuit("lb", "check", "web", "none")
    assert "health" not in json.loads(host.circuit("lb", "list", "--format", "json").stdout)[0]
    host.circuit("lb", "delete", "web")
    assert not list((host.state / "lb-health").iterdir())


def test_every_target_down_then_a_sorry_target_exec_checked(host, backends, agent, tmp_path):
    """An exec check (a script getting the target as its last two arguments) takes the
    targets out as they die; every one down: the service is left as it is, until a sorry
    target is set, which takes the traffic until a target is up again."""
    check = tmp_path / "check-web"
    check.write_text(f'#!/bin/sh\nexec {shutil.which("busybox")} wget -q -O /dev/null '
                     '"http://$1:$2/health.html"\n')
    check.chmod(0o755)
    options = ["--interval", INTERVAL, "--timeout", "0.4", "--rise", RISE, "--fall", FALL]
    host.circuit("lb", "create", "web", f"{VIP}:80")
    host.circuit("lb", "add", "web", *(f"{b.ip}:80" for b in backends.values()))
    host.circuit("lb", "check", "web", f"exec:{check}", *options)
    assert wait_for(lambda: set(states(host).values()) == {"up"}, timeout=3)
    for backend in list(backends.values())[1:]:
        backend.stop()
    assert wait_for(lambda: list(states(host).values()).count("down") == 2, timeout=3)
    assert answered_by(host.netns, VIP, 4) == {"alpha": 4}
    backends["alpha"].stop()
    assert wait_for(lambda: set(states(host).values()) == {"down"}, timeout=3)
    kernel = host.run("nft", "-j", "list", "chain", "inet", "circuit_lb", "svc/web").stdout
    assert all(b.ip in kernel for b in backends.values())  # all three kept in rotation

    sorry = Backend(host, tmp_path, "sorry")
    try:
        host.circuit("lb", "check", "web", f"exec:{check}", *options, "--sorry",
                     f"{sorry.ip}:80")
        assert answered_by(host.netns, VIP, 3) == {"sorry": 3}
        refused = host.circuit("lb", "add", "web", f"{sorry.ip}:80", check=False)
        assert refused.returncode == 3 and "sorry target" in refused.stderr
        backends["alpha"].start()
        assert wait_for(lambda: states(host)[f"{backends['alpha'].ip}:80"] == "up",
                        timeout=RISE * INTERVAL + 2)
        assert answered_by(host.netns, VIP, 3) == {"alpha": 3}
        kernel = host.run("nft", "-j", "list", "chain", "inet", "circuit_lb", "svc/web").stdout
        assert sorry.ip not in kernel
    finally:
        sorry.stop()


@pytest.mark.parametrize("args, message", [
    (["tcp", "--interval", "0"], "0.1..3600"),
    (["exec:/etc/passwd"], "not an executable file"),
    (["tcp", "--sorry", "10.100.10.2:80"], "one of its targets"),
    (["tcp", "--sorry", f"{VIP}:80"], "own address"),
    (["tcp", "--sorry", "[2001:db8::2]:80"], "IP version"),
])
def test_bad_check_is_one_line_and_changes_nothing(host, args, message):
    host.circuit("lb", "create", "web", f"{VIP}:80")
    host.circuit("lb", "add", "web", "10.100.10.2:80")
    before = snapshot(host.state)
    kernel = host.run("nft", "list", "table", "inet", "circuit_lb").stdout
    proc = host.circuit("lb", "check", "web", *args, check=False)
    assert proc.returncode == 3 and message in proc.stderr, (args, proc.stderr)
    assert len(proc.stderr.splitlines()) == 1 and proc.stdout == ""
    assert snapshot(host.state) == before
    assert host.run("nft", "list", "table", "inet", "circuit_lb").stdout == kernel
    missing = host.circuit("lb", "check", "nosuch", "tcp", check=False)
    assert missing.returncode == 4 and "no service named" in missing.stderr
