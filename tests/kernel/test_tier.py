"""Proof of the kernel tier: circuit's netem delay, ipvlan networks and IPVS services work,
each made by circuit itself (its netlink requests), not by tc, ip or ipvsadm."""

from harness import bridge_conf, httpd, min_rtt


def test_a_containers_netem_delay_raises_its_ping_rtt_by_50ms_and_no_other(host):
    host.circuit("network", "create", host.conf(bridge_conf()))
    a, b = host.container(), host.container()
    host.circuit("network", "connect", a.pid, "sandbox")
    host.circuit("network", "connect", b.pid, "sandbox")
    before = min_rtt(a, "10.100.10.1")
    host.circuit("network", "qos", "set", "--container", a.pid, "--delay", "50ms", "sandbox")
    added = min_rtt(a, "10.100.10.1") - before
    assert 45 <= added <= 55, f"netem added {added:.1f} ms"
    assert min_rtt(b, "10.100.10.1") < 45  # the neighbour is not delayed
    host.circuit("network", "qos", "reset", "--container", a.pid, "sandbox")
    assert min_rtt(a, "10.100.10.1") < 45


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


def test_ipvs_service_balances_http_across_two_backends(host, tmp_path):
    host.circuit("network", "create", host.conf(bridge_conf()))
    backends = [httpd(host, tmp_path, name).addresses()[0] for name in ("alpha", "beta")]
    host.circuit("lb", "create", "web", "10.100.99.1:80")
    host.circuit("lb", "add", "web", *(f"{ip}:80" for ip in backends))
    answers = [host.run("timeout", "5", "busybox", "wget", "-q", "-O", "-",
                        "http://10.100.99.1/").stdout.strip() for _ in range(10)]
    assert sorted(answers) == ["alpha"] * 5 + ["beta"] * 5
    host.circuit("lb", "delete", "web")
