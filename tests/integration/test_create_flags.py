"""Networks from flags: the conflist circuit writes carries real traffic (dual-stack; macvlan),
subnets that overlap are refused naming the owner, and delete/prune leave no bridge or
directory."""

import ipaddress
import json
from concurrent.futures import ThreadPoolExecutor

from harness import bridge_conf, snapshot, wait_for


def links(host) -> str:
    return host.run("ip", "-o", "link").stdout


def test_a_dual_stack_network_from_flags_carries_traffic(host):
    out = host.circuit("network", "create", "web", "--subnet", "10.100.40.0/24",
                       "--subnet", "fd00:100:40::/64", "--label", "team=net").stdout
    assert out == "web created\n"
    config = json.loads(host.circuit("network", "inspect", "web").stdout)["config"]
    assert [p["type"] for p in config["plugins"]] == ["bridge", "portmap", "firewall"]
    assert config["cniVersion"] == "1.0.0" and config["circuitLabels"] == {"team": "net"}
    a, b = host.container(), host.container()
    # the bridge declares ips: --ip of each family reaches host-local (runtimeConfig)
    host.circuit("network", "connect", a.pid, "web", "--ip", "10.100.40.9",
                 "--ip", "fd00:100:40::9")
    host.circuit("network", "connect", b.pid, "web")
    ip_b = b.addresses()[0]
    assert ip_b.startswith("10.100.40.") and a.ping("10.100.40.1") and a.ping(ip_b)
    assert a.addresses() == ["10.100.40.9"] and a.addresses(version=6) == ["fd00:100:40::9"]
    assert wait_for(lambda: a.run("busybox", "ping6", "-c", "1", "-W", "1", "fd00:100:40::1",
                                  check=False).returncode == 0, timeout=10)
    assert "cni-web" in links(host)
    host.circuit("network", "delete", "web", "--force")
    assert "cni-web" not in links(host)
    assert not (host.state / "attachments" / "web").exists()


def test_an_overlapping_subnet_is_refused_naming_the_owner(host):
    host.circuit("network", "create", "web", "--subnet", "10.100.40.0/24")
    before = sorted(p.name for p in (host.state / "networks").iterdir())
    proc = host.circuit("network", "create", "db", "--subnet", "10.100.40.128/25", check=False)
    assert proc.returncode == 5 and proc.stderr == (
        "circuit: subnet 10.100.40.128/25 overlaps 10.100.40.0/24 of network web; choose "
        "another --subnet\n")
    host.outside_client("198.51.100.1")  # the host now routes 198.51.100.0/24 on outside0
    proc = host.circuit("network", "create", "db", "--subnet", "198.51.100.0/25", check=False)
    assert proc.returncode == 5 and proc.stderr == (
        "circuit: subnet 198.51.100.0/25 overlaps the host's route 198.51.100.0/24 (dev "
        "outside0); choose another --subnet\n")
    assert sorted(p.name for p in (host.state / "networks").iterdir()) == before
    again = host.circuit("network", "create", "web", "--subnet", "10.100.40.0/24")
    assert again.stdout == "web exists, unchanged\n"  # the same flags: a no-op, no overlap


