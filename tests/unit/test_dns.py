"""circuit-dns without a network: the names a container answers to, the host's resolv.conf
as the server reads it, reverse names, and the answers of a view built from records."""

import re

import pytest
from dnslib import RCODE, DNSRecord

from circuit_common.errors import InvalidInput
from circuit_common.extensions import Attachment
from circuit_common.validate import check_dns_domain, check_dns_name
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


LABEL = "b" * 62


@pytest.mark.parametrize("name, network, why", [
    ("a" * 64, "red", "at most 63 between dots"),
    ("we_b", "red", "use letters, digits and '-'"),
    ("wéb", "red", "use letters, digits and '-'"),
    ("web.", "red", "use letters, digits and '-'"),
    (".".join([LABEL] * 4), "red", "NAME.red would be 255 characters, over DNS's 253"),
    (".".join([LABEL] * 5), None, "it would be 314 characters")])
def test_a_name_the_server_cannot_answer_is_refused(name, network, why):
    with pytest.raises(InvalidInput, match=re.escape(why)) as caught:
        check_dns_name(name, "container name", network)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200
    assert check_dns_name(".".join([LABEL] * 3) + ".b" * 6, "name", "red")  # 253 with .red


@pytest.mark.parametrize("network", ["a" * 64, "a..b", "red."])
def test_a_network_name_that_cannot_be_a_dns_domain_is_refused(network):
    with pytest.raises(InvalidInput, match="cannot be a DNS domain"):
        check_dns_domain(network)
    assert check_dns_domain("my_net.a" + "-" * 62) == "my_net.a" + "-" * 62


def test_aliases_too_long_with_one_of_the_hooks_networks_are_refused_before_attaching():
    from circuit_hook.cli import wanted_aliases

    state = {"annotations": {"circuit.aliases": f"web, {'.'.join([LABEL] * 4)[:-6]}"}}
    assert wanted_aliases(state, ["red"])[0] == "web"
    with pytest.raises(InvalidInput, match=r"alias in circuit\.aliases .*NAME\.bluegreen would"):
        wanted_aliases(state, ["red", "bluegreen"])


def test_connect_hook_install_and_create_refuse_them_in_one_line_with_nothing_written(
        tmp_path):
    import json
    import os
    import subprocess
    import sys

    def circuit(*args, input=None):
        return subprocess.run([sys.executable, os.path.join(os.path.dirname(sys.executable),
                                                            "circuit"), "--state", state,
                               *args], capture_output=True, text=True, input=input)

    state = tmp_path / "state"
    assert circuit("network", "create", "red", "--subnet", "10.9.0.0/24").returncode == 0
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(
        {"ociVersion": "1.0.2", "linux": {"namespaces": [{"type": "network"}]}}))

    def tree():
        return sorted((str(p), p.read_bytes()) for p in tmp_path.rglob("*")
                      if p.is_file() and "locks" not in p.parts)

    before = tree()
    long = ".".join([LABEL] * 4)
    for proc in (circuit("network", "connect", str(os.getpid()), "red", "--alias", long),
                 circuit("hook", "install", str(bundle), "--network", "red", "--alias", long),
                 circuit("network", "create", "n" * 64, "--subnet", "10.9.1.0/24")):
        assert proc.returncode == 3 and proc.stderr.count("\n") == 1, proc.stderr
        assert "NAME.red would be 255" in proc.stderr or "DNS domain" in proc.stderr
    assert tree() == before


