"""The state store of a host in a cluster: the records every host shares (networks, QoS
policies, LB services, extension markers) are written through to etcd first, by a transaction
that holds only if etcd still has what this host last saw; everything else stays local.

Reads are local: the shared records in the state directory are a mirror of etcd's, which
`cluster sync` and the agent keep current (sync.py). So a container start reads no more than
on a single host, and talks to etcd only for its network's first attach on this host."""

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from functools import cached_property

from circuit_common.backend import StateBackend, record_check
from circuit_common.config import Settings
from circuit_common.errors import Conflict, LockTimeout, StateCorrupt
from circuit_common.store import decode, encode

from .url import etcd_state

SHARED = ("networks", "qos", "services", "extensions")  # top directories kept in etcd
RECORDS = "records"  # etcd: <prefix>/records/<path below the state dir>
LOCK_TTL = 15  # seconds a crashed holder of the cluster lock keeps the others waiting
RESYNCED_BY = {"qos": "qos", "services": "lb"}  # shared kind → the extension that applies it
LOCKED_KINDS = ("networks", "services", "extensions")  # what lock_all() mirrors


class Renewal:
    """Keeps an etcd lease alive from a thread until stop()."""

    def __init__(self, etcd, lease: int, every: float):
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(etcd, lease, every),
                                        daemon=True)
        self._thread.start()

    def _run(self, etcd, lease: int, every: float) -> None:
        while not self._stop.wait(every):
            with contextlib.suppress(Exception):  # the holder sees a lost lease on revoke
                etcd.keepalive(lease)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def safe_record_name(name: str) -> bool:
    """A shared record's path that stays below its kind's directory."""
    parts = name.split("/")
    return parts[0] in SHARED and name.endswith(".json") and all(
        p and p not in (".", "..") and not p.startswith(".") for p in parts)


