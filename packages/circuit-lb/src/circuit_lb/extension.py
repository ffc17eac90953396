"""circuit-lb's entry in the `circuit.extensions` group: `circuit restore` calls restore(ctx);
in a cluster, resync(ctx) when services changed on another host."""

from .cli import restore
from .services import Services


def resync(ctx, before: dict) -> None:
    """Services changed on another host (before: {record name: the record before, None when
    new}): program this host's kernel to match, quietly."""
    Services(ctx).restore()


__all__ = ["restore", "resync"]
