"""Attaching: connect (and the hook's attach): what is refused before any plugin runs, the
intent, the ADD chain, the record and the extensions; CNI CHECK."""

import binascii
import contextlib
import os

from circuit_common.errors import CircuitError, Conflict, EnvironmentFault, InvalidInput, NotFound
from circuit_common.proc import in_host_netns, interfaces, kernel_thread
from circuit_common.validate import check_ifname

from . import cni, runtime
from .detach import Detach
from .intents import owner_alive
from .isolation import isolate_ports, no_icc
from .records import check_attachment, check_intent, container_name
from .stored import now, same_netns
from .target import Target

CONTAINER_LOCKS = 64


class Attach(Detach):
    """Attaching targets to one state store's networks."""

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
        found = under_way + (self.attached_otherwise(name, target) if unexplained else [])
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
                self.index_process(record)
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
