"""A network policy's requests for a fresh attachment, encoded by pyroute2 when the policy is
saved (`qos set`, `circuit restore`, or the first attach after a change) and kept in this
host's cache: the hook stamps them with the attachment's device indexes and sends them without
loading pyroute2 (≈ 60 ms less a start).

    cache/qos-plans/<network>.json
        {"tag": {"pyroute2": "0.9.7", "layout": STAMPS}, "policy": <the network's>,
         "delay": bool, "make_ifb": TEMPLATE, "delete_ifb": TEMPLATE,
         "requests": [{"template": TEMPLATE, "values": {SLOT: ROLE}, "ignore": [ERRNO]}]}

The plan is this host's own (circuit_netlink.kept): never in qos/<network>.json, a shared
record that a cluster keeps in etcd, which holds the policy only. TEMPLATE is
`circuit_netlink.Template.saved()`; a ROLE names what a slot gets: the veth's or the IFB's
index, or the IFB's name. The plan is recorded from what tc.setup_shaping (for no policy,
tc.teardown_shaping) queues for made-up devices, so it holds the same requests as the pyroute2
path, and Template checks each slot when the plan is built. A plan made for another policy, by
another pyroute2 version or by other layout code is not used: the pyroute2 path runs instead,
and the plan is encoded again.
"""

import errno
import os
import struct
from collections import namedtuple

from circuit_common.errors import NotFound
from circuit_netlink import NETLINK_ROUTE, Batch, NetlinkError, Template
from circuit_netlink.kept import Kept

from . import devices, shape
from .refused import explain

VETH, VETH_INDEX, IFB_INDEX = "vethplan0", 0x7FFF0001, 0x7FFF0002  # made-up devices
IFB = devices.ifb_name(VETH)
ROLES = {struct.pack("=i", VETH_INDEX): "veth_index", struct.pack("=i", IFB_INDEX): "ifb_index",
         IFB.encode() + b"\0": "ifb_name"}
HERE = os.path.dirname(os.path.abspath(__file__))
LAYOUT = tuple(os.path.join(HERE, name) for name in ("plan.py", "tc.py"))  # decide its bytes

# A kept plan made ready to send: Templates restored, requests as (template, roles, ignore).
Plan = namedtuple("Plan", "rate delay make_ifb delete_ifb requests")


def kept_at(store, network: str):
    """Where this host keeps network's plan (circuit_netlink.kept.Kept)."""
    return Kept(store, os.path.join("qos-plans", f"{network}.json"), LAYOUT)


class _Recorder:
    """Stands in for Links' Batch while a plan is built: keeps what is queued, sends nothing."""

    def __init__(self):
        self.queued = []

    def add_copy(self, template, values: dict[str, bytes], ignore: tuple[int, ...] = ()) -> None:
        self.queued.append((template, values, ignore))

    def close(self) -> None:
        pass


def build(policy: dict | None) -> dict:
    """The plan of policy (None: unshaped), encoded by pyroute2."""
    from . import tc  # pyroute2 (≈ 60 ms): only to encode, not on the hook's path

    recorder = _Recorder()
    with tc.Links(recorder) as links:
        links.by_name = {VETH: (VETH_INDEX, "veth"), IFB: (IFB_INDEX, "ifb")}
        if policy is None:
            tc.teardown_shaping(links, VETH)
        else:
            tc.setup_shaping(links, VETH, shape.of(policy))
        make_ifb, _ = links.link_request(tc.RTM_NEWLINK, IFB, "ifb")
        delete_ifb, _ = links.link_request(tc.RTM_DELLINK, IFB)
    return {"policy": policy, "delay": bool(policy and policy.get("delay")),
            "make_ifb": make_ifb.saved(), "delete_ifb": delete_ifb.saved(),
            "requests": [{"template": template.saved(),
                          "values": {slot: ROLES[value] for slot, value in values.items()},
                          "ignore": list(ignore)}
                         for template, values, ignore in recorder.queued]}


def ready(store, network: str, policy: dict | None) -> Plan | None:
    """network's kept plan, ready to send, if the installed code made it for policy (the
    network's); else None."""
    return usable(kept_at(store, network).load(), policy)


