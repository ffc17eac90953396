"""The cluster when things go wrong: networks made again, stale mirrors, devices removed by
hand, values in etcd that circuit did not write, a single host's state dir (docs/cluster.md,
"Failures")."""

import base64
import json

from test_cluster import create_overlay, host_links, join_all, routes_via_overlay, sync_all

from harness import wait_for


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_a_network_made_again_leases_anew_and_vnis_never_repeat(cluster):
    h0, h1, h2 = cluster.hosts
    join_all(cluster)
    create_overlay(h0)
    sync_all(cluster)
    for host in (h0, h1):
        c = host.container()
        host.circuit("network", "connect", c.pid, "blue")
        host.circuit("network", "disconnect", c.pid, "blue")
    sync_all(cluster)
    h0.circuit("network", "delete", "blue")
    create_overlay(h0)  # the same flags: the same VNI, but another network
    h1.circuit("cluster", "sync")
    ips = {}
    for host in (h2, h0, h1):
        c = host.container()
        host.circuit("network", "connect", c.pid, "blue")
        ips[host.name] = c.addresses()[0]
    blocks = {ip.rsplit(".", 1)[0] for ip in ips.values()}
    assert len(blocks) == 3, ips  # one block each: h1 did not keep the old one

    # h2 has not synced since: the VNI is chosen under the cluster's lock, after a mirror
    h0.circuit("network", "create", "one", "--subnet", "10.210.0.0/16", "--overlay", "vxlan")
    h2.circuit("network", "create", "two", "--subnet", "10.211.0.0/16", "--overlay", "vxlan")
    vnis = [json.loads(h1.circuit("network", "inspect", n).stdout)["overlay"]["vni"]
            for n in ("blue", "one", "two")]
    assert len(set(vnis)) == 3, vnis


def test_a_removed_device_and_bad_values_in_etcd_are_survived(cluster):
    h0, h1, h2 = cluster.hosts
    join_all(cluster)
    create_overlay(h0)
    containers = {}
    for host in cluster.hosts:
        containers[host.name] = host.container()
        host.circuit("network", "connect", containers[host.name].pid, "blue")
    sync_all(cluster)
    peer = containers[h0.name].addresses()[0]
    assert containers[h1.name].ping(peer)

    h1.run("ip", "link", "del", "cvx1")  # by hand, or a reboot
    assert not containers[h1.name].ping(peer)
    h1.circuit("cluster", "sync")
    assert "cvx1" in host_links(h1) and containers[h1.name].ping(peer)

    # keys circuit did not write: skipped, never a crash, never a route over the underlay
    prefix = f"/{cluster.prefix.strip('/')}"
    h0.put(f"{prefix}/hosts/evil", "not json")
    h0.put(f"{prefix}/alive/evil", "10.99.0.9")
    h0.put(f"{prefix}/attachments/evil/blue/x@eth0", "{")
    h0.put(f"{prefix}/subnets/blue/10.99.0.0-24", json.dumps(
        {"network": "blue", "subnet": "10.99.0.0/24", "host": "evil", "address": "10.99.0.9"}))
    h0.put(f"{prefix}/subnets/blue/junk", "[]")
    h2.start_agent()
    for host in (h0, h1):
        host.circuit("cluster", "sync")
        assert "10.99.0.0/24" not in routes_via_overlay(host)
    assert json.loads(h0.circuit("cluster", "list", "--format", "json").stdout)
    assert wait_for(lambda: len(json.loads(h1.circuit("network", "list", "--format", "json")
                                           .stdout)[0]["peers"]) == 3, timeout=5)
    assert h2.agent.poll() is None  # alive after passes over the bad keys
    c = h1.container()  # a first attach skips the junk too
    h1.circuit("network", "disconnect", containers[h1.name].pid, "blue")
    h1.circuit("network", "connect", c.pid, "blue")
    assert h2.stop_agent() == 0


