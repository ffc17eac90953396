"""circuit-qos delay (netem) on Debian's stock kernel: the seed's ping example, with a rate;
and the same kernel without netem."""

import os

import pytest

from harness import bridge_conf, host_veth, iperf_mbit, min_rtt, snapshot
from harness.qos import assert_delay_refused_without_netem, netem_unloaded


def test_delay_adds_50ms_to_the_rtt_and_combines_with_the_rate(host):
    host.circuit("network", "create", host.conf(bridge_conf()))
    server = host.container(("iperf3", "-s"))
    host.circuit("network", "connect", server.pid, "sandbox")
    before = min_rtt(server, "10.100.10.1")
    host.circuit("network", "qos", "set", "--rate", "5000", "--ceiling", "6000", "sandbox")
    out = host.circuit("network", "qos", "set", "--delay", "50ms", "sandbox").stdout
    assert out == "qos configured for sandbox\n"  # a second set adds the delay, keeps the rate
    added = min_rtt(server, "10.100.10.1") - before
    assert 45 <= added <= 55, f"delay added {added:.1f} ms"
    mbit = iperf_mbit(host, server, seconds=3)
    assert 4.5 <= mbit <= 6.3, mbit
    host.circuit("network", "qos", "reset", "sandbox")
    assert min_rtt(server, "10.100.10.1") - before < 5


def test_a_delay_netem_cannot_hold_applies_nothing_and_the_probe_leaves_no_device(host):
    """With netem present: a refused delay leaves the rate given with it unapplied, and a good
    delay passes the probe, whose scratch IFB device is gone afterwards."""
    host.circuit("network", "create", host.conf(bridge_conf()))
    container = host.container()
    host.circuit("network", "connect", container.pid, "sandbox")
    veth = host_veth(host, "sandbox", container.pid)
    links_before, state_before = host.run("ip", "-o", "link").stdout, snapshot(host.state)

    refused = host.circuit("network", "qos", "set", "--rate", "5000", "--delay", "300s",
                           "sandbox", check=False)
    assert refused.returncode == 3 and "longer than netem can hold" in refused.stderr
    assert "htb" not in host.run("tc", "qdisc", "show", "dev", veth).stdout
    assert host.run("ip", "-o", "link").stdout == links_before  # no IFB device either
    assert snapshot(host.state) == state_before

    host.circuit("network", "qos", "set", "--rate", "5000", "--delay", "50ms", "sandbox")
    assert "netem" in host.run("tc", "qdisc", "show", "dev", veth).stdout
    assert "cqprobe" not in host.run("ip", "-o", "link").stdout


@pytest.mark.skipif(os.environ.get("CIRCUIT_KERNEL_VM") != "1",
                    reason="unloads sch_netem: only on the kernel tier's VM, never a host's")
def test_a_delay_on_this_kernel_without_netem_is_refused_with_nothing_half_applied(host):
    """The refusal the integration tier sees on a kernel built without netem, here with the
    module removed and its loading blocked: a kernel that has netem elsewhere proves nothing
    about it."""
    with netem_unloaded():
        assert_delay_refused_without_netem(host)
