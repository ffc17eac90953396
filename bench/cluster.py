"""The etcd scale-out's budgets (#17), each against an anchor in the same run, on the tests'
multi-host lab (tests/harness/cluster.py: a switch netns, 3 host netns, a 3-member etcd):

1. `network connect` to a cluster network (VXLAN overlay; this host already holds its subnet
   lease, so not the first attach) against the same connect to a local bridge network made from
   flags, on the same host with the same --state etcds:// (the lab's etcd is TLS with client
   certificates) (budget: cluster ≤ local + 20 ms);
   also against a local network with --no-masquerade, the same plugin work (an overlay's
   bridge does not masquerade; a local one's iptables rules cost it ≈ 15 ms a connect).
   Also: connect + disconnect pairs, the first attach on a host (it leases a subnet through
   etcd; no budget), and the same local network under a plain directory --state (what etcd
   state costs a command that does not use it).
2. `circuit cluster sync` (one whole command) on host 0 while etcd holds 50 hosts' entries: the
   lab's 3 and 47 simulated as records (hosts/<h>, alive/<h> bound to a lease of their own,
   subnets/blue/<subnet>, ATTACHMENTS attachments/<h>/blue/<cid>@eth0 each, in the value shapes
   member.py and sync.py write). Budget ≤ 0.5 s for the pass that finds them (it programs a
   VXLAN peer for each); the no-change pass after it and `python -c pass` of the same run are
   reported too, and again connect and the first attach with the 50 hosts in etcd.

No agent runs: each pass is the command's own. Every python started here keeps its bytecode
in the temp dir (PYTHONPYCACHEPREFIX), so a venv without .pyc files, or with sources edited
since, is measured as compiled once. The simulated records are written through
etcd's JSON gateway by this script run again inside host 0's netns (`--etcd-writer`, a
process of its own reading its requests from stdin); the machine's own namespace never reaches
etcd. Everything lives in the lab's namespaces and temp dir and is removed on every path."""

import base64
import hashlib
import http.client
import json
import os
import ssl
import sys
import time

RUNS = 15  # connect runs (part 1)
SYNC_RUNS = 9  # sync runs (part 2)
SIMULATED = 47  # with the lab's 3: 50 hosts
ATTACHMENTS = 20  # per simulated host
CONNECT_BUDGET = 20  # ms over the local network's connect
SYNC_BUDGET = 500  # ms for the whole `circuit cluster sync`
OVERLAY_SUBNET = "10.200.0.0/16"
FIRST_SUBNET = "10.210.0.0/16"
TXN_OPS = 100  # puts per transaction (etcd's --max-txn-ops is 128)


# -- the writer, run inside host 0's netns -------------------------------------------------------

def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def etcd_writer(endpoint: str, cafile: str, certfile: str, keyfile: str) -> int:
    """Apply stdin's plan to etcd at endpoint over one TLS connection (the lab's CA and client
    certificate): {"add": [{"alive": [key,
    address], "puts": [[key, value], ...]}, ...]} grants each host a lease (TTL 1 h), binds its
    alive key to it and puts the rest in transactions of TXN_OPS; {"remove": {"prefixes": [...],
    "keys": [...], "alive": PREFIX}} revokes the leases of the alive keys below PREFIX, then
    deletes the prefixes and keys."""
    plan = json.load(sys.stdin)
    host, _, port = endpoint.rpartition(":")
    context = ssl.create_default_context(cafile=cafile)
    context.load_cert_chain(certfile, keyfile)
    conn = http.client.HTTPSConnection(host, int(port), timeout=30, context=context)

    def post(method: str, body: dict) -> dict:
        conn.request("POST", f"/v3/{method}", json.dumps(body),
                     {"Content-Type": "application/json"})
        answer = conn.getresponse()
        text = answer.read().decode()
        if answer.status != 200:
            sys.exit(f"etcd {method}: HTTP {answer.status}: {text[:300]}")
        return json.loads(text)

    puts = []
    for sim in plan.get("add", []):
        lease = post("lease/grant", {"TTL": 3600, "ID": 0})["ID"]
        key, address = sim["alive"]
        puts.append({"request_put": {"key": _b64(key), "value": _b64(address), "lease": lease}})
        puts += [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in sim["puts"]]
    for i in range(0, len(puts), TXN_OPS):
        post("kv/txn", {"compare": [], "success": puts[i:i + TXN_OPS]})
    remove = plan.get("remove")
    if remove:
        alive = remove["alive"]
        kvs = post("kv/range", {"key": _b64(alive), "range_end": _b64(_end(alive))}).get("kvs", [])
        for lease in {kv["lease"] for kv in kvs if kv.get("lease")}:
            post("lease/revoke", {"ID": lease})
        for prefix in remove["prefixes"]:
            post("kv/deleterange", {"key": _b64(prefix), "range_end": _b64(_end(prefix))})
        for key in remove["keys"]:
            post("kv/deleterange", {"key": _b64(key)})
    conn.close()
    return 0


