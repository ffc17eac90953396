"""Kernel tier: tests that need IPVS, netem or ipvlan (Debian's stock kernel)."""
