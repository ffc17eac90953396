"""circuit lb add NAME - (5,000 targets) and lb list --details against ipvsadm -R and -Ln;
each by itself and handed to circuit's fork server.

Needs IPVS: `just bench` runs it in the kernel tier's VM where the host has none."""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from measure import VIP, difference_line, lb_targets, ratio_line, timed

from harness import CIRCUIT, ForkServer, Host

RUNS = 7


def main() -> int:
    targets = lb_targets()
    rules = f"-A -t {VIP} -s rr\n" + "".join(f"-a -t {VIP} -r {t} -m -w 1\n" for t in targets)
    stdin = "".join(f"{t} 1\n" for t in targets)
    times: dict[str, list[float]] = {k: [] for k in (
        "restore", "add", "ln", "list", "python", "empty", "served add", "served list")}
    with tempfile.TemporaryDirectory() as tmp:
        host, server = Host(Path(tmp)), ForkServer(Path(tmp), timeout=600)
        host.run("ip", "addr", "add", VIP.split(":")[0] + "/32", "dev", "lo")
        circuit = (CIRCUIT, "--state", host.state)
        served = {"env": {**os.environ, "CIRCUIT_FORKSERVER": server.socket}}
        try:
            for _ in range(RUNS):  # each run: anchor and circuit back to back
                times["restore"].append(timed(lambda: host.run("ipvsadm", "-R", input=rules)))
                times["ln"].append(timed(lambda: host.run("ipvsadm", "-Ln")))
                host.run("ipvsadm", "-C")
                for way, kw in (("", {}), ("served ", served)):
                    host.circuit("lb", "create", "bench", VIP)
                    times[f"{way}add"].append(timed(lambda kw=kw: host.run(
                        *circuit, "lb", "add", "bench", "-", input=stdin, **kw)))
                    times[f"{way}list"].append(timed(lambda kw=kw: host.run(
                        *circuit, "lb", "list", "--details", **kw)))
                    host.circuit("lb", "delete", "bench")
                times["python"].append(timed(lambda: host.run(sys.executable, "-c", "pass")))
                times["empty"].append(timed(lambda: host.run(*circuit, "lb", "list",
                                                             "--details")))
        finally:
            server.stop()
            host.close()
    print(f"{len(targets)} targets, IPVS, {RUNS} runs")
    print(ratio_line("lb add -", times["add"], times["restore"], "ipvsadm -R", budget=1.5))
    print(ratio_line("lb add - through the fork server", times["served add"],
                     times["restore"], "ipvsadm -R", budget=1.5))
    print(ratio_line("lb list --details", times["list"], times["ln"], "ipvsadm -Ln", budget=3,
                     floor=times["python"]))
    print(ratio_line("lb list --details through the fork server", times["served list"],
                     times["ln"], "ipvsadm -Ln", budget=3, floor=times["python"]))
    # circuit's fixed part (interpreter, imports, docopt, the store) is `lb list` of no service
    print(ratio_line("lb list --details over its fixed part", times["list"], times["ln"],
                     "ipvsadm -Ln", floor=times["empty"]))
    print(difference_line("lb list --details of no service", times["empty"], times["python"],
                          "python -c pass"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
