"""Kernel tier (IPVS, netem, ipvlan): the shared network harness; run by scripts/test-kernel."""

from harness import host, leak_check  # noqa: F401  (fixtures)
