"""CNI networks: create (from a file or flags), define, delete, prune, and what a deleted
network leaves (bridges, host-local's directories). Attaching: attach.py; detaching, repairs
and gc: detach.py; paths and reads: stored.py; records and their schemas: records.py; the
intents journal that makes a crash repairable: intents.py (state layout: docs/architecture.md).
"""

import contextlib
import os

from circuit_common import extensions
from circuit_common.config import read_small_file
from circuit_common.errors import CircuitError, Conflict, InvalidInput, NotFound, StateCorrupt
from circuit_common.proc import interfaces
from circuit_common.store import Listing

from . import cni
from .attach import Attach
from .detach import unrepaired
from .records import check_network, container_name
from .stored import as_attachment, now


class Networks(Attach):
    """The networks of one state store: their definitions, and (Attach, Detach, Stored) the
    lifecycle of their attachments."""

    def create(self, source: str, name: str | None = None) -> tuple[dict, bool]:
        """Store a validated network from a .conf/.conflist, refused as one from flags is when
        a subnet overlaps; an identical re-create is a no-op. The record, and whether it is
        new."""
        from .isolation import check_config

        netconf = cni.load_netconf(read_small_file(source, "network config"), source, name)
        try:
            check_config(netconf)
        except ValueError as e:
            raise InvalidInput(f"{source}: {e}") from None
        return self.define(netconf, str(source), check_overlap=True)

    def create_from_flags(self, flags) -> tuple[dict, bool]:
        """Store the network the flags describe (spec.conflist), refused when a subnet overlaps
        another network's or a route of circuit's netns; an identical re-create is a no-op.
        Subnets the flags leave out are picked under the store's lock (spec.pick_subnets), so
        concurrent creates never pick the same. The record, and whether it is new."""
        from . import spec

        requested = spec.requested_overlay(flags)
        if requested and not self.store.shared:
            self.store.place_overlay(requested, [])  # refused before any plugin is asked
        # with shared state the record is every host's: each adds its own IPAM directory
        ipam_dir = None if self.store.shared else self.ipam_dir()
        if not flags.missing_families():
            netconf = spec.conflist(flags, self.plugins, ipam_dir)
            return self.define(netconf, "flags", check_overlap=True, overlay=requested)
        with self.store.lock_all():
            existing = self.store.read(self.network_path(flags.name), check=check_network)
            others = [n["config"] for n in self.all().records if n["name"] != flags.name]
            flags.subnets += spec.pick_subnets(flags, existing and existing["config"], others)
            netconf = spec.conflist(flags, self.plugins, ipam_dir)
            if existing is None or not spec.same_network(existing, netconf):
                self.check_new(netconf)
            return self.write_network(netconf, "flags", True, requested)

    def define(self, netconf: dict, source: str, check_overlap: bool = False,
               overlay: dict | None = None) -> tuple[dict, bool]:
        """Store a network record for netconf, or return the identical one stored; and whether
        it is new. With check_overlap the check and the write hold every lock (no overlapping
        twin can slip in between; with shared state, on every host), and so does the state
        backend's placing of a cluster network (overlay: as requested,
        spec.requested_overlay)."""
        existing = self.store.read(self.network_path(netconf["name"]), check=check_network)
        if existing is not None and (existing["config"] == netconf
                                     or same_network(existing, netconf)):
            return existing, False  # every start of a hooked container comes here: keep it cheap
        self.check_new(netconf)
        lock = self.store.lock_all() if check_overlap else self.store.lock("network",
                                                                           netconf["name"])
        with lock:
            return self.write_network(netconf, source, check_overlap, overlay)

    def check_new(self, netconf: dict) -> None:
        """What a network not stored yet must pass: its plugins, and check_usable."""
        self.check_plugins(netconf)
        from .spec import check_usable, interfaces_here

        check_usable(netconf, interfaces_here())

    def write_network(self, netconf: dict, source: str, check_overlap: bool,
                      overlay: dict | None) -> tuple[dict, bool]:
        """define's part under its lock: the record written, unless one is stored (the same:
        returned; another config: Conflict)."""
        path = self.network_path(netconf["name"])
        existing = self.store.read(path, check=check_network)
        if existing is not None:
            if not same_network(existing, netconf):
                raise Conflict(f"network {netconf['name']!r} exists with a different config; "
                               "delete it first or choose another --name")
            return existing, False
        others = self.all().records if check_overlap or overlay else []
        if check_overlap:
            from .spec import check_overlap as refuse_overlap

            refuse_overlap(netconf, [n["config"] for n in others], source)
        record = {"name": netconf["name"], "config": netconf, "source": source,
                  "created": now(), "bridges": new_bridges(netconf)}
        if overlay:
            record["overlay"] = self.store.place_overlay(overlay, others)
        self.isolate(netconf, [netconf])  # refused by nft: nothing stored
        self.store.write(path, record)
        return record, True

    def isolate(self, changed: dict, coming: list[dict] = (), lock: bool = False) -> None:
        """Rebuild table inet circuit_isolation for the stored networks and those coming, when
        network changed (coming or gone) or a stored one is isolated (or the table is to go).
        Under the store's lock_all (the caller's, or taken here with lock), so the networks
        read are those the table gets: two deletes at once leave neither one's rules."""
        from . import isolation

        def netconfs():
            return [n["config"] for n in self.all().records
                    if n["name"] != changed["name"]] + list(coming)

        if not any(isolation.isolated(n) for n in [changed, *netconfs()]):
            return
        with self.store.lock_all() if lock else contextlib.nullcontext():
            isolation.sync(netconfs())

    def check_plugins(self, netconf: dict) -> None:
        """Every plugin of the chain exists and supports the config's cniVersion."""
        version = netconf["cniVersion"]
        for kind in dict.fromkeys(p["type"] for p in netconf["plugins"]):
            supported = self.plugins.supported_versions(kind)
            if supported and (version or "0.1.0") not in supported:
                raise InvalidInput(f"plugin {kind} does not support cniVersion {version}; "
                                   f"it supports {', '.join(supported)}")

    def delete(self, name: str, force: bool = False) -> list[dict]:
        """Remove a network; with force, disconnect its containers first (and remove the
        intents left malformed), then, without the lock, tell the extensions that marked it
        (released: their markers are gone by then). Returns those."""
        told = []
        with self.network_lock(name):
            network = self.get(name)
            _, failed = self.repair(network)  # a half-done attach is undone, not left behind
            if failed:
                raise unrepaired(name, failed)
            self.journal.refuse_busy(name)
            attached = self.attachments(name)
            if attached.errors:
                raise StateCorrupt(attached.errors[0])
            if attached.records and not force:
                raise Conflict(in_use(name, attached.records))
            malformed = self.journal.listing(name).errors
            if malformed and not force:
                raise StateCorrupt(f"{malformed[0]}, or delete the network with --force")
            elsewhere = self.store.hosts_using(name)
            if elsewhere:
                raise Conflict(f"network {name} is in use on host(s) {', '.join(elsewhere)}; "
                               "disconnect the containers there first")
            for attachment in attached.records:
                self._detach(network, attachment)
            for extension in extensions.markers(self.store, name):
                module = extensions.load(self.store, name, extension)
                if hasattr(module, "network_deleted"):
                    module.network_deleted(self.ctx, name)
                if hasattr(module, "released"):
                    told.append(module)
                extensions.unmark(self.store, name, extension)
            with contextlib.suppress(FileNotFoundError):  # a cache: before the record goes
                os.unlink(self.listing_cache(name))
            self.store.remove(self.network_path(name))
            self.store.network_deleted(network)
            if malformed:
                for path in self.store.records(self.store.path("intents", name)):
                    self.store.remove(path)
            self.remove_leftovers(network)
        self.isolate(network["config"], lock=True)
        self.store.drop_lock("network", name)
        for module in told:
            for attachment in attached.records:
                if attachment.get("result") is not None:
                    module.released(self.ctx, as_attachment(attachment))
        return attached.records

    def remove_leftovers(self, network: dict) -> None:
        """After a network's record went: the bridges circuit's plugins created for it that no
        other network names and nothing is plugged into, host-local's directories for it, its
        process index, and its empty state directories."""
        from .link import delete_unused_bridge

        name = network["name"]
        in_use = {b for n in self.all().records for b in bridges(n["config"])}
        for bridge in network.get("bridges") or []:
            if bridge not in in_use and bridge in bridges(network["config"]):
                try:
                    delete_unused_bridge(bridge)
                except OSError as e:
                    raise CircuitError(f"network {name} deleted, but its bridge {bridge} "
                                       f"stays: {e.strerror}") from None
        for directory in ipam_dirs(network):
            remove_ipam_dir(directory)
        with contextlib.suppress(FileNotFoundError):  # left by kills: every record is gone
            for entry in os.listdir(self.process_dir(name)):
                os.unlink(os.path.join(self.process_dir(name), entry))
        for directory in (self.attachment_dir(name), self.store.path("intents", name),
                          self.process_dir(name), extensions.marker_dir(self.store, name)):
            with contextlib.suppress(OSError):  # absent, or not empty
                os.rmdir(directory)

    def unused(self) -> Listing:
        """The names of the networks without attachments; a network or attachment record that
        cannot be read is an error (its network is not known to be unused)."""
        listing = self.all()
        names, errors = [], list(listing.errors)
        for network in listing.records:
            attached = self.attachments(network["name"])
            errors.extend(attached.errors)
            if not attached.records and not attached.errors:
                names.append(network["name"])
        return Listing(names, errors)

    def prune(self, names: list[str]) -> list[str]:
        """Delete these networks unless in use by now; the names of those deleted."""
        pruned = []
        for name in names:
            with contextlib.suppress(Conflict, NotFound):  # in use, or deleted meanwhile
                self.delete(name)
                pruned.append(name)
        return pruned


