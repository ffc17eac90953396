"""Death to removal on IPVS: circuit lb agent against keepalived 2.2.7 (Debian), same run.

One throwaway host netns, three busybox httpd backends; two IPVS services over the same three
targets: circuit's (VIP .1, `lb check web http:/health.html`) and keepalived's (VIP .2,
virtual_server with HTTP_GET on the same path, inhibit_on_failure: weight 0 as circuit does).
The same interval, timeout and fall (keepalived: delay_loop = delay_before_retry = interval,
retry = fall - 1). Each trial kills one backend's httpd and polls the kernel's table
(/proc/PID/net/ip_vs) until each service has the target at weight 0 (or gone); then starts it
again and waits until both have put it back. keepalived is stopped (SIGTERM, SIGKILL past 5 s)
and its checker child gone at the end.

Needs IPVS: run it in the kernel tier's VM, `scripts/kernel-vm python bench/health_ipvs.py`
(`just bench` does); `--trials N` (15 by default). Each checker's first failure after it
started is a warm-up not counted: keepalived's took out a target after two failed checks there
(1.1 and 1.5 s in two runs), after three in every later trial."""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import circuit_netlink

circuit_netlink.lean_pyroute2()  # first: pyroute2's modules then load without its __init__
import circuit_lb.cli  # noqa: E402, F401  (warm: each circuit command is a fork of this)
import circuit_net.cli  # noqa: E402, F401

from harness import (  # noqa: E402
    Host,
    dispatcher,
    http_backends,
    ipvs_table,
    lb_agent,
    states,
    terminate,
    wait_for,
)

TRIALS = int(sys.argv[sys.argv.index("--trials") + 1]) if "--trials" in sys.argv else 15
INTERVAL, TIMEOUT, FALL, RISE = 1, 0.5, 3, 1
CIRCUIT_VIP, KEEPALIVED_VIP = "10.100.99.1:80", "10.100.99.2:80"
REAL_SERVER = """
    real_server {ip} 80 {{
        weight 1
        HTTP_GET {{
            url {{
                path /health.html
                status_code 200
            }}
            connect_timeout {timeout}
            retry {retry}
            delay_before_retry {interval}
        }}
    }}"""
CONF = """global_defs {{
    router_id circuit_bench
}}
virtual_server {vip} 80 {{
    delay_loop {interval}
    lb_algo rr
    lb_kind NAT
    protocol TCP
    inhibit_on_failure
{servers}
}}
"""


def keepalived(host: Host, tmp: Path, ips: list[str]) -> subprocess.Popen:
    """keepalived's checker in the host netns, in the foreground, logging to a file."""
    conf = tmp / "keepalived.conf"
    conf.write_text(CONF.format(vip=KEEPALIVED_VIP.split(":")[0], interval=INTERVAL,
                                servers="".join(REAL_SERVER.format(
                                    ip=ip, timeout=TIMEOUT, retry=FALL - 1, interval=INTERVAL)
                                    for ip in ips)))
    log = open(tmp / "keepalived.log", "w")  # noqa: SIM115  (closed with the process)
    proc = subprocess.Popen(
        ["nsenter", f"--net={host.netns}", "keepalived", "--dont-fork", "--log-console",
         "--no-syslog", "--check", "-f", conf, "-p", tmp / "keepalived.pid",
         "-c", tmp / "checkers.pid"], stdin=subprocess.DEVNULL, stdout=log,
        stderr=subprocess.STDOUT)
    proc.log, proc.checker_pidfile = log, tmp / "checkers.pid"
    return proc


def stop_keepalived(proc: subprocess.Popen) -> None:
    """SIGTERM (SIGKILL past 5 s), then its checker child must be gone too."""
    checker = None
    if proc.checker_pidfile.exists():
        checker = int(proc.checker_pidfile.read_text() or 0) or None
    terminate(proc)
    proc.log.close()
    if checker is not None:
        assert wait_for(lambda: not alive(checker), timeout=5), f"checker {checker} lingers"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def weight(pid: int, vip: str, target: str) -> int:
    return ipvs_table(pid).get(vip, {}).get(target, 0)


def main() -> int:
    if not Path("/proc/net/ip_vs").exists():
        print("bench/health_ipvs.py needs IPVS: run it as scripts/kernel-vm python "
              "bench/health_ipvs.py", file=sys.stderr)
        return 1
    Host.fork_circuit = True
    dispatcher()
    circuit_times: list[float] = []
    keepalived_times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        host = Host(tmp)
        made: dict = {}
        ka = None
        try:
            made = http_backends(host, tmp)
            ips = [b.ip for b in made.values()]
            host.circuit("lb", "create", "web", CIRCUIT_VIP)
            host.circuit("lb", "add", "web", *(f"{ip}:80" for ip in ips))
            host.circuit("lb", "check", "web", "http:/health.html", "--interval", INTERVAL,
                         "--timeout", TIMEOUT, "--fall", FALL, "--rise", RISE)
            with lb_agent(host, tmp / "agent.log") as agent:
                ka = keepalived(host, tmp, ips)
                assert wait_for(lambda: KEEPALIVED_VIP in ipvs_table(agent.pid), timeout=60), \
                    (tmp / "keepalived.log").read_text()
                assert wait_for(lambda: set(states(host).values()) == {"up"}, timeout=60)
                for trial in range(TRIALS + 1):
                    backend = list(made.values())[trial % len(made)]
                    target = f"{backend.ip}:80"
                    backend.stop()
                    died = time.monotonic()
                    gone: dict[str, float] = {}
                    while len(gone) < 2 and time.monotonic() - died < 30:
                        for vip in (CIRCUIT_VIP, KEEPALIVED_VIP):
                            if vip not in gone and weight(agent.pid, vip, target) == 0:
                                gone[vip] = time.monotonic() - died
                        time.sleep(0.005)
                    assert len(gone) == 2, f"trial {trial}: only {gone} removed {target}"
                    if trial:
                        circuit_times.append(gone[CIRCUIT_VIP])
                        keepalived_times.append(gone[KEEPALIVED_VIP])
                    print(f"trial {trial or 'warm-up'}: circuit {gone[CIRCUIT_VIP]:.2f} s, "
                          f"keepalived {gone[KEEPALIVED_VIP]:.2f} s", flush=True)
                    backend.start()
                    assert wait_for(lambda t=target: all(
                        weight(agent.pid, vip, t) == 1 for vip in (CIRCUIT_VIP, KEEPALIVED_VIP)),
                        timeout=30), f"trial {trial}: {target} not back"
                    time.sleep(INTERVAL)  # a new phase against both checkers' timers
                stop_keepalived(ka)
                ka = None
            host.circuit("lb", "delete", "web")
        finally:
            if ka is not None:
                stop_keepalived(ka)
            for backend in made.values():
                backend.stop()
            host.close()
    c, k = statistics.median(circuit_times), statistics.median(keepalived_times)
    print(f"death to removal on IPVS, interval {INTERVAL} s, fall {FALL}, http check, "
          f"{TRIALS} trials: circuit median {c:.2f} s (runs {min(circuit_times):.2f}-"
          f"{max(circuit_times):.2f}), keepalived 2.2.7 median {k:.2f} s (runs "
          f"{min(keepalived_times):.2f}-{max(keepalived_times):.2f}); ratio {c / k:.2f} "
          "(goal <= 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
