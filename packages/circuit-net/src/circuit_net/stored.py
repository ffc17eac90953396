"""What circuit keeps of networks and attachments, and how it reads them: record paths,
reads of networks and of a target's attachments, the attachment as extensions and `network
list` see it (records.py: the schemas; state layout: docs/architecture.md)."""

import contextlib
import os
import time
from functools import cached_property

from circuit_common import extensions
from circuit_common.cli import Context
from circuit_common.config import DEFAULT_CNI_CACHE_DIR
from circuit_common.errors import NotFound, StateCorrupt
from circuit_common.proc import Process
from circuit_common.store import Listing, Store
from circuit_common.validate import IFNAME_RE, NAME_RE, check_name

from . import cni, runtime
from .intents import Journal
from .records import check_attachment, check_network
from .target import Target, pid_container_id


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Stored:
    """The networks of one state store: paths and reads."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.store = ctx.store
        self.settings = ctx.settings
        self.plugins = cni.Plugins(ctx.settings.cni_path, ctx.settings.plugin_timeout)
        self.journal = Journal(ctx.store, ctx.settings)

    # -- paths and reads --------------------------------------------------------------------

    def network_path(self, name: str) -> str:
        return self.store.path("networks", f"{check_name(name, 'network name')}.json")

    def attachment_dir(self, name: str) -> str:
        return self.store.path("attachments", check_name(name, "network name"))

    def attachment_path(self, name: str, container_id: str, ifname: str) -> str:
        return os.path.join(self.attachment_dir(name), f"{container_id}@{ifname}.json")

    @cached_property
    def cni_cache(self) -> Store:
        """libcni's cache dir: circuit keeps a copy of each attachment record there (a
        cniCacheV1 entry, as libcni writes it) for cnitool-style tools."""
        return Store(self.settings.cni_cache_dir, self.settings.lock_timeout)

    def cache_path(self, attachment: dict) -> str:
        """libcni's results/<network>-<containerID>-<ifname>."""
        return self.cni_cache.path("results", f"{attachment['networkName']}-"
                                   f"{attachment['containerId']}-{attachment['ifName']}")

    def get(self, name: str, lease: bool = False) -> dict:
        """The network as this host runs it (see here); with lease, a cluster network's subnet
        is leased to this host now if it has none yet."""
        record = self.store.read(self.network_path(name), check=check_network)
        if record is None:  # made on another host since this one last synced
            record = self.store.fetch(self.network_path(name), check=check_network)
        if record is None:
            raise NotFound(f"no network named {name!r} (see 'circuit network list')")
        return self.here(record, lease)

    def here(self, network: dict, lease: bool = False) -> dict:
        """A network record as this host runs it, as the state backend has it
        (StateBackend.network_here: with lease, a cluster network's subnet is leased now)."""
        return self.store.network_here(network, self.ipam_dir(), lease)

    def all(self) -> Listing:
        """Every network record; unreadable ones are reported, not fatal."""
        return self.store.read_all(self.store.path("networks"), check=check_network)

    def attachments(self, name: str) -> Listing:
        """The attachment records of one network, in a stable order."""
        return self.store.read_all(self.attachment_dir(name), check=check_attachment)

    def attachments_listed(self, name: str) -> Listing:
        """What `network list` shows of a network's attachments (listed()): those whose
        record is unchanged since the last listing come from its cache
        (cache/attachments/<network>.json), not opened, parsed and checked again."""
        return self.store.read_all_cached(self.attachment_dir(name), self.listing_cache(name),
                                          check_attachment, listed)

    def listing_cache(self, name: str) -> str:
        return self.store.path("cache", "attachments", f"{check_name(name, 'network name')}.json")

    def attachments_of(self, name: str, target: Target) -> list[dict]:
        """The target's attachments on a network: NotFound when there are none, StateCorrupt
        when there are none but a record could not be read (it may be the target's). Found by
        file name, a running target's under its other name too (attached_otherwise); by
        reading every record only when neither finds one (a PID whose process is gone, or a
        record older than the process index)."""
        if target.container_id:
            mine = [record for path in self.store.records(
                        self.attachment_dir(name), prefix=f"{target.container_id}@")
                    if (record := self.store.read(path, check=check_attachment)) is not None]
            mine += self.attached_otherwise(name, target)
            if mine:
                return mine
        listing = self.attachments(name)
        mine = [a for a in listing.records if target.matches(a)]
        if not mine and listing.errors:
            raise StateCorrupt(listing.errors[0])
        if not mine:
            raise NotFound(f"container {target.label} is not connected to network {name}")
        return mine

    def attached_otherwise(self, name: str, target: Target) -> list[dict]:
        """The running target's attachments on a network under another name of its process,
        found by file name, never by reading the network's listing: those made by its PID
        (attachments/<network>/pid<pid>-<start>@…) and those its process index names (made
        by a runc id)."""
        if target.process is None:
            return []
        by_pid = pid_container_id(target.process)
        paths = [] if by_pid == target.container_id else list(
            self.store.records(self.attachment_dir(name), prefix=f"{by_pid}@"))
        paths += [os.path.join(self.attachment_dir(name), f"{stem}.json")
                  for stem in self.indexed(name, by_pid)
                  if not stem.startswith(f"{target.container_id}@")]
        return [record for path in paths
                if (record := self.store.read(path, check=check_attachment)) is not None
                and target.matches(record)]

    # -- the process index: which attachments a process has under a name not its PID's ------

    def process_dir(self, name: str) -> str:
        return self.store.path("processes", check_name(name, "network name"))

    def process_entry(self, attachment: dict) -> str | None:
        """processes/<network>/pid<pid>-<start>@<cid>@<ifname>, an empty file: the attachment
        <cid>@<ifname> is that process's. None for one made by its PID (its file name says
        so already)."""
        meta = attachment["circuit"]
        by_pid = pid_container_id(Process(meta["pid"], meta["start_time"]))
        if attachment["containerId"] == by_pid:
            return None
        return os.path.join(self.process_dir(attachment["networkName"]),
                            f"{by_pid}@{attachment['containerId']}@{attachment['ifName']}")

    def index_process(self, attachment: dict) -> None:
        """Enter the attachment in its process's index, before its record is written (under
        the network's lock): a record never lacks its entry. Not fsynced: only a running
        process is looked up by it, and none outlives a power loss."""
        entry = self.process_entry(attachment)
        if entry is not None and not os.path.exists(entry):
            self.store.write_bytes(entry, b"", durable=False)

    def unindex_process(self, attachment: dict) -> None:
        """Remove the attachment's entry from its process's index (after its record went)."""
        entry = self.process_entry(attachment)
        if entry is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry)

    def indexed(self, name: str, by_pid: str) -> list[str]:
        """The <cid>@<ifname> of the attachments that the process named by_pid has on the
        network under a runc id, as its index says (a name not of that form is skipped)."""
        try:
            names = os.listdir(self.process_dir(name))
        except FileNotFoundError:
            return []
        stems = []
        for entry in names:
            cid, _, ifname = entry[len(by_pid) + 1:].partition("@")
            if entry.startswith(f"{by_pid}@") and NAME_RE.fullmatch(cid) \
                    and IFNAME_RE.fullmatch(ifname):
                stems.append(f"{cid}@{ifname}")
        return stems

    def ipam_dir(self) -> str | None:
        """host-local's dataDir for networks from flags: under the CNI cache dir when it is not
        libcni's default (where host-local keeps its reservations anyway)."""
        cache_dir = self.settings.cni_cache_dir
        return None if cache_dir == DEFAULT_CNI_CACHE_DIR else os.path.join(cache_dir, "networks")

    def network_lock(self, name: str):
        """The network's lock, for a network there is (NotFound before any lock file is made
        for a name never created)."""
        if not os.path.exists(self.network_path(name)):
            self.get(name)
        return self.store.lock("network", name)

    def peers_elsewhere(self, name: str) -> list[dict]:
        """A cluster network's attachments on other hosts, as this host last synced them."""
        return self.store.peer_attachments(name)

    def ifnames_of(self, container_id: str) -> set[str]:
        """The interfaces circuit gave, or is giving, the container on every network."""
        found = set()
        for kind in ("attachments", "intents"):
            try:
                networks = os.listdir(self.store.path(kind))
            except FileNotFoundError:
                continue
            for network in networks:
                found.update(os.path.basename(path)[len(container_id) + 1:-len(".json")]
                             for path in self.store.records(self.store.path(kind, network),
                                                            prefix=f"{container_id}@"))
        return found

    def record_path(self, attachment: dict) -> str:
        return self.attachment_path(attachment["networkName"], attachment["containerId"],
                                    attachment["ifName"])


