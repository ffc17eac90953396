"""Scale-out through etcd: three hosts (network namespaces on one underlay bridge, an etcd
member in each) share cluster networks over VXLAN, addresses never collide, and the cluster
survives losing etcd members and hosts (docs/cluster.md)."""

import json

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