HOST_LOCAL_DEFAULT_DIR = "/var/lib/cni/networks"


def ipam_dirs(network: dict) -> list[str]:
    """The directories where host-local keeps a network's reservations (dataDir/<name>)."""
    return sorted({os.path.join(p["ipam"].get("dataDir") or HOST_LOCAL_DEFAULT_DIR,
                                network["name"])
                   for p in network["config"]["plugins"]
                   if isinstance(p.get("ipam"), dict) and p["ipam"].get("type") == "host-local"
                   and isinstance(p["ipam"].get("dataDir") or "", str)})


def remove_ipam_dir(directory: str) -> None:
    """Remove host-local's directory of a deleted network when it holds nothing but what
    host-local writes (reservations named by address, last_reserved_ip.N, lock): a dataDir
    that points elsewhere never loses a file."""
    import ipaddress

    try:
        names = os.listdir(directory)
    except OSError:  # absent, or not a directory
        return
    for name in names:
        if name != "lock" and not name.startswith("last_reserved_ip."):
            try:
                ipaddress.ip_address(name.replace("_", ":"))
            except ValueError:
                return
        if not os.path.isfile(os.path.join(directory, name)) \
                or os.path.islink(os.path.join(directory, name)):
            return
    with contextlib.suppress(OSError):
        for name in names:
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


