"""circuit-dns's server: answers the names of the DNS networks of one state, on each network's
gateway address (UDP and TCP, port 53), in the network namespace it runs in.

- A container's question is answered from the networks the asking address is attached to
  (a container on red never learns blue's names); an address no container has is answered
  from the network whose gateway it asked.
- Names: every container's names (records.names_of) and NAME.NETWORK; A, AAAA, PTR. A name of
  one label, or under a DNS network's name, that none of the asker's networks has is NXDOMAIN
  (whatever the other networks hold); other names go to
  the host's resolvers (at most 3, 1 s each, never this server's own addresses), except from
  internal networks (REFUSED).
- Over UDP an answer is at most 512 bytes, or the size the question's EDNS offers (up to
  1232): one longer keeps the records that fit and has TC set, for the client to ask again
  over TCP.
- Bounded under a flood: at most MAX_FORWARDS questions wait on the host's resolvers and
  MAX_TCP connections are served at once; beyond that a question is SERVFAIL and a
  connection closed at once, never the server's end.
- A cluster network's names also come from the other hosts' attachments (the cluster agent's
  view of etcd, records.peer_entries).
- `reload` on the control socket (control.py), and a change of the dns/ directory or of the
  cluster's view seen within a second, read the names again: a new view is built and swapped
  in between two questions, so none is dropped. Only what changed is read again: a network
  whose files are as the last reload found them is kept whole, and a kept container's
  process is not looked at again (each second's tick finds those that exited). Answers are
  kept per (scope, question); a reload drops only those of the names whose addresses
  changed (all of them when a network came, went or changed its subnets or servers).
- Started on demand (control.spawn) it ends once no container of its networks has run for
  IDLE_EXIT seconds; `circuit dns serve` (the systemd unit) stays.
"""

import contextlib
import errno
import gc
import ipaddress
import json
import os
import selectors
import socket
import struct
import sys
import threading
import time

from dnslib import AAAA, EDNS0, PTR, QTYPE, RCODE, RR, A, DNSError, DNSRecord

from circuit_common.proc import Process, process
from circuit_common.store import Store

from . import control, records

PORT = 53
TTL = 5
TICK = 1.0  # seconds between looks at the state and the host's resolv.conf
IDLE_EXIT = 3.0
UPSTREAM_TIMEOUT = 1.0
MAX_CACHE = 20000
MAX_FORWARDS = 256  # questions waiting on the host's resolvers (dnsmasq's dns-forward-max: 150)
MAX_TCP = 32  # connections served at once, a thread each
UDP_SIZE = 512  # an answer over UDP without EDNS
EDNS_SIZE = 1232  # the most this server sends over UDP to an EDNS question (DNS flag day 2020)
FORWARD = object()  # answer(): the question goes to the host's resolvers
IP_FREEBIND = 15  # bind the gateway address while the bridge still brings it up
IPV6_FREEBIND = 78


