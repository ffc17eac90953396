"""circuit lb add NAME - (5,000 targets, nftables backend) against `nft -f` loading the same
ruleset, and lb list --details against `nft list table`, in a throwaway netns."""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from measure import VIP, lb_targets, ratio_line, timed

from harness import CIRCUIT, Host

RUNS = 5


def main() -> int:
    stdin = "".join(f"{t} 1\n" for t in lb_targets())
    times: dict[str, list[float]] = {k: [] for k in ("load", "add", "nft_list", "list")}
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp))
        circuit = (CIRCUIT, "--state", host.state)
        try:
            for _ in range(RUNS):  # each run: circuit and anchor back to back
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
    print(f"{len(stdin.splitlines())} targets, nftables backend, {RUNS} runs")
    print(ratio_line("lb add -", times["add"], times["load"], "nft -f (same ruleset)",
                     budget=1.5))
    print(ratio_line("lb list --details", times["list"], times["nft_list"], "nft list table"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
