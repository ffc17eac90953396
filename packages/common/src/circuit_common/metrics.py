"""Metrics: the families of samples each installed tool gives `circuit metrics` and `circuit top`.

A tool declares a function `collect(ctx) -> list[Family]` in the entry-point group
circuit.metrics (circuit-net: attachments and their interfaces' counters, circuit-qos: the
shaping classes, circuit-lb: services and targets); circuit-metrics renders them. Names carry
the `circuit_` prefix and base units (bytes, seconds); a counter's name is given without
`_total`, which the exposition adds."""

import sys
import time

GROUP = "circuit.metrics"  # each tool's collector: name = "circuit_<tool>.metrics:collect"
COUNTER, GAUGE, INFO = "counter", "gauge", "info"


class Family:
    """One metric: its name (without `_total` for a counter), kind, help, label names, unit
    (a suffix of the name, OpenMetrics' UNIT) and samples: (label values, value)."""

    __slots__ = ("help", "kind", "labels", "name", "samples", "unit")

    def __init__(self, name: str, kind: str, help: str, labels: tuple[str, ...] = (),
                 unit: str = ""):
        self.name, self.kind, self.help, self.labels, self.unit = name, kind, help, labels, unit
        self.samples: list[tuple[tuple, float]] = []

    def add(self, values: tuple, value: float) -> None:
        self.samples.append((values, value))

    def __repr__(self) -> str:
        return f"Family({self.name!r}, {self.kind!r}, {len(self.samples)} samples)"


def collectors() -> list[tuple[str, object]]:
    """(name, collect function) of every installed tool's collector, by name."""
    from importlib.metadata import entry_points

    return [(e.name, e.load()) for e in sorted(entry_points(group=GROUP), key=lambda e: e.name)]


def collect(ctx) -> tuple[list[Family], list]:
    """Every collector's families, then circuit's own: build info, and per collector whether
    it succeeded and how long it took. One that fails is one error (a CircuitError naming the
    collector; its families left out), never the end of the scrape."""
    from . import VERSION
    from .errors import CircuitError

    families, errors = [], []
    success = Family("circuit_scrape_collector_success", GAUGE,
                     "whether the collector read its part of the state and the kernel",
                     ("collector",))
    duration = Family("circuit_scrape_collector_duration_seconds", GAUGE,
                      "how long the collector took", ("collector",), "seconds")
    for name, function in collectors():
        start = time.monotonic()
        try:
            families += function(ctx)
            success.add((name,), 1)
        except CircuitError as e:
            failed = CircuitError(f"metrics of {name}: {e}")
            failed.exit_code = e.exit_code
            errors.append(failed)
            success.add((name,), 0)
        duration.add((name,), round(time.monotonic() - start, 6))
    build = Family("circuit_build", INFO, "the circuit that answers", ("version", "python"))
    build.add((VERSION, sys.version.split()[0]), 1)
    return [*families, build, success, duration], errors
