"""The state store of a host in a cluster: the records every host shares (networks, QoS
policies, LB services, extension markers) are written through to etcd first, by a transaction
that holds only if etcd still has what this host last saw; everything else stays local.

Reads are local: the shared records in the state directory are a mirror of etcd's, which
`cluster sync` and the agent keep current (mirror.py). So a container start reads no more than
on a single host, and talks to etcd only for its network's first attach on this host."""

import os
from functools import cached_property

from circuit_common.config import Settings
from circuit_common.errors import Conflict
from circuit_common.store import Store, encode

SHARED = ("networks", "qos", "services", "extensions")  # top directories kept in etcd
RECORDS = "records"  # etcd: <prefix>/records/<path below the state dir>


class ReplicatedStore(Store):
    """A Store whose shared records are etcd's, mirrored here."""

    def __init__(self, settings: Settings):
        super().__init__(settings.state_dir, settings.lock_timeout)
        self.settings = settings

    @cached_property
    def etcd(self):
        from .etcd import Etcd

        return Etcd(self.settings.etcd, self.lock_timeout)

    def shared_name(self, path: str) -> str | None:
        """The path below the state dir of a shared record, None for a local one."""
        relative = os.path.relpath(os.fspath(path), self.root)
        top = relative.split(os.sep, 1)[0]
        return relative if top in SHARED and not relative.startswith("..") else None

    @cached_property
    def cluster(self):
        from .member import Member

        return Member(self)

    def fetch(self, path: str, check=None) -> dict | None:
        """A shared record that is not mirrored here yet, from etcd (mirrored now)."""
        name = self.shared_name(path)
        found = self.etcd.get(self.record_key(name)) if name else None
        if found is None:
            return None
        self.mirror(name, found.value)
        return self.read(path, check)

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
        expected = self.local_bytes(path)
        if expected != body:
            self._swap(name, expected, body)
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

    def _swap(self, name: str, expected: bytes | None, body: bytes | None) -> None:
        if not self.etcd.swap(self.record_key(name), expected, body):
            raise Conflict(f"{name} was changed on another host since this host last synced; "
                           "nothing was changed: run `circuit cluster sync` and try again")
