"""One reconcile pass between etcd and this host, and the agent that runs passes.

A pass reads everything below the prefix in one range request, then:
  mirror     shared records (networks, QoS, LB services, markers) into the state dir
  publish    this host's attachments, so every host's `network list` shows them
  view       the other hosts' attachments, for `network list`
  overlay    for each network this host leased a subnet of: routes, neighbours and FDB
             entries to every live host's subnet; a lease of a deleted network is given back
  resync     the QoS and LB extensions re-apply their kernel state when their records changed
Every step only changes what differs, so a pass that finds nothing changed writes nothing."""

import json
import os
import signal
import sys
import threading
import time

from circuit_common.errors import CircuitError, Conflict

from . import overlay
from .member import Member, leased_for, subnet_key, subnet_lease, subnet_value
from .replica import RECORDS, safe_record_name


class Snapshot:
    """Everything below the prefix at one revision, by kind. Values are read defensively:
    one that is not what circuit writes is left out (and counted in skipped), never fatal."""

    def __init__(self, revision: int, kvs: list, prefix: bytes):
        self.revision = revision
        self.records: dict[str, bytes] = {}
        self.hosts: dict[str, dict] = {}
        self.alive: dict[str, str] = {}  # host → its underlay address, while its lease lives
        self.subnets: list[tuple[str, bytes]] = []  # (network, value): checked where used
        self.attachments: dict[str, dict[str, bytes]] = {}  # host → {network/cid@if: value}
        self.skipped = 0
        for kv in kvs:
            kind, _, rest = kv.key[len(prefix):].decode(errors="replace").partition("/")
            if kind == RECORDS:
                self.records[rest] = kv.value
            elif kind == "hosts":
                host = json_object(kv.value)
                if host is None:
                    self.skipped += 1
                else:
                    self.hosts[rest] = host
            elif kind == "alive":
                address = ipv4(kv.value)
                if address is None:
                    self.skipped += 1
                else:
                    self.alive[rest] = address
            elif kind == "subnets":
                self.subnets.append((rest.partition("/")[0], kv.value))
            elif kind == "attachments":
                host, _, name = rest.partition("/")
                self.attachments.setdefault(host, {})[name] = kv.value


def json_object(value: bytes) -> dict | None:
    try:
        found = json.loads(value)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def ipv4(value: bytes) -> str | None:
    import ipaddress

    try:
        return str(ipaddress.IPv4Address(value.decode()))
    except (ValueError, UnicodeDecodeError):
        return None


