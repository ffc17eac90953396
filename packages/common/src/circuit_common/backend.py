"""State backends: where circuit's records live and how they are locked, chosen by the scheme
of the --state URL.

A directory (or file://DIR) is this module's StateBackend, records and locks in files on this
host. Any other scheme is a backend a tool registers in the entry-point group
circuit.state_backends of its pyproject, by scheme:
    [project.entry-points."circuit.state_backends"]
    etcd = "circuit_cluster.replica:ReplicatedStore"
The class is a StateBackend made from the Settings (settings.state_url is its URL, to check and
parse; settings.state_dir this host's own records) and lists the schemes it serves in
`schemes`. The entry that served a scheme is kept in cache/state-backends.json below
state_dir, so that a command (a hook, a connect) imports it directly: the entry-point scan
(importlib.metadata, ≈ 40 ms) runs only when the cache does not name a backend that still
serves the scheme.
"""

import contextlib
import functools
import os
import re

from .errors import EnvironmentFault, InvalidInput, StateCorrupt
from .store import Store

GROUP = "circuit.state_backends"
CHECKS = "circuit.record_checks"  # kind of record (its top directory) = "module:check"
ENTRY = r"circuit_[a-z]+(\.[a-z_]+)*:[A-Za-z_]+"  # what the cache may name
CACHE = ("cache", "state-backends.json")


class StateBackend(Store):
    """What every state backend provides, and the single-host (file://) backend itself.

    Records and locks are Store's (read, write, remove, records, read_all, lock, lock_all, ...):
    a backend that shares records with other hosts overrides what it must. The rest are the
    questions circuit-net asks about networks that span hosts; on one host they have the
    answers below."""

    schemes: tuple[str, ...] = ("file",)
    url_help = "file://DIR"
    shared = False  # records are every host's: what is one host's (IPAM dirs) stays out

    def __init__(self, settings):
        super().__init__(settings.state_dir, settings.lock_timeout)
        self.settings = settings

    def fetch(self, path: str, check=None) -> dict | None:
        """The record at path as other hosts have it, for one this host has not seen yet
        (mirrored here now); None when there is none anywhere."""
        return None

    def host_name(self) -> str | None:
        """This host's name among the hosts sharing the state (it labels its peers in
        `network list`); None when it shares with none."""
        return None

    def network_here(self, network: dict, ipam_dir: str | None, lease: bool = False) -> dict:
        """A network record as this host runs it (ipam_dir: this host's host-local dataDir
        for networks from flags); with lease, what this host needs of a network that spans
        hosts (its subnet) is taken now."""
        if network.get("overlay"):
            raise InvalidInput(f"network {network['name']} is a cluster network: give --state "
                               "etcd://HOST:PORT[,...] as when it was created")
        return network

    def place_overlay(self, requested: dict, networks: list[dict]) -> dict:
        """The overlay record of a new network that spans hosts, as requested (its "vni" None:
        any), among the networks there are."""
        raise InvalidInput("--overlay makes a cluster network: give --state etcd://HOST:PORT"
                           "[,...] so every host shares it")

    def hosts_using(self, network: str) -> list[str]:
        """The other hosts with containers on the network, now."""
        return []

    def peer_attachments(self, network: str) -> list[dict]:
        """The network's attachments on other hosts, each with its "host"."""
        return []

    def network_deleted(self, network: dict) -> None:
        """The network's record is gone: let go of what the hosts hold for it."""


def open_backend(settings) -> StateBackend:
    """The backend of settings.state_url (None: the directory settings.state_dir);
    InvalidInput in one line for a scheme no installed tool serves, or a URL it refuses."""
    if settings.state_url is None:
        return StateBackend(settings)
    scheme = settings.state_url.partition("://")[0]
    return find(scheme, settings)(settings)


def find(scheme: str, settings) -> type:
    """The backend class registered for scheme: the one the cache names when it still serves
    the scheme, else the entry point's (then cached, where the state directory exists)."""
    cache = Store(settings.state_dir)
    path = cache.path(*CACHE)
    known = {}
    with contextlib.suppress(EnvironmentFault, StateCorrupt):  # a cache: scan instead
        known = cache.read(path) or {}
    entry = known.get(scheme)
    if isinstance(entry, str) and re.fullmatch(ENTRY, entry):
        found = load(entry)
        if scheme in getattr(found, "schemes", ()):
            return found
    from importlib.metadata import entry_points

    for point in entry_points(group=GROUP, name=scheme):
        found = point.load()
        if re.fullmatch(ENTRY, point.value) and os.path.isdir(settings.state_dir):
            with contextlib.suppress(EnvironmentFault, StateCorrupt):
                cache.write(path, {**{k: v for k, v in known.items() if k != "schema"},
                                   scheme: point.value})
        return found
    served = "".join(f" or {c.url_help}" for c in registered())
    raise InvalidInput(f"unknown state URL {settings.state_url!r}: no installed tool serves "
                       f"{scheme}://; use a directory, file://DIR{served}")


def load(entry: str):
    """module:attribute, None when the module is gone."""
    import importlib

    module, _, attribute = entry.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute, None)
    except ModuleNotFoundError as e:
        if e.name is None or not f"{module}.".startswith(f"{e.name}."):
            raise  # the tool is there, but something it imports is not
        return None


def registered() -> list[type]:
    """The backend classes installed tools register, each once, by scheme."""
    from importlib.metadata import entry_points

    found = []
    for point in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        backend = point.load()
        if backend not in found:
            found.append(backend)
    return found


@functools.cache
def record_check(kind: str):
    """The check of a kind of record (networks, qos, services, ...: its top directory) that
    the tool writing it declares in the entry-point group circuit.record_checks (a function
    (record, path) raising ValueError, as Store.read takes); None when no installed tool
    does. For records that come from elsewhere (another host's, through a backend): checked
    as the same record read here would be."""
    from importlib.metadata import entry_points

    for point in entry_points(group=CHECKS, name=kind):
        return point.load()
    return None
