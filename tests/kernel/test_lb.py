"""circuit-lb with real traffic through IPVS: busybox httpd backends on a circuit bridge."""

import json

from harness import (
    answered_by,
    bridge_conf,
    httpd,
    ipv4_of,
    ipv6_bridge_conf,
    snapshot,
    udp_answers,
    udp_responder,
    wait_for,
    web_backends,
)

VIP = "10.100.99.1"


def test_round_robin_removal_hairpin_stats_and_restore(host, tmp_path):
    ips = ipv4_of(web_backends(host, tmp_path, ["alpha", "beta", "gamma"]))
    assert host.circuit("lb", "create", "web", f"{VIP}:80").stdout == "service web created\n"
    out = host.circuit("lb", "add", "web", *(f"{ip}:80" for ip in ips.values()))
    assert out.stdout == "service web updated\n"
    assert answered_by(host.netns, VIP, 30) == {"alpha": 10, "beta": 10, "gamma": 10}

    host.circuit("lb", "remove", "web", f"{ips['gamma']}:80")
    assert set(answered_by(host.netns, VIP, 10)) == {"alpha", "beta"}

    client = host.container()  # on the same bridge as the backends: the hairpin case
    host.circuit("network", "connect", client.pid, "sandbox")
    assert set(answered_by(client.netns, VIP, 4)) == {"alpha", "beta"}

    listed = host.circuit("lb", "list", "--details", "--stats").stdout
    assert listed.splitlines()[0].split()[:4] == ["NAME", "ADDR", "PROTOCOL", "SCHEDULER"]
    assert f"web                 {VIP}:80" in listed
    assert f"  -> {ips['alpha']}:80" in listed and "masq" in listed and "weight 1" in listed
    def connections() -> int:
        listed = json.loads(host.circuit("lb", "list", "--stats", "--format", "json").stdout)
        return listed[0]["stats"]["service"]["connections"]

    # IPVS sums its per-CPU counters every 2 s (seen: 39 of 44 right after the requests):
    # wait for the sum rather than accept a few short
    assert wait_for(lambda: connections() == 30 + 10 + 4, timeout=8, interval=0.5), \
        connections()

    host.run("ipvsadm", "-C")  # someone clears the kernel's table
    drift = host.circuit("lb", "list")
    assert "missing from the kernel" in drift.stderr and "circuit restore" in drift.stderr
    assert "service web restored" in host.circuit("restore").stdout
    assert host.circuit("lb", "list").stderr == ""
    assert answered_by(host.netns, VIP, 4) == {"alpha": 2, "beta": 2}

    before = snapshot(host.state)
    kernel = host.run("ipvsadm", "-Ln").stdout
    for args, message in [
        (["create", "bad", "10.100.99.2:80", "--scheduler", "nosuch"], "not available"),
        (["create", "bad", "10.100.99.2"], "use ADDR:PORT"),
        (["create", "bad", "10.100.99.2:70000"], "invalid port"),
        (["create", "web", "10.100.99.3:80"], "exists already"),
        (["create", "twin", f"{VIP}:80"], "already balances"),
        (["add", "nosuch", f"{ips['alpha']}:80"], "no service named"),
        (["add", "web", f"{ips['alpha']}:80", "--weight", "70000"], "0..65535"),
        (["add", "web", "10.1.1.1:http"], "use ADDR:PORT"),
        (["remove", "web", "10.1.1.1:80"], "not in service web"),
    ]:
        proc = host.circuit("lb", *args, check=False)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1 and proc.stdout == ""
        assert snapshot(host.state) == before and host.run("ipvsadm", "-Ln").stdout == kernel

    assert host.circuit("lb", "delete", "web").stdout == "service web removed\n"
    assert "TCP" not in host.run("ipvsadm", "-Ln").stdout
    assert VIP not in host.run("ip", "addr", "show", "dev", "lo").stdout


def test_weighted_round_robin_from_stdin_and_persistence(host, tmp_path):
    ips = ipv4_of(web_backends(host, tmp_path, ["alpha", "beta", "gamma"]))
    host.circuit("lb", "create", "wrr", f"{VIP}:80", "--scheduler", "wrr")
    lines = f"{ips['alpha']}:80 3\n{ips['beta']}:80 1\n# comment\n{ips['gamma']}:80\n"
    host.circuit("lb", "add", "wrr", "-", input=lines)
    assert answered_by(host.netns, VIP, 30) == {"alpha": 18, "beta": 6, "gamma": 6}
    # lb edit: another scheduler over the same targets, in the kernel at once
    assert host.circuit("lb", "edit", "wrr", "--scheduler", "rr").stdout == \
        "service wrr updated\n"
    assert answered_by(host.netns, VIP, 30) == {"alpha": 10, "beta": 10, "gamma": 10}
    assert host.circuit("lb", "list").stdout.splitlines()[1].split()[3] == "rr"
    assert host.circuit("lb", "list").stderr == ""  # the kernel has what the store says
    host.circuit("lb", "edit", "wrr", "--scheduler", "wrr")
    assert answered_by(host.netns, VIP, 30) == {"alpha": 18, "beta": 6, "gamma": 6}

    host.circuit("lb", "delete", "wrr")
    host.circuit("lb", "create", "sticky", f"{VIP}:80", "--persistent", "60")
    host.circuit("lb", "add", "sticky", *(f"{ip}:80" for ip in ips.values()))
    assert len(answered_by(host.netns, VIP, 6)) == 1  # one client, one backend


