"""Scale-out through etcd: three hosts (network namespaces on one underlay bridge, an etcd
member in each) share cluster networks over VXLAN, addresses never collide, and the cluster
survives losing etcd members and hosts (docs/cluster.md)."""

import ipaddress
import json
import time
from concurrent.futures import ThreadPoolExecutor

from harness import answered_by, httpd, snapshot, wait_for

SUBNET = "10.200.0.0/16"


def join_all(cluster, ttl="10"):
    for host in cluster.hosts:
        host.circuit("cluster", "join", "--address", host.address, "--name",
                     f"h{host.index}", "--ttl", ttl)


def create_overlay(host, name="blue"):
    host.circuit("network", "create", name, "--subnet", SUBNET, "--overlay", "vxlan")


def sync_all(cluster):
    for host in cluster.hosts:
        host.circuit("cluster", "sync")


def test_containers_on_three_hosts_reach_each_other(cluster):
    join_all(cluster)
    create_overlay(cluster.hosts[0])
    sync_all(cluster)
    containers = []
    for host in cluster.hosts:
        c = host.container()
        host.circuit("network", "connect", c.pid, "blue")
        containers.append((host, c))
    sync_all(cluster)
    sync_all(cluster)  # the first round published each host's, the second sees the others'
    ips = [c.addresses()[0] for _, c in containers]
    assert len({ip.rsplit(".", 1)[0] for ip in ips}) == 3, ips  # one subnet per host
    for (host, c), mine in zip(containers, ips, strict=True):
        for ip in ips:
            if ip != mine:
                assert c.ping(ip), f"{ip} does not answer {mine} on {host.name}: " + \
                    host.run("ip", "route").stdout + host.run("ip", "neigh").stdout + \
                    host.run("bridge", "fdb", "show", "dev", "cvx1").stdout + \
                    host.run("ip", "-d", "link").stdout
    for host in cluster.hosts:
        rows = json.loads(host.circuit("network", "list", "--format", "json").stdout)
        peers = next(r for r in rows if r["name"] == "blue")["peers"]
        assert sorted(p["ips"][0].split("/")[0] for p in peers) == sorted(ips)
        assert {p["host"] for p in peers} == {"h0", "h1", "h2"}
    # leaving the cluster: masqueraded to the host's address, as from any bridge network
    outside = cluster.hosts[0].outside_client()
    assert containers[0][1].ping("198.51.100.2")
    assert outside.run("ip", "route", "get", ips[0], check=False).returncode != 0  # no way back

    # a host that leaves gives its subnet back; the others drop its routes on their next pass
    h2 = cluster.hosts[2]
    h2.circuit("network", "disconnect", containers[2][1].pid, "blue")
    assert h2.circuit("cluster", "leave").stdout == "h2 left the cluster\n"
    assert "cvx1" not in host_links(h2)
    assert "circuit_overlay" not in h2.run("nft", "list", "tables").stdout
    proc = h2.circuit("cluster", "sync", check=False)
    assert proc.returncode == 3 and "has not joined" in proc.stderr
    for host in cluster.hosts[:2]:
        host.circuit("cluster", "sync")
        assert routes_via_overlay(host) == {f"{ips[1 - host.index].rsplit('.', 1)[0]}.0/24"}
    listed = json.loads(cluster.hosts[0].circuit("cluster", "list", "--format", "json").stdout)
    assert [r["name"] for r in listed] == ["h0", "h1"]

    # a network in use on another host is not deleted; once free, every host lets go of it
    h0, h1 = cluster.hosts[:2]
    h0.circuit("network", "disconnect", containers[0][1].pid, "blue")
    proc = h0.circuit("network", "delete", "blue", check=False)
    assert proc.returncode == 5 and "in use on host(s) h1" in proc.stderr, proc.stderr
    h1.circuit("network", "disconnect", containers[1][1].pid, "blue")
    h1.circuit("cluster", "sync")
    h0.circuit("cluster", "sync")
    h0.circuit("network", "delete", "blue")
    h1.circuit("cluster", "sync")
    for host in (h0, h1):
        assert not {"cvx1", "cni-blue"} & host_links(host)
        assert not (host.state / "cluster" / "leases" / "blue.json").exists()
    listed = json.loads(h1.circuit("cluster", "list", "--format", "json").stdout)
    assert [r["subnets"] for r in listed] == [{}, {}]


