"""circuit lb's health checks on the IPVS backend with real traffic: three busybox httpd
backends, `circuit lb agent` (a fork of the warm process) checking them; one httpd killed and
started again in the same netns, back with a slow start; then all down, a sorry target. The
kernel's table is read from /proc/AGENT/net/ip_vs."""

import signal
import time

from harness import (
    Backend,
    answered_by,
    connect_in,
    get_on,
    http_backends,
    ipvs_table,
    lb_agent,
    states,
    wait_for,
)

VIP = "10.100.99.1"
INTERVAL, FALL, RISE = 0.5, 2, 2
SLOW_START = 2  # weight 2 is 1 for its first 2 s back (ramped once a second)


def test_a_dead_ipvs_target_gets_weight_0_drains_and_comes_back(host, tmp_path):
    made = http_backends(host, tmp_path)
    try:
        with lb_agent(host, tmp_path / "agent.log") as agent:
            dead_and_back(host, made, agent, tmp_path)
    finally:
        for backend in made.values():
            backend.stop()


def dead_and_back(host, backends, agent, tmp_path):
    host.circuit("lb", "create", "web", f"{VIP}:80", "--scheduler", "wrr")
    weights = {"alpha": 2, "beta": 2, "gamma": 1}
    host.circuit("lb", "add", "web", "-", input="".join(
        f"{backends[n].ip}:80 {w}\n" for n, w in weights.items()))
    host.circuit("lb", "check", "web", "http:/health.html", "--interval", INTERVAL,
                 "--timeout", "0.4", "--rise", RISE, "--fall", FALL, "--slow-start", SLOW_START)
    assert "ipvs" in host.circuit("lb", "list").stdout
    kernel = {f"{backends[n].ip}:80": w for n, w in weights.items()}
    assert wait_for(lambda: set(states(host).values()) == {"up"}, timeout=10)
    assert ipvs_table(agent.pid) == {f"{VIP}:80": kernel}
    assert answered_by(host.netns, VIP, 25) == {"alpha": 10, "beta": 10, "gamma": 5}

    # five connections held open (one wrr round: alpha and beta twice, gamma once)
    held = [connect_in(host.netns, VIP, 80) for _ in range(5)]
    assert wait_for(lambda: backends["alpha"].serving() == 2)  # accepted before the kill
    alpha = f"{backends['alpha'].ip}:80"
    backends["alpha"].stop()
    died = time.monotonic()
    assert wait_for(lambda: ipvs_table(agent.pid)[f"{VIP}:80"].get(alpha, 0) == 0,
                    timeout=FALL * INTERVAL + 1, interval=0.01)
    removal = time.monotonic() - died
    assert removal <= FALL * INTERVAL + 1, removal
    # none reaches it and none fails (http_get_bodies asserts every request was answered)
    assert answered_by(host.netns, VIP, 30) == {"beta": 20, "gamma": 10}
    # the connections it had drain: its httpd's children still answer them
    assert sorted(get_on(sock) for sock in held) == ["alpha", "alpha", "beta", "beta", "gamma"]
    assert ipvs_table(agent.pid)[f"{VIP}:80"].get(alpha, 0) == 0
    assert states(host)[alpha] == "down"
    assert host.circuit("lb", "list").stderr == ""  # weight 0 in the kernel is no drift

    backends["alpha"].start()
    started = time.monotonic()
    # back with weight 1 (slow start), then its own 2
    assert wait_for(lambda: ipvs_table(agent.pid)[f"{VIP}:80"] == {**kernel, alpha: 1},
                    timeout=RISE * INTERVAL + 2, interval=0.01)
    assert time.monotonic() - started <= RISE * INTERVAL + 2
    assert states(host)[alpha] == "up"
    assert wait_for(lambda: ipvs_table(agent.pid)[f"{VIP}:80"] == kernel,
                    timeout=SLOW_START + 2, interval=0.01)
    assert answered_by(host.netns, VIP, 25) == {"alpha": 10, "beta": 10, "gamma": 5}

    # every target down: a sorry target (a fourth httpd) alone, until one is back
    sorry = Backend(host, tmp_path, "sorry")
    try:
        host.circuit("lb", "check", "web", "http:/health.html", "--interval", INTERVAL,
                     "--timeout", "0.4", "--rise", RISE, "--fall", FALL, "--slow-start",
                     SLOW_START, "--sorry", f"{sorry.ip}:80")
        for backend in backends.values():
            backend.stop()
        assert wait_for(lambda: ipvs_table(agent.pid)[f"{VIP}:80"] == {
            **dict.fromkeys(kernel, 0), f"{sorry.ip}:80": 1}, timeout=FALL * INTERVAL + 3)
        assert answered_by(host.netns, VIP, 3) == {"sorry": 3}
        backends["beta"].start()
        beta = f"{backends['beta'].ip}:80"
        assert wait_for(lambda: ipvs_table(agent.pid)[f"{VIP}:80"] in ({
            **dict.fromkeys(kernel, 0), beta: w} for w in (1, 2)), timeout=RISE * INTERVAL + 3)
        assert answered_by(host.netns, VIP, 2) == {"beta": 2}
    finally:
        sorry.stop()

    agent.send_signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    agent.log.seek(0)
    lines = agent.log.read().splitlines()
    assert len(lines) == 6, lines  # only the changes: alpha down, up, all down, beta up
    assert lines[0].startswith(f"service web: target {alpha} down after {FALL} failed checks")
    assert lines[1] == f"service web: target {alpha} up after {RISE} passed checks"
    host.circuit("lb", "delete", "web")
