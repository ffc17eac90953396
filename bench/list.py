"""circuit network list with 2,000 attachments on two networks (budget: 60 ms), against the
same command at 0 attachments and `python -c pass` (the floor), medians from one run.

The attachments are records as circuit writes them, for containers that are this benchmark's
own sleeping processes (their pids alive, so each peer is read as attached): list reads the
store and /proc, no plugin runs."""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import fake_attachment, fake_network

from circuit_common.store import Store

CIRCUIT = str(Path(sys.executable).parent / "circuit")
RUNS = 20
PER_NETWORK = 1000
BUDGET_MS = 60


def median_ms(cmd: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.monotonic()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append((time.monotonic() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    from circuit_common.proc import process

    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        me = process(sleeper.pid)
        with tempfile.TemporaryDirectory() as empty, tempfile.TemporaryDirectory() as full:
            store = Store(full)
            for name, prefix in (("alpha", "10.201"), ("beta", "10.202")):
                store.write(store.path("networks", f"{name}.json"),
                            fake_network(name, f"{prefix}.0.0/16"))
                for i in range(PER_NETWORK):
                    store.write(store.path("attachments", name, f"bench{i}@eth0.json"),
                                fake_attachment(name, i, me.pid, me.start_time, prefix))
            floor = median_ms([sys.executable, "-c", "pass"])
            at_zero = median_ms([CIRCUIT, "--state", empty, "network", "list"])
            at_full = median_ms([CIRCUIT, "--state", full, "network", "list"])
    finally:
        sleeper.kill()
        sleeper.wait()
    verdict = "within" if at_full <= BUDGET_MS else "over"
    print(f"network list, median of {RUNS}: {at_full:.0f} ms at {2 * PER_NETWORK} attachments "
          f"({verdict} the {BUDGET_MS} ms budget), {at_zero:.0f} ms at 0; "
          f"python -c pass {floor:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
