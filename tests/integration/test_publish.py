"""Published ports: portMappings reach portmap, a client outside reaches the container through
the host's address, and the mapping goes with the attachment."""

import json

from harness import Runc, bridge_conf, documented_hooks, http_get_bodies, make_rootfs, port_open

HOST_IP = "198.51.100.1"  # the test host netns's own address, on its link to the client


def web_conflist(name="web", subnet="10.100.30.0/24") -> dict:
    """The seed's bridge network with portmap behind it (cniVersion 1.0.0)."""
    bridge = {k: v for k, v in bridge_conf(name, "cni-web", subnet).items()
              if k not in ("cniVersion", "name")}
    return {"cniVersion": "1.0.0", "name": name, "plugins": [
        bridge, {"type": "portmap", "capabilities": {"portMappings": True}}]}


def test_publish_reaches_httpd_through_the_host_address_until_disconnect(host, tmp_path):
    host.circuit("network", "create", host.conf(web_conflist(), "web.conflist"))
    client = host.outside_client(HOST_IP)
    www = tmp_path / "www"
    www.mkdir()
    web = host.container(("busybox", "httpd", "-f", "-p", "80", "-h", www))
    (www / "index.html").write_text("published\n")
    host.circuit("network", "connect", web.pid, "web", "-p", "8080:80", "--publish",
                 "5353:53/udp")
    assert http_get_bodies(client.netns, HOST_IP, 2, port=8080) == ["published", "published"]

    peer = json.loads(host.circuit("network", "list", "--format", "json").stdout)[0]["peers"][0]
    assert peer["ports"] == ["8080->80/tcp", "5353->53/udp"]
    assert "8080->80/tcp, 5353->53/udp)" in host.circuit("network", "list").stdout
    inspect = json.loads(host.circuit("network", "inspect", "web").stdout)
    assert inspect["attachments"][0]["ports"] == ["8080->80/tcp", "5353->53/udp"]

    host.circuit("network", "disconnect", web.pid, "web")
    assert not port_open(client.netns, HOST_IP, 8080)
    assert "CNI-DN-" not in host.run("iptables", "-t", "nat", "-S").stdout


def test_a_capability_no_plugin_declares_is_refused_and_nothing_changes(host):
    host.circuit("network", "create", host.conf(bridge_conf()))
    c = host.container()
    for args, word in ((["-p", "8080:80"], "portMappings"),
                       (["--cap", 'bandwidth={"ingressRate":1}'], "bandwidth")):
        proc = host.circuit("network", "connect", c.pid, "sandbox", *args, check=False)
        assert proc.returncode == 3 and proc.stderr == (
            f"circuit: no plugin of network sandbox declares capability {word} (plugins: "
            "bridge); add it to a plugin's 'capabilities' or leave it out\n")
    assert "eth0" not in c.links() and host.reserved_ips("sandbox") == set()


def test_several_ips_reach_host_local_through_the_ips_capability(host):
    conf = {**bridge_conf(), "cniVersion": "1.0.0", "capabilities": {"ips": True}}
    conf["ipam"] = {"type": "host-local", "ranges": [[{"subnet": "10.100.10.0/24"}],
                                                     [{"subnet": "fd00:100:10::/64"}]]}
    host.circuit("network", "create", host.conf(conf))
    c = host.container()
    out = host.circuit("network", "connect", c.pid, "sandbox", "--ip", "10.100.10.7/24",
                       "--ip", "fd00:100:10::7", "--format", "json").stdout
    assert json.loads(out)["ips"] == ["10.100.10.7/24", "fd00:100:10::7/64"]
    refused = host.circuit("network", "connect", c.pid, "sandbox", "--ifname", "eth9", "--ip",
                           "10.100.10.8", "--ip", "fd00:100:10::", check=False)
    assert refused.returncode == 3 and "--ip fd00:100:10:: is the network address" \
        in refused.stderr and "eth9" not in c.links()


def test_the_hook_publishes_from_the_annotation(host, runc):
    env = {"CNI_CONF": host.conf(web_conflist(), "web.conflist"),
           "CIRCUIT_STATE_DIR": host.state}
    client = host.outside_client(HOST_IP)
    hooks = documented_hooks("createRuntime", env)
    cid = runc.run("pub", hooks, args=("httpd", "-f", "-p", "80", "-h", "/www"),
                   annotations={"circuit.publish": "8080:80"}).stdout
    assert port_open(client.netns, HOST_IP, 8080)
    assert http_get_bodies(client.netns, HOST_IP, 1, port=8080)  # busybox's 404 page
    runc.delete(cid)
    assert not port_open(client.netns, HOST_IP, 8080)