class Reconciler:
    """Passes for one host (ctx: the command's context, its store a ReplicatedStore)."""

    def __init__(self, ctx, member: Member | None = None):
        self.ctx = ctx
        self.store = ctx.store if ctx is not None else member.store
        self.member = member or Member(self.store)
        self.etcd = self.store.etcd
        self._masqueraded: dict[str, str] | None = None  # as last programmed; None: unknown

    def snapshot(self) -> Snapshot:
        prefix = self.etcd.key("")
        return Snapshot(*self.etcd.range(prefix), prefix)

    def reconcile(self) -> dict:
        """One pass; what it changed, by step."""
        host = self.member.host()
        snap = self.snapshot()
        changed = self.mirror(snap.records)
        published = self.publish(host, snap.attachments.get(host["name"], {}))
        self.write_view(host["name"], snap)
        overlays = self.program_overlays(snap)
        restored = self.store.resync(changed)
        self.store.refuse_rejected()  # after the rest of the pass: one bad record stops none
        return {"revision": snap.revision, "mirrored": changed, "published": published,
                "overlays": overlays, "restored": restored}

    # -- steps --------------------------------------------------------------------------------

    def mirror(self, records: dict[str, bytes]) -> dict[str, bytes | None]:
        """Make the shared records here etcd's; those that changed, with their bytes before."""
        wanted = {n: v for n, v in records.items() if safe_record_name(n)}
        if self.store.local_records() == wanted:
            return {}
        with self.store.local_lock_all():
            return self.store.refresh()  # read again under the lock: never older bytes

    def local_attachments(self, host: str) -> dict[str, bytes]:
        """This host's attachments as other hosts see them, by network/cid@ifname."""
        found = {}
        top = self.store.path("attachments")
        for network in sorted(os.listdir(top)) if os.path.isdir(top) else ():
            for path in self.store.records(os.path.join(top, network)):
                record = self.store.read(path)
                if record is None:
                    continue
                meta = record.get("circuit") or {}
                ips = [ip.get("address") for ip in (record.get("result") or {}).get("ips", [])]
                summary = {"host": host, "network": network,
                           "containerId": record.get("containerId"),
                           "ifName": record.get("ifName"), "ips": ips,
                           "pid": meta.get("pid"), "target": meta.get("target"),
                           "aliases": meta.get("aliases", [])}
                found[f"{network}/{os.path.basename(path)[:-len('.json')]}"] = json.dumps(
                    summary, sort_keys=True).encode()
        return found

    def publish(self, host: dict, published: dict[str, bytes]) -> int:
        """Put this host's attachments that etcd lacks or has otherwise, bound to the host's
        lease (they go when it lapses, and come back with it), delete the gone."""
        local = self.local_attachments(host["name"])
        count = 0
        for name, body in local.items():
            if published.get(name) != body:
                self.etcd.put(self.etcd.key("attachments", host["name"], name), body,
                              host.get("lease", 0))
                count += 1
        for name in published.keys() - local.keys():
            self.etcd.delete(self.etcd.key("attachments", host["name"], name))
            count += 1
        return count

    def write_view(self, me: str, snap: Snapshot) -> None:
        """The other hosts' attachments, for `network list`."""
        attachments: dict[str, list] = {}
        for host, entries in sorted(snap.attachments.items()):
            if host == me:
                continue
            for body in entries.values():
                entry = attachment_entry(body, host)
                if entry is not None:
                    attachments.setdefault(entry["network"], []).append(entry)
        view = {"attachments": attachments}
        if self.store.read(self.member.view_path) != {"schema": 1, **view}:
            self.store.write(self.member.view_path, view)

    def program_overlays(self, snap: Snapshot) -> int:
        """Each leased network's VXLAN device (made again if it went) and peers: every live
        other host's subnet; the masquerade of what leaves the cluster. A lease whose network
        is gone (or was made again) is given back, unless containers here still use it. The
        number of networks programmed."""
        host = self.member.host()
        leases = []
        for lease in self.member.leases():
            network = json_object(snap.records.get(f"networks/{lease['network']}.json", b""))
            if network is not None and network.get("overlay") \
                    and leased_for(lease, network):
                leases.append(lease)
            elif not self.member.in_use(lease["network"]):
                self.member.release(lease)
        lost = [self.reclaim(lease, snap, host) for lease in leases]
        for lease in leases:
            overlay.ensure_device(lease["vni"], lease["subnet"], host["address"])
            overlay.program_peers(lease["vni"],
                                  peers_of(lease, snap.subnets, snap.alive, host["name"]))
        self.program_masquerade(leases)
        if any(lost):
            raise Conflict(next(filter(None, lost)))
        return len(leases)

    def reclaim(self, lease: dict, snap: Snapshot, host: dict) -> str | None:
        """Make sure etcd still gives this host its block (`cluster forget` while it was away
        takes it back): created again if free; what is wrong when another host holds it."""
        spec = {"subnet": lease["cidr"], "hostSubnetSize": lease["hostSubnetSize"]}
        for network, value in snap.subnets:
            held = subnet_lease(value, spec) if network == lease["network"] else None
            if held and held["subnet"] == lease["subnet"]:
                if held["host"] == host["name"]:
                    return None
                return (f"this host's block {lease['subnet']} of network {lease['network']} is "
                        f"held by host {held['host']} now (this one was forgotten while away): "
                        "disconnect its containers here and connect them again")
        key = self.etcd.key("subnets", lease["network"], subnet_key(lease["subnet"]))
        if self.etcd.create(key, subnet_value(lease["network"], lease["subnet"], host)):
            return None
        return f"could not take back block {lease['subnet']} of network {lease['network']}"

    def program_network(self, lease: dict) -> None:
        """A network's first lease here: its peers and the masquerade, from two small ranges
        (not the whole prefix: a container start waits for this)."""
        subnets = [(lease["network"], kv.value) for kv in
                   self.etcd.range(self.etcd.key("subnets", lease["network"], ""))[1]]
        start = len(self.etcd.key("alive", ""))
        alive = {kv.key[start:].decode(errors="replace"): address
                 for kv in self.etcd.range(self.etcd.key("alive", ""))[1]
                 if (address := ipv4(kv.value))}
        me = self.member.host()["name"]
        overlay.program_peers(lease["vni"], peers_of(lease, subnets, alive, me))
        self.program_masquerade(self.member.leases())

    def forget_programmed(self) -> None:
        """Program the masquerade table on the next pass even if it looks unchanged."""
        self._masqueraded = None

    def program_masquerade(self, leases: list[dict]) -> None:
        wanted = {lease["network"]: lease["cidr"] for lease in leases
                  if lease.get("masquerade", True)}
        if wanted != self._masqueraded:
            overlay.program_masquerade(wanted)
            self._masqueraded = wanted

    # -- liveness -----------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Keep this host's lease alive (a new one if it lapsed) and its last-seen time."""
        host = self.member.host()
        name = host["name"]
        alive_key = self.etcd.key("alive", name)
        if not host.get("lease") or not self.etcd.keepalive(host["lease"]):
            lease = self.etcd.grant(host["ttl"])
            if not self.etcd.create(alive_key, host["address"].encode(), lease):
                found = self.etcd.get(alive_key)
                if found is not None and found.lease != host.get("lease"):
                    raise Conflict(f"another host named {name} is alive in the cluster (at "
                                   f"{found.value.decode()}); give this one another --name")
                self.etcd.put(alive_key, host["address"].encode(), lease)
            host = {**host, "lease": lease}
            self.store.write(self.member.host_path, {k: v for k, v in host.items()
                                                     if k != "schema"})
        record = {k: host[k] for k in ("name", "address", "joined", "ttl")}
        self.etcd.put(self.etcd.key("hosts", name),
                      json.dumps({**record, "lastSeen": time.time()}, sort_keys=True).encode())