def test_a_reload_reads_again_only_what_changed_and_keeps_the_other_answers(tmp_path,
                                                                            monkeypatch):
    from circuit_common.store import Store

    looked = []
    monkeypatch.setattr(server.Process, "alive", lambda self: looked.append(self.pid) or True)
    store = Store(str(tmp_path))
    for name in ("red", "blue"):
        config = {**NETCONF, "name": name}
        store.write(store.path("networks", f"{name}.json"),
                    {"schema": 1, "name": name, "config": config, "created": "now"})
    entries = {f"c{i}@eth0": {"names": [f"c{i}"], "ips": [f"10.1.0.{i + 2}"], "pid": 100 + i,
                              "start_time": 1} for i in range(3)}
    records.save(store, {"network": "red", "entries": entries})
    records.save(store, {"network": "blue", "entries": {}})
    srv = server.Server(store, stay=True)
    first = srv.view = server.read_view(store)
    assert sorted(looked) == [100, 101, 102]
    assert ask(srv, "c0", source="10.1.0.2") == ("NOERROR", ["10.1.0.2"])
    assert ask(srv, "c1.red", source="10.1.0.2") == ("NOERROR", ["10.1.0.3"])
    assert ask(srv, "late", source="10.1.0.2") == ("NXDOMAIN", [])
    assert ask(srv, "5.0.1.10.in-addr.arpa", "PTR", source="10.1.0.2") == ("NXDOMAIN", [])

    looked.clear()
    assert server.read_view(store, first).networks == first.networks  # nothing changed
    entries["late@eth0"] = {"names": ["late"], "ips": ["10.1.0.5"], "pid": 200,
                            "start_time": 1}
    del entries["c1@eth0"]
    records.save(store, {"network": "red", "entries": entries})
    second = server.read_view(store, first)
    assert looked == [200]  # only the new container's process is looked at
    assert second.networks["blue"] is first.networks["blue"]
    changed = server.changed_names(first, second)
    assert changed == {"late", "late.red", "c1", "c1.red", "5.0.1.10.in-addr.arpa",
                       "3.0.1.10.in-addr.arpa"}
    srv.view = second
    srv.forget(changed)
    assert [k for k in srv.cached] == ["c0"]  # kept: its answer is the same
    assert ask(srv, "late", source="10.1.0.2") == ("NOERROR", ["10.1.0.5"])
    assert ask(srv, "c1.red", source="10.1.0.2") == ("NXDOMAIN", [])
    assert ask(srv, "5.0.1.10.in-addr.arpa", "PTR", source="10.1.0.2") == (
        "NOERROR", ["late.red."])

    looked.clear()
    third = server.read_view(store, second, exited={"red"})  # a process there has exited
    assert sorted(looked) == [100, 102, 200]
    store.remove(store.path("networks", "blue.json"))
    assert server.changed_names(third, server.read_view(store, third)) is None


def test_a_shared_name_answers_every_address_and_each_ptr_its_own_container(monkeypatch):
    monkeypatch.setattr(server.Process, "alive", lambda self: True)
    entries = {"blue-1@eth0": {"names": ["web", "blue-1"], "ips": ["10.1.0.2"], "pid": 1,
                               "start_time": 1},
               "green-1@eth0": {"names": ["web", "green-1"], "ips": ["10.1.0.4"], "pid": 2,
                                "start_time": 1}}
    srv = server.Server(None, stay=True)
    srv.view = server.View({"red": server.Network("red", NETCONF, entries)})
    assert ask(srv, "web") == ask(srv, "web.red") == ("NOERROR", ["10.1.0.2", "10.1.0.4"])
    assert ask(srv, "4.0.1.10.in-addr.arpa", "PTR") == ("NOERROR", ["web.red."])
    assert ask(srv, "green-1") == ("NOERROR", ["10.1.0.4"])


def red_server(entries):
    import itertools

    pids = itertools.count(1)
    srv = server.Server(None, stay=True)
    srv.view = server.View({"red": server.Network("red", NETCONF, {
        key: {**entry, "pid": next(pids), "start_time": 1} for key, entry in entries.items()})})
    return srv


def test_a_udp_answer_too_long_keeps_what_fits_with_tc_and_edns_gets_its_size(monkeypatch):
    """As dnsmasq 2.90 answers the same 60 names: 30 in 512 bytes with TC, all with EDNS."""
    from dnslib import EDNS0, QTYPE

    monkeypatch.setattr(server.Process, "alive", lambda self: True)
    srv = red_server({f"r{i}@eth0": {"names": ["many"], "ips": [f"10.1.0.{i + 2}"]}
                      for i in range(60)})
    query = DNSRecord.question("many", "A")
    udp = DNSRecord.parse(srv.answer(bytes(query.pack()), "10.1.0.200", "red"))
    assert len(udp.pack()) <= 512 and udp.header.tc == 1 and len(udp.rr) == 30
    tcp = DNSRecord.parse(srv.answer(bytes(query.pack()), "10.1.0.200", "red", tcp=True))
    assert tcp.header.tc == 0 and len(tcp.rr) == 60  # kept apart from the UDP answer
    query.add_ar(EDNS0(udp_len=4096))
    packed = srv.answer(bytes(query.pack()), "10.1.0.200", "red")
    edns = DNSRecord.parse(packed)
    assert edns.header.tc == 0 and len(edns.rr) == 60 and len(packed) <= 1232
    assert [(rr.rtype, rr.rclass) for rr in edns.ar] == [(QTYPE.OPT, 1232)]


