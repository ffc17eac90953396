"""circuit network connect + disconnect against the bridge plugin's ADD + DEL run directly."""

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import Host, bridge_conf, sh

RUNS = 20


def bridge(host: Host, conf: Path, command: str, container_id: str, netns: str) -> None:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "PATH": os.environ["PATH"]}
    with open(conf, "rb") as stdin:
        sh("nsenter", f"--net={host.netns}", "/usr/lib/cni/bridge", stdin=stdin, env=env)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp))
        try:
            conf = host.conf(bridge_conf())
            netconf = json.loads(conf.read_text())
            host.circuit("network", "create", conf)
            c = host.container()
            times = {"anchor": [], "circuit": []}
            for i in range(RUNS):
                start = time.monotonic()
                bridge(host, conf, "ADD", f"anchor{i}", c.netns)
                bridge(host, conf, "DEL", f"anchor{i}", c.netns)
                times["anchor"].append((time.monotonic() - start) * 1000)
                start = time.monotonic()
                host.circuit("network", "connect", c.pid, netconf["name"])
                host.circuit("network", "disconnect", c.pid, netconf["name"])
                times["circuit"].append((time.monotonic() - start) * 1000)
        finally:
            host.close()
    a, c = statistics.median(times["anchor"]), statistics.median(times["circuit"])
    print(f"connect + disconnect, median of {RUNS}: bridge ADD + DEL {a:.0f} ms, "
          f"circuit {c:.0f} ms, ratio {c / a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
