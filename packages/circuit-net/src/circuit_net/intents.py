"""The intents journal: what an attach or detach set out to do, written before any plugin
runs and removed when it is done, so that what a killed circuit left half done is found and
finished (docs/architecture.md, "Failure model").

    intents/<network>/<cid>@<ifname>.json   {"op": "add"|"del", "owner": {pid, start_time},
                                            "attachment": <record>, "plugin": the last started}
"""

import contextlib
import os
from functools import cached_property

from circuit_common.errors import Conflict, EnvironmentFault, PluginError
from circuit_common.proc import Process, process
from circuit_common.store import Listing, Store
from circuit_common.validate import check_name

from . import cni
from .records import check_intent


class Journal:
    """The intents of one state store."""

    def __init__(self, store: Store, settings):
        self.store = store
        self.settings = settings

    def path(self, attachment: dict) -> str:
        return os.path.join(self.store.path("intents", attachment["networkName"]),
                            f"{attachment['containerId']}@{attachment['ifName']}.json")

    @cached_property
    def owner(self) -> dict:
        """This process, as intents name their owner."""
        me = process(os.getpid())
        return {"pid": me.pid, "start_time": me.start_time}

    def write(self, op: str, attachment: dict) -> None:
        self.store.write(self.path(attachment), {
            "op": op, "owner": self.owner, "attachment": attachment})

    def recorder(self, op: str, attachment: dict):
        """Runtime.started for an attachment: each plugin, as it starts and before it reads
        its config (so before it can start anything of its own), is named in the intent, so
        that a repair ends what is left of its process group before the DEL."""
        path = self.path(attachment)

        def started(kind: str, pid: int, start_time: int) -> None:
            with contextlib.suppress(EnvironmentFault):  # a full disk: a rollback goes on
                self.store.write(path, {"op": op, "owner": self.owner, "attachment": attachment,
                                        "plugin": {"type": kind, "pid": pid,
                                                   "start_time": start_time}})
        return started

    def done(self, attachment: dict) -> None:
        self.store.remove(self.path(attachment))

    def listing(self, name: str) -> Listing:
        """The attaches and detaches under way on a network, or left half done."""
        return self.store.read_all(self.store.path("intents", check_name(name)),
                                   check=check_intent)

    def pending(self, name: str) -> list[dict]:
        """The intents of a network whose process died before finishing them."""
        return [i for i in self.listing(name).records if not owner_alive(i)]

    def refuse_busy(self, name: str, container_id: str | None = None) -> None:
        """Conflict while a live process attaches or detaches on the network (the container
        id's attachments only, when given)."""
        for intent in self.listing(name).records:
            meta = intent["attachment"]
            if owner_alive(intent) and container_id in (None, meta["containerId"]):
                doing = "attaching" if intent["op"] == "add" else "detaching"
                raise Conflict(f"circuit (PID {intent['owner']['pid']}) is {doing} container "
                               f"{meta['circuit']['target']} on network {name}; try again when "
                               "it is done")

    def end_plugin(self, intent: dict) -> None:
        """Kill and wait for what runs of the plugin a dead owner's intent names (its children
        outlive it: bridge's iptables could land after the repair's DEL, host-local's
        reservation after its release)."""
        plugin = intent.get("plugin")
        timeout = self.settings.plugin_timeout
        if plugin is not None and not cni.end_group(plugin["pid"], plugin["start_time"],
                                                    self.settings.lock_timeout, timeout):
            raise PluginError(f"plugin {plugin['type']} left running by a killed circuit "
                              f"(process group {plugin['pid']}) still runs {timeout:g}s after "
                              "SIGKILL; the next command tries again")


def owner_alive(intent: dict) -> bool:
    """Whether the process that wrote an intent still runs (so it is under way, not left)."""
    return Process(intent["owner"]["pid"], intent["owner"]["start_time"]).alive()
