"""100 runc containers started (and then deleted) 25 at a time, each attached by its
createRuntime hook and detached by poststop: circuit's hook, run by itself and handed to
circuit's fork server, against a shell hook that runs the bridge plugin directly (budget:
1.2x). Runs alternate, so drift hits both alike."""

import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hook import ANCHOR_HOOK, script_hooks

from harness import ForkServer, Host, Runc, bridge_conf, documented_hooks, make_rootfs

CONTAINERS = 100
AT_ONCE = 25
RUNS = 3
BUDGET = 1.2


def start_and_delete(runc: Runc, hooks: dict, tag: str) -> tuple[float, float]:
    """Seconds to start every container (all hooks done), then to delete them all."""
    with ThreadPoolExecutor(AT_ONCE) as pool:
        start = time.monotonic()
        started = list(pool.map(lambda i: runc.run(f"{tag}{i}", hooks).stdout,
                                range(CONTAINERS)))
        up = time.monotonic() - start
        start = time.monotonic()
        list(pool.map(runc.delete, started))
        down = time.monotonic() - start
    return up, down


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp))
        runc = Runc(host, make_rootfs(Path(tmp) / "rootfs"))
        server = ForkServer(Path(tmp))
        try:
            conf = host.conf(bridge_conf(subnet="10.100.0.0/23"))
            anchor = script_hooks(Path(tmp) / "anchor-hook", ANCHOR_HOOK.format(conf=conf))
            env = {"CNI_CONF": conf, "CIRCUIT_STATE_DIR": host.state}
            circuit = documented_hooks("createRuntime", env)
            served = documented_hooks("createRuntime", env | {"CIRCUIT_FORKSERVER": server.socket})
            times = {f"{name} {way}": [] for name in ("anchor", "circuit", "served")
                     for way in ("up", "down")}
            for run in range(RUNS):
                for name, hooks in (("anchor", anchor), ("circuit", circuit), ("served", served)):
                    up, down = start_and_delete(runc, hooks, f"{name[0]}{run}-")
                    times[f"{name} up"].append(up)
                    times[f"{name} down"].append(down)
        finally:
            declined = [line for line in server.output().splitlines() if "declined" in line]
            server.stop()
            runc.close()
            host.close()
    if declined:  # then the fork server's figures are not what they say
        print(f"the fork server declined {len(declined)} hooks: {declined[0]}")
    m = {k: statistics.median(v) for k, v in times.items()}
    ratio, served = m["circuit up"] / m["anchor up"], m["served up"] / m["anchor up"]
    print(f"{CONTAINERS} runc containers, {AT_ONCE} at a time, median of {RUNS}: start with "
          f"shell hooks {m['anchor up']:.2f} s, with circuit {m['circuit up']:.2f} s (ratio "
          f"{ratio:.2f}), with circuit's fork server {m['served up']:.2f} s (ratio {served:.2f}; "
          f"budget {BUDGET}); delete {m['anchor down']:.2f} s against {m['circuit down']:.2f} s "
          f"and {m['served down']:.2f} s")
    return 0 if served <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