def host_links(host) -> set[str]:
    return {line.split(": ")[1].split("@")[0]
            for line in host.run("ip", "-o", "link").stdout.splitlines()}


def routes_via_overlay(host, vni=1) -> set[str]:
    out = host.run("ip", "-4", "route", "show", "dev", f"cvx{vni}", "proto", "static").stdout
    return {line.split()[0] for line in out.splitlines()}


def test_a_hundred_parallel_connects_over_three_hosts_get_distinct_subnets_and_ips(cluster):
    join_all(cluster)
    create_overlay(cluster.hosts[0])
    sync_all(cluster)
    containers = [(host, host.container()) for host in cluster.hosts for _ in range(34)][:100]

    def connect(pair):
        host, c = pair
        return host.circuit("network", "connect", c.pid, "blue", check=False)

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(connect, containers))
    assert [r.returncode for r in results] == [0] * 100, [r.stderr for r in results if
                                                            r.returncode][:3]
    ips = [c.addresses()[0] for _, c in containers]
    assert len(set(ips)) == 100
    subnets = {}
    for host in cluster.hosts:
        lease = json.loads((host.state / "cluster" / "leases" / "blue.json").read_text())
        subnets[host.name] = ipaddress.ip_network(lease["subnet"])
    assert len(set(subnets.values())) == 3
    for (host, _), ip in zip(containers, ips, strict=True):
        assert ipaddress.ip_address(ip) in subnets[host.name]
    listed = json.loads(cluster.hosts[0].circuit("cluster", "list", "--format", "json").stdout)
    assert sorted(str(ipaddress.ip_network(r["subnets"]["blue"])) for r in listed) == \
        sorted(map(str, subnets.values()))


def test_etcd_losing_one_member_works_losing_two_fails_in_one_line_and_converges(cluster):
    h0, h1, h2 = cluster.hosts
    join_all(cluster)
    create_overlay(h0)
    sync_all(cluster)
    first = h0.container()
    h0.circuit("network", "connect", first.pid, "blue")

    cluster.members[2].stop()  # one member down: quorum holds
    second = h1.container()
    h1.circuit("network", "connect", second.pid, "blue")  # h1's first attach: a lease in etcd
    h1.circuit("cluster", "sync")
    h0.circuit("cluster", "sync")
    assert first.ping(second.addresses()[0])
    h1.circuit("network", "disconnect", second.pid, "blue")

    cluster.members[1].stop()  # two down: no quorum
    before = snapshot(h1.state), h1.reserved_ips("blue"), host_links(h1)
    started = time.monotonic()
    for args in (("network", "create", "red", "--subnet", "10.201.0.0/16", "--overlay", "vxlan"),
                 ("cluster", "sync")):
        proc = h1.circuit("--lock-timeout", "6", *args, check=False)
        assert proc.returncode == 11, proc.stderr
        assert proc.stderr.count("\n") == 1 and "etcd has no quorum or is down" in proc.stderr
        assert "10.99.0.1:2379" in proc.stderr and "10.99.0.2:2379" in proc.stderr
    assert time.monotonic() - started < 2 * 6 + 4
    assert (snapshot(h1.state), h1.reserved_ips("blue"), host_links(h1)) == before
    third = h2.container()  # h2 never leased: its first attach needs etcd, and fails cleanly
    proc = h2.circuit("--lock-timeout", "6", "network", "connect", third.pid, "blue", check=False)
    assert proc.returncode == 11 and proc.stderr.count("\n") == 1, proc.stderr
    assert third.links() == {"lo"} and h2.reserved_ips("blue") == set()
    h0.circuit("network", "disconnect", first.pid, "blue")  # a host with its lease goes on
    h0.circuit("network", "connect", first.pid, "blue")

    cluster.members[1].start()
    cluster.members[2].start()
    cluster.wait_healthy()
    h2.circuit("network", "connect", third.pid, "blue")
    sync_all(cluster)
    sync_all(cluster)
    assert first.ping(third.addresses()[0])
    rows = json.loads(h1.circuit("network", "list", "--format", "json").stdout)
    assert {p["host"] for p in rows[0]["peers"]} == {"h0", "h2"}


