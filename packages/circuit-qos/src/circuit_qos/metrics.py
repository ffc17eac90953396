"""circuit-qos's part of `circuit metrics` (entry point circuit.metrics: qos): the live
counters of every shaped attachment's class, per direction, as `qos show` reads them
(policy.status); only networks with a policy are read."""

import os

from circuit_common.errors import InvalidInput
from circuit_common.metrics import COUNTER, GAUGE, Family
from circuit_net.networks import Networks

from . import policy

LABELS = ("network", "container", "ifname", "direction")
FAMILIES = (  # (counter key, name, kind, help, unit)
    ("bytes", "circuit_qos_bytes", COUNTER, "bytes the shaping class sent", "bytes"),
    ("packets", "circuit_qos_packets", COUNTER, "packets the shaping class sent", ""),
    ("drops", "circuit_qos_drops", COUNTER, "packets the shaping class dropped", ""),
    ("overlimits", "circuit_qos_overlimits", COUNTER,
     "times a packet waited because the class was over its rate", ""),
    ("backlog_bytes", "circuit_qos_backlog_bytes", GAUGE, "bytes queued in the class now",
     "bytes"),
    ("backlog_packets", "circuit_qos_backlog_packets", GAUGE,
     "packets queued in the class now", ""),
)


def collect(ctx) -> list[Family]:
    nets = Networks(ctx)
    store = nets.store
    families = [Family(name, kind, text, LABELS, unit) for _, name, kind, text, unit in FAMILIES]
    shaped = sorted(os.path.basename(path)[:-len(".json")]
                    for path in store.records(store.path("qos")))
    if not shaped:
        return families
    from .tc import Links  # pyroute2 (≈ 60 ms): only where tc is spoken

    with Links() as links:
        for network in shaped:
            try:
                status = policy.status(nets, links, network)
            except InvalidInput:  # a network without veths (macvlan) is never shaped
                continue
            for row in status["attachments"]:
                for direction, counters in sorted(row["counters"].items()):
                    values = (network, row["target"], row["ifname"], direction)
                    for (key, *_), family in zip(FAMILIES, families, strict=True):
                        family.add(values, counters[key])
    return families
