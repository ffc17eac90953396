"""circuit top: each container's traffic in and out, its drops, and each LB target's new
connections per second and health, from two scrapes of the same families `circuit metrics`
prints (circuit_common.metrics.collect) an interval apart."""

import os
import select
import shutil
import sys
import time

from circuit_common import metrics, output
from circuit_common.errors import InvalidInput, UsageError

KEYS = ("network", "container", "ifname")
QUIT = {"q", "Q"}
# the terminal: alternate screen and hidden cursor on, and off again; home and clear
ENTER, LEAVE, HOME = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l", "\x1b[H\x1b[2J"


def parse_interval(value: str) -> float:
    """--interval in seconds, 0.1 to 3600."""
    seconds = float(value) if value.isascii() and value.replace(".", "", 1).isdigit() \
        else None
    if seconds is None or not 0.1 <= seconds <= 3600:
        raise InvalidInput(f"invalid --interval {value!r}: give seconds from 0.1 to 3600")
    return seconds


def sample(ctx) -> tuple[float, dict, list]:
    """(when, {family name: {label values by name: value}}, collectors' errors)."""
    families, errors = metrics.collect(ctx)
    found = {f.name: {tuple(zip(f.labels, values, strict=True)): v for values, v in f.samples}
             for f in families}
    return time.monotonic(), found, errors


def _delta(after: float, before: float | None) -> float:
    """What a counter grew by; a counter that went back was made again (from 0)."""
    return after if before is None or after < before else after - before


def view(before: tuple | None, after: tuple) -> dict:
    """The table's rows from two samples (before None: no rates yet)."""
    when, now, errors = after
    seconds = when - before[0] if before else None
    old = before[1] if before else {}

    def rate(family: str, labels: tuple) -> float | None:
        if seconds is None or labels not in old.get(family, {}):
            return None
        return _delta(now[family][labels], old[family][labels]) / seconds

    containers = {}
    for labels in now.get("circuit_container_bytes", {}):
        fields = dict(labels)
        key = tuple(fields[k] for k in KEYS)
        row = containers.setdefault(key, {**dict(zip(KEYS, key, strict=True)), "drops": 0,
                                          "drops_per_second": 0.0})
        bits = rate("circuit_container_bytes", labels)
        row[f"{fields['direction']}_bits_per_second"] = None if bits is None else bits * 8
    for family in ("circuit_container_drops", "circuit_qos_drops"):
        for labels, value in now.get(family, {}).items():
            fields = dict(labels)
            row = containers.get(tuple(fields[k] for k in KEYS))
            if row is not None:
                row["drops"] += int(value)
                per_second = rate(family, labels)
                row["drops_per_second"] = None if per_second is None or \
                    row["drops_per_second"] is None else row["drops_per_second"] + per_second
    health = {(dict(labels)["service"], dict(labels)["target"]): dict(labels)["state"]
              for labels, value in now.get("circuit_lb_target_health", {}).items() if value}
    targets = []
    for labels, value in now.get("circuit_lb_target_connections", {}).items():
        fields = dict(labels)
        targets.append({"service": fields["service"], "target": fields["target"],
                        "connections": int(value),
                        "connections_per_second": rate("circuit_lb_target_connections",
                                                       labels),
                        "health": health.get((fields["service"], fields["target"]), "-")})
    return {"interval": None if seconds is None else round(seconds, 3),
            "containers": [containers[k] for k in sorted(containers)], "targets": targets,
            "errors": [str(e) for e in errors]}


def bits(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} bit/s"


def per_second(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(shown: dict) -> str:
    """The view as text: containers, then LB targets, then what could not be read."""
    text = output.render_table(
        ["container", "network", "ifname", "in", "out", "drops", "drops/s"],
        [(c["container"], c["network"], c["ifname"], bits(c.get("in_bits_per_second")),
          bits(c.get("out_bits_per_second")), c["drops"], per_second(c["drops_per_second"]))
         for c in shown["containers"]], min_width=10)
    if shown["targets"]:
        text += "\n" + output.render_table(
            ["service", "target", "conn/s", "connections", "health"],
            [(t["service"], t["target"], per_second(t["connections_per_second"]),
              t["connections"], t["health"]) for t in shown["targets"]], min_width=10)
    return text + "".join(f"circuit: {e}\n" for e in shown["errors"])


def once(ctx, interval: float, fmt: str) -> int:
    """One table (or JSON) of the rates over one interval."""
    first = sample(ctx)
    time.sleep(interval)
    shown = view(first, sample(ctx))
    if fmt == "json":
        output.emit_json(shown)
    else:
        output.emit(render(shown))
    return 0


def live(ctx, interval: float) -> int:
    """Redraw every interval in the terminal's alternate screen until `q` (or Ctrl-C)."""
    import termios
    import tty

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("circuit top needs a terminal; over a pipe use circuit top --once")
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    sys.stdout.write(ENTER)
    try:
        before = None
        while True:
            after = sample(ctx)
            draw(view(before, after), interval)
            before = after
            deadline = after[0] + interval
            while (left := deadline - time.monotonic()) > 0:
                if select.select([fd], [], [], left)[0] and QUIT & set(
                        os.read(fd, 64).decode(errors="replace")):
                    return 0
    finally:
        sys.stdout.write(LEAVE)
        sys.stdout.flush()
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def draw(shown: dict, interval: float) -> None:
    columns, rows = shutil.get_terminal_size()
    head = f"circuit top - {time.strftime('%H:%M:%S')}, every {interval:g} s; q quits"
    lines = [head, "", *render(shown).splitlines()]
    sys.stdout.write(HOME + "\n".join(line[:columns] for line in lines[:rows]))
    sys.stdout.flush()