def test_a_host_whose_agent_stops_lapses_and_comes_back(cluster):
    h0, h1, h2 = cluster.hosts
    join_all(cluster, ttl="3")
    create_overlay(h0)
    containers = {}
    for host in cluster.hosts:
        host.start_agent()
        containers[host.name] = host.container()
        host.circuit("network", "connect", containers[host.name].pid, "blue")
    ip2 = containers[h2.name].addresses()[0]
    subnet2 = str(ipaddress.ip_network(f"{ip2}/24", strict=False))
    assert wait_for(lambda: subnet2 in routes_via_overlay(h0), timeout=5)
    assert wait_for(lambda: len(json.loads(h1.circuit("network", "list", "--format",
                                                      "json").stdout)[0]["peers"]) == 3)
    assert containers[h0.name].ping(ip2)

    assert h2.stop_agent() == 0
    assert wait_for(lambda: subnet2 not in routes_via_overlay(h0), timeout=3 + 5)
    assert wait_for(lambda: subnet2 not in routes_via_overlay(h1), timeout=2)
    rows = {r["name"]: r for r in json.loads(h0.circuit("cluster", "list", "--format",
                                                        "json").stdout)}
    assert rows["h2"]["state"] == "lapsed" and rows["h0"]["state"] == "alive"
    assert not containers[h0.name].ping(ip2)

    h2.start_agent()
    assert wait_for(lambda: subnet2 in routes_via_overlay(h0), timeout=5)
    assert containers[h0.name].ping(ip2)
    for host in cluster.hosts:
        assert host.stop_agent() == 0


def test_a_service_created_on_one_host_balances_from_another_to_targets_on_all(cluster,
                                                                              tmp_path):
    h0, h1, h2 = cluster.hosts
    join_all(cluster)
    create_overlay(h0)
    sync_all(cluster)
    names = {}
    for host in cluster.hosts:
        backend = httpd(host, tmp_path, f"web{host.index}", "blue")
        names[f"web{host.index}"] = backend.addresses()[0]
    client = h1.container()
    h1.circuit("network", "connect", client.pid, "blue")
    h0.circuit("lb", "create", "web", "10.250.0.10:80", "--backend", "nftables")
    h0.circuit("lb", "add", "web", *(f"{ip}:80" for ip in names.values()))
    sync_all(cluster)
    assert answered_by(client.netns, "10.250.0.10", 30) == {"web0": 10, "web1": 10,
                                                             "web2": 10}
    h2.circuit("lb", "remove", "web", f"{names['web2']}:80")  # changed from a third host
    sync_all(cluster)
    assert answered_by(client.netns, "10.250.0.10", 10) == {"web0": 5, "web1": 5}


