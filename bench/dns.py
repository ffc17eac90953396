"""circuit-dns's server against dnsmasq serving the same names, in the same run: queries per
second (dnsperf at its default 100 queries outstanding; goal: at least half dnsmasq's) and
p50/p99 latency at a load both sustain (dnsperf -v -Q; goal: p99 at most twice dnsmasq's),
from a container on the network; how soon a name is answerable after its connect returns
(goal: 50 ms); and qps while a container connects and disconnects (each a reload) against
qps without, for both servers (dnsmasq's names do not change: its drop is the connects' own
work on the shared cores). `bench/dns.py --names 1000`: the same with 1,000 names on the network."""

import concurrent.futures
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import Host

NAMES = int(sys.argv[sys.argv.index("--names") + 1]) if "--names" in sys.argv else 50
ROUNDS = 3
SECONDS = 8
LATENCY_QPS = 2000
FRESH = 20
SUBNET = "10.131.0.0/21"  # room for 1,000 names and more
GATEWAY = "10.131.0.1"
DNSMASQ = "10.131.7.250"  # beside the gateway on the bridge, past what host-local hands out

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
    if not values:
        return 0.0, 0.0, -1  # nothing answered
    bad = sum(1 for code, _ in found if code != "NOERROR")
    return values[len(values) // 2], values[int(len(values) * 0.99)], bad


def churn(host: Host, client, queries: Path) -> str:
    """dnsperf's qps while another container connects to the network and disconnects, over
    and over (every attach and detach a reload), against the same without: circuit's server,
    then dnsmasq (its names fixed: what the connects' own work on the shared cores costs)."""
    fresh = host.container()
    found = {}
    for name, server in (("circuit", GATEWAY), ("dnsmasq", DNSMASQ)):
        quiet = qps(dnsperf(client, server, queries))
        perf = subprocess.Popen(["nsenter", f"--net={client.netns}", "dnsperf", "-s", server,
                                 "-d", queries, "-l", str(SECONDS)], stdout=subprocess.PIPE,
                                text=True)
        cycles = 0
        while perf.poll() is None:
            host.circuit("network", "connect", fresh.pid, "red", "--name", "churn")
            host.circuit("network", "disconnect", fresh.pid, "red")
            cycles += 1
        found[name] = (qps(perf.stdout.read()), quiet, cycles)
    (busy, quiet, cycles), (raw_busy, raw_quiet, raw_cycles) = found["circuit"], found["dnsmasq"]
    return (f"qps during churn: {busy:.0f} against {quiet:.0f} quiet ({busy / quiet:.2f}x), "
            f"{cycles} connect + disconnect in {SECONDS} s; dnsmasq {raw_busy:.0f} against "
            f"{raw_quiet:.0f} ({raw_busy / raw_quiet:.2f}x, {raw_cycles} cycles); circuit during "
            f"churn {busy / raw_busy:.2f}x dnsmasq during churn, {NAMES} names")


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
            host.circuit("network", "create", "red", "--subnet", SUBNET)
            client = host.container()
            host.circuit("network", "connect", client.pid, "red", "--name", "client")
            # past 100 names, several a container: a Linux neighbour table holds 1,024 entries
            # in all namespaces together, so 1,000 containers lose packets to the gateway
            each = max(1, NAMES // 100)
            peers = [host.container() for _ in range(NAMES // each)]

            def connect(j: int) -> None:
                aliases = [a for i in range(j * each, (j + 1) * each) for a in ("--alias", f"c{i}")]
                host.circuit("network", "connect", peers[j].pid, "red", *aliases)

            with concurrent.futures.ThreadPoolExecutor(4) as pool:  # connects wait on locks
                list(pool.map(connect, range(len(peers))))
            ips = {f"c{i}": peers[i // each].addresses()[0] for i in range(len(peers) * each)}
            hosts = Path(tmp) / "dnsmasq.hosts"
            hosts.write_text("".join(f"{ip} {name} {name}.red\n" for name, ip in ips.items()))
            host.run("ip", "addr", "add", f"{DNSMASQ}/21", "dev", "cni-red")
            dnsmasq = subprocess.Popen(
                ["nsenter", f"--net={host.netns}", "dnsmasq", "--no-daemon", "--no-resolv",
                 "--no-hosts", f"--addn-hosts={hosts}", f"--listen-address={DNSMASQ}",
                 "--bind-interfaces", "--local=/red/", "--user=root", "--cache-size=1000"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            queries = Path(tmp) / "queries"
            queries.write_text("".join(f"{n} A\n{n}.red A\n" for n in ips))
            time.sleep(0.5)
            for server in (GATEWAY, DNSMASQ):  # both answer every name, as NOERROR
                out = client.run("dnsperf", "-s", server, "-d", queries, "-n", "1", "-v").stdout
                log = (host.state / "dns" / "server.log").read_text()[-1500:]
                assert latencies(out)[2] == 0, \
                    f"{server} did not answer every name: {out[-600:]}\nserver log: {log}"

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
            print(churn(host, client, queries))
            print(connect_cost(host))
        finally:
            if dnsmasq is not None:
                dnsmasq.kill()
                dnsmasq.wait()
            host.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
