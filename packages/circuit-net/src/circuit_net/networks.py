"""CNI networks and the lifecycle of their attachments: create, define, delete; connect,
disconnect, the hook's detach, repairs of what a killed circuit left half done, gc.

Records and their schemas: records.py; the intents journal that makes a crash repairable:
intents.py (state layout: docs/architecture.md).
"""

import binascii
import contextlib
import os
import time
from collections.abc import Iterator
from functools import cached_property

from circuit_common import extensions
from circuit_common.cli import Context
from circuit_common.config import DEFAULT_CNI_CACHE_DIR, read_small_file
from circuit_common.errors import (
    CircuitError,
    Conflict,
    EnvironmentFault,
    InvalidInput,
    NotFound,
    PluginError,
    StateCorrupt,
)
from circuit_common.proc import Process, in_host_netns, interfaces, kernel_thread
from circuit_common.store import Listing, Store
from circuit_common.validate import check_ifname, check_name

from . import cni, runtime
from .intents import Journal, owner_alive
from .isolation import isolate_ports, no_icc
from .records import check_attachment, check_intent, check_network, container_name
from .target import Target

CONTAINER_LOCKS = 64


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Networks:
    """The networks of one state store."""

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
        file name when the container id names them; by reading every record only when not (a
        PID whose process is gone, or one attached under its runc id)."""
        if target.container_id:
            mine = [record for path in self.store.records(
                        self.attachment_dir(name), prefix=f"{target.container_id}@")
                    if (record := self.store.read(path, check=check_attachment)) is not None]
            if mine:
                return mine + self.attached_otherwise(name, target)
        listing = self.attachments(name)
        mine = [a for a in listing.records if target.matches(a)]
        if not mine and listing.errors:
            raise StateCorrupt(listing.errors[0])
        if not mine:
            raise NotFound(f"container {target.label} is not connected to network {name}")
        return mine

    def attached_otherwise(self, name: str, target: Target) -> list[dict]:
        """The running target's attachments on a network under its other name (its PID when
        it is named by its runc id, or the other way round), found in the listing's cache."""
        if target.process is None:
            return []
        return [record for a in self.attachments_listed(name).records
                if a["containerId"] != target.container_id and target.matches(a)
                and (record := self.store.read(self.record_path({**a, "networkName": name}),
                                               check=check_attachment)) is not None]

    # -- networks ---------------------------------------------------------------------------

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
            if existing is None or existing["config"] != netconf:
                self.check_new(netconf)
            return self.write_network(netconf, "flags", True, requested)

    def ipam_dir(self) -> str | None:
        """host-local's dataDir for networks from flags: under the CNI cache dir when it is not
        libcni's default (where host-local keeps its reservations anyway)."""
        cache_dir = self.settings.cni_cache_dir
        return None if cache_dir == DEFAULT_CNI_CACHE_DIR else os.path.join(cache_dir, "networks")

    def define(self, netconf: dict, source: str, check_overlap: bool = False,
               overlay: dict | None = None) -> tuple[dict, bool]:
        """Store a network record for netconf, or return the identical one stored; and whether
        it is new. With check_overlap the check and the write hold every lock (no overlapping
        twin can slip in between; with shared state, on every host), and so does the state
        backend's placing of a cluster network (overlay: as requested,
        spec.requested_overlay)."""
        existing = self.store.read(self.network_path(netconf["name"]), check=check_network)
        if existing is not None and existing["config"] == netconf:
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
            if existing["config"] != netconf:
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

    def network_lock(self, name: str):
        """The network's lock, for a network there is (NotFound before any lock file is made
        for a name never created)."""
        if not os.path.exists(self.network_path(name)):
            self.get(name)
        return self.store.lock("network", name)

    def remove_leftovers(self, network: dict) -> None:
        """After a network's record went: the bridges circuit's plugins created for it that no
        other network names and nothing is plugged into, host-local's directories for it, and
        its empty state directories."""
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
        for directory in (self.attachment_dir(name), self.store.path("intents", name),
                          extensions.marker_dir(self.store, name)):
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

    # -- attachments ------------------------------------------------------------------------

    def connect(self, name: str, target: Target, ifname: str | None = None,
                ips: tuple[str, ...] = (), mac: str | None = None,
                args: tuple[tuple[str, str], ...] = (), caps: dict | None = None,
                only_declared: bool = False, aliases: tuple[str, ...] = (),
                host_netns: bool = False) -> dict:
        """ADD the target to a network through the whole chain and cache the result. caps are
        capability args; one that no plugin declares is refused, or with only_declared (the
        hook's caps for every network) left out. aliases: names of the container on the
        network, kept in the record for the extensions (DNS). host_netns: a target in the
        host's network namespace is meant (see check_connectable)."""
        with self.network_lock(name):
            network = self.get(name, lease=True)
            check_connectable(target, host_netns)  # before a repair can run any plugin
            if not only_declared:
                runtime.check_declared([network["config"]], caps or {})
            if ips:
                from .spec import check_requested_ips

                check_requested_ips(network["config"], list(ips))
                self.refuse_taken_ips(name, list(ips))
            self.repair(network)
            self.refuse_attached(name, target, ifname)
            # the container's lock: a connect to another network at the same time must see
            # this one's ifname taken (its intent) before it chooses its own. One of 64 slots,
            # so lock files do not pile up one per container ever connected
            slot = binascii.crc32(target.container_id.encode()) % CONTAINER_LOCKS
            with self.store.lock("container", str(slot)):
                record, rt = self._intend_attach(network, target, ifname, list(ips), mac,
                                                 list(args), caps or {}, aliases,
                                                 host_netns)
        return self._attach(network, record, rt, list(ips))

    def refuse_taken_ips(self, name: str, ips: list[str]) -> None:
        """Conflict when a requested address is another container's on the network (an
        attachment's result, or one under way), named, before any plugin runs."""
        import ipaddress  # only for --ip: the hook's path does without it

        wanted = {ipaddress.ip_interface(ip).ip for ip in ips}
        found = self.attachments_listed(name).records + [
            i["attachment"] for i in self.journal.listing(name).records if owner_alive(i)]
        for other in found:  # listed records carry "ips", intents a result (or none yet)
            addresses = other.get("ips") or cni.result_ips(other.get("result") or {})
            held = wanted & {ipaddress.ip_interface(a).ip for a in addresses}
            if held:
                raise Conflict(f"--ip {held.pop()} is taken on network {name}, by container "
                               f"{container_name(other['circuit'])}; give another address, or "
                               "leave --ip out")

    def peers_elsewhere(self, name: str) -> list[dict]:
        """A cluster network's attachments on other hosts, as this host last synced them."""
        return self.store.peer_attachments(name)

    def refuse_attached(self, name: str, target: Target,
                        ifname_wanted: str | None = None) -> None:
        """Conflict when the target's container id is attached to the network (unless
        ifname_wanted asks for another interface), or being attached or detached: found by
        file name, so the cost does not grow with the other containers on the network."""
        for state, directory in (("connected to", self.attachment_dir(name)),
                                 ("being connected to or disconnected from",
                                  self.store.path("intents", name))):
            for path in self.store.records(directory, prefix=f"{target.container_id}@"):
                record = self.store.read(path, check=check_intent if state.startswith("being")
                                         else check_attachment)  # StateCorrupt: a bad file
                ifname = os.path.basename(path)[len(target.container_id) + 1:-len(".json")]
                if state.startswith("being") and record is not None and owner_alive(record):
                    doing = "connecting" if record["op"] == "add" else "disconnecting"
                    raise Conflict(f"circuit (PID {record['owner']['pid']}) is {doing} container "
                                   f"{target.label} on network {name} (as {ifname}) right now; "
                                   "wait for it to finish, then retry if needed")
                if record is not None and not state.startswith("being") and ifname_wanted \
                        and ifname_wanted != ifname:
                    continue  # another interface on the same network, asked for by name
                raise Conflict(f"container {target.label} is already {state} network {name} "
                               f"(as {ifname}); disconnect it first, or give --ifname for a "
                               "second interface")

    def _intend_attach(self, network: dict, target: Target, ifname: str | None,
                       ips: list[str], mac: str | None, args: list[tuple[str, str]],
                       caps: dict, aliases: tuple[str, ...] = (),
                       host_netns: bool = False) -> tuple[dict, cni.Runtime]:
        """Check the target, choose its ifname and write the intent (under the network's and
        the container's locks): the attachment record without a result, and its runtime
        parameters."""
        netconf = network["config"]
        if not target.netns:
            raise NotFound(f"container {target.label} has exited")
        check_connectable(target, host_netns)
        present = interfaces(target.process.pid)
        ours = self.ifnames_of(target.container_id)
        if not ifname:
            self.refuse_other_name(network["name"], target, present - ours - {"lo"})
        taken = present | ours
        ifname = check_ifname(ifname) if ifname else first_free_ifname(taken)
        if ifname in taken:
            raise Conflict(f"container {target.label} already has an interface {ifname}; "
                           "choose another with --ifname")
        capability_args, extra_args = runtime.runtime_args(netconf, ips, mac, caps)
        rt = cni.Runtime(target.container_id, target.netns, ifname, args + extra_args,
                         capability_args)
        for plugin in netconf["plugins"]:  # a missing plugin fails before any intent is written
            self.plugins.executor.find_plugin(plugin["type"], self.plugins.cni_path)
        record = cni.cache_entry(netconf, rt, None)
        record["circuit"] = {"pid": target.process.pid, "start_time": target.process.start_time,
                             "target": target.label, "created": now()}
        if aliases:
            record["circuit"]["aliases"] = list(aliases)
        rt.started = self.journal.recorder("add", record)
        wanted = capability_args.get("portMappings") or []
        if not wanted:
            self.journal.write("add", record)
            return record, rt
        with self.store.lock("ports", "host"):  # one host: every network's published ports
            self.refuse_published(wanted, target)
            self.journal.write("add", record)
        return record, rt

    def refuse_other_name(self, name: str, target: Target, unexplained: set[str]) -> None:
        """Conflict when the target's container is attached to the network, or being attached,
        under its other name (PID or runc id: the same process). Intents under way are few;
        attachments are looked at only when the container has interfaces its own records do
        not explain (the hook's first connect of a container has none)."""
        under_way = [i["attachment"] for i in self.journal.listing(name).records
                     if owner_alive(i)]
        found = under_way + (self.attachments_listed(name).records if unexplained else [])
        for other in found:
            if other["containerId"] != target.container_id and target.matches(other):
                raise Conflict(f"container {target.label} is already connected to network "
                               f"{name} as {other['circuit']['target']} ({other['ifName']}); "
                               "a PID and its runc id are one container: disconnect it first, "
                               "or give --ifname for a second interface")

    def refuse_published(self, wanted: list[dict], target: Target) -> None:
        """Conflict when a host port in wanted is published already, by an attachment or one
        under way on any network (a host IP left out means every address)."""
        for kind, mappings in (("attachments", lambda r: r.get("capabilityArgs")),
                               ("intents", lambda r: r["attachment"].get("capabilityArgs"))):
            try:
                names = os.listdir(self.store.path(kind))
            except FileNotFoundError:
                continue
            for network in names:
                check = check_attachment if kind == "attachments" else check_intent
                for record in self.store.read_all(self.store.path(kind, network),
                                                  check=check).records:
                    if kind == "intents" and not owner_alive(record):
                        continue  # left by a killed circuit: the next repair undoes it
                    for taken in (mappings(record) or {}).get("portMappings") or []:
                        for mapping in wanted:
                            if runtime.same_host_port(mapping, taken):
                                owner = record.get("attachment", record)["circuit"]["target"]
                                raise Conflict(
                                    f"host port {mapping['hostPort']}/{mapping['protocol']} is "
                                    f"published already, for container {owner} on network "
                                    f"{network}; choose another for {target.label}")

    def _attach(self, network: dict, record: dict, rt: cni.Runtime, ips: list[str]) -> dict:
        """ADD without the network's lock (the plugins take their own, and containers starting
        together overlap as with plugins run directly), then under it the record and the
        extensions; the intent written before covers a crash at any point (docs/architecture.md,
        "Failure model")."""
        name = network["name"]
        try:
            record["result"] = cni.add_chain(self.plugins, network["config"], rt)
            if no_icc(network["config"]):
                isolate_ports(network["config"], record["result"])
            missing = unassigned(ips, cni.result_ips(record["result"]))
            if missing:
                raise InvalidInput(f"network {name} did not assign the requested IP "
                                   f"{missing[0]}; its IPAM must accept a requested address")
            with self.store.lock("network", name):
                self.get(name)  # not deleted meanwhile (delete waits for no intent under way)
                self.store.write(self.record_path(record), record)
                self.cni_cache.write(self.cache_path(record), record)
                self._notify("attached", network, record)
                self.journal.done(record)
        except BaseException:
            with self.store.lock("network", name):
                if record["result"] is None:  # add_chain deleted the chain already
                    with contextlib.suppress(CircuitError):  # what an ADD killed midway made
                        cni.release_masquerade(network["config"], rt, None)
                    self.journal.done(record)
                else:
                    self._detach(network, record, netns=rt.netns, best_effort=True)
            raise
        return record

    def disconnect(self, name: str, target: Target) -> list[dict]:
        """DEL every attachment of the target on a network, in reverse chain order; then,
        without the lock, the extensions' released."""
        gone = self._disconnect(name, target)
        self.notify_released([(name, attachment) for attachment in gone])
        return gone

    def notify_released(self, released: list[tuple[str, dict]]) -> None:
        """The extensions' released(ctx, attachment) for attachments whose records went,
        called holding no lock: a tool takes the store's exclusive lock there (lb drops a
        container's targets), which it must never do in detached, under the network's lock
        (docs/architecture.md, "Locking")."""
        for name, attachment in released:
            if attachment.get("result") is not None:
                self._notify("released", {"name": name}, attachment)

    def _disconnect(self, name: str, target: Target) -> list[dict]:
        with self.network_lock(name):
            network = self.get(name)
            repaired = [a for a in self.repair(network)[0] if target.matches(a)]
            self.journal.refuse_busy(name, target.container_id)
            try:
                mine = self.attachments_of(name, target)
            except NotFound:
                if repaired:  # the repair finished its interrupted detach (or undid an attach)
                    return repaired
                raise
            for attachment in mine:
                self._detach(network, attachment, netns=target.netns)
            return mine

    def release(self, name: str, record: dict) -> None:
        """Detach one attachment this process made, if it is still there (a hook's rollback:
        never an attachment another process made for the same container id since)."""
        with self.store.lock("network", name):
            stored = self.store.read(self.record_path(record), check=check_attachment)
            if stored is not None and stored["circuit"] == record["circuit"]:
                self._detach(self.get(name), stored, best_effort=True)

    def detach_container(self, container_id: str) -> list[tuple[str, dict]]:
        """Release every attachment of a container id on every network (netns may be gone),
        the DELs without the network's lock (intents cover a crash). Found by file name: the
        cost does not grow with other containers. StateCorrupt after the others when a record
        could not be read."""
        released, errors = [], []
        listing = self.all()
        errors.extend(listing.errors)
        for network in map(self.here, listing.records):
            name = network["name"]
            prefix = f"{container_id}@"
            if not any(self.store.records(self.attachment_dir(name), prefix=prefix)) \
                    and not self.journal.pending(name):
                continue
            with self.store.lock("network", name):
                self.repair(network)
                self.journal.refuse_busy(name, container_id)
                errors.extend(self.journal.listing(name).errors)
                mine = []
                for path in self.store.records(self.attachment_dir(name), prefix=prefix):
                    try:
                        attachment = self.store.read(path, check=check_attachment)
                    except StateCorrupt as e:
                        errors.append(str(e))
                        continue
                    if attachment is not None:
                        self.journal.write("del", attachment)
                        mine.append(attachment)
            for attachment in mine:
                self._release(network, attachment, attachment_netns(attachment))
            with self.store.lock("network", name):
                for attachment in mine:
                    self._forget(network, attachment)
                    released.append((name, attachment))
        self.notify_released(released)
        if errors:
            raise StateCorrupt(f"{errors[0]}" + (f" (and {len(errors) - 1} more)"
                                                 if len(errors) > 1 else ""))
        return released

    def _detach(self, network: dict, attachment: dict, netns: str | None = None,
                best_effort: bool = False) -> bool:
        """Intent, DEL with the cached result, extensions, record and intent gone. With
        best_effort a failed DEL is not raised: the record and the intent stay (the repair
        after this process tries again) and False is returned; and a rollback goes on when
        the disk is too full for its intent (the add intent covers it)."""
        try:
            self.journal.write("del", attachment)
        except EnvironmentFault:
            if not best_effort:
                raise
        if self._release(network, attachment, attachment_netns(attachment) if netns is None
                         else netns, best_effort) is not None:
            return False
        self._forget(network, attachment, best_effort)
        return True

    def _release(self, network: dict, attachment: dict, netns: str,
                 best_effort: bool = False) -> CircuitError | None:
        """DEL through the chain with the cached result, then the ipMasq chain and the rules
        jumping to it wherever they are left (netns or not: see cni.release_masquerade), even
        when the DEL failed. The error, when best_effort; else it is raised."""
        rt = cni.Runtime(attachment["containerId"], netns, attachment["ifName"],
                         [tuple(kv) for kv in attachment.get("cniArgs", [])],
                         attachment.get("capabilityArgs") or {},
                         self.journal.recorder("del", attachment))
        error = None
        try:
            cni.del_chain(self.plugins, network["config"], rt, attachment.get("result"))
        except CircuitError as e:
            error = e
        try:
            cni.release_masquerade(network["config"], rt, attachment.get("result"))
        except CircuitError as e:
            error = error or e
        if error is not None and not best_effort:
            raise error
        return error

    def _forget(self, network: dict, attachment: dict, best_effort: bool = False) -> None:
        """The extensions' detached, then the record, its libcni copy and the intent go."""
        try:
            if attachment.get("result") is not None:
                self._notify("detached", network, attachment)
        except Exception:
            if not best_effort:  # a rollback must not hide the error that caused it
                raise
        self.store.remove(self.record_path(attachment))
        self.cni_cache.remove(self.cache_path(attachment))
        self.journal.done(attachment)

    def _notify(self, event: str, network: dict, attachment: dict) -> None:
        """Tell the extensions that marked the network (none: no import, no scan)."""
        for name in extensions.markers(self.store, network["name"]):
            module = extensions.load(self.store, network["name"], name)
            if hasattr(module, event):
                getattr(module, event)(self.ctx, as_attachment(attachment))

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

    # -- repairs: what a crash in the middle of an attach or detach leaves ---------------------

    def record_path(self, attachment: dict) -> str:
        return self.attachment_path(attachment["networkName"], attachment["containerId"],
                                    attachment["ifName"])

    def repair(self, network: dict) -> tuple[list[dict], list[tuple[dict, CircuitError]]]:
        """Finish what a killed circuit left half done on a network (held under its lock):
        what runs of the plugin it ran is killed and waited for first; then an attach is
        undone, a detach completed (DEL is idempotent and needs no prevResult). The
        attachments repaired, and those whose repair failed with the error: their intent is
        kept, as found, for the next command."""
        repaired, failed = [], []
        for intent in self.journal.pending(network["name"]):
            attachment = intent["attachment"]
            # the record, when the attach got that far, holds the result that DEL needs
            attachment = self.store.read(self.record_path(attachment),
                                         check=check_attachment) or attachment
            try:
                self.journal.end_plugin(intent)
                intent = {k: v for k, v in intent.items() if k != "plugin"}
                self._detach(network, attachment)
            except CircuitError as e:
                self.store.write(self.journal.path(attachment), intent)
                failed.append((attachment, e))
            else:
                repaired.append(attachment)
        return repaired, failed

    def check(self, name: str, target: Target) -> list[dict]:
        """CNI CHECK of the target's attachments with their cached results."""
        network = self.get(name)
        netconf = network["config"]
        if not cni.at_least(netconf["cniVersion"], "0.4.0"):
            raise InvalidInput(f"CHECK needs cniVersion 0.4.0 or later; network {name} uses "
                               f"{netconf['cniVersion']}")
        mine = self.attachments_of(name, target)
        if netconf.get("disableCheck"):
            return mine
        for attachment in mine:
            rt = cni.Runtime(attachment["containerId"], target.netns, attachment["ifName"],
                             [tuple(kv) for kv in attachment.get("cniArgs", [])],
                             attachment.get("capabilityArgs") or {})
            cni.check_chain(self.plugins, netconf, rt, attachment["result"])
        return mine

    def gc(self) -> Iterator[tuple[str, dict]]:
        """Finish interrupted attaches and detaches, DEL attachments whose container is gone,
        GC for 1.1.0 networks. Yields what went; at the end the first failure to release
        (whose record and intent are kept for the next gc), else StateCorrupt for unreadable
        records (the others are still collected)."""
        self.store.sweep()
        self.cni_cache.sweep("results")
        listing = self.all()
        errors = list(listing.errors)
        failures = []
        for path in self.store.records(self.store.path("cache", "attachments")):
            if not os.path.exists(self.store.path("networks", os.path.basename(path))):
                with contextlib.suppress(FileNotFoundError):  # a delete killed before it
                    os.unlink(path)
        for network in map(self.here, listing.records):
            name = network["name"]
            with self.store.lock("network", name):
                repaired, failed = self.repair(network)
                for attachment in repaired:
                    yield name, attachment
                failures.extend((name, attachment, e) for attachment, e in failed)
                kept = [attachment for attachment, _ in failed]
                attached = self.attachments(name)
                errors.extend(attached.errors)
                intents = self.journal.listing(name)
                errors.extend(intents.errors)
                busy = {(i["attachment"]["containerId"], i["attachment"]["ifName"])
                        for i in intents.records if owner_alive(i)}
                for attachment in attached.records:
                    if (attachment["containerId"], attachment["ifName"]) in busy:
                        continue  # another circuit is detaching it right now
                    if attachment_netns(attachment):
                        kept.append(attachment)
                        continue
                    try:
                        self._detach(network, attachment, netns="")
                    except CircuitError as e:  # the record stays: the next gc tries again
                        self.journal.done(attachment)
                        failures.append((name, attachment, e))
                        kept.append(attachment)
                        continue
                    yield name, attachment
                if cni.at_least(network["config"]["cniVersion"], "1.1.0") \
                        and not network["config"].get("disableGC") and not attached.errors:
                    # an attach under way has no record yet: its address is not garbage
                    valid = [{"containerID": cid, "ifname": ifname} for cid, ifname in
                             {*((a["containerId"], a["ifName"]) for a in kept), *busy}]
                    cni.gc_chain(self.plugins, network["config"], valid)
        if failures:
            raise unrepaired(failures[0][0], [failure[1:] for failure in failures])
        if errors:
            raise StateCorrupt(f"{errors[0]}" + (f" (and {len(errors) - 1} more)"
                                                 if len(errors) > 1 else ""))


