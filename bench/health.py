"""circuit lb agent: the CPU it takes to check 1,000 targets every second (tcp checks), against
the raw anchor (a bare loop making the same non-blocking connections, 20 every 20 ms, each
polled and reset: the kernel's part of a check, which no checker avoids), and the time from a
backend's death to its removal from the kernel's numgen map (interval 1 s, fall 3), in a
throwaway netns. keepalived is not compared here: it needs IPVS, which this machine's
kernel lacks (the kernel tier's VM has it)."""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import CIRCUIT, Host, terminate

TARGETS = 1000
INTERVAL, FALL, RISE = 1, 3, 2
LISTEN = """
import socket, sys
servers = []
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4096)
    servers.append(s)
import selectors
sel = selectors.DefaultSelector()
for s in servers:
    sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.close()
"""

RAW = """
import select, socket, struct, sys, time
targets = [(a, int(p)) for a, p in (t.rsplit(":", 1) for t in sys.argv[1:])]
reset = struct.pack("ii", 1, 0)
poll = select.poll()
start = time.monotonic()
for tick in range(10**9):
    for addr in targets[tick % 50 * 20:tick % 50 * 20 + 20]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
        s.connect_ex(addr)
        poll.register(s, select.POLLOUT)
        poll.poll(500)
        poll.unregister(s)
        s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        s.close()
    time.sleep(max(start + (tick + 1) * 0.02 - time.monotonic(), 0))
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks (USER_HZ)


def listener(host: Host, *ports: int) -> subprocess.Popen:
    return subprocess.Popen(["nsenter", f"--net={host.netns}", sys.executable, "-c", LISTEN,
                             *map(str, ports)], stdin=subprocess.DEVNULL)


def cpu_share(proc: subprocess.Popen) -> float:
    """The share of a core proc takes over 10 s, after 3 s to settle."""
    time.sleep(3)
    cpu, wall = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(10)
    return (cpu_seconds(proc.pid) - cpu) / (time.monotonic() - wall)


def agent(host: Host) -> subprocess.Popen:
    return subprocess.Popen(["nsenter", f"--net={host.netns}", CIRCUIT, "--state", host.state,
                             "lb", "agent"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def stop(*procs) -> None:
    for proc in procs:
        if proc is not None:
            terminate(proc)


def in_map(host: Host, target: str) -> bool:
    chain = host.run("nft", "-j", "list", "chain", "inet", "circuit_lb", "svc/dead").stdout
    return target.split(":")[0] in json.dumps(json.loads(chain))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp))
        procs: list[subprocess.Popen] = []
        try:
            host.run("ip", "route", "add", "local", "10.250.0.0/16", "dev", "lo")
            procs.append(listener(host, 8080))
            targets = [f"10.250.{i // 250}.{i % 250 + 1}:8080" for i in range(TARGETS)]
            host.circuit("lb", "create", "many", "10.100.99.1:80", "--backend", "nftables")
            host.circuit("lb", "add", "many", "-", input="\n".join(targets) + "\n")
            host.circuit("lb", "check", "many", "tcp", "--interval", INTERVAL, "--timeout",
                         "0.5")
            raw = subprocess.Popen(["nsenter", f"--net={host.netns}", sys.executable, "-c", RAW,
                                    *targets], stdin=subprocess.DEVNULL)
            procs.append(raw)
            floor = cpu_share(raw)
            stop(raw)
            checker = agent(host)
            procs.append(checker)
            share = cpu_share(checker)
            health = json.loads(host.circuit("lb", "list", "--format", "json").stdout)[0]
            fresh = sum(h["state"] == "up" and time.time() - h["last_check"] < 2 * INTERVAL
                        for h in health["health"].values())
            print(f"{TARGETS} targets, tcp checks every {INTERVAL} s: agent CPU "
                  f"{share * 100:.1f} % of a core ({fresh} up and checked in the last "
                  f"{2 * INTERVAL} s; budget 5 %); raw anchor {floor * 100:.1f} %: "
                  f"{share / floor:.2f}x")
            stop(checker)
            host.circuit("lb", "delete", "many")

            # death to removal: three listeners, one killed
            ports = (8081, 8082, 8083)
            dying = listener(host, ports[0])
            procs += [dying, listener(host, *ports[1:])]
            host.circuit("lb", "create", "dead", "10.100.99.2:80", "--backend", "nftables")
            host.circuit("lb", "add", "dead", *(f"10.250.9.{i}:{p}"
                                                 for i, p in enumerate(ports, 1)))
            host.circuit("lb", "check", "dead", "tcp", "--interval", INTERVAL, "--timeout",
                         "0.5", "--fall", FALL, "--rise", RISE)
            checker = agent(host)
            procs.append(checker)
            time.sleep(2 * INTERVAL)
            removals = []
            for _ in range(3):
                assert in_map(host, "10.250.9.1:8081")
                stop(dying)
                died = time.monotonic()
                while in_map(host, "10.250.9.1:8081"):
                    time.sleep(0.01)
                removals.append(time.monotonic() - died)
                dying = listener(host, ports[0])
                procs.append(dying)
                while not in_map(host, "10.250.9.1:8081"):
                    time.sleep(0.05)
            print(f"death to removal, interval {INTERVAL} s, fall {FALL}: "
                  + ", ".join(f"{r:.2f} s" for r in removals)
                  + " (a refused connection fails at once: (fall - 1) .. fall intervals)")
        finally:
            stop(*procs)
            host.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
