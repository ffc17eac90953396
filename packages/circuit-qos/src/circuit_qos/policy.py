"""QoS policies in the state store and their application to attachments.

State: qos/<network>.json  {"network": {policy} | null, "attachments": {"<cid>@<ifname>": {policy}}}
A policy is {"rate", "ceil" (bit/s), "delay" (µs), "buffer", "cbuffer" (bytes), "priority"}.
The network's policy applies to every attachment, present and future; an attachment's own
policy (--container / --interface) replaces it for that attachment. A network with a record
carries the qos extension marker, so circuit-net shapes its new attachments (extension.py).
The record holds policy only (in a cluster it is shared through etcd): the requests that shape
a new attachment are this host's plan, kept in its cache (plan.py). A "plan" an older circuit
stored in the record is never read, and goes with the record's next write.
"""

import contextlib

from circuit_common import extensions
from circuit_common.errors import Conflict, InvalidInput, NotFound
from circuit_common.extensions import Attachment
from circuit_common.store import Store
from circuit_net.networks import Networks
from circuit_net.records import container_name
from circuit_net.stored import as_attachment

from . import devices, plan
from .shape import FIELDS
from .shape import of as shape
from .units import check_burst

EMPTY = {"network": None, "attachments": {}}


def policy_path(store: Store, name: str) -> str:
    return store.path("qos", f"{name}.json")


def load(store: Store, name: str) -> dict:
    """The network's policies (EMPTY when it has none); StateCorrupt for a malformed record."""
    return policies(store.read(policy_path(store, name), check=check_record))


def policies(record: dict | None) -> dict:
    """The policies of a stored record (EMPTY for None), without anything else it holds."""
    if record is None:
        return EMPTY
    return {"network": record.get("network"), "attachments": record["attachments"]}


def check_record(record: dict, path: str) -> None:
    """A qos record as circuit writes it (ValueError: what is wrong)."""
    policies = [record.get("network"), *(record.get("attachments") or {}).values()]
    if not isinstance(record.get("attachments"), dict):
        raise ValueError("'attachments' must be an object")
    for policy in policies:
        if policy is not None and not (
                isinstance(policy, dict) and set(policy) <= set(FIELDS)
                and all(type(v) is int and v >= 0 for v in policy.values())):
            raise ValueError(f"a policy must map {', '.join(FIELDS)} to whole numbers, "
                             f"not {policy!r}")


def save(store: Store, name: str, record: dict, keep_empty: bool = False,
         if_changed: bool = False) -> None:
    """Write the network's policies, keep the plan of the network's in this host's cache, and
    mark the network for the qos extension while any. An empty record is removed, with its
    plan, unless keep_empty: a reset under way, which `circuit restore` finishes should circuit
    be killed before the kernel is unshaped. if_changed: only when that differs from the
    stored record, or the stored record holds more (`circuit restore` bringing older records
    up to date; in a cluster each write is an etcd transaction). A user's change always
    writes, so that a write over a change this host has not seen is caught."""
    if record["network"] is None and not record["attachments"] and not keep_empty:
        store.remove(policy_path(store, name))
        extensions.unmark(store, name, "qos")
        plan.forget(store, name)
    else:
        wanted = {"network": record["network"], "attachments": record["attachments"]}
        stored = store.read(policy_path(store, name), check=check_record) if if_changed \
            else None
        if stored is None or {k: v for k, v in stored.items() if k != "schema"} != wanted:
            store.write(policy_path(store, name), wanted)
        plan.keep(store, name, record["network"])
        extensions.mark(store, name, "qos", "circuit_qos.extension")


def merge(old: dict | None, changes: dict) -> dict:
    """A policy with changes applied over old; refused when it makes no sense.

    A value not given keeps its old value, but a rate comes with its ceiling and bursts: a rate
    without a ceiling is a flat rate (a lower rate that kept a higher ceiling would not limit
    anything), and a rate or ceiling without its burst gets HTB's default one (the old burst
    was sized for the old rate, or the network's for the network's)."""
    policy = {k: v for k, v in {**(old or {}), **changes}.items() if v is not None}
    if "rate" not in policy:
        for field, option in (("ceil", "--ceiling"), ("buffer", "--buffer"),
                              ("cbuffer", "--cbuffer"), ("priority", "--priority")):
            if field in changes:
                raise InvalidInput(f"{option} needs a --rate (now or set before): it shapes "
                                   "nothing alone")
    if "rate" in changes and "ceil" not in changes:
        policy["ceil"] = policy["rate"]
    for size, rates in (("buffer", ("rate",)), ("cbuffer", ("rate", "ceil"))):
        if size not in changes and any(rate in changes for rate in rates):
            policy.pop(size, None)
    if "rate" in policy and policy.get("ceil", policy["rate"]) < policy["rate"]:
        raise InvalidInput(f"ceiling ({policy['ceil'] // 1000} kbit/s) is below the rate "
                           f"({policy['rate'] // 1000} kbit/s); the ceiling is the maximum")
    for size, rate in (("buffer", "rate"), ("cbuffer", "ceil")):
        if size in policy and rate in policy:
            check_burst(policy[size], policy[rate], f"--{size}")
    if not 0 <= policy.get("priority", 0) <= 7:
        raise InvalidInput(f"priority must be 0..7, not {policy['priority']}")
    if not policy:
        raise InvalidInput("nothing to set: give --rate, --ceiling or --delay")
    return policy


