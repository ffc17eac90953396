"""Checks on user input that must pass before a value can become a path or a kernel object."""

import re

from .errors import InvalidInput

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


def check_name(value: str, what: str = "name") -> str:
    """value if it is a safe object name, else InvalidInput."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidInput(f"invalid {what} {value!r}: use 1-64 letters, digits, '_', '.' or '-', "
                           "starting with a letter or digit")
    return value


def check_ifname(value: str) -> str:
    """value if it is a usable interface name, else InvalidInput."""
    if not IFNAME_RE.fullmatch(value or ""):
        raise InvalidInput(f"invalid interface name {value!r}: use 1-15 letters, digits, "
                           "'_', '.' or '-'")
    return value
