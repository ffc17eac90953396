"""Metrics: the families of samples each installed tool gives `circuit metrics` and `circuit top`.

A tool declares a function `collect(ctx) -> list[Family]` in the entry-point group
circuit.metrics (circuit-net: attachments and their interfaces' counters, circuit-qos: the
shaping classes, circuit-lb: services and targets); circuit-metrics renders them. Names carry
the `circuit_` prefix and base units (bytes, seconds); a counter's name is given without
`_total`, which the exposition adds."""

import sys
import time
from concurrent.futures import ThreadPoolExecutor

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
    it succeeded and how long it took. The collectors run side by side, each in a thread of
    its own. One that fails is one error (a CircuitError naming the
    collector; its families left out), never the end of the scrape."""
    from . import VERSION
    from .errors import CircuitError

    families, errors = [], []
    success = Family("circuit_scrape_collector_success", GAUGE,
                     "whether the collector read its part of the state and the kernel",
                     ("collector",))
    duration = Family("circuit_scrape_collector_duration_seconds", GAUGE,
                      "how long the collector took", ("collector",), "seconds")

    def run(function) -> tuple[list[Family], CircuitError | None, float]:
        start = time.monotonic()
        try:
            found, error = function(ctx), None
        except CircuitError as e:
            found, error = [], e
        return found, error, time.monotonic() - start

    # side by side: a collector waits mostly on the kernel or on nft, which let go of the GIL
    with ThreadPoolExecutor() as pool:
        done = [(name, pool.submit(run, function)) for name, function in collectors()]
    for name, future in done:
        found, error, seconds = future.result()
        families += found
        success.add((name,), int(error is None))
        duration.add((name,), round(seconds, 6))
        if error is not None:
            failed = CircuitError(f"metrics of {name}: {error}")
            failed.exit_code = error.exit_code
            errors.append(failed)
    build = Family("circuit_build", INFO, "the circuit that answers", ("version", "python"))
    build.add((VERSION, sys.version.split()[0]), 1)
    return [*families, build, success, duration], errors
