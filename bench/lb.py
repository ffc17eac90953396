"""circuit lb add NAME - (5,000 targets) and lb list --details against ipvsadm -R and -Ln.

Needs IPVS: `just bench` runs it in the kernel tier's VM where the host has none."""

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import CIRCUIT, Host

TARGETS = 5000
RUNS = 3
VIP = "10.100.99.1:80"


def timed(call) -> float:
    start = time.monotonic()
    call()
    return (time.monotonic() - start) * 1000


def main() -> int:
    targets = [f"10.{200 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}:80" for i in range(TARGETS)]
    rules = f"-A -t {VIP} -s rr\n" + "".join(f"-a -t {VIP} -r {t} -m -w 1\n" for t in targets)
    stdin = "".join(f"{t} 1\n" for t in targets)
    times: dict[str, list[float]] = {k: [] for k in ("restore", "add", "ln", "list", "python")}
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp))
        host.run("ip", "addr", "add", VIP.split(":")[0] + "/32", "dev", "lo")
        try:
            for _ in range(RUNS):
                times["restore"].append(timed(lambda: host.run("ipvsadm", "-R", input=rules)))
                times["ln"].append(timed(lambda: host.run("ipvsadm", "-Ln")))
                host.run("ipvsadm", "-C")
                host.circuit("lb", "create", "bench", VIP)
                times["add"].append(timed(lambda: host.run(
                    CIRCUIT, "--state", host.state, "lb", "add", "bench", "-", input=stdin)))
                times["list"].append(timed(lambda: host.run(
                    CIRCUIT, "--state", host.state, "lb", "list", "--details")))
                host.circuit("lb", "delete", "bench")
                times["python"].append(timed(lambda: host.run(sys.executable, "-c", "pass")))
        finally:
            host.close()
    m = {k: statistics.median(v) for k, v in times.items()}
    print(f"{len(targets)} targets, median of {RUNS}: ipvsadm -R {m['restore']:.0f} ms, "
          f"lb add - {m['add']:.0f} ms, ratio {m['add'] / m['restore']:.2f} (budget 3)")
    print(f"list: ipvsadm -Ln {m['ln']:.0f} ms, lb list --details {m['list']:.0f} ms, "
          f"ratio {m['list'] / m['ln']:.2f} (budget 3)")
    print(f"floor: the interpreter's start alone (python -c pass) {m['python']:.0f} ms, "
          f"{m['python'] / m['ln']:.2f}x ipvsadm -Ln")
    return 0


if __name__ == "__main__":
    sys.exit(main())
