"""circuit-dns without a network: the names a container answers to, the host's resolv.conf
as the server reads it, reverse names, and the answers of a view built from records."""

from dnslib import RCODE, DNSRecord

from circuit_common.extensions import Attachment
from circuit_dns import records, server

NETCONF = {"cniVersion": "1.0.0", "name": "red", "plugins": [
    {"type": "bridge", "dns": {"nameservers": ["10.1.0.1"], "search": ["red"]},
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}}]}


def test_names_aliases_first_then_the_container_id_when_it_is_a_host_name():
    def names(cid, aliases=()):
        return records.names_of(Attachment("red", cid, "eth0", 1, 1, {}, aliases))

    assert names("Web-00", ("WWW", "api")) == ["www", "api", "web-00"]
    assert names("my_box") == []  # not a host name: answered by its aliases only
    assert names("web", ("web",)) == ["web"]


def test_the_host_resolv_conf_three_servers_and_the_last_search(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch a.example\nnameserver 10.0.0.1\nnameserver fe80::1%eth0"
                    "\nnameserver 10.0.0.3 ; x\nnameserver 10.0.0.4\nsearch corp.example. bad_\n")
    assert records.host_resolvers(str(conf)) == (["10.0.0.1", "fe80::1", "10.0.0.3"],
                                                 ["corp.example"])
    assert records.host_resolvers(str(tmp_path / "none")) == ([], [])


def test_reverse_names():
    assert server.reverse_address("4.3.2.10.in-addr.arpa") == "10.2.3.4"
    name = ".".join(reversed("fd000123" + "0" * 23 + "5")) + ".ip6.arpa"
    assert server.reverse_address(name) == "fd00:123::5"
    assert server.reverse_address("999.3.2.10.in-addr.arpa") is None
    assert server.reverse_address("example.com") is None


def ask(srv, name, qtype="A", source="10.1.0.3"):
    query = DNSRecord.question(name, qtype)
    answer = srv.answer(bytes(query.pack()), source, "red")
    if answer is server.FORWARD:
        return "forward"
    reply = DNSRecord.parse(answer)
    assert reply.header.id == query.header.id
    return RCODE.get(reply.header.rcode), sorted(str(rr.rdata) for rr in reply.rr)


def test_answers_of_a_view(monkeypatch):
    monkeypatch.setattr(server.Process, "alive", lambda self: True)
    entries = {"web@eth0": {"names": ["web", "www"], "ips": ["10.1.0.2", "fd00::2"],
                            "pid": 1, "start_time": 1},
               "client@eth0": {"names": ["client"], "ips": ["10.1.0.3"], "pid": 2,
                               "start_time": 1}}
    srv = server.Server(None, stay=True)
    srv.view = server.View({"red": server.Network("red", NETCONF, entries)})
    srv.upstreams = ["192.0.2.53"]
    assert ask(srv, "web") == ("NOERROR", ["10.1.0.2"])
    assert ask(srv, "WWW.Red.") == ("NOERROR", ["10.1.0.2"])
    assert ask(srv, "www.red", "AAAA") == ("NOERROR", ["fd00::2"])
    assert ask(srv, "client", "AAAA") == ("NOERROR", [])
    assert ask(srv, "2.0.1.10.in-addr.arpa", "PTR") == ("NOERROR", ["web.red."])
    assert ask(srv, "9.0.1.10.in-addr.arpa", "PTR") == ("NXDOMAIN", [])
    assert ask(srv, "gone") == ("NXDOMAIN", [])
    assert ask(srv, "gone.red") == ("NXDOMAIN", [])
    assert ask(srv, "www.example.com") == "forward"
    assert ask(srv, "web") == ("NOERROR", ["10.1.0.2"])  # the cached answer, a new id
    srv.upstreams = []
    srv.cache = {}
    assert ask(srv, "www.example.com") == ("SERVFAIL", [])


def test_a_cluster_network_answers_other_hosts_names_on_this_hosts_gateway(tmp_path,
                                                                           monkeypatch):
    from circuit_common.store import Store

    monkeypatch.setattr(server.Process, "alive", lambda self: True)
    store = Store(str(tmp_path))
    store.write(records.view_path(store), {"attachments": {"red": [
        {"host": "h1", "network": "red", "containerId": "b-1", "ifName": "eth0",
         "ips": ["10.1.1.2/24"], "aliases": ["beta"]},
        {"host": "h1", "network": "red", "containerId": "bad", "ips": ["10.1.1.3/24"],
         "aliases": ["not ok"]}]}})
    peers = records.peer_entries(store, "red")
    assert peers == [{"names": ["beta", "b-1"], "ips": ["10.1.1.2"]}]
    assert server.Network("red", NETCONF, {}, peers, overlay=True).servers == []
    entries = {"a@eth0": {"names": ["alpha"], "ips": ["10.1.2.2"], "pid": 1, "start_time": 1,
                          "servers": ["10.1.2.1"]}}
    net = server.Network("red", NETCONF, entries, peers, overlay=True)
    assert net.servers == ["10.1.2.1"]
    srv = server.Server(None, stay=True)
    srv.view = server.View({"red": net})
    assert ask(srv, "beta.red") == ("NOERROR", ["10.1.1.2"])
    assert ask(srv, "alpha") == ("NOERROR", ["10.1.2.2"])
    assert ask(srv, "2.1.1.10.in-addr.arpa", "PTR") == ("NOERROR", ["beta.red."])