def test_no_question_the_network_itself_and_the_root(monkeypatch):
    monkeypatch.setattr(server.Process, "alive", lambda self: True)
    srv = red_server({"web@eth0": {"names": ["web"], "ips": ["10.1.0.2"]}})
    srv.upstreams = ["192.0.2.53"]
    empty = DNSRecord.parse(srv.answer(bytes.fromhex("1234" "0100" + "0000" * 4), "10.1.0.3",
                                       "red"))
    assert RCODE.get(empty.header.rcode) == "FORMERR" and empty.questions == []
    assert ask(srv, "red") == ask(srv, "RED.", "AAAA") == ("NOERROR", [])  # as dnsmasq's
    assert ask(srv, ".", "NS") == "forward"  # the root is no single-label name


def test_a_flood_of_forwarded_questions_is_bounded_and_never_ends_the_server(monkeypatch):
    """Questions for the host's resolvers, which do not answer: at most MAX_FORWARDS wait,
    the others are SERVFAIL at once, and out of descriptors is SERVFAIL too, not a crash."""
    import os
    import resource
    import socket

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a resolver that never answers
    silent.bind(("127.0.0.1", 0))
    monkeypatch.setattr(server, "PORT", silent.getsockname()[1])
    srv = red_server({})
    srv.upstreams = ["127.0.0.1"]
    replies = []
    query = bytes(DNSRecord.question("www.example.com").pack())
    try:
        for _ in range(server.MAX_FORWARDS + 10):
            srv.forward(query, replies.append)
        assert len(srv.forwards) == server.MAX_FORWARDS
        assert len(replies) == 10 and {DNSRecord.parse(r).header.rcode for r in replies} == {
            RCODE.SERVFAIL}
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.dup(0)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # none left
        try:
            srv.forwards.clear()  # room under the cap, but no descriptor left
            srv.forward(query, replies.append)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert len(replies) == 11
    finally:
        silent.close()
        for sock in list(srv.selector.get_map().values()):
            sock.fileobj.close()


def test_tcp_connections_beyond_max_tcp_are_closed_at_once(monkeypatch):
    import socket

    srv = red_server({})
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    started = []
    monkeypatch.setattr(server.Server, "serve_tcp", lambda self, conn, *_: started.append(conn))
    monkeypatch.setattr(server, "MAX_TCP", 2)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    try:
        for _ in clients:
            srv.on_tcp(listener, "red")
        assert len(started) == 2 and srv.tcp_threads == 2
        clients[2].settimeout(2)
        assert clients[2].recv(1) == b""  # the third: closed, not queued behind a thread
    finally:
        for sock in (listener, *clients, *started):
            sock.close()


def test_a_tcp_answer_racing_a_reload_never_keeps_the_answer_of_the_view_before(monkeypatch):
    """A TCP thread that resolved from the old view while the main loop swaps in the new one:
    its answer is either not kept or dropped with the swap, so UDP never answers the removed
    name afterwards."""
    import threading

    monkeypatch.setattr(server.Process, "alive", lambda self: True)
    srv = red_server({"web@eth0": {"names": ["web"], "ips": ["10.1.0.2"]}})
    old_view = srv.view
    new_view = server.View({"red": server.Network("red", NETCONF, {})})
    in_window, go_on = threading.Event(), threading.Event()

    class Cache(dict):
        def __len__(self):  # between the check that the view is current and the write
            in_window.set()
            go_on.wait(5)
            return dict.__len__(self)

    srv.cache = Cache()
    query = bytes(DNSRecord.question("web").pack())
    tcp = threading.Thread(target=srv.answer, args=(query, "10.1.0.9", "red", True))
    tcp.start()
    assert in_window.wait(5)
    swap = threading.Thread(target=srv.use, args=(new_view,))
    swap.start()
    swap.join(0.3)  # without the lock the swap is done here, inside the thread's window
    go_on.set()
    tcp.join(5)
    swap.join(5)
    assert srv.view is new_view and old_view is not new_view
    answer = DNSRecord.parse(srv.answer(query, "10.1.0.9", "red", True))
    assert RCODE.get(answer.header.rcode) == "NXDOMAIN"
