"""circuit-qos's pieces shared by the integration and kernel tiers: a delay refused where the
kernel has no netem, on this machine's kernel (built without it) and on the kernel tier's
(sch_netem unloaded, its loading blocked, for the one test)."""

import contextlib
import os
import subprocess
import time
from pathlib import Path

from harness.netns import bridge_conf, snapshot

MODPROBE = Path("/proc/sys/kernel/modprobe")  # what the kernel runs to load a module


def qdiscs(host) -> str:
    return host.run("tc", "qdisc", "show").stdout


def ifbs(host) -> list[str]:
    return [line for line in host.run("ip", "-o", "link").stdout.splitlines() if ": cq" in line]


def has_netem(host) -> bool:
    """Whether the kernel makes a netem qdisc (on an IFB device of the host netns)."""
    host.run("ip", "link", "add", "netemprobe0", "type", "ifb")
    try:
        return host.run("tc", "qdisc", "add", "dev", "netemprobe0", "root", "netem", "delay",
                        "1ms", check=False).returncode == 0
    finally:
        host.run("ip", "link", "del", "netemprobe0")


@contextlib.contextmanager
def netem_unloaded():
    """The kernel without netem: sch_netem removed and module loading pointed at a program
    that is not there, then both put back. Only in the kernel tier's VM (CIRCUIT_KERNEL_VM,
    set by scripts/kernel-vm in the guest), whose kernel nothing else uses."""
    assert os.environ.get("CIRCUIT_KERNEL_VM") == "1", "unloads a module: only in the VM"
    loader = MODPROBE.read_text()
    MODPROBE.write_text("/nonexistent/modprobe\n")
    try:
        deadline = time.monotonic() + 30  # netns of earlier tests may still hold a netem
        while Path("/sys/module/sch_netem").exists():
            subprocess.run(["rmmod", "sch_netem"], capture_output=True)
            assert time.monotonic() < deadline, "sch_netem stayed in use"
            time.sleep(0.2)
        yield
    finally:
        MODPROBE.write_text(loader)
        subprocess.run(["modprobe", "sch_netem"], check=True)


def assert_delay_refused_without_netem(host) -> None:
    """qos set with a rate and a delay on a kernel that has no netem: exit 8 in one line
    naming sch_netem, and nothing half applied (no HTB, no IFB device, the state as before)."""
    host.circuit("network", "create", host.conf(bridge_conf()))
    c = host.container()
    host.circuit("network", "connect", c.pid, "sandbox")
    before, kernel = snapshot(host.state), qdiscs(host)
    proc = host.circuit("network", "qos", "set", "--rate", "5000", "--delay", "50ms", "sandbox",
                        check=False)
    assert proc.returncode == 8 and "no netem qdisc (sch_netem)" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stdout == ""
    assert snapshot(host.state) == before and qdiscs(host) == kernel and ifbs(host) == []