def test_prune_deletes_unused_networks_their_bridges_and_directories(host):
    for n, name in enumerate(("one", "two", "busy")):
        host.circuit("network", "create", name, "--subnet", f"10.100.{50 + n}.0/24")
    c, gone = host.container(), host.container()
    for name in ("one", "two", "busy"):  # every bridge exists once a container attached
        host.circuit("network", "connect", gone.pid, name)
    host.circuit("network", "connect", c.pid, "busy")
    for name in ("one", "two"):
        host.circuit("network", "disconnect", gone.pid, name)
    gone.kill()
    rows = json.loads(host.circuit("network", "list", "--format", "json").stdout)
    states = {p["pid"]: p["state"] for r in rows if r["name"] == "busy" for p in r["peers"]}
    assert states == {c.pid: "attached", gone.pid: "exited"}
    assert f"({gone.pid}, exited)" in host.circuit("network", "list").stdout
    running = json.loads(host.circuit("network", "list", "--running", "--format", "json").stdout)
    assert [p["pid"] for r in running if r["name"] == "busy" for p in r["peers"]] == [c.pid]

    assert host.circuit("network", "prune", "-q").stdout == "one\ntwo\n"
    assert host.circuit("network", "list", "-q").stdout == "busy\n"
    assert "cni-one" not in links(host) and "cni-two" not in links(host)
    assert "cni-busy" in links(host)
    assert sorted(p.name for p in (host.state / "attachments").iterdir()) == ["busy"]
    assert host.circuit("network", "prune").stdout == ""


def test_delete_leaves_a_bridge_someone_else_plugged_into_or_a_link_that_is_no_bridge(host):
    """The bridges were absent when the networks were made; another tool made them since."""
    host.circuit("network", "create", "web", "--subnet", "10.100.60.0/24", "--bridge", "br-user")
    host.circuit("network", "create", "db", "--subnet", "10.100.61.0/24", "--bridge", "v-user")
    host.run("ip", "link", "add", "br-user", "type", "bridge")
    host.run("ip", "link", "add", "port0", "type", "veth", "peer", "name", "port1")
    host.run("ip", "link", "set", "port0", "master", "br-user")
    host.run("ip", "link", "add", "v-user", "type", "veth", "peer", "name", "v-peer")
    for name in ("web", "db"):
        assert host.circuit("network", "delete", name).stdout == f"{name} deleted\n"
    assert {"br-user", "port0", "v-user", "v-peer"} <= {
        line.split(": ")[1].split("@")[0] for line in links(host).splitlines()}


def test_a_macvlan_network_from_flags_carries_traffic_and_leaves_nothing(host):
    """--driver macvlan --parent: two containers on macvlan links of the host's parent (a veth
    with its peer up, for carrier: this kernel has no dummy links) ping each other; disconnect
    and delete leave no link, reservation, cached result or state behind, and the parent."""
    host.run("ip", "link", "add", "parent0", "type", "veth", "peer", "name", "parent0-peer")
    for link in ("parent0", "parent0-peer"):
        host.run("ip", "link", "set", link, "up")
    before = link_names(host)
    out = host.circuit("network", "create", "lan", "--subnet", "10.100.70.0/24", "--driver",
                       "macvlan", "--parent", "parent0").stdout
    assert out == "lan created\n"
    config = json.loads(host.circuit("network", "inspect", "lan").stdout)["config"]
    assert [(p["type"], p.get("master"), p.get("mode")) for p in config["plugins"]] == [
        ("macvlan", "parent0", "bridge")]
    a, b = host.container(), host.container()
    host.circuit("network", "connect", a.pid, "lan")
    host.circuit("network", "connect", b.pid, "lan")
    ip_a, ip_b = a.addresses()[0], b.addresses()[0]
    assert ip_a.startswith("10.100.70.") and ip_b.startswith("10.100.70.") and ip_a != ip_b
    assert "macvlan mode bridge" in a.run("ip", "-d", "link", "show", "eth0").stdout
    assert a.ping(ip_b) and b.ping(ip_a)
    assert link_names(host) == before  # the containers' links hang off parent0, not the host
    assert host.reserved_ips("lan") == {ip_a, ip_b}
    assert len(list((host.cni_cache / "results").glob("lan-*"))) == 2
    assert any((host.state / "networks").glob("lan*"))
    assert (host.state / "attachments" / "lan").exists()

    for c in (a, b):
        host.circuit("network", "disconnect", c.pid, "lan")
        assert c.links() == {"lo"}
    assert host.reserved_ips("lan") == set()
    assert not any((host.cni_cache / "results").glob("lan-*"))
    assert host.circuit("network", "delete", "lan").stdout == "lan deleted\n"
    assert host.circuit("network", "list", "-q").stdout == ""
    assert link_names(host) == before  # parent0 is the user's: delete leaves it
    assert not (host.state / "attachments" / "lan").exists()
    assert not any((host.state / "networks").glob("lan*"))