def log(message: str) -> None:
    print(f"circuit-dns: {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


class Network:
    """What the server knows of one DNS network (stamp: of the files it was read from;
    previous: the same network as the last reload read it, whose containers' processes are
    taken as they were found then when their entries are the same)."""

    def __init__(self, name: str, netconf: dict, entries: dict, peers: tuple | list = (),
                 overlay: bool = False, stamp: tuple | None = None,
                 previous: "Network | None" = None):
        from circuit_net.spec import netconf_subnets

        self.name = name
        self.overlay, self.stamp, self.entries = overlay, stamp, entries
        self.suffix = "." + name.lower()
        # a cluster network's config names the first host's gateway: this host's comes with
        # its attachments' results
        self.servers = [] if overlay and not any(e.get("servers") for e in entries.values()) \
            else records.server_addresses(netconf, entries)
        self.subnets = netconf_subnets(netconf)
        routes = [r.get("dst") for p in netconf["plugins"] if isinstance(p.get("ipam"), dict)
                  for r in p["ipam"].get("routes") or [] if isinstance(r, dict)]
        self.internal = not {"0.0.0.0/0", "::/0"} & set(routes)
        self.names: dict[str, list[str]] = {}  # name and name.network: addresses
        self.reverse: dict[str, str] = {}  # address: the first name, NAME.NETWORK
        self.containers: dict[str, str] = {}  # address: container id
        self.processes: dict[str, Process] = {}  # entry key: the container's, while it runs
        known = previous.entries if previous is not None else {}
        for key, entry in entries.items():
            if known.get(key) == entry:
                proc = previous.processes.get(key)  # None: it had exited
            else:
                proc = Process(entry["pid"], entry["start_time"])
                proc = proc if proc.alive() else None
            if proc is None:
                continue  # exited without its poststop: not answered
            self.processes[key] = proc
            container_id = key.rpartition("@")[0]
            for ip in entry["ips"]:
                self.containers[ip] = container_id
            self.add_names(entry)
        for peer in peers:  # other hosts' containers: answered, never askers
            self.add_names(peer)

    def settings(self) -> tuple:
        """What every answer from the network depends on besides its names."""
        return self.suffix, self.servers, self.subnets, self.internal

    def add_names(self, entry: dict) -> None:
        for name in entry["names"]:
            for key in (name, name + self.suffix):
                self.names.setdefault(key, []).extend(entry["ips"])
        for ip in entry["ips"]:
            if entry["names"]:
                self.reverse.setdefault(ip, entry["names"][0] + self.suffix + ".")


class View:
    """Every network's names, and the networks whose names each container address may ask
    (those its container is attached to): built whole at a reload, then swapped in."""

    def __init__(self, networks: dict[str, Network]):
        self.networks = networks
        self.suffixes = tuple(net.suffix for net in networks.values())
        joined: dict[str, set[str]] = {}  # container id: its networks
        for net in networks.values():
            for container_id in net.containers.values():
                joined.setdefault(container_id, set()).add(net.name)
        self.scope = {ip: tuple(sorted(joined[container_id]))
                      for net in networks.values()
                      for ip, container_id in net.containers.items()}


def file_stamp(path: str) -> tuple | None:
    """What changes when a file is written (circuit replaces its files whole)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def read_view(store: Store, previous: View | None = None, exited=()) -> View:
    """The names stored now, of the networks that still exist; of previous's networks those
    whose files are as it read them are kept, but not those in exited (a container of theirs
    has exited: each process is looked at again)."""
    from circuit_net.records import check_network

    kept = previous.networks if previous is not None else {}
    cluster_view = file_stamp(records.view_path(store))
    networks = {}
    for name in records.dns_networks(store):
        old = kept.get(name)
        paths = store.path("networks", f"{name}.json"), records.record_path(store, name)
        stamp = (*map(file_stamp, paths), old.overlay and cluster_view if old else None)
        if old is not None and old.stamp == stamp and name not in exited:
            networks[name] = old
            continue
        try:  # read after the stamp: a write between them makes the next reload read again
            network = store.read(paths[0], check=check_network)
            record = records.load(store, name)
        except Exception as e:  # one unreadable record does not stop the others
            log(f"network {name} skipped: {e}")
            continue
        if network is not None:
            overlay = bool(network.get("overlay"))
            networks[name] = Network(
                name, network["config"], record["entries"],
                records.peer_entries(store, name) if overlay else [], overlay,
                (*stamp[:2], overlay and cluster_view),
                old if old is not None and name not in exited else None)
    return View(networks)


def changed_names(old: View, new: View) -> set[str] | None:
    """The question names (lower case, no final dot) whose answers may differ from old's in
    new; None when any may (a network came or went, or its subnets or servers changed)."""
    if old.networks.keys() != new.networks.keys():
        return None
    found = set()
    for name, net in new.networks.items():
        was = old.networks[name]
        if was is net:
            continue
        if was.settings() != net.settings():
            return None
        found.update(key for key in was.names.keys() | net.names.keys()
                     if was.names.get(key) != net.names.get(key))
        found.update(ipaddress.ip_address(ip).reverse_pointer
                     for ip in was.reverse.keys() | net.reverse.keys()
                     if was.reverse.get(ip) != net.reverse.get(ip))
    return found


def reverse_address(name: str) -> str | None:
    """The address a PTR question's name stands for (in-addr.arpa, ip6.arpa), else None."""
    labels = name.split(".")
    try:
        if name.endswith(".in-addr.arpa") and len(labels) == 6:
            return str(ipaddress.IPv4Address(".".join(reversed(labels[:4]))))
        if name.endswith(".ip6.arpa") and len(labels) == 34:
            digits = "".join(reversed(labels[:32]))
            return str(ipaddress.IPv6Address(int(digits, 16)))
    except ValueError:
        return None
    return None


class Forward:
    """A question sent on to the host's resolvers, one after another."""

    def __init__(self, query: bytes, reply, upstreams: list[str]):
        self.query, self.reply, self.upstreams = query, reply, upstreams
        self.deadline = 0.0


class Server:
    def __init__(self, store: Store, stay: bool):
        self.store = store
        self.stay = stay
        self.selector = selectors.DefaultSelector()
        self.view = View({})
        self.sockets: dict[tuple[str, int], tuple[socket.socket, str]] = {}  # (ip, type)
        self.cache: dict = {}  # (scope, question without its id): the answer without it
        self.cached: dict[str, list] = {}  # question name: its keys in cache
        self.forwards: dict[socket.socket, Forward] = {}
        self.upstreams: list[str] = []
        self.resolv_stamp = None
        self.dns_stamp = None
        self.idle_since: float | None = None
        self.errors: dict[str, str] = {}
        self.lock = threading.Lock()  # a TCP thread's kept answer against a reload's swap
        self.tcp_threads = 0

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        import signal

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the finally below runs
        control_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            control_socket.bind(control.socket_name(self.store.root))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                log(f"another server of {self.store.root} runs in this network namespace")
                return 0
            raise
        control_socket.listen(64)
        control_socket.setblocking(False)
        self.selector.register(control_socket, selectors.EVENT_READ, self.on_control)
        me = process(os.getpid())
        self.store.write(control.pidfile(self.store), {"pid": me.pid,
                                                       "start_time": me.start_time})
        log(f"serving {self.store.root} (pid {me.pid})")
        self.reload()
        next_tick = time.monotonic() + TICK
        try:
            while True:
                now = time.monotonic()
                wait = min([next_tick] + [f.deadline for f in self.forwards.values()]) - now
                for key, _ in self.selector.select(max(wait, 0)):
                    key.data(key.fileobj)
                now = time.monotonic()
                self.expire_forwards(now)
                if now >= next_tick:
                    next_tick = now + TICK
                    if self.tick(now):
                        break
        finally:
            self.selector.unregister(control_socket)
            control_socket.close()
            with contextlib.suppress(Exception):
                if (self.store.read(control.pidfile(self.store)) or {}).get("pid") == me.pid:
                    self.store.remove(control.pidfile(self.store))
        log("no container runs on a DNS network: done")
        return 0

    def tick(self, now: float) -> bool:
        """Look at the state and the host's resolv.conf; True when it is time to end."""
        if not os.path.isdir(self.store.root):
            return True
        exited = {net.name for net in self.view.networks.values()
                  if not all(proc.alive() for proc in net.processes.values())}
        if exited or self.stamps() != self.dns_stamp:
            self.reload(exited)
        self.read_upstreams()
        if self.stay or any(net.processes for net in self.view.networks.values()):
            self.idle_since = None
            return False
        self.idle_since = self.idle_since or now
        return now - self.idle_since >= IDLE_EXIT

    def on_control(self, listener: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(2)
                _, uid, _ = struct.unpack("3i", conn.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
                if uid not in (0, os.getuid()):
                    return  # only its own user (and root) may ask
                try:
                    command = conn.recv(256).decode(errors="replace").strip()
                    if command == "reload":
                        self.reload()
                    answer = {"errors": self.errors} if command == "reload" else {
                        "pid": os.getpid(), "errors": self.errors,
                        "listening": sorted(f"{ip} {'udp' if kind == socket.SOCK_DGRAM else 'tcp'}"
                                            for ip, kind in self.sockets),
                        "upstreams": self.upstreams}
                    conn.sendall(json.dumps(answer).encode() + b"\n")
                except OSError as e:
                    log(f"control: {e}")

    # -- reload: a new view, then the sockets it needs ------------------------------------

    def reload(self, exited=()) -> None:
        """The names stored now (exited: networks a container of which has exited), and the
        sockets they need."""
        self.dns_stamp = self.stamps()
        view = read_view(self.store, self.view, exited)
        wanted = {(ip, kind): net.name for net in view.networks.values() for ip in net.servers
                  for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)}
        errors = {}
        for key, network in wanted.items():
            if key in self.sockets and self.sockets[key][1] == network:
                continue
            self.close(key)
            try:
                self.sockets[key] = (self.listen(*key, network), network)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    errors[network] = (f"port {PORT} on {key[0]} is taken by another program: "
                                       "stop it, or create the network with --no-dns")
                else:
                    errors[network] = f"cannot listen on {key[0]} port {PORT}: {e.strerror}"
                log(errors[network])
        for key in set(self.sockets) - set(wanted):
            self.close(key)
        for network in errors:  # all of a network's sockets or none
            for key in [k for k, (_, n) in self.sockets.items() if n == network]:
                self.close(key)
        self.errors = errors
        self.use(view)
        self.read_upstreams(force=True)
        gc.freeze()  # what is here now is not traversed by each collection: fewer slow answers

    def use(self, view: View) -> None:
        """Answer from view from now on, with the kept answers it changes dropped: under the
        lock, so no TCP thread keeps an answer of the view before once this returns."""
        with self.lock:
            self.view, old = view, self.view
            self.forget(changed_names(old, view))

    def forget(self, names) -> None:
        """Drop the kept answers to questions for names (every one when None)."""
        if names is None:
            self.cache, self.cached = {}, {}
            return
        for name in names:
            for key in self.cached.pop(name, ()):
                self.cache.pop(key, None)

    def stamps(self) -> tuple:
        """What changes when names change: the dns/ directory, the cluster's view of the
        other hosts' attachments."""
        found = []
        for path in (self.store.path("dns"), records.view_path(self.store)):
            try:
                st = os.stat(path)
                found.append((st.st_ino, st.st_mtime_ns))
            except OSError:
                found.append(None)
        return tuple(found)

    def listen(self, ip: str, kind: int, network: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sock = socket.socket(family, kind)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, PORT))
            if kind == socket.SOCK_STREAM:
                sock.listen(64)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        handler = self.on_udp if kind == socket.SOCK_DGRAM else self.on_tcp
        self.selector.register(sock, selectors.EVENT_READ, lambda s: handler(s, network))
        log(f"network {network}: listening on {ip} port {PORT} "
            f"{'udp' if kind == socket.SOCK_DGRAM else 'tcp'}")
        return sock

    def close(self, key) -> None:
        found = self.sockets.pop(key, None)
        if found is not None:
            self.selector.unregister(found[0])
            found[0].close()

    def read_upstreams(self, force: bool = False) -> None:
        """The host's resolvers (records.host_resolvers), never this server's addresses."""
        path = os.environ.get("CIRCUIT_DNS_RESOLV_CONF") or records.HOST_RESOLV_CONF
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp == self.resolv_stamp and not force:
            return
        self.resolv_stamp = stamp
        mine = {ip for net in self.view.networks.values() for ip in net.servers}
        upstreams = [ip for ip in records.host_resolvers(path)[0] if ip not in mine]
        if upstreams != self.upstreams:
            with self.lock:
                self.upstreams = upstreams
                self.forget(None)  # a kept SERVFAIL (no resolver) may have an answer now

    # -- questions -----------------------------------------------------------------------

    def on_udp(self, sock: socket.socket, network: str) -> None:
        for _ in range(256):  # what is queued, then back to the other sockets
            try:
                data, client = sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            answer = self.answer(data, client[0], network)
            if answer is FORWARD:
                self.forward(data, lambda reply, s=sock, c=client: s.sendto(reply, c))
            elif answer is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(answer, client)

    def answer(self, data: bytes, source: str, network: str, tcp: bool = False):
        """The answer to one question (bytes), FORWARD, or None for what is no question; over
        UDP (not tcp) truncated to what the question allows."""
        view = self.view
        scope = view.scope.get(source) or (network,)
        key = (scope, data[2:], tcp)
        cached = self.cache.get(key)
        if cached is not None:
            return data[:2] + cached
        try:
            query = DNSRecord.parse(data)
        except (DNSError, Exception):  # dnslib raises more than DNSError for a short packet
            return None
        if query.header.qr:
            return None
        reply = self.resolve(query, [view.networks[n] for n in scope if n in view.networks],
                             view.suffixes)
        if reply is FORWARD:
            return FORWARD
        packed = reply.pack() if tcp else fit(reply, query)
        with self.lock:
            if self.view is view:  # not one a reload (a TCP question's) has made stale
                if len(self.cache) >= MAX_CACHE:
                    self.forget(None)
                name = str(query.questions[0].qname).rstrip(".").lower() \
                    if query.questions else ""
                self.cache[key] = bytes(packed[2:])
                self.cached.setdefault(name, []).append(key)
        return packed

    def resolve(self, query: DNSRecord, scope: list[Network], suffixes: tuple[str, ...]):
        reply = query.reply()
        if any(rr.rtype == QTYPE.OPT for rr in query.ar):
            reply.add_ar(EDNS0(udp_len=EDNS_SIZE))
        if len(query.questions) != 1:
            reply.questions = []  # not the empty one dnslib makes up
            reply.header.rcode = RCODE.FORMERR
            return reply
        if query.header.opcode != 0:
            reply.header.rcode = RCODE.NOTIMP
            return reply
        question = query.q
        name = str(question.qname).rstrip(".").lower()
        qtype = question.qtype
        if qtype == QTYPE.PTR:
            address = reverse_address(name)
            if address is not None:
                for net in scope:
                    if address in net.reverse:
                        reply.add_answer(RR(question.qname, QTYPE.PTR,
                                            rdata=PTR(net.reverse[address]), ttl=TTL))
                        return reply
                ip = ipaddress.ip_address(address)
                if any(ip in subnet for net in scope for subnet in net.subnets):
                    reply.header.rcode = RCODE.NXDOMAIN
                    return reply
                return self.forwarded(reply, scope)
        addresses = [ip for net in scope for ip in net.names.get(name, ())]
        if addresses:
            for ip in dict.fromkeys(addresses):
                if ":" in ip and qtype in (QTYPE.AAAA, QTYPE.ANY):
                    reply.add_answer(RR(question.qname, QTYPE.AAAA, rdata=AAAA(ip), ttl=TTL))
                elif ":" not in ip and qtype in (QTYPE.A, QTYPE.ANY):
                    reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(ip), ttl=TTL))
            return reply  # no address of that family: NOERROR without answers
        if any(name == net.suffix[1:] for net in scope):
            return reply  # the network's own name: it has names below it (NXDOMAIN would
            # deny them all to a resolver that follows RFC 8020)
        if name and ("." not in name or name.endswith(suffixes)):  # never asked of the host's
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        return self.forwarded(reply, scope)

    def forwarded(self, reply: DNSRecord, scope: list[Network]):
        """FORWARD, unless every network of the scope is internal (REFUSED) or the host has
        no resolver this server may ask (SERVFAIL)."""
        if not scope or all(net.internal for net in scope):
            reply.header.rcode = RCODE.REFUSED
            return reply
        if not self.upstreams:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        return FORWARD

    # -- the host's resolvers ------------------------------------------------------------

    def forward(self, query: bytes, reply) -> None:
        """Send query on (SERVFAIL at once when MAX_FORWARDS already wait)."""
        self.send_upstream(Forward(query, reply, list(self.upstreams)
                                   if len(self.forwards) < MAX_FORWARDS else []))

    def send_upstream(self, forward: Forward) -> None:
        while forward.upstreams:
            upstream = forward.upstreams.pop(0)
            try:
                sock = socket.socket(socket.AF_INET6 if ":" in upstream else socket.AF_INET,
                                     socket.SOCK_DGRAM)
            except OSError:  # out of descriptors
                continue
            sock.setblocking(False)
            try:
                sock.connect((upstream, PORT))
                sock.send(forward.query)
            except OSError:
                sock.close()
                continue
            forward.deadline = time.monotonic() + UPSTREAM_TIMEOUT
            self.forwards[sock] = forward
            self.selector.register(sock, selectors.EVENT_READ, self.on_upstream)
            return
        failed = servfail(forward.query)
        if failed is not None:
            with contextlib.suppress(OSError):
                forward.reply(failed)

    def on_upstream(self, sock: socket.socket) -> None:
        forward = self.forwards.pop(sock)
        self.selector.unregister(sock)
        try:
            answer = sock.recv(65535)
        except OSError:
            answer = b""
        sock.close()
        if answer[:2] == forward.query[:2]:
            with contextlib.suppress(OSError):
                forward.reply(answer)
        else:
            self.send_upstream(forward)

    def expire_forwards(self, now: float) -> None:
        for sock, forward in list(self.forwards.items()):
            if forward.deadline <= now:
                del self.forwards[sock]
                self.selector.unregister(sock)
                sock.close()
                self.send_upstream(forward)

    # -- TCP: a thread per connection (questions over TCP are rare) -------------------------

    def on_tcp(self, listener: socket.socket, network: str) -> None:
        try:
            conn, client = listener.accept()
        except BlockingIOError:
            return
        except OSError as e:  # out of descriptors: the connection waits in the backlog
            log(f"network {network}: cannot take a TCP connection: {e.strerror}")
            return
        with self.lock:
            full = self.tcp_threads >= MAX_TCP
            self.tcp_threads += not full
        if full:
            conn.close()
            return
        try:
            threading.Thread(target=self.serve_tcp, args=(conn, client[0], network),
                             daemon=True).start()
        except RuntimeError:  # no thread to be had
            self.tcp_done()
            conn.close()

    def tcp_done(self) -> None:
        with self.lock:
            self.tcp_threads -= 1

    def serve_tcp(self, conn: socket.socket, source: str, network: str) -> None:
        with conn, contextlib.ExitStack() as done:
            done.callback(self.tcp_done)
            conn.settimeout(10)
            try:
                while True:
                    size = recv_exactly(conn, 2)
                    if size is None:
                        return
                    query = recv_exactly(conn, int.from_bytes(size, "big"))
                    if query is None:
                        return
                    answer = self.answer(query, source, network, tcp=True)
                    if answer is FORWARD:
                        answer = self.ask_upstreams(query) or servfail(query)
                    if answer is None:
                        return
                    conn.sendall(len(answer).to_bytes(2, "big") + answer)
            except OSError:
                return

    def ask_upstreams(self, query: bytes) -> bytes | None:
        """A TCP question forwarded: over UDP to each resolver in turn, over TCP when the
        answer was truncated."""
        for upstream in list(self.upstreams):
            family = socket.AF_INET6 if ":" in upstream else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(UPSTREAM_TIMEOUT)
                    sock.connect((upstream, PORT))
                    sock.send(query)
                    answer = sock.recv(65535)
                if answer[:2] == query[:2] and not answer[2] & 0x02:  # TC
                    return answer
                with socket.create_connection((upstream, PORT), UPSTREAM_TIMEOUT) as sock:
                    sock.sendall(len(query).to_bytes(2, "big") + query)
                    size = recv_exactly(sock, 2)
                    if size is not None:
                        return recv_exactly(sock, int.from_bytes(size, "big"))
            except OSError:
                continue
        return None