def test_no_lost_update_and_no_overlap_between_hosts(cluster):
    h0, h1, h2 = cluster.hosts
    join_all(cluster)

    def create(pair):
        host, name = pair
        return host.circuit("network", "create", name, "--subnet", "10.202.0.0/16",
                            "--overlay", "vxlan", check=False)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(create, [(h0, "one"), (h1, "two"), (h2, "three")]))
    assert sorted(r.returncode for r in results) == [0, 5, 5], [r.stderr for r in results]
    assert all("overlaps 10.202.0.0/16" in r.stderr for r in results if r.returncode)

    # lb changes hold the cluster's lock, under which each host first mirrors etcd: h1 adds
    # to what h0 made without a sync of its own, and loses nothing of h0's
    h0.circuit("lb", "create", "web", "10.250.0.10:80", "--backend", "nftables")
    h0.circuit("lb", "add", "web", "10.202.0.5:80")
    h1.circuit("lb", "add", "web", "10.202.0.6:80")
    h2.circuit("cluster", "sync")
    listed = json.loads(h2.circuit("lb", "list", "--details", "--format", "json").stdout)
    assert sorted(f"{t['addr']}:{t['port']}" for t in listed[0]["targets"]) == [
        "10.202.0.5:80", "10.202.0.6:80"]
    # a network's QoS policy is written under the network's lock only: a host that has not
    # seen the last change is refused, in one line, with nothing changed
    name = next(n for n, r in zip(("one", "two", "three"), results, strict=True)
                if r.returncode == 0)
    sync_all(cluster)
    h0.circuit("network", "qos", "set", "--rate", "5000", name)
    before = snapshot(h1.state)
    proc = h1.circuit("network", "qos", "set", "--rate", "6000", name, check=False)
    assert proc.returncode == 5 and proc.stderr.count("\n") == 1, proc.stderr
    assert "changed on another host" in proc.stderr and "circuit cluster sync" in proc.stderr
    assert snapshot(h1.state) == before
    h1.circuit("cluster", "sync")
    h1.circuit("network", "qos", "set", "--rate", "6000", name)
    h2.circuit("cluster", "sync")
    assert "6mbit" in h2.circuit("network", "qos", "show", name).stdout.lower()


def test_the_runc_hook_attaches_to_a_cluster_network_and_detaches(cluster):
    h0, h1, _ = cluster.hosts
    join_all(cluster)
    create_overlay(h0)
    started = {}
    for host in (h0, h1):
        c = host.container()
        state = {"ociVersion": "1.0.2", "id": f"ctr-{host.index}", "pid": c.pid,
                 "status": "creating", "bundle": "/nonexistent", "annotations": {}}
        host.circuit("hook", input=json.dumps(state), env={"CIRCUIT_NETWORK": "blue"})
        started[host] = (c, state)
    sync_all(cluster)
    (c0, _), (c1, _) = started.values()
    assert c0.ping(c1.addresses()[0])
    for host, (c, state) in started.items():
        assert host.reserved_ips("blue") == {c.addresses()[0]}  # in its own host's IPAM dir
        c.kill()
        host.circuit("hook", input=json.dumps({**state, "status": "stopped", "pid": 0}))
        assert host.reserved_ips("blue") == set()


def nslookup(container, name: str, server: str) -> tuple[int, set[str]]:
    """busybox nslookup in the container; the addresses it printed after the server's."""
    proc = container.run("busybox", "nslookup", name, server, check=False)
    out = (proc.stdout + proc.stderr).split("\n\n", 1)[-1]
    return proc.returncode, {line.split()[-1] for line in out.splitlines()
                             if line.startswith("Address")}


def test_a_container_finds_another_hosts_by_name_until_it_disconnects(cluster):
    h0, h1, _ = cluster.hosts
    join_all(cluster)
    h0.circuit("network", "create", "blue", "--subnet", SUBNET, "--overlay", "vxlan", "--dns")
    sync_all(cluster)
    alpha, beta = h0.container(), h1.container()
    h0.circuit("network", "connect", alpha.pid, "blue", "--name", "alpha")
    h1.circuit("network", "connect", beta.pid, "blue", "--name", "beta")
    h1.circuit("cluster", "sync")  # publishes beta
    h0.circuit("cluster", "sync")  # sees it
    gateway = (h0.state / "dns" / "blue" / "resolv.conf").read_text().split()[-1]
    assert ipaddress.ip_address(gateway) in ipaddress.ip_network(f"{alpha.addresses()[0]}/24",
                                                                 strict=False)  # this host's
    want = {beta.addresses()[0]}
    assert wait_for(lambda: nslookup(alpha, "beta.blue", gateway) == (0, want), timeout=3), \
        nslookup(alpha, "beta.blue", gateway)
    assert nslookup(alpha, "alpha", gateway) == (0, {alpha.addresses()[0]})

    h1.circuit("network", "disconnect", beta.pid, "blue")
    h1.circuit("cluster", "sync")
    h0.circuit("cluster", "sync")
    assert wait_for(lambda: nslookup(alpha, "beta", gateway)[0] != 0, timeout=3)
    h0.circuit("network", "disconnect", alpha.pid, "blue")