def test_udp_service_answers(host):
    host.circuit("network", "create", host.conf(bridge_conf()))
    ips = [udp_responder(host, name).addresses()[0] for name in ("alpha", "beta")]
    host.circuit("lb", "create", "dns", f"{VIP}:5353", "--protocol", "udp")
    host.circuit("lb", "add", "dns", *(f"{ip}:5353" for ip in ips))
    assert sorted(udp_answers(host.netns, VIP, 4)) == ["alpha", "alpha", "beta", "beta"]


def test_ipv6_service_balances_and_restores(host, tmp_path):
    conf = ipv6_bridge_conf()
    host.circuit("network", "create", host.conf(conf))
    backends = {name: httpd(host, tmp_path, name).addresses(version=6)[0]
                for name in ("alpha", "beta")}
    assert wait_for(lambda: "tentative" not in host.run("ip", "-6", "addr", "show").stdout)

    vip = "fd10:99::1"
    host.circuit("lb", "create", "web6", f"[{vip}]:80")
    host.circuit("lb", "add", "web6", *(f"[{ip}]:80" for ip in backends.values()))
    assert answered_by(host.netns, vip, 4) == {"alpha": 2, "beta": 2}
    listed = host.circuit("lb", "list", "--details").stdout
    assert f"[{vip}]:80" in listed and f"-> [{backends['alpha']}]:80" in listed

    host.run("ipvsadm", "-C")
    assert "service web6 restored" in host.circuit("restore").stdout
    assert host.circuit("lb", "list").stderr == ""
    assert answered_by(host.netns, vip, 4) == {"alpha": 2, "beta": 2}

    host.circuit("lb", "delete", "web6")
    assert "TCP" not in host.run("ipvsadm", "-Ln").stdout
    assert vip not in host.run("ip", "addr", "show", "dev", "lo").stdout


def test_a_change_the_kernel_refuses_leaves_kernel_and_state_as_they_were(host):
    host.circuit("lb", "create", "web", f"{VIP}:80")
    host.circuit("lb", "add", "web", "10.200.0.1:80")
    # someone adds a target behind circuit's back: circuit's NEW_DEST for it is refused
    host.run("ipvsadm", "-a", "-t", f"{VIP}:80", "-r", "10.200.0.2:80", "-m")
    before, kernel = snapshot(host.state), host.run("ipvsadm", "-Ln").stdout
    proc = host.circuit("lb", "add", "web", "10.200.0.3:80", "10.200.0.2:80", "10.200.0.4:80",
                        check=False)
    assert proc.returncode == 5 and "circuit restore" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert snapshot(host.state) == before and host.run("ipvsadm", "-Ln").stdout == kernel

    host.run("ipvsadm", "-E", "-t", f"{VIP}:80", "-s", "wlc")  # and changes the scheduler
    assert "scheduler wlc" in host.circuit("lb", "list").stderr
    assert "service web restored" in host.circuit("restore").stdout
    kernel = host.run("ipvsadm", "-Ln").stdout
    assert "10.200.0.2" not in kernel and f"{VIP}:80 rr" in kernel
    assert host.circuit("lb", "list").stderr == ""
    host.circuit("lb", "delete", "web")


def test_metrics_count_ipvs_requests_per_target(host, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    ips = ipv4_of(web_backends(host, tmp_path, ["alpha", "beta", "gamma"]))
    host.circuit("lb", "create", "web", f"{VIP}:80", "--backend", "ipvs")
    host.circuit("lb", "add", "web", *(f"{ip}:80" for ip in ips.values()), "--weight", "2")
    assert answered_by(host.netns, VIP, 30) == {"alpha": 10, "beta": 10, "gamma": 10}

    def scraped() -> dict:
        text = host.circuit("metrics").stdout
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def connections(samples: dict, ip: str) -> float:
        return samples[("circuit_lb_target_connections_total",
                        (("service", "web"), ("target", f"{ip}:80")))]

    # IPVS sums its per-CPU counters every 2 s: wait for the sums
    assert wait_for(lambda: all(connections(scraped(), ip) == 10 for ip in ips.values()),
                    timeout=8, interval=0.5)
    samples = scraped()
    assert samples[("circuit_lb_service_connections_total",
                    (("backend", "ipvs"), ("service", "web")))] == 30
    for ip in ips.values():
        target = (("service", "web"), ("target", f"{ip}:80"))
        assert samples[("circuit_lb_target_weight", target)] == 2
        bytes_in, bytes_out = (samples[("circuit_lb_target_bytes_total",
                                        tuple(sorted((*target, ("direction", d)))))]
                               for d in ("in", "out"))
        assert bytes_out > bytes_in > 0
    host.circuit("lb", "delete", "web")