def link_names(host) -> set[str]:
    return {line.split(": ")[1].split("@")[0] for line in links(host).splitlines()}


def test_an_existing_bridge_of_this_netns_is_a_bridge_and_a_veth_is_not(host):
    """Whether a device is a bridge is asked of the netns circuit runs in (a link dump), not
    of /sys, which under `nsenter --net` (and in a fork server's child) shows another netns."""
    host.circuit("network", "create", host.conf(bridge_conf()))
    c = host.container()
    host.circuit("network", "connect", c.pid, "sandbox")  # cni0 now exists in the host netns
    second = host.conf(bridge_conf("second", subnet="10.100.20.0/24"), "second.conf")
    assert host.circuit("network", "create", second).stdout == "second created\n"
    veth = host.run("ip", "-o", "link", "show", "type", "veth").stdout.split(": ")[1]
    veth = veth.split("@")[0]
    other = host.conf(bridge_conf("third", bridge=veth, subnet="10.100.30.0/24"), "third.conf")
    refused = host.circuit("network", "create", other, check=False)
    assert refused.returncode == 3 and f"bridge {veth} exists and is not a bridge" in \
        refused.stderr


def subnets_of(host, name: str) -> list[str]:
    config = json.loads(host.circuit("network", "inspect", name).stdout)["config"]
    return [r[0]["subnet"] for r in config["plugins"][0]["ipam"]["ranges"]]


def test_without_subnet_a_free_one_is_picked_past_other_networks_and_host_routes(host):
    """As podman: the first free /24 of 10.89.0.0/16 on, and with --ipv6 a random /64 of
    fd00::/8; creating it again is a no-op that says so; another definition is refused."""
    host.circuit("network", "create", "web", "--subnet", "10.89.0.0/24")
    host.run("ip", "route", "add", "10.89.1.0/24", "dev", "lo")  # a route of the host's
    out = host.circuit("network", "create", "db", "--ipv6").stdout
    v4, v6 = subnets_of(host, "db")
    assert v4 == "10.89.2.0/24" and out == f"db created ({v4}, {v6})\n"
    assert ipaddress.ip_network(v6).prefixlen == 64
    assert ipaddress.ip_network(v6).subnet_of(ipaddress.ip_network("fd00::/8"))
    before = snapshot(host.state / "networks")
    assert host.circuit("network", "create", "db", "--ipv6").stdout == "db exists, unchanged\n"
    assert host.circuit("network", "create", "db", "--ipv6", "--subnet", v4).stdout == (
        "db exists, unchanged\n")
    for other in (["--subnet", "10.89.9.0/24"], ["--internal", "--ipv6"]):
        proc = host.circuit("network", "create", "db", *other, check=False)
        assert proc.returncode == 5 and proc.stderr == (
            "circuit: network 'db' exists with a different config; delete it first or choose "
            "another --name\n")
    proc = host.circuit("network", "create", "gw", "--gateway", "10.89.3.1", check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert snapshot(host.state / "networks") == before
    assert host.circuit("network", "create", "api").stdout == "api created (10.89.3.0/24)\n"


def test_concurrent_creates_without_subnet_never_pick_the_same(host):
    """The pick and the write hold the store's lock: six creates at once, six subnets."""
    names = [f"n{i}" for i in range(6)]
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        done = list(pool.map(lambda n: host.circuit("network", "create", n, check=False), names))
    assert [p.returncode for p in done] == [0] * len(names), [p.stderr for p in done]
    picked = sorted(s for n in names for s in subnets_of(host, n))
    assert picked == [f"10.89.{i}.0/24" for i in range(len(names))]
