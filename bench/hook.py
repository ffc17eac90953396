"""runc run -d → container answers ping: circuit's hook (run by itself, and handed to circuit's
fork server) against a shell hook running bridge."""

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import CIRCUIT, ForkServer, Host, Runc, bridge_conf, documented_hooks, make_rootfs, sh

RUNS = 20
IP = "10.100.10.2"  # host-local's range holds this one address, freed after every run
ANCHOR_HOOK = """#!/bin/sh
# The anchor: the bridge plugin executed directly from a runc hook.
state=$(cat)
id=$(echo "$state" | sed -n 's/.*"id": *"\\([^"]*\\)".*/\\1/p')
pid=$(echo "$state" | sed -n 's/.*"pid": *\\([0-9]*\\).*/\\1/p')
cmd=ADD; netns=/proc/$pid/ns/net
case "$state" in *'"status": *"stopped"'*|*'"status":"stopped"'*) cmd=DEL; netns="";; esac
CNI_COMMAND=$cmd CNI_CONTAINERID=$id CNI_NETNS=$netns CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \\
    /usr/lib/cni/bridge < {conf} > /dev/null
"""
SHAPED_ANCHOR_HOOK = """#!/bin/sh
# The shaped anchor: bridge, then bandwidth with bridge's result, executed directly.
state=$(cat)
id=$(echo "$state" | sed -n 's/.*"id": *"\\([^"]*\\)".*/\\1/p')
pid=$(echo "$state" | sed -n 's/.*"pid": *\\([0-9]*\\).*/\\1/p')
export CNI_CONTAINERID=$id CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni
shaping='"cniVersion": "0.3.0", "name": "sandbox", "type": "bandwidth", "ingressRate": 5000000,
    "ingressBurst": 50000, "egressRate": 5000000, "egressBurst": 50000'
case "$state" in
*'"status": *"stopped"'*|*'"status":"stopped"'*)
    echo "{{$shaping}}" | CNI_COMMAND=DEL /usr/lib/cni/bandwidth
    CNI_COMMAND=DEL /usr/lib/cni/bridge < {conf} > /dev/null;;
*)
    export CNI_NETNS=/proc/$pid/ns/net
    result=$(CNI_COMMAND=ADD /usr/lib/cni/bridge < {conf})
    echo "{{$shaping, \\"prevResult\\": $result}}" |
        CNI_COMMAND=ADD /usr/lib/cni/bandwidth > /dev/null;;
esac
"""


def one_address_conf(host: Host) -> Path:
    conf = bridge_conf()
    conf["ipam"] = {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}],
                    "ranges": [[{"subnet": "10.100.10.0/24", "rangeStart": IP, "rangeEnd": IP}]]}
    return host.conf(conf)


def time_to_ping(host: Host, runc: Runc, hooks: dict) -> float:
    start = time.monotonic()
    cid = runc.run("bench", hooks).stdout
    while sh("nsenter", f"--net={host.netns}", "busybox", "ping", "-c", "1", "-W", "1", IP,
             check=False).returncode != 0:
        pass
    elapsed = time.monotonic() - start
    runc.delete(cid)
    return elapsed * 1000


def hook_peak_rss_mb(host: Host, runc: Runc, conf: Path) -> float:
    """Peak RSS of one `circuit` hook attach, run as runc would (state on stdin)."""
    cid = runc.run("rss").stdout
    state = json.dumps({"ociVersion": "1.0.2", "id": cid, "pid": runc.pid(cid),
                        "status": "created"})
    env = {"CNI_CONF": str(conf), "CIRCUIT_STATE_DIR": str(host.state),
           "CIRCUIT_CNI_CACHE_DIR": str(host.cni_cache), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["nsenter", f"--net={host.netns}", CIRCUIT], input=state.encode(), env=env,
                   check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    runc.delete(cid)
    subprocess.run(["nsenter", f"--net={host.netns}", CIRCUIT, "hook", "detach"],
                   input=state.encode(), env=env, check=True)
    return peak


def script_hooks(path: Path, text: str) -> dict:
    path.write_text(text)
    path.chmod(0o755)
    entry = {"path": str(path), "env": ["PATH=/usr/bin:/bin:/usr/sbin:/sbin"]}
    return {"createRuntime": [entry], "poststop": [entry]}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp))
        runc = Runc(host, make_rootfs(Path(tmp) / "rootfs"))
        server = ForkServer(Path(tmp))
        try:
            conf = one_address_conf(host)
            # stored before the anchor's bridge plugin leaves cni0 and its route behind, which
            # the hook's first create of the network would refuse as an overlapping host route
            host.circuit("network", "create", conf)
            anchor_hooks = script_hooks(Path(tmp) / "anchor-hook", ANCHOR_HOOK.format(conf=conf))
            shaped_hooks = script_hooks(Path(tmp) / "shaped-anchor-hook",
                                        SHAPED_ANCHOR_HOOK.format(conf=conf))
            env = {"CNI_CONF": conf, "CIRCUIT_STATE_DIR": host.state}
            circuit_hooks = documented_hooks("createRuntime", env)
            served_hooks = documented_hooks("createRuntime",
                                            env | {"CIRCUIT_FORKSERVER": server.socket})
            times = {k: [] for k in ("anchor", "circuit", "served", "shaped anchor",
                                     "shaped circuit", "shaped served")}
            for _ in range(RUNS):  # interleaved, so drift hits all alike
                times["anchor"].append(time_to_ping(host, runc, anchor_hooks))
                times["circuit"].append(time_to_ping(host, runc, circuit_hooks))
                times["served"].append(time_to_ping(host, runc, served_hooks))
            rss = hook_peak_rss_mb(host, runc, conf)
            host.circuit("network", "qos", "set", "--rate", "5mbit", "sandbox")
            for _ in range(RUNS):
                times["shaped anchor"].append(time_to_ping(host, runc, shaped_hooks))
                times["shaped circuit"].append(time_to_ping(host, runc, circuit_hooks))
                times["shaped served"].append(time_to_ping(host, runc, served_hooks))
        finally:
            declined = [line for line in server.output().splitlines() if "declined" in line]
            server.stop()
            runc.close()
            host.close()
    if declined:  # then the fork server's figures are not what they say
        print(f"the fork server declined {len(declined)} hooks: {declined[0]}")
    m = {k: statistics.median(v) for k, v in times.items()}
    a, c, f = m["anchor"], m["circuit"], m["served"]
    print(f"runc run -d → ping, median of {RUNS}: shell hook running bridge {a:.0f} ms, "
          f"circuit hook {c:.0f} ms: circuit adds {c - a:+.0f} ms; with the fork server "
          f"{f:.0f} ms: {f - a:+.0f} ms (budget +15 ms)")
    sa, sc, sf = m["shaped anchor"], m["shaped circuit"], m["shaped served"]
    print(f"with a 5 Mbit/s QoS policy: shell hook running bridge + bandwidth {sa:.0f} ms, "
          f"circuit hook {sc:.0f} ms: circuit adds {sc - sa:+.0f} ms; with the fork server "
          f"{sf:.0f} ms: {sf - sa:+.0f} ms (budget +25 ms)")
    print(f"circuit hook peak RSS: {rss:.1f} MB (budget 40 MB)")
    return 0 if f - a <= 15 and sf - sa <= 25 and rss <= 40 else 1


if __name__ == "__main__":
    sys.exit(main())
