"""Detaching: disconnect, the hook's detach of a container, the extensions told, repairs of
what a killed circuit left half done, gc (the failure model: docs/architecture.md)."""

import contextlib
import os
from collections.abc import Iterator

from circuit_common import extensions
from circuit_common.errors import (
    CircuitError,
    Conflict,
    EnvironmentFault,
    NotFound,
    PluginError,
    StateCorrupt,
)
from circuit_common.proc import Process

from . import cni
from .intents import owner_alive
from .records import check_attachment
from .stored import Stored, as_attachment, attachment_netns
from .target import Target


class Detach(Stored):
    """Detaching and repairing the attachments of one state store's networks."""

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

    def detach_container(self, container_id: str, hook: bool = False,
                         owner: Process | None = None) -> list[tuple[str, dict]]:
        """Release every attachment of a container id on every network (netns may be gone),
        the DELs without the network's lock (intents cover a crash). Found by file name: the
        cost does not grow with other containers. StateCorrupt after the others when a record
        could not be read. For the hook (owner: the starting container's process, None at
        poststop) an attachment whose process still runs and is not owner is another
        container's under the same id (another runc root or runtime): never released, and
        Conflict naming it (at a start before anything is released)."""
        released, errors = [], []
        listing = self.all()
        errors.extend(listing.errors)
        foreign = self.running_elsewhere(container_id, listing.records, owner) if hook else []
        if foreign and owner is not None:
            raise running_under_the_same_id(container_id, foreign, owner)
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
                    if attachment is not None and path not in foreign:
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
        if foreign:
            raise running_under_the_same_id(container_id, foreign)
        return released

    def running_elsewhere(self, container_id: str, networks: list[dict],
                          owner: Process | None) -> dict[str, tuple[str, dict]]:
        """The attachments of container_id whose process runs and is not owner, by record
        path, each with its network's name."""
        found = {}
        for name in (n["name"] for n in networks):
            for path in self.store.records(self.attachment_dir(name), prefix=f"{container_id}@"):
                with contextlib.suppress(StateCorrupt):  # the release pass reports it
                    attachment = self.store.read(path, check=check_attachment)
                    meta = attachment and attachment["circuit"]
                    proc = meta and Process(meta["pid"], meta["start_time"])
                    if proc and proc != owner and proc.alive():
                        found[path] = (name, attachment)
        return found

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
        self.unindex_process(attachment)
        self.journal.done(attachment)

    def reindex(self, name: str, kept: list[dict]) -> None:
        """gc's part of the process index (under the network's lock): an entry whose record is
        gone (a kill between the two) is removed, one missing for a record kept (a record
        older than the index) is written."""
        directory = self.process_dir(name)
        try:
            entries = os.listdir(directory)
        except FileNotFoundError:
            entries = []
        for entry in entries:
            stem = entry.partition("@")[2]
            if not entry.startswith(".") and not os.path.exists(
                    os.path.join(self.attachment_dir(name), f"{stem}.json")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, entry))
        for attachment in kept:
            self.index_process(attachment)

    def _notify(self, event: str, network: dict, attachment: dict) -> None:
        """Tell the extensions that marked the network (none: no import, no scan)."""
        for name in extensions.markers(self.store, network["name"]):
            module = extensions.load(self.store, network["name"], name)
            if hasattr(module, event):
                getattr(module, event)(self.ctx, as_attachment(attachment))

    # -- repairs: what a crash in the middle of an attach or detach leaves ---------------------

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
                self.reindex(name, kept)
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


def running_under_the_same_id(container_id: str, foreign: dict,
                              owner: Process | None = None) -> Conflict:
    """The hook's refusal to release another running container's attachments."""
    name, attachment = next(iter(foreign.values()))
    pid, ifname = attachment["circuit"]["pid"], attachment["ifName"]
    whose = (f"{ifname} on network {name} under id {container_id} belongs to running PID "
             f"{pid}, another container under the same id")
    if owner is not None:
        return Conflict(f"container {container_id} (PID {owner.pid}) not attached: {whose}; "
                        "give containers ids unique across runc roots and runtimes, or "
                        f"`circuit network disconnect {pid} {name}` first")
    return Conflict(f"container {container_id} stopped, but {whose}: left attached "
                    f"(`circuit network disconnect {pid} {name}` removes it)")
