"""circuit network connect + disconnect against the bridge plugin's ADD + DEL run directly
(budget: +30 ms), run by itself and handed to circuit's fork server, on a network with no
other attachment and again with 1,000 (records as circuit writes them, for a sleeping
process): circuit's own part must not grow with them."""

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

from harness import ForkServer, Host, bridge_conf, sh

RUNS = 20
OTHERS = 1000


def bridge(host: Host, conf: Path, command: str, container_id: str, netns: str) -> None:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "PATH": os.environ["PATH"]}
    with open(conf, "rb") as stdin:
        sh("nsenter", f"--net={host.netns}", "/usr/lib/cni/bridge", stdin=stdin, env=env)


def timed_runs(host: Host, conf: Path, c, server: ForkServer) -> dict[str, list[float]]:
    """RUNS of bridge ADD + DEL, circuit connect + disconnect, and the same through the fork
    server, back to back, in ms."""
    times = {"anchor": [], "circuit": [], "served": []}
    served = {"CIRCUIT_FORKSERVER": server.socket}
    for i in range(RUNS):
        start = time.monotonic()
        bridge(host, conf, "ADD", f"anchor{i}", c.netns)
        bridge(host, conf, "DEL", f"anchor{i}", c.netns)
        times["anchor"].append((time.monotonic() - start) * 1000)
        for name, env in (("circuit", None), ("served", served)):
            start = time.monotonic()
            host.circuit("network", "connect", c.pid, "sandbox", env=env)
            host.circuit("network", "disconnect", c.pid, "sandbox", env=env)
            times[name].append((time.monotonic() - start) * 1000)
    return times


def main() -> int:
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            host, server = Host(Path(tmp)), ForkServer(Path(tmp))
            try:
                conf = host.conf(bridge_conf(subnet="10.100.0.0/16"))
                host.circuit("network", "create", conf)
                c = host.container()
                empty = timed_runs(host, conf, c, server)
                store, me = Store(host.state), process(sleeper.pid)
                for i in range(OTHERS):
                    store.write(store.path("attachments", "sandbox", f"bench{i}@eth0.json"),
                                fake_attachment("sandbox", i, me.pid, me.start_time, "10.99"))
                full = timed_runs(host, conf, c, server)
            finally:
                server.stop()
                host.close()
    finally:
        sleeper.kill()
        sleeper.wait()
    print(difference_line("connect + disconnect", empty["circuit"], empty["anchor"],
                          "bridge ADD + DEL"))
    print(difference_line("the same through the fork server", empty["served"], empty["anchor"],
                          "bridge ADD + DEL", budget=30))
    print(difference_line(f"the same beside {OTHERS} attachments", full["circuit"],
                          full["anchor"], "bridge ADD + DEL"))
    for name in ("circuit", "served"):
        own, own_full = (statistics.median([c - a for c, a in zip(t[name], t["anchor"],
                                                                   strict=True)])
                         for t in (empty, full))
        print(f"circuit's own part ({name}) at {OTHERS} attachments against 0: "
              f"{own_full - own:+.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
