"""What to apply to one attachment, from a stored policy: below tc, which lays it out, and plan
and policy, which hand it over (no pyroute2 here)."""

from collections import namedtuple

FIELDS = ("rate", "ceil", "delay", "buffer", "cbuffer", "priority")

# rates in bit/s, delay in µs, sizes in bytes
Shape = namedtuple("Shape", FIELDS, defaults=(None,) * len(FIELDS))


def of(policy: dict | None) -> Shape | None:
    """The Shape of a stored policy (None: unshaped)."""
    return None if policy is None else Shape(**{k: policy.get(k) for k in FIELDS})
