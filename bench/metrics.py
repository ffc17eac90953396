"""circuit metrics with 5,000 nftables LB targets and 1,000 shaped classes (500 attachments,
both directions; budget 300 ms), against the raw anchor reading the same objects in the same
run: `tc -s -batch` of `class show dev D` for each of the 1,000 devices and `nft -j list table
inet circuit_lb`; `python -c pass` as the floor; circuit by itself and through its fork server.

The attachments are records as circuit writes them (measure.fake_attachment) for one sleeping
process of the bench's, each with a real veth pair made by `ip -batch` in the host netns;
`circuit network qos set` shapes them (its HTB classes and IFB devices), `circuit lb add`
makes the targets."""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import VIP, fake_attachment, fake_network, lb_targets, ratio_line, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from circuit_common.store import Store

from harness import ForkServer, Host

ATTACHMENTS = 500  # 1,000 classes: one each way
RUNS = 5
BUDGET_MS = 300


def main() -> int:
    from circuit_common.proc import process
    from circuit_qos.devices import ifb_name

    sleeper = subprocess.Popen(["sleep", "3600"])
    with tempfile.TemporaryDirectory() as tmp:
        host, server = Host(Path(tmp)), ForkServer(Path(tmp))
        served = {"CIRCUIT_FORKSERVER": server.socket}
        try:
            me = process(sleeper.pid)
            store = Store(str(host.state))
            store.write(store.path("networks", "shaped.json"),
                        fake_network("shaped", "10.99.0.0/16"))
            veths = []
            for i in range(ATTACHMENTS):
                record = fake_attachment("shaped", i, me.pid, me.start_time, "10.99")
                store.write(store.path("attachments", "shaped", f"bench{i}@eth0.json"), record)
                veths.append(record["result"]["interfaces"][0]["name"])
            (host.tmp / "links").write_text("".join(
                f"link add {v} type veth peer name p{v[4:]}\nlink set {v} up\n"
                f"link set p{v[4:]} up\n" for v in veths))
            host.run("ip", "-batch", host.tmp / "links")
            host.circuit("network", "qos", "set", "--rate", "5000", "--ceiling", "6000",
                         "shaped")
            host.circuit("lb", "create", "bench", VIP, "--backend", "nftables")
            host.circuit("lb", "add", "bench", "-",
                         input="".join(f"{t} 1\n" for t in lb_targets()))
            (host.tmp / "classes").write_text("".join(
                f"class show dev {d}\n" for v in veths for d in (v, ifb_name(v))))
            text = host.circuit("metrics").stdout
            classes = len(re.findall(r"^circuit_qos_bytes_total\{", text, re.M))
            targets = len(re.findall(r"^circuit_lb_target_connections_total\{", text, re.M))
            assert (classes, targets) == (2 * ATTACHMENTS, len(lb_targets())), (classes, targets)

            times = {k: [] for k in ("anchor", "circuit", "served", "python")}
            for _ in range(RUNS):  # interleaved, so drift hits all alike
                times["anchor"].append(timed(lambda: (
                    host.run("tc", "-s", "-batch", host.tmp / "classes"),
                    host.run("nft", "-j", "list", "table", "inet", "circuit_lb"))))
                times["circuit"].append(timed(lambda: host.circuit("metrics")))
                times["served"].append(timed(lambda: host.circuit("metrics", env=served)))
                times["python"].append(timed(lambda: host.run(sys.executable, "-c", "pass")))
            durations = dict(re.findall(
                r'^circuit_scrape_collector_duration_seconds\{collector="(\w+)"\} (\S+)$',
                host.circuit("metrics").stdout, re.M))
            host.circuit("lb", "delete", "bench")
            host.circuit("network", "qos", "reset", "shaped")
        finally:
            server.stop()
            host.close()
            sleeper.kill()
            sleeper.wait()
    anchor = "tc -s class show (1,000 devices) + nft -j list table"
    lines = [ratio_line(f"circuit metrics, {len(lb_targets())} targets and {2 * ATTACHMENTS} "
                        f"classes, {RUNS} runs", times["circuit"], times["anchor"], anchor,
                        floor=times["python"]),
             ratio_line("the same through the fork server", times["served"], times["anchor"],
                        anchor)]
    best = min(sorted(times["circuit"])[RUNS // 2], sorted(times["served"])[RUNS // 2])
    lines.append(f"budget {BUDGET_MS} ms: {'met' if best <= BUDGET_MS else 'MISSED'} "
                 f"({best:.0f} ms, the better median)")
    print(*lines, sep="\n")
    print("  collectors (one scrape): " + ", ".join(
        f"{name} {float(seconds) * 1000:.0f} ms" for name, seconds in sorted(durations.items())))
    return 1 if "MISSED" in lines[-1] else 0


if __name__ == "__main__":
    sys.exit(main())
