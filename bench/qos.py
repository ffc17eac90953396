"""circuit network qos set against the same tc objects made with ip -batch + tc -batch: on 200
attachments (budget 2x), and its fixed part, qos set on 1 attachment, against python -c pass in
the same run (budget +25 ms); each by itself and handed to circuit's fork server."""

import json
import statistics
import sys
import tempfile
from pathlib import Path

from measure import difference_line, ratio_line, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import ForkServer, Host, bridge_conf

MANY = 200
RUNS = 7
SET = ("--rate", "5000", "--ceiling", "6000")


def anchor_batches(veths: list[str]) -> tuple[str, str]:
    """ip and tc batch files that build what `qos set --rate 5000 --ceiling 6000` builds."""
    from circuit_qos.devices import ifb_name

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


class Network:
    """A bridge network of n containers in host, and the batch files of its anchor."""

    def __init__(self, host: Host, name: str, n: int, octet: int):
        from circuit_qos.devices import ifb_name

        self.host, self.name, self.dir = host, name, host.tmp / name
        conf = bridge_conf(name, f"cq-{name}", f"10.{octet}.0.0/16")
        conf["ipMasq"] = False  # no iptables rule per container: faster to set up, same tc
        host.circuit("network", "create", host.conf(conf))
        for _ in range(n):
            host.circuit("network", "connect", host.container().pid, name)
        attachments = json.loads(host.circuit("network", "inspect", name).stdout)["attachments"]
        veths = [i["name"] for a in attachments for i in a["result"]["interfaces"]
                 if not i.get("sandbox") and i["name"].startswith("veth")]
        self.dir.mkdir()
        ip_batch, tc_batch = anchor_batches(veths)
        self.files = {"ip": ip_batch, "tc": tc_batch,
                      "undo-tc": "".join(f"qdisc del dev {v} root\nqdisc del dev {v} ingress\n"
                                         for v in veths),
                      "undo-ip": "".join(f"link del {ifb_name(v)}\n" for v in veths)}
        for kind, text in self.files.items():
            (self.dir / kind).write_text(text)

    def anchor(self) -> float:
        """ms for ip -batch + tc -batch; then undone."""
        ms = timed(lambda: (self.host.run("ip", "-batch", self.dir / "ip"),
                            self.host.run("tc", "-batch", self.dir / "tc")))
        self.host.run("tc", "-batch", self.dir / "undo-tc")
        self.host.run("ip", "-batch", self.dir / "undo-ip")
        return ms

    def circuit(self, env: dict | None = None) -> float:
        """ms for qos set; then reset."""
        ms = timed(lambda: self.host.circuit("network", "qos", "set", *SET, self.name, env=env))
        self.host.circuit("network", "qos", "reset", self.name)
        return ms


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        host, server = Host(Path(tmp)), ForkServer(Path(tmp))
        served = {"CIRCUIT_FORKSERVER": server.socket}
        try:
            many, one = Network(host, "many", MANY, 101), Network(host, "one", 1, 102)
            times = {k: [] for k in ("anchor", "circuit", "served", "one anchor", "one circuit",
                                     "one served", "python")}
            for _ in range(RUNS):  # interleaved, so drift hits all alike
                times["anchor"].append(many.anchor())
                times["circuit"].append(many.circuit())
                times["served"].append(many.circuit(served))
                times["one anchor"].append(one.anchor())
                times["one circuit"].append(one.circuit())
                times["one served"].append(one.circuit(served))
                times["python"].append(timed(lambda: host.run(sys.executable, "-c", "pass")))
        finally:
            server.stop()
            host.close()
    lines = [ratio_line(f"qos set on {MANY} attachments, {RUNS} runs", times["circuit"],
                        times["anchor"], "ip -batch + tc -batch"),
             ratio_line("the same through the fork server", times["served"], times["anchor"],
                        "ip -batch + tc -batch", budget=2),
             difference_line("qos set on 1 attachment (its fixed part)", times["one circuit"],
                             times["python"], "python -c pass"),
             difference_line("the same through the fork server", times["one served"],
                             times["python"], "python -c pass", budget=25)]
    print(*lines, sep="\n")
    print(f"  (on 1 attachment ip -batch + tc -batch take "
          f"{statistics.median(times['one anchor']):.0f} ms)")
    return 1 if any("MISSED" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
