"""The schemas of circuit-net's records: each check(record, path) raises ValueError saying
what is wrong (Store.read turns it into StateCorrupt naming the file).

    networks/<name>.json                        the network's config list
    attachments/<network>/<cid>@<ifname>.json   libcni's cache entry (cniCacheV1) of one
                                                attachment, plus a "circuit" object (pid, ...)
    intents/<network>/<cid>@<ifname>.json       an attach or detach under way (intents.py)
"""

import os

from circuit_common.validate import DNS_NAME_RE, NAME_RE

from . import cni
from .isolation import check_config as check_isolation


def check_network(record: dict, path: str) -> None:
    """A network record as circuit wrote it, at networks/<name>.json (ValueError: what is
    wrong)."""
    if not isinstance(record.get("name"), str) or not isinstance(record.get("config"), dict):
        raise ValueError("it needs a 'name' and a 'config' object")
    cni.check_netconf(record["config"])
    check_isolation(record["config"])
    if record["config"]["name"] != record["name"]:
        raise ValueError("its config names another network")
    if os.path.basename(path) != f"{record['name']}.json":
        raise ValueError(f"it names network {record['name']!r}, not the one its file is for")


def check_attachment(record: dict, path: str) -> None:
    """An attachment record as circuit wrote it, with its CNI result, at
    attachments/<network>/<cid>@<ifname>.json (ValueError: what is wrong)."""
    check_attachment_fields(record)
    if record.get("result") is None:
        raise ValueError("it has no CNI result")
    expected = os.path.join(record["networkName"],
                            f"{record['containerId']}@{record['ifName']}.json")
    if not path.endswith(os.sep + expected):
        raise ValueError(f"it describes {expected}, not the file it is in")


def check_attachment_fields(record: dict) -> None:
    """The fields every attachment has, from the moment its intent is written."""
    for key in ("containerId", "ifName", "networkName"):
        if not isinstance(record.get(key), str) or not NAME_RE.fullmatch(record[key]):
            raise ValueError(f"{key} {record.get(key)!r} is not a plain name")
    meta = record.get("circuit")
    if not isinstance(meta, dict) or not all(
            type(meta.get(k)) is int and meta[k] >= 0 for k in ("pid", "start_time")):
        raise ValueError("its 'circuit' object needs a whole-number pid and start_time")
    aliases = meta.get("aliases", [])
    if not isinstance(aliases, list) or not all(
            isinstance(a, str) and DNS_NAME_RE.fullmatch(a) for a in aliases):
        raise ValueError("its aliases must be a list of host names")
    if not isinstance(record.get("cniArgs", []), list) \
            or not isinstance(record.get("capabilityArgs") or {}, dict):
        raise ValueError("cniArgs must be a list and capabilityArgs an object")
    if record.get("result") is not None:
        cni.check_result(record["result"])


def check_intent(record: dict, path: str) -> None:
    """An intent record: what an attach or detach set out to do, and who; at
    intents/<network>/<cid>@<ifname>.json."""
    if record.get("op") not in ("add", "del"):
        raise ValueError(f"op {record.get('op')!r} is neither add nor del")
    owner = record.get("owner")
    if not isinstance(owner, dict) or not all(type(owner.get(k)) is int
                                              for k in ("pid", "start_time")):
        raise ValueError("its owner needs a whole-number pid and start_time")
    plugin = record.get("plugin")
    if plugin is not None and not (
            isinstance(plugin, dict) and isinstance(plugin.get("type"), str)
            and NAME_RE.fullmatch(plugin["type"])
            and all(type(plugin.get(k)) is int for k in ("pid", "start_time"))
            and plugin["pid"] > 1):
        raise ValueError("its plugin needs a plain type, a pid above 1 and a start_time")
    attachment = record.get("attachment")
    check_attachment_fields(attachment)
    expected = os.path.join(attachment["networkName"],
                            f"{attachment['containerId']}@{attachment['ifName']}.json")
    if not path.endswith(os.sep + expected):
        raise ValueError(f"it describes {expected}, not the file it is in")


def container_name(meta: dict) -> str:
    """Who an attachment's "circuit" object names in tables: the runc id it was connected by,
    else the name connect gave it (--name, circuit.aliases), else its PID."""
    target = meta.get("target") or str(meta["pid"])
    if target.isdigit() and meta.get("aliases"):
        return meta["aliases"][0]
    return target
