"""Integration tier: the shared network harness."""

from harness import host, leak_check, rootfs, runc  # noqa: F401  (fixtures)
