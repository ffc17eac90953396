"""Proof of the kernel tier: netem, ipvlan and IPVS work with circuit-made networks."""

import sys

from harness import bridge_conf, host_veth, httpd, min_rtt


def test_netem_delay_on_a_bridge_veth_raises_ping_rtt_by_50ms(host):
    host.circuit("network", "create", host.conf(bridge_conf()))
    a, b = host.container(), host.container()
    host.circuit("network", "connect", a.pid, "sandbox")
    host.circuit("network", "connect", b.pid, "sandbox")
    before = min_rtt(a, "10.100.10.1")
    host.run("tc", "qdisc", "add", "dev", host_veth(host, "sandbox", a.pid), "root", "netem",
             "delay", "50ms")
    added = min_rtt(a, "10.100.10.1") - before
    assert 45 <= added <= 55, f"netem added {added:.1f} ms"
    assert min_rtt(b, "10.100.10.1") < 45  # the neighbour is not delayed


def test_ipvlan_network_attaches_a_container(host):
    host.run("ip", "link", "add", "uplink0", "type", "dummy")
    host.run("ip", "link", "set", "uplink0", "up")
    conf = {"cniVersion": "1.0.0", "name": "iv", "type": "ipvlan", "master": "uplink0",
            "ipam": {"type": "host-local", "subnet": "10.100.80.0/24"}}
    host.circuit("network", "create", host.conf(conf))
    a, b = host.container(), host.container()
    host.circuit("network", "connect", a.pid, "iv")
    host.circuit("network", "connect", b.pid, "iv")
    assert a.addresses()[0].startswith("10.100.80.") and a.ping(b.addresses()[0])
    host.circuit("network", "delete", "iv", "--force")
    assert host.reserved_ips("iv") == set() and "eth0" not in a.links()


IPVS_SERVICE = """
import socket, sys
from pyroute2 import IPVS, IPVSDest, IPVSService
ipvs = IPVS()
service = IPVSService(addr=sys.argv[1], port=80, protocol=socket.IPPROTO_TCP, sched_name="rr")
ipvs.service("add", service=service)
for backend in sys.argv[2:]:
    ipvs.dest("add", service=service, dest=IPVSDest(addr=backend, port=80, fwd_method=0))  # masq
"""


def test_ipvs_service_balances_http_across_two_backends(host, tmp_path):
    host.circuit("network", "create", host.conf(bridge_conf()))
    backends = [httpd(host, tmp_path, name).addresses()[0] for name in ("alpha", "beta")]
    host.run("ip", "addr", "add", "10.100.99.1/32", "dev", "lo")
    host.run(sys.executable, "-c", IPVS_SERVICE, "10.100.99.1", *backends)
    answers = [host.run("timeout", "5", "busybox", "wget", "-q", "-O", "-",
                        "http://10.100.99.1/").stdout.strip() for _ in range(10)]
    assert sorted(answers) == ["alpha"] * 5 + ["beta"] * 5
