"""circuit-lb's part of `circuit metrics` (entry point circuit.metrics: lb): each service's and
each target's connections, packets and bytes from the kernel (Services.stats: IPVS or table
circuit_lb's counters), targets' weights from the store, and their health as this host's
`lb agent` last saw it (services with a check only). Direction "in" is towards the target,
"out" its replies."""

from circuit_common.metrics import COUNTER, GAUGE, Family

from . import health
from .address import Endpoint
from .services import Services

SERVICE, TARGET = ("service", "backend"), ("service", "target")
STATES = ("up", "down", "unchecked")


def _traffic(kind: str, labels: tuple[str, ...]) -> list[Family]:
    return [Family(f"circuit_lb_{kind}_connections", COUNTER,
                   f"connections the {kind} was given", labels),
            Family(f"circuit_lb_{kind}_packets", COUNTER, f"packets to and from the {kind}",
                   (*labels, "direction")),
            Family(f"circuit_lb_{kind}_bytes", COUNTER, f"bytes to and from the {kind}",
                   (*labels, "direction"), "bytes")]


def _add(families: list[Family], values: tuple, counters: dict) -> None:
    connections, packets, nbytes = families
    connections.add(values, counters.get("connections") or 0)
    for direction in ("in", "out"):
        packets.add((*values, direction), counters.get(f"packets_{direction}") or 0)
        nbytes.add((*values, direction), counters.get(f"bytes_{direction}") or 0)


def collect(ctx) -> list[Family]:
    services = Services(ctx)
    records = sorted(services.all()[0], key=lambda r: r["name"])
    of_services, of_targets = _traffic("service", SERVICE), _traffic("target", TARGET)
    weight = Family("circuit_lb_target_weight", GAUGE, "the target's weight as stored", TARGET)
    state = Family("circuit_lb_target_health", GAUGE,
                   "1 for the target's health state (up, down, unchecked: no check yet), "
                   "0 for the others; services with a check only", (*TARGET, "state"))
    stats = services.stats(records) if records else {}
    healths = services.healths() if any(r.get("check") for r in records) else {}
    for record in records:
        name = record["name"]
        found = stats.get(name, {})
        _add(of_services, (name, record.get("backend", "ipvs")), found.get("service", {}))
        counted = found.get("targets", {})
        states = health.target_health(record, healths.get(name)) if record.get("check") \
            else {}
        for target in record["targets"]:
            where = str(Endpoint(target["addr"], target["port"]))
            _add(of_targets, (name, where), counted.get(where, {}))
            weight.add((name, where), target["weight"])
            if where in states:
                for one in STATES:
                    state.add((name, where, one), int(states[where]["state"] == one))
    return [*of_services, *of_targets, weight, state]
