"""Checks on user input that must pass before a value can become a path or a kernel object."""

import re

from .errors import InvalidInput

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DNS_NAME_RE = re.compile(rf"{DNS_LABEL}(?:\.{DNS_LABEL})*")
DNS_NAME_MAX = 253  # a name's text without the root's dot: 255 octets on the wire
MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


def check_name(value: str, what: str = "name") -> str:
    """value if it is a safe object name, else InvalidInput."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidInput(f"invalid {what} {value!r}: use 1-64 letters, digits, '_', '.' or '-', "
                           "starting with a letter or digit")
    return value


RESERVED_IFNAMES = ("all", "default")  # /proc/sys/net/*/conf/ names: no device may take them


def check_ifname(value: str) -> str:
    """value if it is a usable interface name, else InvalidInput."""
    if not isinstance(value, str) or not IFNAME_RE.fullmatch(value):  # a config's 5 too
        raise InvalidInput(f"invalid interface name {value!r}: use 1-15 letters, digits, "
                           "'_', '.' or '-'")
    if value in RESERVED_IFNAMES:
        raise InvalidInput(f"invalid interface name {value!r}: the kernel keeps 'all' and "
                           "'default' for its settings; choose another")
    return value


def check_dns_name(value: str, what: str = "name", network: str | None = None) -> str:
    """value if it is a host name DNS can answer (dot-separated labels of letters, digits and
    inner '-', at most 63 each, 253 in all, and with network: NAME.NETWORK, the name circuit-dns
    also answers, 253 at most), else InvalidInput."""
    shown = value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "..."
    if not isinstance(value, str) or not DNS_NAME_RE.fullmatch(value):
        raise InvalidInput(f"invalid {what} {shown!r}: use letters, digits and '-' (not first "
                           "or last), at most 63 between dots")
    full = f"{value}.{network}" if network else value
    if len(full) > DNS_NAME_MAX:
        raise InvalidInput(f"invalid {what} {shown!r}: {f'NAME.{network}' if network else 'it'} "
                           f"would be {len(full)} characters, over DNS's {DNS_NAME_MAX}; "
                           "use a shorter name")
    return value


def check_dns_domain(network: str) -> str:
    """network if NAME.NETWORK can be asked of DNS (each of its labels 1-63 characters), else
    InvalidInput."""
    if not all(0 < len(label) <= 63 for label in network.split(".")):
        raise InvalidInput(f"network name {network!r} cannot be a DNS domain (NAME.NETWORK): "
                           "use at most 63 characters between dots, none empty, or no DNS "
                           "for it (--no-dns)")
    return network


def check_mac(value: str) -> str:
    """value if it is a MAC address as aa:bb:cc:dd:ee:ff, else InvalidInput."""
    if not MAC_RE.fullmatch(value or ""):
        raise InvalidInput(f"invalid MAC address {value!r}: use six hex pairs, "
                           "as 02:42:ac:11:00:02")
    first = int(value[:2], 16)
    if first & 1 or not value.replace(":", "").strip("0"):
        kind = "a multicast or broadcast MAC" if first & 1 else "all zeros"
        raise InvalidInput(f"invalid MAC address {value!r}: it is {kind}, which no interface "
                           "can take; give a unicast one (even first byte), as 02:42:ac:11:00:02")
    return value


def check_once(values: list[str], what: str) -> list[str]:
    """values, InvalidInput when one is given twice (what: how the user gave them)."""
    for i, value in enumerate(values):
        if value in values[:i]:
            raise InvalidInput(f"{what} {value} is given twice; give each once")
    return values


PID_MAX = 1 << 22  # the kernel's highest pid_max


def ascii_number(text: str) -> int | None:
    """The integer text spells in ASCII digits (superscripts and other scripts' digits are
    not numbers), or None."""
    if isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None


def check_pid(value, what: str = "pid") -> int:
    """A positive PID given as an int (never a bool, float or list) or ASCII digits."""
    pid = value if type(value) is int else ascii_number(value)
    if pid is None or not 0 < pid <= PID_MAX:
        raise InvalidInput(f"invalid {what} {value!r}: a PID is a whole number from 1 to "
                           f"{PID_MAX}")
    return pid
