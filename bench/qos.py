"""circuit network qos set on 50 attachments against the same tc objects made with ip/tc -batch."""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import Host, bridge_conf

ATTACHMENTS = 50
RUNS = 5
# What any pyroute2-based tool pays before its first request: the interpreter and the modules.
FLOOR = ("import circuit_netlink, pyroute2.netlink.rtnl.tcmsg, "
         "pyroute2.netlink.rtnl.ifinfmsg")


def anchor_batches(veths: list[str]) -> tuple[str, str]:
    """ip and tc batch files that build what `qos set --rate 5000 --ceiling 6000` builds."""
    from circuit_qos.tc import ifb_name

    ip, tc = [], []
    for veth in veths:
        ifb = ifb_name(veth)
        ip += [f"link add {ifb} type ifb", f"link set {ifb} up"]
        for dev in (veth, ifb):
            tc += [f"qdisc add dev {dev} root handle 1: htb default 10",
                   f"class add dev {dev} parent 1: classid 1:1 htb rate 6mbit ceil 6mbit",
                   f"class add dev {dev} parent 1:1 classid 1:10 htb rate 5mbit ceil 6mbit"]
        tc += [f"qdisc add dev {veth} handle ffff: ingress",
               f"filter add dev {veth} parent ffff: protocol all prio 1 u32 match u32 0 0 "
               f"flowid 1:10 action mirred egress redirect dev {ifb}"]
    return "\n".join(ip) + "\n", "\n".join(tc) + "\n"


def main() -> int:
    from circuit_qos.tc import ifb_name

    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp))
        try:
            host.circuit("network", "create", host.conf(bridge_conf()))
            for _ in range(ATTACHMENTS):
                host.circuit("network", "connect", host.container().pid, "sandbox")
            attachments = json.loads(host.circuit("network", "inspect", "sandbox").stdout)
            veths = [i["name"] for a in attachments["attachments"]
                     for i in a["result"]["interfaces"]
                     if not i.get("sandbox") and i["name"].startswith("veth")]
            ip_batch, tc_batch = anchor_batches(veths)
            (Path(tmp) / "ip.batch").write_text(ip_batch)
            (Path(tmp) / "tc.batch").write_text(tc_batch)
            undo = "".join(f"qdisc del dev {v} root\nqdisc del dev {v} ingress\n" for v in veths)
            (Path(tmp) / "undo.batch").write_text(undo)
            (Path(tmp) / "undo-ip.batch").write_text(
                "".join(f"link del {ifb_name(v)}\n" for v in veths))
            times = {"anchor": [], "circuit": [], "floor": []}
            for _ in range(RUNS):
                start = time.monotonic()
                host.run("ip", "-batch", Path(tmp) / "ip.batch")
                host.run("tc", "-batch", Path(tmp) / "tc.batch")
                times["anchor"].append((time.monotonic() - start) * 1000)
                host.run("tc", "-batch", Path(tmp) / "undo.batch")
                host.run("ip", "-batch", Path(tmp) / "undo-ip.batch")
                start = time.monotonic()
                host.circuit("network", "qos", "set", "--rate", "5000", "--ceiling", "6000",
                             "sandbox")
                times["circuit"].append((time.monotonic() - start) * 1000)
                host.circuit("network", "qos", "reset", "sandbox")
                start = time.monotonic()
                host.run(sys.executable, "-c", FLOOR)
                times["floor"].append((time.monotonic() - start) * 1000)
        finally:
            host.close()
    a, c = statistics.median(times["anchor"]), statistics.median(times["circuit"])
    floor = statistics.median(times["floor"])
    print(f"qos set on {ATTACHMENTS} attachments, median of {RUNS}: ip -batch + tc -batch "
          f"{a:.0f} ms, circuit {c:.0f} ms, ratio {c / a:.2f} (budget 3)")
    print(f"floor: the interpreter with pyroute2's tc and link modules {floor:.0f} ms, "
          f"{floor / a:.2f}x the anchor")
    return 0 if c / a <= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
