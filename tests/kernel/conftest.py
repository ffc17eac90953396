"""Kernel tier (IPVS, netem, ipvlan), run by scripts/test-kernel, often under QEMU's emulation:
circuit runs as a fork of this warm process (harness.run_forked), its modules loaded once here."""

import pyroute2
import pytest

import circuit_hook.cli
import circuit_lb.cli
import circuit_net.cli
import circuit_qos.cli

from harness import Host, dispatcher, host, leak_check  # noqa: F401  (fixtures)

WARM = (circuit_hook.cli, circuit_lb.cli, circuit_net.cli, circuit_qos.cli, pyroute2,
        dispatcher())


@pytest.fixture(autouse=True)
def forked_circuit(monkeypatch):
    monkeypatch.setattr(Host, "fork_circuit", True)
