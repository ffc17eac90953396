#!/usr/bin/env bash
# `just demo`: circuit's main job on this machine, inside a throwaway network namespace.
# Everything it makes (namespace, containers, state, IPAM files) is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
CIRCUIT="$PWD/.venv/bin/circuit"
work=$(mktemp -d /tmp/circuit-demo.XXXXXX)
host="circuit-demo-$$"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    ip netns del "$host" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$host"
ip -n "$host" link set lo up
in_host() { nsenter --net="/run/netns/$host" "$@"; }
say() { printf '\n$> %s\n' "$*"; }
run() { say "$@"; in_host "$CIRCUIT" --state "$work/state" "${@:2}"; }

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
echo "A throwaway network namespace ($host) stands in for this machine."
run circuit network create "$work/sandbox.conf"
for _ in 1 2; do
    unshare --net -- busybox sleep 600 </dev/null >/dev/null 2>&1 &
    pids+=($!)
done
sleep 0.2
run circuit network connect "${pids[0]}" sandbox
run circuit network connect "${pids[1]}" sandbox
run circuit network list
say "nsenter --net=/proc/${pids[0]}/ns/net ping -c 3 10.100.10.3"
nsenter --net="/proc/${pids[0]}/ns/net" busybox ping -c 3 10.100.10.3
run circuit network disconnect "${pids[0]}" sandbox
run circuit network delete sandbox --force
