"""circuit-dns's server against dnsmasq serving the same names, in the same run: queries per
second (dnsperf at its default 100 queries outstanding; goal: at least half dnsmasq's) and
p50/p99 latency at a load both sustain (dnsperf -v -Q; goal: p99 at most twice dnsmasq's),
from a container on the network; and how soon a name is answerable after its connect returns
(goal: 50 ms)."""

import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import Host

NAMES = 50
ROUNDS = 3
SECONDS = 8
LATENCY_QPS = 2000
FRESH = 20
SUBNET = "10.131.0"
GATEWAY = f"{SUBNET}.1"
DNSMASQ = f"{SUBNET}.250"  # beside the gateway on the bridge

ASK_UNTIL_ANSWERED = """
import socket, sys, time
from dnslib import DNSRecord
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(0.005)
for line in sys.stdin:
    name = line.strip()
    start = time.monotonic()
    while True:
        sock.sendto(DNSRecord.question(name).pack(), (sys.argv[1], 53))
        try:
            reply = DNSRecord.parse(sock.recv(4096))
        except socket.timeout:
            continue
        if reply.rr:
            break
    print(f"{(time.monotonic() - start) * 1000:.3f}", flush=True)
"""


def dnsperf(client, server: str, queries: Path, *options: str) -> str:
    return client.run("dnsperf", "-s", server, "-d", queries, "-l", SECONDS, *options).stdout


def qps(out: str) -> float:
    return float(re.search(r"Queries per second:\s+([\d.]+)", out)[1])


def latencies(out: str) -> tuple[float, float, int]:
    """p50 and p99 in ms of dnsperf -v's per-query lines, and how many were not NOERROR."""
    found = [(m[1], float(m[2]) * 1000)
             for m in re.finditer(r"^> (\w+) \S+ \S+ ([\d.]+)$", out, re.M)]
    values = sorted(v for _, v in found)
    bad = sum(1 for code, _ in found if code != "NOERROR")
    return values[len(values) // 2], values[int(len(values) * 0.99)], bad


def connect_cost(host: Host) -> str:
    """connect + disconnect on the DNS network (names stored, the server reloaded twice)
    against the same on a --no-dns network, interleaved: what DNS adds to an attach."""
    host.circuit("network", "create", "plain", "--subnet", "10.132.0.0/24", "--no-dns")
    c = host.container()
    times = {"red": [], "plain": []}
    for _ in range(FRESH):
        for network in times:
            start = time.monotonic()
            host.circuit("network", "connect", c.pid, network, "--name", "probe")
            host.circuit("network", "disconnect", c.pid, network)
            times[network].append((time.monotonic() - start) * 1000)
    extra = [d - p for d, p in zip(times["red"], times["plain"], strict=True)]
    return (f"connect + disconnect: no DNS {statistics.median(times['plain']):.0f} ms, DNS "
            f"{statistics.median(times['red']):.0f} ms ({statistics.median(extra):+.1f} ms, "
            f"runs {min(extra):+.0f}...{max(extra):+.0f}), {NAMES + FRESH + 1} names on it")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp))
        dnsmasq = None
        try:
            host.circuit("network", "create", "red", "--subnet", f"{SUBNET}.0/24")
            client = host.container()
            host.circuit("network", "connect", client.pid, "red", "--name", "client")
            peers = [host.container() for _ in range(NAMES)]
            for i, peer in enumerate(peers):
                host.circuit("network", "connect", peer.pid, "red", "--name", f"c{i}")
            ips = {f"c{i}": peer.addresses()[0] for i, peer in enumerate(peers)}
            hosts = Path(tmp) / "dnsmasq.hosts"
            hosts.write_text("".join(f"{ip} {name} {name}.red\n" for name, ip in ips.items()))
            host.run("ip", "addr", "add", f"{DNSMASQ}/24", "dev", "cni-red")
            dnsmasq = subprocess.Popen(
                ["nsenter", f"--net={host.netns}", "dnsmasq", "--no-daemon", "--no-resolv",
                 "--no-hosts", f"--addn-hosts={hosts}", f"--listen-address={DNSMASQ}",
                 "--bind-interfaces", "--local=/red/", "--user=root", "--cache-size=1000"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            queries = Path(tmp) / "queries"
            queries.write_text("".join(f"{n} A\n{n}.red A\n" for n in ips))
            time.sleep(0.5)
            for server in (GATEWAY, DNSMASQ):  # both answer every name, as NOERROR
                _, _, bad = latencies(client.run("dnsperf", "-s", server, "-d", queries, "-n",
                                                 "1", "-v").stdout)
                assert bad == 0, f"{server} did not answer every name"

            runs = {"circuit": [], "dnsmasq": []}
            for _ in range(ROUNDS):
                for name, server in (("circuit", GATEWAY), ("dnsmasq", DNSMASQ)):
                    rate = qps(dnsperf(client, server, queries))
                    p50, p99, bad = latencies(dnsperf(client, server, queries, "-v", "-Q",
                                                      LATENCY_QPS))
                    runs[name].append((rate, p50, p99, bad))
            for name, values in runs.items():
                print(f"{name}: qps {[round(v[0]) for v in values]}, p50 ms "
                      f"{[round(v[1], 3) for v in values]}, p99 ms "
                      f"{[round(v[2], 3) for v in values]}, not NOERROR {[v[3] for v in values]}")
            qps_ratio = statistics.median(c[0] / d[0] for c, d in zip(
                runs["circuit"], runs["dnsmasq"], strict=True))
            p99_ratio = statistics.median(c[2] / d[2] for c, d in zip(
                runs["circuit"], runs["dnsmasq"], strict=True))
            print(f"qps: circuit {statistics.median(v[0] for v in runs['circuit']):.0f}, dnsmasq "
                  f"{statistics.median(v[0] for v in runs['dnsmasq']):.0f}; ratio "
                  f"{qps_ratio:.2f} - goal >= 0.5: {'met' if qps_ratio >= 0.5 else 'MISSED'}")
            print(f"p99 at {LATENCY_QPS} qps: circuit "
                  f"{statistics.median(v[2] for v in runs['circuit']):.3f} ms, dnsmasq "
                  f"{statistics.median(v[2] for v in runs['dnsmasq']):.3f} ms; ratio "
                  f"{p99_ratio:.2f} - goal <= 2: {'met' if p99_ratio <= 2 else 'MISSED'}")

            asker = subprocess.Popen(
                ["nsenter", f"--net={client.netns}", sys.executable, "-c", ASK_UNTIL_ANSWERED,
                 GATEWAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            waits = []
            for i in range(FRESH):
                fresh = host.container()
                host.circuit("network", "connect", fresh.pid, "red", "--name", f"fresh{i}")
                asker.stdin.write(f"fresh{i}\n")
                asker.stdin.flush()
                waits.append(float(asker.stdout.readline()))
            asker.stdin.close()
            asker.wait()
            print(f"answerable after connect returns: median {statistics.median(waits):.2f} ms, "
                  f"max {max(waits):.2f} ms over {FRESH} - goal <= 50 ms: "
                  f"{'met' if max(waits) <= 50 else 'MISSED'}")
            print(connect_cost(host))
        finally:
            if dnsmasq is not None:
                dnsmasq.kill()
                dnsmasq.wait()
            host.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
