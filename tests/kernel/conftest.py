"""Kernel tier (IPVS, netem, ipvlan), run by scripts/kernel-vm, often under QEMU's emulation:
circuit runs as a fork of this warm process (harness.run_forked), its modules loaded once here."""

import pkgutil
from importlib import import_module

import pytest
from circuit_dispatch import forkserver

import circuit_hook.cli
import circuit_lb.cli
import circuit_net.cli
import circuit_netlink
import circuit_qos.cli

from harness import Host, dispatcher

circuit_netlink.lean_pyroute2()  # first: pyroute2's modules then load without its __init__
PYROUTE2_USED = ("pyroute2.netlink.generic.ipvs", "pyroute2.netlink.rtnl.ifaddrmsg",
                 "pyroute2.netlink.rtnl.ifinfmsg", "pyroute2.netlink.rtnl.tcmsg")
# circuit's packages whole, docopt, and what the tests' clients use: a fork that imports a
# module pays for it again in every command (under TCG 0.3-0.5 s for docopt alone).
PACKAGES = ("circuit_dispatch", "circuit_common", "circuit_netlink", "circuit_net", "circuit_lb",
            "circuit_qos", "circuit_hook", "circuit_dns", "circuit_metrics")
WARM = (circuit_netlink, circuit_hook.cli, circuit_lb.cli, circuit_net.cli,
        circuit_qos.cli, dispatcher(), *map(import_module, PYROUTE2_USED),
        *(import_module(info.name) for package in map(import_module, PACKAGES)
          for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
          if not info.name.endswith(".__main__")),
        import_module("docopt"), import_module("encodings.idna"))
forkserver.warm_parsers()  # docopt's regular expressions compiled once, here


@pytest.fixture(scope="session", autouse=True)
def no_leaks(leak_check):
    """No namespace, runc container or root-namespace link outlives the tier."""


@pytest.fixture(autouse=True)
def forked_circuit(monkeypatch):
    monkeypatch.setattr(Host, "fork_circuit", True)
