"""circuit-lb's entry in the `circuit.extensions` group: `circuit restore` calls restore(ctx)."""

from .cli import restore

__all__ = ["restore"]