def attachment_entry(body: bytes, host: str) -> dict | None:
    """An attachment another host published, when it is what circuit publishes."""
    entry = json_object(body)
    fields = {"network": str, "containerId": str, "ifName": str, "ips": list}
    if entry is None or entry.get("host") != host or not all(
            isinstance(entry.get(k), t) for k, t in fields.items()):
        return None
    return entry


def peers_of(lease: dict, subnets: list[tuple[str, bytes]], alive: dict[str, str],
             me: str) -> dict[str, str]:
    """{subnet: underlay address} of the other live hosts on a leased network: blocks of its
    subnet and size only, at the address each host's alive key gives now."""
    spec = {"subnet": lease["cidr"], "hostSubnetSize": lease["hostSubnetSize"]}
    peers = {}
    for network, value in subnets:
        held = subnet_lease(value, spec) if network == lease["network"] else None
        if held and held["host"] != me and held["host"] in alive \
                and held["subnet"] != lease["subnet"]:  # never a route over this host's own
            peers[held["subnet"]] = alive[held["host"]]
    return peers


def local_stamp(store) -> tuple:
    """Changes when an attachment or a lease of this host comes or goes."""
    stamps = []
    for top in (store.path("attachments"), store.path("cluster", "leases")):
        try:
            with os.scandir(top) as entries:
                stamps += [(e.name, e.stat().st_mtime_ns) for e in entries if e.is_dir()]
            stamps.append((top, os.stat(top).st_mtime_ns))
        except FileNotFoundError:
            continue
    return tuple(sorted(stamps))


WATCHED = ("records", "alive", "subnets", "attachments")  # not hosts/: heartbeats stamp it
FULL_PASS_EVERY = 30.0  # seconds: a pass even when nothing changed (a device or table removed)


def run_agent(ctx, interval: float = 0.25) -> int:
    """Passes until SIGTERM or SIGINT: one whenever what a pass reads changes in etcd (not the
    other hosts' heartbeats) or this host's attachments or leases change, and every
    FULL_PASS_EVERY seconds; heartbeats from a thread of their own, every third of the lease's
    TTL, so a slow pass never lets the lease lapse. An unreachable etcd or a refusal is
    reported and retried; the agent itself stays up."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    reconciler = Reconciler(ctx)
    beating = threading.Thread(target=beat, args=(ctx, stop), daemon=True)
    beating.start()
    watched = [reconciler.etcd.key(kind, "") for kind in WATCHED]
    seen: tuple = ()
    full_pass_at = 0.0
    while not stop.is_set():
        try:
            # taken before the pass: a change made while it runs makes the next tick pass again
            now = (reconciler.etcd.fingerprint(watched), local_stamp(reconciler.store))
            if now != seen or time.monotonic() >= full_pass_at:
                if time.monotonic() >= full_pass_at:
                    reconciler.forget_programmed()
                    full_pass_at = time.monotonic() + FULL_PASS_EVERY
                reconciler.reconcile()
                seen = now
        except Exception as e:  # etcd away, a netlink refusal: reported, the next tick retries
            report(e)
            stop.wait(1.0)
        stop.wait(interval)
    beating.join()
    return 0


def beat(ctx, stop: threading.Event) -> None:
    """The agent's heartbeats, with an etcd client of their own."""
    reconciler = Reconciler(None, Member(type(ctx.store)(ctx.settings)))
    ttl = reconciler.member.host()["ttl"]
    while not stop.is_set():
        try:
            reconciler.heartbeat()
            stop.wait(ttl / 3)
        except Exception as e:
            report(e)
            stop.wait(1.0)


def report(e: Exception) -> None:
    what = str(e) if isinstance(e, CircuitError) else f"{type(e).__name__}: {e}"
    print(f"circuit: cluster agent: {what}", file=sys.stderr, flush=True)