def usable(stored: dict | None, policy: dict | None) -> Plan | None:
    """stored (a kept plan) ready to send, if it was made for policy and every request in it
    can only touch the attachment's own devices; else None."""
    if not isinstance(stored, dict) or stored.get("policy") != policy:
        return None
    try:
        requests = [(Template.restored(r["template"], REQUEST_TYPES), dict(r["values"]),
                     tuple(int(code) for code in r["ignore"])) for r in stored["requests"]]
        make_ifb = Template.restored(stored["make_ifb"], (RTM_NEWLINK,))
        delete_ifb = Template.restored(stored["delete_ifb"], (RTM_DELLINK,))
        if not all(map(aims_at_the_attachment, [(make_ifb, {"name": "ifb_name"}, ()),
                                                (delete_ifb, {"name": "ifb_name"}, ()),
                                                *requests])):
            return None
        return Plan(bool(policy and policy.get("rate")), bool(stored["delay"]), make_ifb,
                    delete_ifb, requests)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def keep(store, network: str, policy: dict | None) -> None:
    """Keep the plan of network's policy in this host's cache, encoded now unless the one kept
    is still ready."""
    if ready(store, network, policy) is None:
        kept_at(store, network).keep(build(policy))


def forget(store, network: str) -> None:
    """Remove network's kept plan."""
    kept_at(store, network).drop()


def aims_at_the_attachment(request: tuple) -> bool:
    """Whether a stored request can only touch the attachment's own devices: a tc request
    whose device index is stamped with its veth's or IFB's, or a link request by the IFB's
    name alone (device index 0); every role the size of what is stamped there."""
    template, roles, _ = request
    if not roles or not all(role in ROLE_SIZES and template.slots.get(slot, (0, -1))[1]
                            == ROLE_SIZES[role] for slot, role in roles.items()):
        return False
    if template.kind in (RTM_NEWLINK, RTM_DELLINK):
        return set(roles.values()) == {"ifb_name"} and template.field(DEVICE_INDEX) == 0
    return template.slots.get("index") == (DEVICE_INDEX, 4) \
        and roles["index"] in ("veth_index", "ifb_index")


# The requests a stored plan may hold, and what may be stamped into them: a plan read back from
# the state directory can ask the kernel nothing else (pyroute2's numbers, which the plan's
# path does not import; a unit test compares them).
RTM_NEWLINK, RTM_DELLINK = 16, 17
# RTM_NEWQDISC, RTM_DELQDISC, RTM_NEWTCLASS, RTM_NEWTFILTER, and the delete of a leftover IFB
REQUEST_TYPES = (36, 37, 40, 44, RTM_DELLINK)
DEVICE_INDEX = 20  # where ifinfomsg and tcmsg hold the device's index (after nlmsghdr)
ROLE_SIZES = {"veth_index": 4, "ifb_index": 4, "ifb_name": len(devices.ifb_name("x")) + 1}


def values(veth_index: int, ifb: str, ifb_index: int | None) -> dict[str, bytes]:
    """What each role stands for on one attachment; the IFB's roles only while it exists."""
    found = {"veth_index": struct.pack("=i", veth_index)}
    if ifb_index is not None:
        found |= {"ifb_index": struct.pack("=i", ifb_index), "ifb_name": ifb.encode() + b"\0"}
    return found


def queue(plan: Plan, batch, found: dict[str, bytes]) -> None:
    """Queue plan's requests stamped with found (from values()): those whose roles it has."""
    for template, roles, ignore in plan.requests:
        if all(role in found for role in roles.values()):
            batch.add_copy(template, {slot: found[role] for slot, role in roles.items()}, ignore)


def shape_fresh(plan: Plan, veth: str) -> None:
    """Shape the new attachment whose host-side veth is veth as the pyroute2 path would: make
    its IFB device (for a rate), then send the requests; those naming the IFB only while it
    exists (without a rate: the delete of a leftover IFB)."""
    veth_index = devices.index(veth)
    if veth_index is None:
        raise NotFound(f"interface {veth} does not exist")
    ifb = devices.ifb_name(veth)
    with Batch(NETLINK_ROUTE) as batch:
        if plan.rate and devices.index(ifb) is None:
            batch.add_copy(plan.make_ifb, {"name": ifb.encode() + b"\0"})
            _send(batch, delay=False)
        queue(plan, batch, values(veth_index, ifb, devices.index(ifb)))
        _send(batch, plan.delay)


def delete_ifbs(plan: Plan, names: list[str]) -> None:
    """Delete the IFB devices that shape names, those there are."""
    with Batch(NETLINK_ROUTE) as batch:
        for ifb in map(devices.ifb_name, names):
            if devices.driver(ifb) == "ifb":
                batch.add_copy(plan.delete_ifb, {"name": ifb.encode() + b"\0"},
                               (errno.ENODEV,))
        _send(batch, delay=False)


def _send(batch, delay: bool) -> None:
    try:
        batch.send()
    except NetlinkError as e:
        raise explain(e, delay) from None
