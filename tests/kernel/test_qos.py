"""circuit-qos delay (netem) on Debian's stock kernel: the seed's ping example, with a rate."""

from harness import bridge_conf, iperf_mbit, min_rtt


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
