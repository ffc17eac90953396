"""circuit lb add NAME - (5,000 targets, nftables backend) against `nft -f` loading the same
ruleset, and lb list --details against `nft list table`, in a throwaway netns."""

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
    stdin = "".join(f"{t} 1\n" for t in targets)
    times: dict[str, list[float]] = {k: [] for k in ("load", "add", "nft_list", "list")}
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp))
        circuit = (CIRCUIT, "--state", host.state)
        try:
            for _ in range(RUNS):
                host.circuit("lb", "create", "bench", VIP, "--backend", "nftables")
                times["add"].append(timed(lambda: host.run(*circuit, "lb", "add", "bench", "-",
                                                           input=stdin)))
                times["list"].append(timed(lambda: host.run(*circuit, "lb", "list",
                                                            "--details")))
                ruleset = host.run("nft", "list", "table", "inet", "circuit_lb").stdout
                times["nft_list"].append(timed(lambda: host.run(
                    "nft", "list", "table", "inet", "circuit_lb")))
                host.circuit("lb", "delete", "bench")
                times["load"].append(timed(lambda text=ruleset: host.run("nft", "-f", "-",
                                                                          input=text)))
                host.run("nft", "delete", "table", "inet", "circuit_lb")
        finally:
            host.close()
    m = {k: statistics.median(v) for k, v in times.items()}
    print(f"{TARGETS} targets, nftables backend, median of {RUNS}: nft -f (same ruleset) "
          f"{m['load']:.0f} ms, lb add - {m['add']:.0f} ms, ratio {m['add'] / m['load']:.2f} "
          "(budget 1.5)")
    print(f"list: nft list table {m['nft_list']:.0f} ms, lb list --details {m['list']:.0f} ms, "
          f"ratio {m['list'] / m['nft_list']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
