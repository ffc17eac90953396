"""The attachment lifecycle that tools extend, declared as entry points (group circuit.extensions).

A tool registers a module in its pyproject:
    [project.entry-points."circuit.extensions"]
    qos = "circuit_qos.extension"
and the module defines what it needs of:
    attached(ctx, attachment)      after an attachment is made; raising rolls the attach back
    detached(ctx, attachment)      before an attachment's record goes (under the network's
                                   lock: never take the store's exclusive lock here)
    released(ctx, attachment)      after an attachment's record went, no lock held (disconnect,
                                   the poststop hook, gc)
    network_created(ctx, network)  when a network is created with the extension (enable();
                                   network: its record)
    network_deleted(ctx, network)  when a network it marked is deleted (network: its name)
    restore(ctx) -> int            `circuit restore`, after a reboot; returns an exit code
    resync(ctx, before)            in a cluster: the tool's shared records changed on another
                                   host (before: {record name, as services/web.json: the
                                   record before, None when new}); make this host's kernel
                                   match them, printing nothing
circuit-net calls the first four only for networks that carry the extension's marker
(extensions/<network>/<name>.json, made by mark()): a network no tool extends costs one failed
directory listing, no entry-point scan and no import of the tool. A marker that names the
tool's module spares the scan (importlib.metadata, ≈ 20 ms) on the networks it extends.
"""

import contextlib
import os
import re
from collections import namedtuple

from .errors import NotFound
from .proc import Process

GROUP = "circuit.extensions"
MODULE_RE = re.compile(r"circuit_[a-z]+\.extension")  # what a marker may name


class Attachment(namedtuple("Attachment", "network container_id ifname pid start_time result "
                                         "aliases", defaults=((),))):
    """One container interface on one network, as circuit-net hands it to extensions (aliases:
    the names connect's --name/--alias or the hook's circuit.aliases gave it)."""

    __slots__ = ()

    @property
    def key(self) -> str:
        return f"{self.container_id}@{self.ifname}"

    @property
    def host_ifnames(self) -> list[str]:
        """The interfaces of the CNI result that live outside the container (veth, bridge)."""
        return [i["name"] for i in self.result.get("interfaces", []) if not i.get("sandbox")]

    def running(self) -> bool:
        """True while the very container process that was attached runs."""
        return Process(self.pid, self.start_time).alive()


def marker_dir(store, network: str) -> str:
    return store.path("extensions", network)


def markers(store, network: str) -> list[str]:
    """The names of the extensions that marked a network."""
    return [os.path.basename(p)[:-len(".json")] for p in store.records(marker_dir(store, network))]


def check_marker(record: dict, path: str) -> None:
    """A marker as mark() writes it, at extensions/<network>/<name>.json (ValueError: what is
    wrong)."""
    if f"{record.get('extension')}.json" != os.path.basename(path):
        raise ValueError("it names another extension than its file is for")
    if not isinstance(record.get("module", ""), str):
        raise ValueError("its module must be a name")


def mark(store, network: str, name: str, module: str) -> None:
    """Ask circuit-net to call extension name, module (its entry point's value), for the
    attachments of network."""
    path = os.path.join(marker_dir(store, network), f"{name}.json")
    wanted = {"extension": name, "module": module}
    found = store.read(path)
    if found is None or {k: found.get(k) for k in wanted} != wanted:
        store.write(path, wanted)


def unmark(store, network: str, name: str) -> None:
    store.remove(os.path.join(marker_dir(store, network), f"{name}.json"))
    with contextlib.suppress(OSError):  # other markers remain, or none was ever made
        os.rmdir(marker_dir(store, network))


def provided(name: str) -> str | None:
    """The module (its entry point's value) of the installed extension name, None when no
    installed tool provides it (an entry-point scan: not for the hot path)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=GROUP, name=name):
        return entry.value
    return None


def enable(ctx, network: dict, name: str) -> None:
    """Mark a new network (its record) for extension name and tell the extension
    (network_created); NotFound in one line when no installed tool provides it."""
    module = provided(name)
    if module is None or not MODULE_RE.fullmatch(module):
        raise NotFound(f"network {network['name']} asks for extension {name!r}, which no "
                       f"installed tool provides: install circuit-{name}")
    mark(ctx.store, network["name"], name, module)
    extension = load(ctx.store, network["name"], name)
    if hasattr(extension, "network_created"):
        extension.network_created(ctx, network)


def load(store, network: str, name: str):
    """The module of extension name: the one its marker names, else its entry point's; NotFound
    in one line when no installed tool provides it."""
    marker = os.path.join(marker_dir(store, network), f"{name}.json")
    module = (store.read(marker) or {}).get("module")
    if isinstance(module, str) and MODULE_RE.fullmatch(module):  # never any module at all
        import importlib

        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not f"{module}.".startswith(f"{e.name}."):
                raise  # the tool is there, but something it imports is not
    from importlib.metadata import entry_points

    for entry in entry_points(group=GROUP, name=name):
        return entry.load()
    raise NotFound(f"network {network} uses extension {name!r}, which no installed tool "
                   f"provides: install circuit-{name}, or remove {marker} to drop it")


def registered() -> list[tuple[str, object]]:
    """(name, module) of every installed extension, by name."""
    from importlib.metadata import entry_points

    return [(e.name, e.load()) for e in sorted(entry_points(group=GROUP), key=lambda e: e.name)]