def test_a_shared_record_planted_in_etcd_is_checked_and_never_mirrored(cluster):
    """A record in etcd's records/ that circuit's own checks refuse (a network whose plugin
    type is a path): every host's pass mirrors the rest and names the key (exit 9); a host
    that meets the name first (inspect, connect) is refused the same way; it is never
    written to any host's state dir, let alone run."""
    h0, h1, _ = cluster.hosts
    join_all(cluster)
    h0.circuit("network", "create", "good", "--subnet", "10.201.0.0/24")
    prefix = f"/{cluster.prefix.strip('/')}"
    key = f"{prefix}/records/networks/evil.json"
    h0.put(key, json.dumps({"schema": 1, "name": "evil", "source": "flags", "created": "now",
                            "config": {"cniVersion": "1.0.0", "name": "evil",
                                       "plugins": [{"type": "../../../bin/sh"}]}}))
    h0.put(f"{prefix}/records/services/junk.json", "<html>not circuit's</html>")
    for host in (h0, h1):
        proc = host.circuit("cluster", "sync", check=False)
        assert proc.returncode == 9, proc.stderr
        assert proc.stderr.count("\n") == 1 and f"{key} in etcd" in proc.stderr, proc.stderr
        assert "(1 more such records)" in proc.stderr
        assert (host.state / "networks" / "good.json").exists()  # the rest is mirrored
        assert not (host.state / "networks" / "evil.json").exists()
        assert not (host.state / "services" / "junk.json").exists()
        container = host.container()  # never PID 1: the test must not reach the host's netns
        for args in (("network", "inspect", "evil"), ("network", "connect", container.pid,
                                                       "evil")):
            proc = host.circuit(*args, check=False)
            assert proc.returncode == 9 and f"{key} in etcd" in proc.stderr, proc.stderr
            assert not (host.state / "networks" / "evil.json").exists()
    h0.etcd("kv/deleterange", {"key": _b64(key)})
    h0.etcd("kv/deleterange", {"key": _b64(f"{prefix}/records/services/junk.json")})
    h1.circuit("cluster", "sync")  # with the junk gone, a pass is clean again


def test_joining_with_a_single_hosts_state_dir_is_refused(cluster):
    h0 = cluster.hosts[0]
    h0.circuit("--state", h0.state, "network", "create", "mine", "--subnet", "10.230.0.0/24")
    proc = h0.circuit("cluster", "join", "--address", h0.address, check=False)
    assert proc.returncode == 5 and proc.stderr.count("\n") == 1, proc.stderr
    assert "networks/mine.json" in proc.stderr and "--local-state" in proc.stderr
    assert (h0.state / "networks" / "mine.json").exists()
    proc = h0.circuit("--local-state", h0.tmp / "fresh", "cluster", "join", "--address",
                      h0.address)  # without --name: the machine's hostname
    assert proc.stdout.startswith("joined the cluster as ")


def test_a_host_that_will_not_come_back_is_forgotten(cluster):
    h0, h1, h2 = cluster.hosts
    join_all(cluster, ttl="2")
    create_overlay(h0)
    blocks = {}
    for host in (h0, h2):
        c = host.container()
        host.circuit("network", "connect", c.pid, "blue")
        blocks[host.name] = c.addresses()[0].rsplit(".", 1)[0]
    proc = h0.circuit("cluster", "forget", "h2", check=False)
    assert proc.returncode == 5 and "is alive" in proc.stderr  # h2's lease still runs
    assert wait_for(lambda: json.loads(h0.circuit("cluster", "list", "--format", "json")
                                       .stdout)[2]["state"] == "lapsed", timeout=6)
    assert h0.circuit("cluster", "forget", "h2").stdout == "h2 forgotten; 1 subnet(s) released\n"
    listed = json.loads(h0.circuit("cluster", "list", "--format", "json").stdout)
    assert [r["name"] for r in listed] == ["h0", "h1"]
    c = h1.container()  # the block h2 held is free again: the first free one, h1's now
    h1.circuit("network", "connect", c.pid, "blue")
    assert c.addresses()[0].rsplit(".", 1)[0] == blocks[h2.name]
    proc = h0.circuit("cluster", "forget", "nobody", check=False)
    assert proc.returncode == 4 and "no host named 'nobody'" in proc.stderr


def test_a_host_forgotten_while_away_takes_its_block_back_when_free(cluster):
    h0, h1, _ = cluster.hosts
    join_all(cluster, ttl="2")
    create_overlay(h0)
    c = h1.container()
    h1.circuit("network", "connect", c.pid, "blue")
    assert wait_for(lambda: json.loads(h0.circuit("cluster", "list", "--format", "json")
                                       .stdout)[1]["state"] == "lapsed", timeout=6)
    h0.circuit("cluster", "forget", "h1")
    h1.circuit("cluster", "sync")  # back: a new lease, and its block again
    listed = {r["name"]: r for r in json.loads(h0.circuit("cluster", "list", "--format",
                                                          "json").stdout)}
    assert listed["h1"]["subnets"] == {"blue": f"{c.addresses()[0].rsplit('.', 1)[0]}.0/24"}


def test_a_host_forgotten_while_away_whose_block_went_to_another_is_told(cluster):
    h0, h1, h2 = cluster.hosts
    join_all(cluster, ttl="2")
    create_overlay(h0)
    h1.circuit("network", "connect", h1.container().pid, "blue")
    assert wait_for(lambda: json.loads(h0.circuit("cluster", "list", "--format", "json")
                                       .stdout)[1]["state"] == "lapsed", timeout=6)
    h0.circuit("cluster", "forget", "h1")
    h2.circuit("cluster", "sync")
    h2.circuit("network", "connect", h2.container().pid, "blue")  # the first free block: h1's
    proc = h1.circuit("cluster", "sync", check=False)
    assert proc.returncode == 5 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is held by host h2 now" in proc.stderr and "connect them again" in proc.stderr
