#!/usr/bin/env bash
# `just demo`: circuit's main job on this machine, inside a throwaway network namespace:
# two busybox runc containers attached by circuit's hook, a ping between them, QoS, and a
# load balancer over the two (IPVS, or nftables where the kernel has no IPVS). Everything it
# makes is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
CIRCUIT="$repo/.venv/bin/circuit"
work=$(mktemp -d /tmp/circuit-demo.XXXXXX)
export CIRCUIT_CNI_CACHE_DIR="$work/cni"  # libcni's result copies stay in the demo's dir too
host="circuit-demo-$$"
ids=()
cleanup() {
    for id in "${ids[@]}"; do nsenter --net="/run/netns/$host" runc delete --force "$id" 2>/dev/null || true; done
    ip netns del "$host" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$host"
ip -n "$host" link set lo up
in_host() { nsenter --net="/run/netns/$host" "$@"; }
say() { printf '\n$> %s\n' "$*"; }
circuit() { say circuit "$@"; in_host "$CIRCUIT" --state "$work/state" "$@"; }

cat > "$work/sandbox.conf" <<JSON
{
    "cniVersion": "0.3.0",
    "name": "sandbox",
    "type": "bridge",
    "bridge": "cni0",
    "ipMasq": true,
    "isGateway": true,
    "ipam": {
        "type": "host-local",
        "subnet": "10.100.10.0/24",
        "dataDir": "$work/ipam",
        "routes": [ { "dst": "0.0.0.0/0" } ]
    }
}
JSON

# A busybox rootfs and two bundles whose createRuntime/poststop hooks run circuit
# (the hooks section of docs/runc-hooks.md).
mkdir -p "$work/rootfs/bin" "$work/rootfs"/{proc,sys,dev,tmp,etc,www}
cp /bin/busybox "$work/rootfs/bin/"
for applet in sh sleep ping httpd ip; do ln -s busybox "$work/rootfs/bin/$applet"; done
for name in web-00 web-01; do
    mkdir -p "$work/$name"
    echo "$name" > "$work/$name/index.html"
    (cd "$work/$name" && runc spec)
    .venv/bin/python - "$work" "$name" "$CIRCUIT" <<'PY'
import json, sys
work, name, circuit = sys.argv[1:]
path = f"{work}/{name}/config.json"
config = json.load(open(path))
config["process"].update(terminal=False, args=["httpd", "-f", "-p", "80", "-h", "/www"])
config["process"]["capabilities"] = {k: v + ["CAP_NET_RAW"]
                                     for k, v in config["process"]["capabilities"].items()}
config["root"] = {"path": f"{work}/rootfs", "readonly": True}
config["mounts"].append({"destination": "/www", "type": "bind", "source": f"{work}/{name}",
                         "options": ["bind", "ro"]})
hook = {"path": circuit, "env": [f"CNI_CONF={work}/sandbox.conf", "CNI_PATH=/usr/lib/cni",
                                 f"CIRCUIT_STATE_DIR={work}/state",
                                 f"CIRCUIT_CNI_CACHE_DIR={work}/cni",
                                 "PATH=/bin:/usr/bin:/usr/sbin:/sbin"]}
config["hooks"] = {"createRuntime": [hook], "poststop": [hook]}
json.dump(config, open(path, "w"), indent=2)
PY
done

echo "A throwaway network namespace ($host) stands in for this machine."
for name in web-00 web-01; do
    say runc run -d --bundle "$work/$name" "$name"
    in_host runc run -d --bundle "$work/$name" "$name" </dev/null >/dev/null 2>&1
    ids+=("$name")
done
say runc list
runc list | grep -E "^ID|web-0"
circuit network list
say "runc exec web-00 ping -c 3 10.100.10.3"
runc exec web-00 ping -c 3 10.100.10.3

circuit network qos set --rate 5000 --ceiling 6000 sandbox
circuit network qos show sandbox

# IPVS where the kernel has it, nftables (table inet circuit_lb) otherwise: lb list shows which.
circuit lb create demo 10.100.99.1:80
circuit lb add demo 10.100.10.2:80 10.100.10.3:80
circuit lb list --details
say "timeout 5 busybox wget -q -O - http://10.100.99.1/  (four times)"
for _ in 1 2 3 4; do in_host timeout 5 busybox wget -q -O - http://10.100.99.1/; done
circuit lb list --stats
circuit lb delete demo

say runc delete --force web-00 web-01
for name in web-00 web-01; do in_host runc delete --force "$name"; done
ids=()
circuit network list
