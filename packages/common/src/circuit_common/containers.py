"""Containers by name, as any tool may look them up: the running container a runc id, a
connect --name/--alias or a PID names, and its addresses on each network, read from
circuit-net's attachment records (attachments/<network>/<container>@<ifname>.json) without
importing circuit-net (tools above it, as circuit-lb, share this lookup)."""

import contextlib
import os
from collections import namedtuple

from .errors import StateCorrupt
from .proc import Process
from .validate import IFNAME_RE, NAME_RE


class Address(namedtuple("Address", "network container_id ifname ip pid start_time")):
    """One address a running container has on one network (ip without its prefix)."""

    __slots__ = ()


def addresses(store, name: str) -> list[Address]:
    """The addresses of the running container that name names: its runc id, the target it
    was connected by (a runc id or PID), or a name connect gave it; and those of the same
    process connected under its other name (a PID and its runc id are one container)."""
    records = []
    try:
        networks = sorted(os.listdir(store.path("attachments")))
    except FileNotFoundError:
        return []
    for network in networks:
        for path in store.records(store.path("attachments", network)):
            with contextlib.suppress(StateCorrupt):  # `circuit network list` reports it
                record = store.read(path)
                if record is not None:
                    records.append((network, record))
    found, processes = [], set()
    for _, record in records:
        # a malformed record is skipped, as unreadable ones are
        with contextlib.suppress(KeyError, TypeError, AttributeError):
            meta = record["circuit"]
            if _names(record, name) and Process(meta["pid"], meta["start_time"]).alive():
                processes.add((meta["pid"], meta["start_time"]))
    for network, record in records:
        with contextlib.suppress(KeyError, TypeError, AttributeError):
            meta = record["circuit"]
            if (meta["pid"], meta["start_time"]) not in processes:
                continue
            for ip in (record.get("result") or {}).get("ips") or []:
                if isinstance(ip, dict) and isinstance(ip.get("address"), str):
                    found.append(Address(network, record["containerId"], record["ifName"],
                                         ip["address"].split("/")[0], meta["pid"],
                                         meta["start_time"]))
    return found


def _names(record: dict, name: str) -> bool:
    meta = record.get("circuit") if isinstance(record.get("circuit"), dict) else {}
    return name in (record.get("containerId"), meta.get("target"), str(meta.get("pid"))) \
        or name in (meta.get("aliases") or ())


def attached(store, network: str, container_id: str, ifname: str) -> bool:
    """Whether that attachment is still recorded on this host (its record file is there); a
    name that no attachment could have counts as attached (nothing to tell)."""
    if not all(isinstance(v, str) and NAME_RE.fullmatch(v) for v in (network, container_id)) \
            or not isinstance(ifname, str) or not IFNAME_RE.fullmatch(ifname):
        return True
    return os.path.exists(store.path("attachments", network, f"{container_id}@{ifname}.json"))