# -- the simulated hosts ------------------------------------------------------------------------

def simulated_hosts(prefix: str) -> list[dict]:
    """The writer's "add" plan: SIMULATED hosts, each with a lease of network blue (a /24 from
    10.200.10.0 up, clear of the lab's hosts') and ATTACHMENTS containers on it."""
    now = time.time()
    hosts = []
    for k in range(SIMULATED):
        name, address = f"sim{k:02d}", f"10.99.1.{k + 1}"
        subnet = f"10.200.{10 + k}.0/24"
        puts = [(f"{prefix}/hosts/{name}",
                 json.dumps({"name": name, "address": address, "joined": now - 3600,
                             "ttl": 10, "lastSeen": now}, sort_keys=True)),
                (f"{prefix}/subnets/blue/{subnet.replace('/', '-')}",
                 json.dumps({"network": "blue", "subnet": subnet, "host": name,
                             "address": address, "leased": now - 3600}))]
        for j in range(ATTACHMENTS):
            cid = hashlib.sha256(f"{name}/{j}".encode()).hexdigest()
            summary = {"host": name, "network": "blue", "containerId": cid, "ifName": "eth0",
                       "ips": [f"10.200.{10 + k}.{j + 2}/24"], "pid": 4000 + j,
                       "target": cid[:12]}
            puts.append((f"{prefix}/attachments/{name}/blue/{cid}@eth0",
                         json.dumps(summary, sort_keys=True)))
        hosts.append({"alive": [f"{prefix}/alive/{name}", address], "puts": puts})
    return hosts


def removal(prefix: str, added: list[dict]) -> dict:
    return {"alive": f"{prefix}/alive/sim",
            "prefixes": [f"{prefix}/hosts/sim", f"{prefix}/attachments/sim"],
            "keys": [k for h in added for k, _ in h["puts"] if "/subnets/" in k]}


# -- the benchmark ------------------------------------------------------------------------------

