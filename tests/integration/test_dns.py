"""Service discovery (circuit-dns): runc containers on the busybox rootfs find each other by
name through the network's DNS server, which circuit starts at the first attach."""

import json
import os
import re
import signal
import subprocess

import pytest

from harness import documented_hooks, sh, wait_for

RED, BLUE = "10.123.0", "10.124.0"


def hooks(host, **env) -> dict:
    return documented_hooks("createRuntime", {"CNI_CONF": "", "CIRCUIT_STATE_DIR": host.state,
                                              "CIRCUIT_CNI_CACHE_DIR": host.cni_cache, **env})


def resolv_conf(host, network: str):
    return host.state / "dns" / network / "resolv.conf"


def start(runc, host, name: str, networks: str, aliases: str | None = None,
          check=True, **env) -> subprocess.CompletedProcess:
    """A runc container attached by the hooks, the first network's resolv.conf mounted."""
    annotations = {"circuit.networks": networks}
    if aliases:
        annotations["circuit.aliases"] = aliases
    return runc.run(name, hooks(host, **env), annotations=annotations, check=check,
                    binds={"/etc/resolv.conf": resolv_conf(host, networks.split(",")[0])})


def lookup(cid: str, name: str, *options: str) -> tuple[int, str]:
    """busybox nslookup inside the container (its resolv.conf names the server)."""
    proc = sh("runc", "exec", cid, "nslookup", *options, name, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def addresses(out: str) -> set[str]:
    """The addresses nslookup printed after the server's own."""
    return set(re.findall(r"^Address: ([0-9a-f.:]+)$", out.split("\n\n", 1)[-1], re.M))


def ip_of(runc, cid: str) -> str:
    return runc.container(cid).addresses()[0]


def server_pid(host) -> int:
    pidfiles = list((host.state / "dns").glob("server-*.pid"))
    assert len(pidfiles) == 1, pidfiles
    return json.loads(pidfiles[0].read_text())["pid"]


@pytest.fixture
def red(host):
    host.circuit("network", "create", "red", "--subnet", f"{RED}.0/24")
    return "red"


def test_containers_find_each_other_by_id_name_and_alias_until_they_go(host, runc, red):
    conf = resolv_conf(host, red).read_text()
    assert conf == f"search red\nnameserver {RED}.1\n"
    web = start(runc, host, "web", red, aliases="web,www").stdout
    client = start(runc, host, "client", red).stdout
    web_ip = ip_of(runc, web)
    for name in ("web", "www", "web.red", web, f"{web}.red"):
        code, out = lookup(client, name)
        assert code == 0 and addresses(out) == {web_ip}, (name, out)
    assert sh("runc", "exec", client, "ping", "-c", "1", "-W", "2", "web",
              check=False).returncode == 0
    code, out = lookup(client, web_ip)
    assert code == 0 and "name = web.red" in out, out
    inspect = json.loads(host.circuit("network", "inspect", red).stdout)
    mine = next(a for a in inspect["attachments"] if a["container_id"] == web)
    assert mine["result"]["dns"] == {"nameservers": [f"{RED}.1"], "search": ["red"]}

    runc.delete(web)  # poststop: detached, the names go with it
    for name in ("web", "www", web):
        code, out = lookup(client, name)
        assert code != 0 and "NXDOMAIN" in out, (name, out)
    code, out = lookup(client, web_ip)
    assert code != 0 and "NXDOMAIN" in out, out


def test_connect_name_and_alias_and_disconnect(host, runc, red):
    client = start(runc, host, "client", red).stdout
    plain = runc.run("plain", binds={"/etc/resolv.conf": resolv_conf(host, red)}).stdout
    host.circuit("network", "connect", plain, red, "--name", "db", "--alias", "pg")
    db_ip = ip_of(runc, plain)
    for name in ("db", "pg", "pg.red", plain):
        code, out = lookup(client, name)
        assert code == 0 and addresses(out) == {db_ip}, (name, out)
    code, out = lookup(client, db_ip)
    assert "name = db.red" in out, out
    assert "db, pg" in host.circuit("dns", "show", red).stdout
    hosts = host.state / "dns" / red / "hosts"  # for a bundle to bind-mount
    assert f"\n{db_ip}\tdb pg {plain}\n" in hosts.read_text()
    host.circuit("network", "disconnect", plain, red)
    code, out = lookup(client, "db")
    assert code != 0 and "NXDOMAIN" in out, out
    assert db_ip not in hosts.read_text() and hosts.read_text().startswith("127.0.0.1\tlocalhost")


def test_a_container_learns_only_the_names_of_its_own_networks(host, runc, red):
    host.circuit("network", "create", "blue", "--subnet", f"{BLUE}.0/24")
    on_red = start(runc, host, "r", red, aliases="rosso").stdout
    on_blue = start(runc, host, "b", "blue", aliases="azul").stdout
    on_both = start(runc, host, "rb", "red,blue").stdout
    assert lookup(on_both, "rosso")[0] == 0 and lookup(on_both, "azul.blue")[0] == 0
    assert addresses(lookup(on_blue, "azul")[1]) == {ip_of(runc, on_blue)}
    for asker, name in ((on_red, "azul"), (on_red, "azul.blue"), (on_blue, "rosso"),
                        (on_blue, "rosso.red")):
        code, out = lookup(asker, name)
        assert code != 0 and "NXDOMAIN" in out, (name, out)
    # the PTR of a red address from blue: not its business
    assert "rosso" not in lookup(on_blue, ip_of(runc, on_red))[1]


def test_a_question_over_tcp(host, runc, red):
    start(runc, host, "web", red, aliases="web")
    client = runc.container(start(runc, host, "client", red).stdout)
    ask = ("from dnslib import DNSRecord; import sys; "
           "print(DNSRecord.parse(DNSRecord.question('web.red').send(sys.argv[1], tcp=True,"
           " timeout=3)).a.rdata)")
    out = client.run(os.sys.executable, "-c", ask, f"{RED}.1").stdout
    assert out.strip().startswith(RED)


def test_other_names_go_to_the_hosts_resolver_but_not_from_internal_networks(host, runc,
                                                                             tmp_path):
    """The host's resolver is dnsmasq in a namespace of its own, reached by a veth."""
    upstream = host.outside_client()  # 198.51.100.2, the host 198.51.100.1
    dnsmasq = subprocess.Popen(
        ["nsenter", f"--net={upstream.netns}", "dnsmasq", "--no-daemon", "--no-resolv",
         "--no-hosts", "--listen-address=198.51.100.2", "--bind-interfaces",
         "--address=/example.test/192.0.2.7", "--user=root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        resolv = tmp_path / "host-resolv.conf"
        resolv.write_text("search corp.example\nnameserver 198.51.100.2\n")
        env = {"CIRCUIT_DNS_RESOLV_CONF": str(resolv)}
        host.circuit("network", "create", "red", "--subnet", f"{RED}.0/24", env=env)
        host.circuit("network", "create", "inner", "--subnet", f"{BLUE}.0/24", "--internal",
                     "--dns", env=env)
        assert resolv_conf(host, "red").read_text() == \
            f"search red corp.example\nnameserver {RED}.1\n"
        client = start(runc, host, "client", "red", **env).stdout
        wait_for(lambda: lookup(client, "www.example.test")[0] == 0, timeout=5)
        assert addresses(lookup(client, "www.example.test")[1]) == {"192.0.2.7"}
        shut_in = start(runc, host, "shut", "inner", aliases="hermit", **env).stdout
        assert addresses(lookup(shut_in, "hermit")[1]) == {ip_of(runc, shut_in)}
        code, out = lookup(shut_in, "www.example.test")
        assert code != 0 and "REFUSED" in out, out
    finally:
        dnsmasq.kill()
        dnsmasq.wait()


def test_a_killed_server_comes_back_at_the_next_attach_and_with_restore(host, runc, red):
    web = start(runc, host, "web", red, aliases="web").stdout
    client = start(runc, host, "client", red).stdout
    os.kill(server_pid(host), signal.SIGKILL)
    assert lookup(client, "web")[0] != 0  # nobody answers
    start(runc, host, "third", red)
    assert addresses(lookup(client, "web")[1]) == {ip_of(runc, web)}

    os.kill(server_pid(host), signal.SIGKILL)
    out = host.circuit("restore").stdout
    assert "dns restored for red" in out
    assert addresses(lookup(client, "web")[1]) == {ip_of(runc, web)}


def test_bad_names_and_a_taken_port_change_nothing(host, runc, red):
    plain = runc.run("plain").stdout
    before = json.loads(host.circuit("network", "inspect", red).stdout)["attachments"]
    for bad in ("-web", "we_b", "a" * 64, "x..y"):
        proc = host.circuit("network", "connect", plain, red, "--alias", bad, check=False)
        assert proc.returncode == 3 and proc.stderr.count("\n") == 1, proc.stderr
        assert "invalid container name" in proc.stderr
    proc = start(runc, host, "bad", red, aliases="ok,not ok", check=False)
    assert proc.returncode != 0 and "invalid alias in circuit.aliases 'not ok'" in proc.stderr

    # something else holds port 53 on every address of the host
    holder = subprocess.Popen(["nsenter", f"--net={host.netns}", os.sys.executable, "-c",
                               "import socket, time; s = socket.socket(socket.AF_INET, "
                               "socket.SOCK_DGRAM); s.bind(('0.0.0.0', 53)); print(1, "
                               "flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        holder.stdout.readline()
        proc = host.circuit("network", "connect", plain, red, check=False)
        assert proc.returncode == 5 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"port 53 on {RED}.1 is taken" in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    assert json.loads(host.circuit("network", "inspect", red).stdout)["attachments"] == before
    assert "eth0" not in runc.container(plain).links()
    host.circuit("network", "connect", plain, red, "--name", "late")  # the port is free again


def test_aaaa_and_ptr_on_a_dual_stack_network(host, runc):
    host.circuit("network", "create", "duo", "--subnet", f"{RED}.0/24", "--subnet",
                 "fd00:123::/64")
    assert resolv_conf(host, "duo").read_text() == \
        f"search duo\nnameserver {RED}.1\nnameserver fd00:123::1\n"
    web = start(runc, host, "web", "duo", aliases="web").stdout
    client = start(runc, host, "client", "duo").stdout
    v6 = runc.container(web).addresses(version=6)[0]
    code, out = lookup(client, "web.duo", "-type=AAAA")
    assert code == 0 and addresses(out) == {v6}, out
    code, out = lookup(client, "web.duo", "-type=A")
    assert code == 0 and addresses(out) == {ip_of(runc, web)}, out
    code, out = lookup(client, v6)
    assert code == 0 and "name = web.duo" in out, out


def test_no_dns_network_has_no_server(host, runc):
    host.circuit("network", "create", "quiet", "--subnet", f"{RED}.0/24", "--no-dns")
    spec = json.loads(host.circuit("network", "spec", "quiet", "--subnet", f"{RED}.0/24",
                                   "--no-dns").stdout)
    assert "dns" not in spec["plugins"][0]
    plain = runc.run("plain").stdout
    host.circuit("network", "connect", plain, "quiet", "--name", "web")
    assert not (host.state / "dns").exists() and not (host.state / "extensions").exists()
    proc = host.circuit("dns", "status", check=False)
    assert proc.returncode == 4 and "no DNS server" in proc.stderr


ASK_WHILE = """
import socket, sys, time
from dnslib import DNSRecord
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(1)
asked = lost = 0
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    query = DNSRecord.question("web")
    sock.sendto(query.pack(), (sys.argv[1], 53))
    asked += 1
    try:
        reply = DNSRecord.parse(sock.recv(4096))
        assert reply.header.id == query.header.id and reply.rr
    except socket.timeout:
        lost += 1
print(asked, lost)
"""


def test_connects_and_disconnects_drop_no_question(host, runc, red):
    start(runc, host, "web", red, aliases="web")
    client = runc.container(start(runc, host, "client", red).stdout)
    asking = subprocess.Popen(["nsenter", f"--net={client.netns}", os.sys.executable, "-c",
                               ASK_WHILE, f"{RED}.1", "4"], stdout=subprocess.PIPE, text=True)
    others = [runc.run(f"o{i}").stdout for i in range(3)]
    for _ in range(2):
        for i, cid in enumerate(others):
            host.circuit("network", "connect", cid, red, "--name", f"other{i}")
        for cid in others:
            host.circuit("network", "disconnect", cid, red)
    asked, lost = map(int, asking.communicate(timeout=30)[0].split())
    assert asked > 100 and lost == 0, (asked, lost)


def test_dns_enable_and_disable_a_network_from_a_config_file(host, runc):
    def conf(name, dns=None, subnet=BLUE):
        plugin = {"type": "bridge", "bridge": f"br-{name}", "isGateway": True,
                  "ipam": {"type": "host-local", "subnet": f"{subnet}.0/24",
                           "routes": [{"dst": "0.0.0.0/0"}]}}
        if dns is not None:
            plugin["dns"] = dns
        return host.conf({"cniVersion": "1.0.0", "name": name, "plugins": [plugin]},
                         f"{name}.conflist")

    host.circuit("network", "create", conf("bare", subnet=RED))
    host.circuit("network", "create", conf("far", {"nameservers": ["10.9.9.9"]}, "10.125.0"))
    for name, why in (("bare", "names no DNS server"), ("far", "outside its subnets")):
        proc = host.circuit("dns", "enable", name, check=False)
        assert proc.returncode == 3 and proc.stderr.count("\n") == 1, proc.stderr
        assert why in proc.stderr
        assert not (host.state / "extensions").exists() and not (host.state / "dns").exists()

    host.circuit("network", "create", conf("filed", {"nameservers": [f"{BLUE}.1"]}))
    web, client = runc.run("web").stdout, runc.run("client").stdout
    host.circuit("network", "connect", web, "filed", "--name", "www")
    host.circuit("network", "connect", client, "filed")
    assert "dns enabled for filed" in host.circuit("dns", "enable", "filed").stdout
    out = sh("runc", "exec", client, "nslookup", "www", f"{BLUE}.1").stdout
    assert addresses(out) == {ip_of(runc, web)}, out
    assert "search filed\n" in resolv_conf(host, "filed").read_text()

    assert "dns disabled for filed" in host.circuit("dns", "disable", "filed").stdout
    assert not (host.state / "extensions" / "filed").exists()
    assert not resolv_conf(host, "filed").exists()
    status = host.circuit("dns", "status", check=False)  # the server left the gateway
    assert status.returncode == 4 or f"{BLUE}.1" not in status.stdout, status.stdout
    host.circuit("network", "disconnect", web, "filed")
    host.circuit("network", "connect", web, "filed", "--name", "again")
    assert not (host.state / "dns" / "filed.json").exists()  # no DNS work on its attaches
