"""circuit-lb's nftables backend with real traffic on this host (its kernel has no IPVS): busybox
httpd backends on a circuit bridge, table inet circuit_lb inside the test's host netns."""

import json
from collections import Counter

import pytest

from circuit_common.store import Store

from harness import (
    answered_by,
    bridge_conf,
    http_get_bodies,
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


def table(host) -> dict:
    """Table inet circuit_lb in the host netns, as `nft -j` lists it (empty when absent)."""
    proc = host.run("nft", "-j", "list", "table", "inet", "circuit_lb", check=False)
    if proc.returncode != 0:
        return {}
    kinds = Counter(next(iter(item)) for item in json.loads(proc.stdout)["nftables"])
    kinds.pop("metainfo", None)
    return kinds


def test_round_robin_stats_removal_and_hairpin(host, tmp_path):
    ips = ipv4_of(web_backends(host, tmp_path, ["alpha", "beta"]))
    gamma = httpd(host, tmp_path, "gamma", "sandbox", "--name", "gamma")
    ips["gamma"] = gamma.addresses()[0]
    assert host.circuit("lb", "create", "web", f"{VIP}:80").stdout == "service web created\n"
    out = host.circuit("lb", "add", "web", f"{ips['alpha']}:80", f"{ips['beta']}:80", "-",
                       input="gamma:80\n")  # gamma by its name, on stdin: its sandbox address
    assert out.stdout == "service web updated\n"
    assert answered_by(host.netns, VIP, 30) == {"alpha": 10, "beta": 10, "gamma": 10}

    listed = host.circuit("lb", "list", "--details").stdout
    assert listed.splitlines()[0].split() == ["NAME", "ADDR", "PROTOCOL", "SCHEDULER", "BACKEND"]
    assert listed.splitlines()[1].split() == ["web", f"{VIP}:80", "tcp", "rr", "nftables"]
    assert f"  -> {ips['alpha']}:80" in listed and "masq    weight 1" in listed
    stats = json.loads(host.circuit("lb", "list", "--stats", "--format", "json").stdout)[0]
    assert stats["backend"] == "nftables" and stats["stats"]["service"]["connections"] == 30
    for ip in ips.values():
        counters = stats["stats"]["targets"][f"{ip}:80"]
        assert counters["connections"] == 10
        assert counters["packets_in"] >= 40 and counters["packets_out"] >= 30  # ≥ 4 / 3 each
        assert counters["bytes_out"] > counters["bytes_in"] > 0  # answers outweigh the GETs

    assert ["->", f"{ips['gamma']}:80", "masq", "weight", "1", "container", "gamma"] in [
        line.split() for line in host.circuit("lb", "list", "--details").stdout.splitlines()]
    record = json.loads((host.state / "services" / "web.json").read_text())
    assert [t.get("container", {}).get("name") for t in record["targets"]
            if t["addr"] == ips["gamma"]] == ["gamma"]
    gamma.kill()  # the container stops; gc releases it, and its target goes with it
    assert "released" in host.circuit("network", "gc").stdout
    assert f"{ips['gamma']}:80" not in host.circuit("lb", "list", "--details").stdout
    assert answered_by(host.netns, VIP, 10) == {"alpha": 5, "beta": 5}  # none to gamma

    client = host.container()  # on the same bridge as the backends: the hairpin case
    hook = {"ociVersion": "1.0.2", "id": "client", "pid": client.pid, "status": "creating",
            "annotations": {"circuit.networks": "sandbox"}}  # attached by runc's hook
    host.circuit("hook", input=json.dumps(hook))
    assert answered_by(client.netns, VIP, 4) == {"alpha": 2, "beta": 2}
    host.circuit("lb", "add", "web", "client:81")  # its poststop hook takes the target out
    assert "container client" in host.circuit("lb", "list", "--details").stdout
    client.kill()  # the container stops: runc's poststop hook
    host.circuit("hook", input=json.dumps({"ociVersion": "1.0.2", "id": "client",
                                           "status": "stopped"}))
    assert [t["addr"] for t in json.loads(host.circuit("lb", "list", "--format", "json")
                                          .stdout)[0]["targets"]] == sorted(
        [ips["alpha"], ips["beta"]])

    assert host.circuit("lb", "delete", "web").stdout == "service web removed\n"
    assert table(host) == {}
    assert VIP not in host.run("ip", "addr", "show", "dev", "lo").stdout
    assert not list((host.state / "services").iterdir())


def test_weighted_round_robin_from_stdin_persistence_and_clear(host, tmp_path):
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

    host.circuit("lb", "create", "sticky", f"{VIP}:8080", "--persistent", "60")
    host.circuit("lb", "create", "hashed", f"{VIP}:8081", "--scheduler", "sh")
    for name, port in (("sticky", 8080), ("hashed", 8081)):
        host.circuit("lb", "add", name, *(f"{ip}:80" for ip in ips.values()))
        assert len(Counter(http_get_bodies(host.netns, VIP, 6, port=port))) == 1  # one client
    host.circuit("lb", "edit", "hashed", "--scheduler", "rr")  # from a hash to numgen
    assert Counter(http_get_bodies(host.netns, VIP, 6, port=8081)) == {
        name: 2 for name in ("alpha", "beta", "gamma")}

    out = host.circuit("lb", "clear").stdout.splitlines()
    assert sorted(out) == ["service hashed removed", "service sticky removed",
                           "service wrr removed"]
    assert table(host) == {}
    assert VIP not in host.run("ip", "addr", "show", "dev", "lo").stdout
    assert host.circuit("lb", "list", "-q").stdout == ""


def test_udp_service_answers(host):
    host.circuit("network", "create", host.conf(bridge_conf()))
    ips = [udp_responder(host, name).addresses()[0] for name in ("alpha", "beta")]
    host.circuit("lb", "create", "dns", f"{VIP}:5353", "--protocol", "udp")
    host.circuit("lb", "add", "dns", *(f"{ip}:5353" for ip in ips))
    assert sorted(udp_answers(host.netns, VIP, 4)) == ["alpha", "alpha", "beta", "beta"]


def test_ipv6_service_balances(host, tmp_path):
    conf = ipv6_bridge_conf()
    containers = web_backends(host, tmp_path, ["alpha", "beta"], conf)
    backends = {name: c.addresses(version=6)[0] for name, c in containers.items()}
    assert wait_for(lambda: "tentative" not in host.run("ip", "-6", "addr", "show").stdout)
    vip = "fd10:99::1"
    host.circuit("lb", "create", "web6", f"[{vip}]:80")
    host.circuit("lb", "add", "web6", *(f"[{ip}]:80" for ip in backends.values()))
    assert answered_by(host.netns, vip, 4) == {"alpha": 2, "beta": 2}
    host.circuit("lb", "delete", "web6")
    assert table(host) == {}


def test_drift_after_the_table_is_deleted_and_restore(host, tmp_path):
    ips = ipv4_of(web_backends(host, tmp_path, ["alpha", "beta"]))
    host.circuit("lb", "create", "web", f"{VIP}:80")
    host.circuit("lb", "add", "web", *(f"{ip}:80" for ip in ips.values()))
    made = table(host)
    assert made["chain"] == 7 and made["rule"] >= 12 and made["set"] == 6

    host.run("nft", "delete", "table", "inet", "circuit_lb")  # someone deletes the table
    drift = host.circuit("lb", "list")
    assert drift.returncode == 0
    assert drift.stderr == "circuit: service web is missing from the kernel; run `circuit " \
                           "restore`\n"
    stored = snapshot(host.state)
    first = f"{next(iter(ips.values()))}:80"
    for change in (["add", "web", "10.100.10.99:80"],
                   ["add", "web", first, "--weight", "5"],  # rr: the table would not change
                   ["check", "web", "tcp"], ["edit", "web", "--scheduler", "wrr"]):
        changed = host.circuit("lb", *change, check=False)
        assert changed.returncode == 5 and "circuit restore" in changed.stderr, change
        assert len(changed.stderr.splitlines()) == 1 and changed.stdout == "", change
        assert snapshot(host.state) == stored and table(host) == {}, change

    # a target whose container left while the kill of a circuit kept it: restore drops it
    services = Store(host.state)
    record = services.read(services.path("services", "web.json"))
    services.write(services.path("services", "web.json"), {**record, "targets": [
        *record["targets"], {"addr": "10.100.10.98", "port": 80, "weight": 1, "forward": "masq",
                             "container": {"name": "c9", "id": "c9", "network": "sandbox",
                                           "ifname": "eth0"}}]})
    assert "service web restored" in host.circuit("restore").stdout
    assert services.read(services.path("services", "web.json")) == record
    assert table(host) == made and host.circuit("lb", "list").stderr == ""
    assert answered_by(host.netns, VIP, 4) == {"alpha": 2, "beta": 2}

    # by hand: the VIP taken off lo, a rule and a chain of another's in circuit's table
    host.run("ip", "addr", "del", f"{VIP}/32", "dev", "lo")
    host.run("nft", "add", "rule", "inet", "circuit_lb", "prerouting", "counter")
    host.run("nft", "add", "chain", "inet", "circuit_lb", "theirs")
    drift = host.circuit("lb", "list").stderr.splitlines()
    assert sorted(drift) == sorted(f"circuit: {line}; run `circuit restore`" for line in (
        "chain prerouting of table inet circuit_lb has 2 rules, the services make 1 (a rule "
        "added or deleted by hand?)",
        "table inet circuit_lb has chain theirs, which no service makes",
        f"VIP {VIP} of service web is not on lo (taken off by hand?)")), drift
    host.circuit("restore")
    assert table(host) == made and host.circuit("lb", "list").stderr == ""
    assert answered_by(host.netns, VIP, 4) == {"alpha": 2, "beta": 2}
    host.circuit("lb", "delete", "web")


@pytest.mark.parametrize("args, message, code", [
    (["create", "bad", "10.100.99.2:80", "--scheduler", "lc"], "use rr, wrr, sh", 3),
    (["create", "bad", "10.100.99.2:80", "--backend", "lvs"], "use ipvs or nftables", 3),
    (["create", "bad", "10.100.99.2:80", "--backend", "ipvs"], "has no IPVS", 8),
    (["create", "bad", "10.100.99.2"], "use ADDR:PORT", 3),
    (["create", "bad", "10.100.99.2:70000"], "invalid port", 3),
    (["create", "web", "10.100.99.3:80"], "exists already", 5),
    (["create", "twin", f"{VIP}:80"], "already balances", 5),
    (["add", "nosuch", "10.100.10.2:80"], "no service named", 4),
    (["add", "web", "10.100.10.2:80", "--weight", "70000"], "0..65535", 3),
    (["add", "web", "10.100.10.2:80", "--forward", "route"], "needs the ipvs backend", 3),
    (["add", "web", "[fd00::1]:80"], "IP version", 3),
    (["add", "web", "10.1.1.1:http"], "use ADDR:PORT", 3),
    (["remove", "web", "10.1.1.1:80"], "not in service web", 4),
    (["edit", "web", "--scheduler", "lc"], "use rr, wrr, sh", 3),
    (["edit", "web", "--scheduler", "Round"], "invalid scheduler", 3),
    (["edit", "nosuch", "--scheduler", "rr"], "no service named", 4),
    (["edit", "web"], "usage: circuit-lb edit NAME --scheduler S", 2),
])
def test_bad_input_is_one_line_and_changes_nothing(host, args, message, code):
    host.circuit("lb", "create", "web", f"{VIP}:80")
    host.circuit("lb", "add", "web", "10.100.10.2:80")
    before = snapshot(host.state)
    kernel = host.run("nft", "list", "table", "inet", "circuit_lb").stdout
    proc = host.circuit("lb", *args, check=False)
    assert proc.returncode == code and message in proc.stderr, (args, proc.stderr)
    assert len(proc.stderr.splitlines()) == 1 and proc.stdout == ""
    assert snapshot(host.state) == before
    assert host.run("nft", "list", "table", "inet", "circuit_lb").stdout == kernel