def main() -> int:
    import statistics
    import tempfile
    from pathlib import Path

    from measure import difference_line, timed

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from harness import CIRCUIT
    from harness.cluster import CLIENT_PORT, Lab

    def spread(ms: list[float]) -> str:
        return f"{statistics.median(ms):.0f} ms (runs {min(ms):.0f}-{max(ms):.0f})"

    def absolute_line(what: str, ms: list[float], budget: float) -> str:
        return (f"{what}: {spread(ms)} - budget {budget:g} ms: "
                f"{'met' if statistics.median(ms) <= budget else 'MISSED'}")

    notes: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="circuit-bench-cluster-") as tmp:
        # every python this script starts (circuit, python -c pass) keeps the bytecode it
        # compiles in the temp dir and reads it from there: a command is measured as an
        # installed circuit runs (compiled once), not compiling the modules of a venv without
        # .pyc files, or whose sources changed since, again on each start
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
        lab = Lab(Path(tmp) / "lab")
        try:
            h0 = lab.hosts[0]
            plain_state = Path(tmp) / "plain-state"

            def plain(*args, check=True):
                """circuit on host 0 with a directory --state (no etcd)."""
                proc = h0.run(CIRCUIT, "--state", plain_state, *args, check=False,
                              env=h0._env())
                if check and proc.returncode != 0:
                    raise AssertionError(f"circuit {args} failed: {proc.stderr}")
                return proc

            def local_network(run, name: str, subnet: str, masquerade: bool = True) -> None:
                """`network create NAME --subnet` (run: h0.circuit or plain)."""
                flags = ["--subnet", subnet] + ([] if masquerade else ["--no-masquerade"])
                run("network", "create", name, *flags)

            def writer(plan: dict) -> None:
                h0.run(sys.executable, Path(__file__).resolve(), "--etcd-writer",
                       f"{h0.address}:{CLIENT_PORT}", lab.tls.cafile, *lab.tls.client,
                       input=json.dumps(plan), timeout=120)

            for i, h in enumerate(lab.hosts):
                h.circuit("cluster", "join", "--address", h.address, "--name", f"h{i}",
                          "--ttl", "3600")
            h0.circuit("network", "create", "blue", "--subnet", OVERLAY_SUBNET,
                       "--overlay", "vxlan")
            local_network(h0.circuit, "red", "10.201.0.0/16")
            local_network(h0.circuit, "pink", "10.203.0.0/16", masquerade=False)
            local_network(plain, "green", "10.202.0.0/16")
            for h in lab.hosts:
                h.circuit("cluster", "sync")
            # the other hosts and host 0 lease their subnets of blue with a container each;
            # a container each on red, pink and green keeps the four networks alike
            for h in lab.hosts:
                h.circuit("network", "connect", h.container().pid, "blue")
            h0.circuit("network", "connect", h0.container().pid, "red")
            h0.circuit("network", "connect", h0.container().pid, "pink")
            plain("network", "connect", h0.container().pid, "green")
            for _ in range(2):  # the first round publishes, the second sees the others'
                for h in lab.hosts:
                    h.circuit("cluster", "sync")
            c = h0.container()  # the one the runs connect and disconnect

            def connect_run(times: dict, tag: str = "") -> None:
                """Connect, then disconnect, c to red, pink, blue and green, each run starting
                with the next of them."""
                kinds = [("local", h0.circuit, "red"), ("nomasq", h0.circuit, "pink"),
                         ("cluster", h0.circuit, "blue"), ("plain", plain, "green")]
                turn = len(times[f"local{tag}"]) % len(kinds)
                for kind, run, network in kinds[turn:] + kinds[:turn]:
                    for what in ("connect", "disconnect"):
                        key = f"{kind}{'' if what == 'connect' else ' disconnect'}{tag}"
                        times[key].append(timed(
                            lambda run=run, what=what, network=network:
                            run("network", what, c.pid, network)))

            def first_attach(times: dict, tag: str = "") -> None:
                """A new cluster network's first attach on host 0; then the network is
                deleted and a pass gives its lease back, for the next run."""
                h0.circuit("network", "create", "first", "--subnet", FIRST_SUBNET,
                           "--overlay", "vxlan")
                times[f"first{tag}"].append(
                    timed(lambda: h0.circuit("network", "connect", c.pid, "first")))
                h0.circuit("network", "disconnect", c.pid, "first")
                h0.circuit("network", "delete", "first")
                h0.circuit("cluster", "sync")
                assert not (h0.state / "cluster" / "leases" / "first.json").exists(), \
                    "the pass did not give back the deleted network's lease"

            times: dict[str, list[float]] = {
                f"{kind}{what}{tag}": [] for kind in ("local", "nomasq", "cluster", "plain")
                for what in ("", " disconnect") for tag in ("", "50")}
            times |= {k: [] for k in ("first", "first50", "sync", "sync again", "python")}

            # part 1: connect with the lab's 3 hosts
            for _ in range(RUNS):
                connect_run(times)
                first_attach(times)

            # part 2: sync (and connect again) with 50 hosts in etcd
            prefix = lab.prefix
            peers = None
            for _ in range(SYNC_RUNS):
                added = simulated_hosts(prefix)
                writer({"add": added})
                times["sync"].append(timed(lambda: h0.circuit("cluster", "sync")))
                times["sync again"].append(timed(lambda: h0.circuit("cluster", "sync")))
                times["python"].append(timed(lambda: h0.run(sys.executable, "-c", "pass")))
                if peers is None:  # the pass did the work: a route per other host
                    peers = len(h0.run("ip", "route", "show", "dev", "cvx1", "proto",
                                       "static").stdout.splitlines())
                    assert peers == SIMULATED + 2, f"{peers} peer routes on host 0"
                connect_run(times, "50")
                first_attach(times, "50")
                writer({"remove": removal(prefix, added)})
                h0.circuit("cluster", "sync")  # host 0 drops the simulated peers
            report = json.loads(h0.circuit("cluster", "sync", "--format", "json").stdout)
            assert report["overlays"] == 1 and not report["published"], report
        finally:
            lab.close()

    def pairs(kind: str, tag: str = "") -> list[float]:
        return [a + b for a, b in zip(times[f"{kind}{tag}"], times[f"{kind} disconnect{tag}"],
                                      strict=True)]

    hosts = f"{SIMULATED + 3} hosts in etcd"
    lines = [
        difference_line(f"connect to the cluster network (not the first attach), {RUNS} runs",
                        times["cluster"], times["local"], "connect to a local network",
                        budget=CONNECT_BUDGET),
        difference_line("  the same against a local network without masquerade (the same "
                        "plugin work)", times["cluster"], times["nomasq"],
                        "connect, --no-masquerade", budget=CONNECT_BUDGET),
        difference_line("connect + disconnect, cluster against local", pairs("cluster"),
                        pairs("local"), "local connect + disconnect"),
        difference_line("first attach on the host (leases a subnet through etcd)",
                        times["first"], times["local"], "connect to a local network"),
        difference_line("local network: etcd state against a directory state (connect)",
                        times["local"], times["plain"], "directory state"),
        difference_line(f"connect to the cluster network, {hosts}, {SYNC_RUNS} runs",
                        times["cluster50"], times["local50"], "connect to a local network",
                        budget=CONNECT_BUDGET),
        difference_line(f"first attach, {hosts}", times["first50"], times["local50"],
                        "connect to a local network"),
        absolute_line(f"cluster sync, {hosts} ({SIMULATED * ATTACHMENTS} of their attachments; "
                      f"the pass that finds them and programs {peers} peers), "
                      f"{SYNC_RUNS} runs", times["sync"], SYNC_BUDGET),
        absolute_line("cluster sync again (no change)", times["sync again"], SYNC_BUDGET),
        difference_line("cluster sync (finding the hosts) over python's start",
                        times["sync"], times["python"], "python -c pass"),
        difference_line("cluster sync (no change) over python's start",
                        times["sync again"], times["python"], "python -c pass"),
    ]
    print(*lines, sep="\n")
    print(f"  (disconnect: local {spread(times['local disconnect'])}, cluster "
          f"{spread(times['cluster disconnect'])}; connect + disconnect without masquerade "
          f"{spread(pairs('nomasq'))}; directory state: connect {spread(times['plain'])}, "
          f"disconnect {spread(times['plain disconnect'])})")
    for note in sorted(notes):
        print(f"  note: {note}")
    return 1 if any("MISSED" in line for line in lines) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--etcd-writer"]:
        sys.exit(etcd_writer(*sys.argv[2:6]))
    sys.exit(main())