def same_netns(netns: str) -> bool:
    """Whether netns (a /proc/PID/ns/net path) is circuit's own network namespace; a process
    that is gone shares nothing."""
    try:
        theirs, mine = os.stat(netns), os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino)


def as_attachment(record: dict) -> extensions.Attachment:
    """An attachment record as extensions see it."""
    meta = record["circuit"]
    return extensions.Attachment(record["networkName"], record["containerId"], record["ifName"],
                                 meta["pid"], meta["start_time"], record["result"] or {},
                                 tuple(meta.get("aliases", ())))


def listed(attachment: dict) -> dict:
    """The part of an attachment record that `network list` shows."""
    return {"containerId": attachment["containerId"], "ifName": attachment["ifName"],
            "circuit": attachment["circuit"], "ips": cni.result_ips(attachment["result"]),
            "ports": runtime.describe_ports(
                (attachment.get("capabilityArgs") or {}).get("portMappings") or [])}


def attachment_netns(attachment: dict) -> str:
    """The netns of an attachment's container while it runs, else "" (also when a record
    names a process in circuit's own netns: DEL must never reach the host's interfaces)."""
    meta = attachment["circuit"]
    proc = Process(meta["pid"], meta["start_time"])
    if proc.alive() and same_netns(proc.netns):
        return ""
    return proc.netns if proc.alive() else ""