def bridges(netconf: dict) -> list[str]:
    """The bridges a config's bridge plugins use (the plugin's default: cni0)."""
    return [p.get("bridge") or "cni0" for p in netconf["plugins"] if p.get("type") == "bridge"]


def new_bridges(netconf: dict) -> list[str]:
    """The bridges of a config that do not exist yet in circuit's netns: its plugins will
    create them for this network."""
    present = interfaces(os.getpid())
    return [b for b in bridges(netconf) if b not in present]


def in_use(name: str, records: list[dict]) -> str:
    """Why network name cannot be deleted: its containers, told apart by running or exited."""
    gone = [not as_attachment(r).running() for r in records]
    exited = [container_name(r["circuit"]) for r, g in zip(records, gone, strict=True) if g]
    running = [container_name(r["circuit"]) for r, g in zip(records, gone, strict=True)
               if not g]
    if not running:
        return (f"network {name} still holds the attachments of {len(exited)} exited "
                f"container(s): {', '.join(exited)}; release them with `circuit network gc`, "
                "or use --force")
    also = f" (and {len(exited)} exited: `circuit network gc` releases them)" if exited else ""
    return (f"network {name} is in use by {len(running)} container(s): {', '.join(running)}"
            f"{also}; disconnect them or use --force")


def same_network(stored: dict, netconf: dict) -> bool:
    """spec.same_network, imported only for a config that differs from the stored one."""
    from .spec import same_network

    return same_network(stored, netconf)
