"""circuit-lb's entry in the `circuit.extensions` group: `circuit restore` calls restore(ctx);
in a cluster, resync(ctx) when services changed on another host."""

from .cli import restore
from .services import Services


def resync(ctx) -> None:
    """Services changed on another host: program this host's kernel to match, quietly."""
    Services(ctx).restore()


__all__ = ["restore", "resync"]