def test_a_host_port_published_already_is_refused_on_any_network(host):
    """Only the first mapping of a host port would get traffic: a second is refused in one
    line, on the same network or another, and nothing of it is made."""
    host.circuit("network", "create", host.conf(web_conflist(), "web.conflist"))
    api = web_conflist("api", "10.100.31.0/24")
    api["plugins"][0]["bridge"] = "cni-api"
    host.circuit("network", "create", host.conf(api, "api.conflist"))
    first, second = host.container(), host.container()
    host.circuit("network", "connect", first.pid, "web", "-p", "8080:80")
    for network in ("web", "api"):
        proc = host.circuit("network", "connect", second.pid, network, "-p", "8080:81",
                            check=False)
        assert proc.returncode == 5 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert f"host port 8080/tcp is published already, for container {first.pid}" \
            in proc.stderr
        assert "eth0" not in second.links()
    host.circuit("network", "connect", second.pid, "api", "-p", "8080:80/udp")  # another proto
    host.circuit("network", "disconnect", first.pid, "web")
    host.circuit("network", "connect", first.pid, "api", "-p", "8080:80")  # free again


def test_the_hook_publishes_from_circuit_publish_in_its_env(host, tmp_path):
    """CIRCUIT_PUBLISH in the hooks' env: a client outside reaches the container's httpd through
    the host address and port; the env wins over the annotation; the port closes at delete."""
    rootfs = make_rootfs(tmp_path / "rootfs")  # this test's own, to serve its own page
    (rootfs / "www" / "index.html").write_text("published-from-env\n")
    runc = Runc(host, rootfs)
    try:
        env = {"CNI_CONF": host.conf(web_conflist(), "web.conflist"),
               "CIRCUIT_STATE_DIR": host.state, "CIRCUIT_PUBLISH": "8080:80"}
        client = host.outside_client(HOST_IP)
        hooks = documented_hooks("createRuntime", env)
        assert all("CIRCUIT_PUBLISH=8080:80" in e["env"] for es in hooks.values() for e in es)
        cid = runc.run("pubenv", hooks, args=("httpd", "-f", "-p", "80", "-h", "/www"),
                       annotations={"circuit.publish": "9090:80"}).stdout
        assert http_get_bodies(client.netns, HOST_IP, 2, port=8080) == [
            "published-from-env"] * 2
        assert not port_open(client.netns, HOST_IP, 9090)  # the env won over the annotation
        peer = json.loads(host.circuit("network", "list", "--format", "json").stdout)[0][
            "peers"][0]
        assert peer["ports"] == ["8080->80/tcp"]
        runc.delete(cid)
        assert not port_open(client.netns, HOST_IP, 8080)
        assert "CNI-DN-" not in host.run("iptables", "-t", "nat", "-S").stdout
        rows = json.loads(host.circuit("network", "list", "--format", "json").stdout)
        assert rows[0]["peers"] == []  # poststop released the attachment
    finally:
        runc.close()


def dnat_rule(host, command: str, destination: str) -> list[str]:
    """The one DNAT rule to destination of a CNI-DN- chain in iptables or ip6tables, as -S
    prints it (its words)."""
    rules = host.run(command, "-t", "nat", "-S").stdout.splitlines()
    found = [r.split() for r in rules
             if r.startswith("-A CNI-DN-") and r.endswith(f"--to-destination {destination}")]
    assert len(found) == 1, rules
    return found[0]


def test_check_passes_on_a_dual_stack_network_from_flags_and_finds_a_missing_rule(host):
    """portmap 1.1.1 looks for each address's rules in both tables: CHECK of a container with
    a published port failed (exit 7, 'could not check ipv6 dnat') on the README's network.
    circuit checks each family in its own table, so a rule taken away in either is found."""
    host.circuit("network", "create", "sandbox", "--subnet", "10.100.10.0/24",
                 "--subnet", "fd00:100:10::/64")
    host.circuit("network", "create", "v4", "--subnet", "10.100.11.0/24")
    c = host.container()
    host.circuit("network", "connect", c.pid, "sandbox", "-p", "8080:80")
    host.circuit("network", "connect", c.pid, "v4", "-p", "8081:80")
    assert host.circuit("network", "check", c.pid, "sandbox").stdout == (
        f"container {c.pid} on network sandbox (eth0): ok\n")
    assert host.circuit("network", "check", c.pid, "v4").stdout == (
        f"container {c.pid} on network v4 (eth1): ok\n")
    for command, address in (("ip6tables", "[fd00:100:10::2]:80"), ("iptables", "10.100.10.2:80")):
        rule = dnat_rule(host, command, address)
        host.run(command, "-t", "nat", "-D", *rule[1:])
        proc = host.circuit("network", "check", c.pid, "sandbox", check=False)
        family = "ipv6" if command == "ip6tables" else "ipv4"
        assert proc.returncode == 7 and f"could not check {family} dnat" in proc.stderr
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        host.run(command, "-t", "nat", "-A", *rule[1:])
    assert host.circuit("network", "check", c.pid, "sandbox").returncode == 0
