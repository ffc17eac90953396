"""circuit network connect + disconnect against the bridge plugin's ADD + DEL run directly
(budget: +30 ms), on a network with no other attachment and again with 1,000 (records as
circuit writes them, for a sleeping process): circuit's own part must not grow with them."""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from measure import difference_line, fake_attachment

from circuit_common.proc import process
from circuit_common.store import Store

from harness import Host, bridge_conf, sh

RUNS = 20
OTHERS = 1000


def bridge(host: Host, conf: Path, command: str, container_id: str, netns: str) -> None:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "PATH": os.environ["PATH"]}
    with open(conf, "rb") as stdin:
        sh("nsenter", f"--net={host.netns}", "/usr/lib/cni/bridge", stdin=stdin, env=env)


def timed_runs(host: Host, conf: Path, c) -> tuple[list[float], list[float]]:
    """RUNS of (bridge ADD + DEL, circuit connect + disconnect), back to back, in ms."""
    anchor, circuit = [], []
    for i in range(RUNS):
        start = time.monotonic()
        bridge(host, conf, "ADD", f"anchor{i}", c.netns)
        bridge(host, conf, "DEL", f"anchor{i}", c.netns)
        anchor.append((time.monotonic() - start) * 1000)
        start = time.monotonic()
        host.circuit("network", "connect", c.pid, "sandbox")
        host.circuit("network", "disconnect", c.pid, "sandbox")
        circuit.append((time.monotonic() - start) * 1000)
    return anchor, circuit


def main() -> int:
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            host = Host(Path(tmp))
            try:
                conf = host.conf(bridge_conf(subnet="10.100.0.0/16"))
                host.circuit("network", "create", conf)
                c = host.container()
                anchor, circuit = timed_runs(host, conf, c)
                store, me = Store(host.state), process(sleeper.pid)
                for i in range(OTHERS):
                    store.write(store.path("attachments", "sandbox", f"bench{i}@eth0.json"),
                                fake_attachment("sandbox", i, me.pid, me.start_time, "10.99"))
                anchor_full, circuit_full = timed_runs(host, conf, c)
            finally:
                host.close()
    finally:
        sleeper.kill()
        sleeper.wait()
    print(difference_line("connect + disconnect", circuit, anchor, "bridge ADD + DEL",
                          budget=30))
    print(difference_line(f"the same beside {OTHERS} attachments", circuit_full, anchor_full,
                          "bridge ADD + DEL"))
    own = statistics.median([c - a for c, a in zip(circuit, anchor, strict=True)])
    own_full = statistics.median([c - a for c, a in zip(circuit_full, anchor_full,
                                                         strict=True)])
    print(f"circuit's own part at {OTHERS} attachments against 0: {own_full - own:+.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