def unrepaired(network: str, failed: list[tuple[dict, CircuitError]]) -> CircuitError:
    """The error for attachments whose release failed and whose record or intent is kept:
    exit 7 when a plugin failed."""
    attachment, error = failed[0]
    kind = PluginError if isinstance(error, PluginError) else CircuitError
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    return kind(f"could not release {attachment['containerId']} {attachment['ifName']} from "
                f"network {network}: {error}; it is kept, and the next gc tries again{more}")


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


def same_netns(netns: str) -> bool:
    """Whether netns (a /proc/PID/ns/net path) is circuit's own network namespace; a process
    that is gone shares nothing."""
    try:
        theirs, mine = os.stat(netns), os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino)


def check_connectable(target: Target, host_netns: bool = False) -> None:
    """Refuse what is not a container with a netns of its own, before any plugin runs: a
    kernel thread, a process in circuit's own network namespace, or (unless host_netns) one
    in the host's, PID 1's as circuit sees it; their ethN and default route would land beside
    the host's own."""
    pid = target.process.pid
    try:
        os.stat(target.netns)
    except FileNotFoundError:
        raise NotFound(f"container {target.label} has exited") from None
    except OSError as e:  # PID 1 of a VM may hide its namespaces even from root
        raise EnvironmentFault(f"cannot look at the network namespace of container "
                               f"{target.label} ({target.netns}: {e.strerror}); give a "
                               "container's PID or runc id") from None
    if kernel_thread(pid):
        raise InvalidInput(f"PID {pid} is a kernel thread, not a container: give the PID of a "
                           "container's process or its runc id")
    if same_netns(target.netns):
        raise InvalidInput(f"container {target.label} is in circuit's own network namespace, "
                           "not one of its own: start it with a new network namespace (runc: "
                           "a 'network' entry in linux.namespaces)")
    if host_netns:
        return
    in_host = in_host_netns(pid)
    if in_host:
        raise InvalidInput(f"container {target.label} is in the host's network namespace "
                           "(PID 1's or the kernel's), not one of its own: start it with a "
                           "new network namespace, or give --host-netns to change the host's "
                           "own interfaces and routes")
    if in_host is None:
        raise EnvironmentFault(f"cannot tell whether container {target.label} is in the host's "
                               "network namespace: neither PID 1's nor the kernel's "
                               "(/proc/1/ns/net, /proc/2/ns/net) can be read; run circuit "
                               "where they can, or give --host-netns if you mean to change "
                               "that namespace")


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


def first_free_ifname(taken: set[str]) -> str:
    """The first ethN not in taken."""
    n = 0
    while f"eth{n}" in taken:
        n += 1
    return f"eth{n}"


def unassigned(requested: list[str], assigned: list[str]) -> list[str]:
    """The requested addresses (with or without a prefix) that a result did not assign."""
    if not requested:
        return []
    import ipaddress  # only for --ip: the hook's path does without it

    got = {ipaddress.ip_interface(a).ip for a in assigned}
    return [ip for ip in requested if ipaddress.ip_interface(ip).ip not in got]
