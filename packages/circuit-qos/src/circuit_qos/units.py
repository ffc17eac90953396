"""Rates, sizes and times as users write them, as tc(8) reads them."""

import re

from circuit_common.errors import InvalidInput

RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
              "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9}
TIME_UNITS = {"us": 1, "usec": 1, "ms": 1000, "msec": 1000, "s": 10**6, "sec": 10**6}
SIZE_UNITS = {"b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2}
MAX_DELAY = 274 * 10**6  # µs: netem keeps a delay in 32 bits of 64 ns ticks (≈ 274.9 s)
MIN_RATE, MAX_RATE = 10**3, 10**15  # bit/s, 1kbit to 1000tbit: below, HTB's default burst
# outlasts its 32-bit ticks; above, its 64-bit rate in bytes/s is near its end
NUMBER = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*")


def _parse(text: str, units: dict[str, int], bare: str | None, what: str, example: str) -> int:
    match = NUMBER.fullmatch(str(text))
    if not match:
        raise InvalidInput(f"invalid {what} {text!r}: give a positive number with a unit, "
                           f"e.g. {example}")
    number, unit = float(match.group(1)), match.group(2).lower() or bare
    if unit is None:
        raise InvalidInput(f"{what} {text!r} needs a unit, e.g. {example}")
    if unit not in units:
        raise InvalidInput(f"unknown unit {match.group(2)!r} in {what} {text!r}; use one of "
                           f"{', '.join(units)}")
    if number * units[unit] > 2**64:  # beyond what tc holds, and maybe a float's infinity
        raise InvalidInput(f"{what} {text!r} is far too large")
    value = round(number * units[unit])
    if value <= 0:
        raise InvalidInput(f"{what} must be greater than zero, not {text!r}")
    return value


def parse_rate(text: str) -> int:
    """Bits per second; a bare number is kbit/s (the seed's `--rate 5000` is 5 Mbit/s)."""
    rate = _parse(text, RATE_UNITS, "kbit", "rate", "5000 (kbit/s), 5mbit, 800kbit, 1gbit")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InvalidInput(f"rate {text!r} is outside what HTB can hold: use 1kbit to "
                           "1000tbit")
    return rate


def parse_delay(text: str) -> int:
    """Microseconds, from 50ms, 1s or 500us; at most what netem can hold."""
    delay = _parse(text, TIME_UNITS, None, "delay", "50ms, 1s, 500us")
    if delay > MAX_DELAY:
        raise InvalidInput(f"delay {text!r} is longer than netem can hold "
                           f"({format_delay(MAX_DELAY)})")
    return delay


def parse_size(text: str) -> int:
    """Bytes; a bare number is bytes (HTB burst)."""
    return _parse(text, SIZE_UNITS, "b", "buffer size", "15k, 1600")


def check_burst(size: int, rate: int, what: str) -> None:
    """HTB keeps a burst as the time it takes at the rate, in 32 bits of 64 ns ticks."""
    if size * 8 * 10**6 > MAX_DELAY * rate:
        raise InvalidInput(f"{what} of {size} bytes lasts longer at {format_rate(rate)} than HTB "
                           f"can hold ({format_delay(MAX_DELAY)}); give a smaller {what}")


def format_rate(bps: int) -> str:
    for unit, factor in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps >= factor and bps % factor == 0:
            return f"{bps // factor}{unit}"
    return f"{bps}bit"


def format_delay(us: int) -> str:
    if us % 1000 == 0:
        return f"{us // 1000}ms" if us < 10**6 or us % 10**6 else f"{us // 10**6}s"
    return f"{us}us"