# -- deletions reach the other hosts' kernels (the extensions' resync) --------------------------

def record_revision(host, name: str) -> int:
    """The etcd revision shared record name (as services/web.json) was last written at."""
    import base64

    key = base64.b64encode(f"{host.lab.prefix}/records/{name}".encode()).decode()
    return int(host.etcd("kv/range", {"key": key})["kvs"][0]["mod_revision"])


def lo_addresses(host) -> str:
    return host.run("ip", "-4", "-o", "addr", "show", "dev", "lo").stdout


def lb_table(host) -> str:
    return host.run("nft", "list", "table", "inet", "circuit_lb", check=False).stdout


def test_an_lb_service_deleted_on_one_host_leaves_no_vip_or_rules_on_another(cluster):
    h0, h1, _ = cluster.hosts
    join_all(cluster)
    for name, port in (("web", 80), ("tls", 443)):  # one VIP, two services
        h0.circuit("lb", "create", name, f"10.250.0.10:{port}", "--backend", "nftables")
    h0.circuit("lb", "add", "web", "10.200.0.5:80", "10.200.0.6:80")
    h1.circuit("cluster", "sync")
    assert "10.250.0.10/32" in lo_addresses(h1)
    rules = lb_table(h1)
    assert "10.200.0.5" in rules and "10.200.0.6" in rules and "svc/tls" in rules, rules
    revision = record_revision(h0, "services/tls.json")

    h0.circuit("lb", "remove", "web", "10.200.0.6:80")
    h1.circuit("cluster", "sync")
    rules = lb_table(h1)
    assert "10.200.0.5" in rules and "10.200.0.6" not in rules, rules

    h0.circuit("lb", "delete", "web")
    h1.circuit("cluster", "sync")
    rules = lb_table(h1)
    assert "svc/web" not in rules and "10.200.0.5" not in rules and "svc/tls" in rules, rules
    assert "10.250.0.10/32" in lo_addresses(h1)  # tls still has it
    assert h1.circuit("lb", "list").stderr == ""  # no drift between h1's kernel and records
    assert record_revision(h0, "services/tls.json") == revision  # h1 rewrote nothing

    h0.circuit("lb", "delete", "tls")
    h1.circuit("cluster", "sync")
    assert "10.250.0.10" not in lo_addresses(h1)
    assert "circuit_lb" not in h1.run("nft", "list", "tables").stdout
    for host in (h0, h1):
        assert json.loads(host.circuit("lb", "list", "--format", "json").stdout) == []


def test_a_qos_policy_reset_on_one_host_unshapes_another_hosts_attachments(cluster):
    from harness import host_veth

    h0, h1, _ = cluster.hosts
    join_all(cluster)
    create_overlay(h0)
    sync_all(cluster)
    c = h1.container()
    h1.circuit("network", "connect", c.pid, "blue")
    veth = host_veth(h1, "blue", c.pid)

    def shaping() -> tuple[str, str]:
        return (h1.run("tc", "qdisc", "show", "dev", veth).stdout,
                h1.run("ip", "-o", "link").stdout)

    h0.circuit("network", "qos", "set", "--rate", "5000", "blue")
    revision = record_revision(h0, "qos/blue.json")
    h1.circuit("cluster", "sync")
    qdiscs, links = shaping()
    assert "htb" in qdiscs and "ingress" in qdiscs and ": cq" in links, qdiscs
    assert record_revision(h0, "qos/blue.json") == revision  # h1 rewrote nothing

    h0.circuit("network", "qos", "reset", "blue")
    h1.circuit("cluster", "sync")
    qdiscs, links = shaping()
    assert "htb" not in qdiscs and "ingress" not in qdiscs and ": cq" not in links, qdiscs
    assert c.ping(f"{c.addresses()[0].rsplit('.', 1)[0]}.1")  # its gateway: still connected