class ReplicatedStore(StateBackend):
    """The etcd:// state backend: a store whose shared records are etcd's, mirrored here, and
    the cluster's answers to circuit-net's questions about networks that span hosts."""

    schemes = ("etcd", "etcds")
    url_help = "etcd://HOST:PORT[,HOST:PORT...][/PREFIX] or etcds://... (TLS)"
    shared = True

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.etcd_state = etcd_state(settings)
        self._holding_all = False
        self.rejected: list[str] = []  # the last refresh's records that failed their checks

    @cached_property
    def etcd(self):
        from .etcd import Etcd

        return Etcd(self.etcd_state, self.lock_timeout)

    def shared_name(self, path: str) -> str | None:
        """The path below the state dir of a shared record, None for a local one."""
        relative = os.path.relpath(os.fspath(path), self.root)
        top = relative.split(os.sep, 1)[0]
        return relative if top in SHARED and not relative.startswith("..") else None

    @cached_property
    def member(self):
        """This host as a member of the cluster."""
        from .member import Member

        return Member(self)

    # -- the state backend's hooks (circuit_common.backend.StateBackend) -------------------

    def fetch(self, path: str, check=None) -> dict | None:
        """A shared record that is not mirrored here yet, from etcd (mirrored now)."""
        name = self.shared_name(path)
        found = self.etcd.get(self.record_key(name)) if name else None
        if found is None:
            return None
        self.checked(name, found.value, check)
        self.mirror(name, found.value)
        return self.read(path, check)

    def checked(self, name: str, body: bytes, check=None) -> None:
        """StateCorrupt naming its etcd key unless shared record name's body passes the checks
        a record of its kind read here does (check, else its tool's: record_check): a record
        from etcd is never mirrored, let alone used, otherwise."""
        decode(body, self.path(*name.split("/")), check or record_check(name.split("/", 1)[0]),
               where=f"{self.record_key(name).decode(errors='replace')} in etcd")

    def refuse_rejected(self) -> None:
        """StateCorrupt for the records the last refresh left out, naming the first."""
        if self.rejected:
            more = f" ({len(self.rejected) - 1} more such records)" if self.rejected[1:] else ""
            raise StateCorrupt(self.rejected[0] + more)

    def host_name(self) -> str | None:
        joined = self.member.joined()
        return joined["name"] if joined is not None else None

    def network_here(self, network: dict, ipam_dir: str | None, lease: bool = False) -> dict:
        from .placement import network_here

        return network_here(self.member, network, ipam_dir, lease)

    def place_overlay(self, requested: dict, networks: list[dict]) -> dict:
        from .placement import place_overlay

        return place_overlay(requested, networks)

    def hosts_using(self, network: str) -> list[str]:
        return self.member.hosts_using(network)

    def peer_attachments(self, network: str) -> list[dict]:
        return self.member.peer_attachments(network)

    def network_deleted(self, network: dict) -> None:
        if network.get("overlay"):
            self.member.network_deleted(network["name"])

    # -- shared records ----------------------------------------------------------------------

    def mirror(self, name: str, body: bytes | None) -> None:
        """Set the local copy of shared record name to etcd's body (None: it is gone)."""
        path = self.path(*name.split("/"))
        if body is None:
            super().remove(path)
        else:
            self.write_bytes(path, body)

    def record_key(self, name: str) -> bytes:
        return self.etcd.key(RECORDS, name)

    def local_bytes(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, path: str, record: dict) -> None:
        name = self.shared_name(path)
        if name is None:
            return super().write(path, record)
        body = encode(record)
        self._swap(name, self.local_bytes(path), body)  # even unchanged: etcd may differ
        self.write_bytes(path, body)

    def remove(self, path: str) -> bool:
        name = self.shared_name(path)
        if name is None:
            return super().remove(path)
        expected = self.local_bytes(path)
        if expected is None:
            return False
        self._swap(name, expected, None)
        return super().remove(path)

    @contextlib.contextmanager
    def lock_all(self) -> Iterator[None]:
        """The whole store, on every host: etcd's lock key, bound to a lease of LOCK_TTL
        seconds that is kept alive while waited for and held (a holder that crashed frees it
        when the lease ends), then this host's store lock, taken second so that waiting for
        etcd never holds up this host's container starts. For what spans shared records
        (overlapping subnets, VNIs, one VIP:port per service). Held, the networks, services and
        markers here are etcd's and LB services changed elsewhere are in this host's kernel
        (the LB commands change it from there); QoS policies wait for the agent's next pass
        (applying them takes network locks, which this lock excludes). Re-entered, it is held
        already."""
        if self._holding_all:
            yield
            return
        with self._cluster_lock(), super().lock_all():
            self._holding_all = True
            try:
                # QoS waits for the agent's pass: applying it takes network locks, which this
                # lock excludes
                self.resync(self.refresh(kinds=LOCKED_KINDS), kinds=("services",))
                self.refuse_rejected()
                yield
            finally:
                self._holding_all = False

    @contextlib.contextmanager
    def _cluster_lock(self) -> Iterator[None]:
        etcd = self.etcd
        key = etcd.key("locks", "store")
        holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "token": os.urandom(8).hex()}).encode()
        lease = etcd.grant(LOCK_TTL)
        renewing = Renewal(etcd, lease, LOCK_TTL / 3)
        try:
            deadline = time.monotonic() + self.lock_timeout
            pause = 0.02
            while not etcd.create(key, holder, lease):
                found = etcd.get(key)
                if found is not None and found.value == holder:
                    break  # a retried create that the first member had carried out
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"timed out after {self.lock_timeout:g}s waiting for the cluster's "
                        f"store lock, held by {found.value.decode() if found else 'nobody now'}"
                        f"; it ends with its holder, or {LOCK_TTL}s after a crash")
                time.sleep(pause)
                pause = min(pause * 2, 0.2)
            yield
        finally:
            renewing.stop()
            etcd.revoke(lease)  # deletes the key with it

    def resync(self, before: dict[str, bytes | None],
               kinds: tuple[str, ...] = tuple(RESYNCED_BY)) -> list[str]:
        """The extensions whose shared records (of kinds) changed (before: each changed
        record's bytes before the change, None when it was new) make this host's kernel match
        them; their names. What a failed resync had to do, and what was left to other kinds,
        is kept (cluster/resync.json) and done with the next one of its kind, so a kernel
        never stays behind its mirror."""
        path = self.path("cluster", "resync.json")
        kept = {name: None if old is None else old.encode("latin-1")
                for name, old in ((self.read(path) or {}).get("before") or {}).items()}
        everything = {**before, **kept}  # the oldest bytes of a record win
        now = {n: v for n, v in everything.items() if n.split("/", 1)[0] in kinds}
        later = {n: v for n, v in everything.items() if n not in now}
        try:
            done = self._resync(now)
        except BaseException:
            later |= now
            raise
        finally:
            if later:
                self.write(path, {"before": {name: None if old is None else old.decode("latin-1")
                                             for name, old in later.items()}})
            elif kept:
                self.remove(path)
        return done

    def _resync(self, before: dict[str, bytes | None]) -> list[str]:
        by_extension: dict[str, dict] = {}
        for name, old in before.items():
            extension = RESYNCED_BY.get(name.split("/", 1)[0])
            if extension:
                by_extension.setdefault(extension, {})[name] = \
                    None if old is None else json.loads(old)
        if not by_extension:
            return []
        from circuit_common import cli, extensions

        ctx = cli.Context(self.settings, store=self)
        done = []
        for name, module in extensions.registered():
            if name in by_extension and hasattr(module, "resync"):
                module.resync(ctx, by_extension[name])
                done.append(name)
        return done

    def local_lock_all(self):
        """This host's store lock only (mirroring etcd's records here)."""
        return super().lock_all()

    def local_records(self) -> dict[str, bytes]:
        """The shared records mirrored here, by name."""
        found = {}
        for kind in SHARED:
            for directory, _, names in os.walk(self.path(kind)):
                for name in names:
                    if name.endswith(".json") and not name.startswith("."):
                        path = os.path.join(directory, name)
                        with open(path, "rb") as f:
                            found[os.path.relpath(path, self.root)] = f.read()
        return found

    def refresh(self, records: dict[str, bytes] | None = None,
                kinds: tuple[str, ...] = SHARED) -> dict[str, bytes | None]:
        """Make the shared records of kinds here etcd's (records: as a range just read them),
        under this host's store lock, which the caller holds; the records that changed, each
        with its bytes before (None: it is new). A record that fails its checks (checked) is
        left as this host has it, and named in rejected."""
        if records is None:
            _, kvs = self.etcd.range(self.etcd.key(RECORDS, ""))
            start = len(self.etcd.key(RECORDS, ""))
            records = {kv.key[start:].decode(): kv.value for kv in kvs}
        wanted = {n: v for n, v in records.items()
                  if safe_record_name(n) and n.split("/", 1)[0] in kinds}
        local = {n: v for n, v in self.local_records().items() if n.split("/", 1)[0] in kinds}
        before = {}
        self.rejected = []
        for name, body in wanted.items():
            if local.get(name) != body:
                try:
                    self.checked(name, body)
                except StateCorrupt as e:
                    self.rejected.append(str(e))
                    continue
                self.mirror(name, body)
                before[name] = local.get(name)
        for name in local.keys() - wanted.keys():
            self.mirror(name, None)
            before[name] = local[name]
        return before

    def _swap(self, name: str, expected: bytes | None, body: bytes | None) -> None:
        if not self.etcd.swap(self.record_key(name), expected, body):
            raise Conflict(f"{name} was changed on another host since this host last synced; "
                           "nothing was changed: run `circuit cluster sync` and try again")