def effective(record: dict, attachment: Attachment) -> dict | None:
    return record["attachments"].get(attachment.key) or record["network"]


def host_veth(attachment: Attachment) -> str:
    """The host-side veth of an attachment, from its cached CNI result."""
    veth = devices.host_veth(attachment.host_ifnames)
    if veth is not None:
        return veth
    raise InvalidInput(f"attachment {attachment.key} has no host-side veth: QoS needs a "
                       "veth-based network (bridge, ptp)")


def apply_all(links, attachments: list[Attachment], old: dict, new: dict) -> None:
    """Make every attachment's shaping match new, in one batch; if that fails, put back old.
    Refused first, with nothing changed, where another tool shapes a veth circuit would."""
    refuse_foreign(links, [(host_veth(a), a) for a in attachments if a.running()
                           and effective(new, a) and not effective(old, a)])
    try:
        apply(links, attachments, new, old)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            apply(links, attachments, old, new)
        raise


def apply(links, attachments: list[Attachment], record: dict, previous: dict) -> None:
    """Shape the attachments whose containers still run by record's policies (None:
    unshaped), from previous's; a container that has exited took its veth with it."""
    from . import tc  # pyroute2 (≈ 60 ms): only where tc is spoken

    planned = [(host_veth(a), effective(record, a), effective(previous, a))
               for a in attachments if a.running()]
    links.add_ifbs([tc.ifb_name(veth) for veth, policy, _ in planned
                    if policy and policy.get("rate")])
    for veth, policy, before in planned:
        if policy is None:
            tc.teardown_shaping(links, veth)
        else:
            tc.setup_shaping(links, veth, shape(policy), shape(before))
    links.commit(delay=any(policy and policy.get("delay") for _, policy, _ in planned))


def refuse_foreign(links, fresh: list[tuple[str, Attachment]]) -> None:
    """Conflict, before anything changes, when another tool already shapes a veth circuit is
    about to shape: circuit never takes over, nor removes, qdiscs it did not make."""
    from .tc import foreign_shaping  # pyroute2 (≈ 60 ms): only where tc is spoken

    if not fresh:
        return
    foreign = foreign_shaping(links, [veth for veth, _ in fresh])
    for veth, attachment in fresh:
        if veth in foreign:
            raise Conflict(f"container {attachment.container_id}'s interface {veth} is shaped "
                           f"by another tool ({foreign[veth]}; the CNI bandwidth plugin makes "
                           "tbf): remove that shaping first (take bandwidth out of the "
                           "network's chain), or leave this container out with --container")


def select(nets: Networks, name: str, container=None,
           interface: str | None = None) -> list[Attachment]:
    """The attachments of a network that --container / --interface name (all when neither)."""
    records = nets.attachments(name).records
    if container is not None:
        chosen = [as_attachment(r) for r in records if container.matches(r)]
        if not chosen:
            raise NotFound(f"container {container.label} is not connected to network {name}")
        return chosen
    attachments = [as_attachment(r) for r in records]
    if interface is not None:
        chosen = [a for a in attachments if a.running() and host_veth(a) == interface]
        if not chosen:
            raise NotFound(f"no attachment of network {name} has host interface {interface}")
        return chosen
    return attachments


def status(nets: Networks, links, name: str) -> dict:
    """One network's policy and its attachments' policies and live counters (tc.counters), as
    `qos show` prints them and `circuit metrics` exposes them."""
    from .tc import counters  # pyroute2 (≈ 60 ms): only where tc is spoken

    record = load(nets.store, name)
    rows = []
    for attached in nets.attachments(name).records:
        attachment, label = as_attachment(attached), attached["circuit"]["target"]
        veth = host_veth(attachment) if attachment.running() else None
        rows.append({"container_id": attachment.container_id, "target": label,
                     "name": container_name(attached["circuit"]),
                     "ifname": attachment.ifname, "interface": veth,
                     "policy": effective(record, attachment),
                     "own_policy": attachment.key in record["attachments"],
                     "counters": counters(links, veth) if veth else {}})
    return {"network": name, "policy": record["network"], "attachments": rows}
