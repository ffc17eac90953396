"""circuit-net's part of `circuit metrics` (entry point circuit.metrics: net): attachments per
network, and each running attachment's traffic as its host-side interface counts it
(/proc/net/dev of circuit's netns: no netlink), into the container ("in") and out of it."""

from circuit_common.metrics import COUNTER, GAUGE, Family

from .networks import Networks, bridges
from .stored import as_attachment

LABELS = ("network", "container", "ifname", "direction")


def interface_counters() -> dict[str, tuple[int, ...]]:
    """{interface: (rx bytes, rx packets, rx drops, tx bytes, tx packets, tx drops)} of this
    netns, from /proc/net/dev (the netns of the thread that reads it)."""
    found = {}
    with open("/proc/self/net/dev") as f:
        for line in f.readlines()[2:]:
            name, _, numbers = line.partition(":")
            fields = numbers.split()
            found[name.strip()] = (int(fields[0]), int(fields[1]), int(fields[3]),
                                   int(fields[8]), int(fields[9]), int(fields[11]))
    return found


def collect(ctx) -> list[Family]:
    nets = Networks(ctx)
    attachments = Family("circuit_network_attachments", GAUGE,
                         "containers attached to the network (exited ones until gc)",
                         ("network",))
    traffic = {name: Family(f"circuit_container_{name}", COUNTER, text, LABELS, unit)
               for name, text, unit in (
                   ("bytes", "bytes through the attachment's host-side interface", "bytes"),
                   ("packets", "packets through the attachment's host-side interface", ""),
                   ("drops", "packets the host-side interface dropped", ""))}
    counted = interface_counters()
    for network in sorted(nets.all().records, key=lambda n: n["name"]):
        name = network["name"]
        records = nets.attachments(name).records
        attachments.add((name,), len(records))
        skip = set(bridges(network["config"]))
        for record in records:
            attachment = as_attachment(record)
            found = next((counted[i] for i in attachment.host_ifnames
                          if i not in skip and i in counted), None)
            if found is None or not attachment.running():
                continue
            label = record["circuit"]["target"]
            for direction, (nbytes, packets, drops) in (("out", found[:3]), ("in", found[3:])):
                values = (name, label, attachment.ifname, direction)
                traffic["bytes"].add(values, nbytes)
                traffic["packets"].add(values, packets)
                traffic["drops"].add(values, drops)
    return [attachments, *traffic.values()]