def fit(reply: DNSRecord, query: DNSRecord) -> bytes:
    """reply packed for UDP: the answers that fit in what query allows (512 bytes, or its
    EDNS size up to EDNS_SIZE), TC set when some did not."""
    limit = max([UDP_SIZE] + [min(rr.rclass, EDNS_SIZE) for rr in query.ar
                              if rr.rtype == QTYPE.OPT])
    packed = reply.pack()
    if len(packed) <= limit:
        return packed
    reply.header.tc = 1
    while reply.rr and len(packed) > limit:
        reply.rr.pop()
        packed = reply.pack()
    return packed


def servfail(query: bytes) -> bytes | None:
    """SERVFAIL to query (None when it is no question)."""
    try:
        failed = DNSRecord.parse(query).reply()
    except Exception:
        return None
    failed.header.rcode = RCODE.SERVFAIL
    return bytes(failed.pack())


def recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve(store: Store, stay: bool) -> int:
    return Server(store, stay).run()


def main(argv: list[str] | None = None) -> int:
    """python -m circuit_dns.server --state DIR: as control.spawn starts it."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "--state":
        print("usage: python -m circuit_dns.server --state DIR", file=sys.stderr)
        return 2
    return serve(Store(argv[1]), stay=False)


if __name__ == "__main__":
    sys.exit(main())
