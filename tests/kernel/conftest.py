"""Kernel tier (IPVS, netem, ipvlan), run by scripts/kernel-vm, often under QEMU's emulation:
circuit runs as a fork of this warm process (harness.run_forked), its modules loaded once here."""

from importlib import import_module

import pytest

import circuit_hook.cli
import circuit_lb.cli
import circuit_net.cli
import circuit_netlink
import circuit_qos.cli

from harness import Host, dispatcher

circuit_netlink.lean_pyroute2()  # first: pyroute2's modules then load without its __init__
PYROUTE2_USED = ("pyroute2.netlink.generic.ipvs", "pyroute2.netlink.rtnl.ifaddrmsg",
                 "pyroute2.netlink.rtnl.ifinfmsg", "pyroute2.netlink.rtnl.tcmsg")
WARM = (circuit_netlink, circuit_hook.cli, circuit_lb.cli, circuit_net.cli,
        circuit_qos.cli, dispatcher(), *map(import_module, PYROUTE2_USED))


@pytest.fixture(scope="session", autouse=True)
def no_leaks(leak_check):
    """No namespace, runc container or root-namespace link outlives the tier."""


@pytest.fixture(autouse=True)
def forked_circuit(monkeypatch):
    monkeypatch.setattr(Host, "fork_circuit", True)
