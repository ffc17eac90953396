"""circuit-qos's tc requests are the bytes pyroute2's own tc API sends for the same change.

The reference is `IPBatch.tc`: IPRoute.tc's request compiler (handles, parents, the info word,
flags per command, each qdisc's plugin), encoding into a buffer instead of a socket. circuit
queues its requests on a Batch that is never sent, for a veth and its IFB device whose indexes
are made up: a second device's requests are Template copies, so the IFB's are checked too."""

import json
import struct

import pytest
from pyroute2 import IPBatch
from pyroute2.netlink.rtnl import TC_H_INGRESS, TC_H_ROOT

from circuit_netlink import NLM_F_ACK
from circuit_qos import plan, tc
from circuit_qos import policy as policy_module

VETH, VETH_INDEX, IFB_INDEX = "vethtest0", 7, 9
ETH_P_ALL = 0x0003


def normalized(message: bytes) -> bytes:
    """message without what differs between two senders by design: the sequence number and the
    port id (each socket counts its own; the kernel fills in the port), and NLM_F_ACK (pyroute2
    asks for an answer to every request, circuit's Batch only for the last one it sends)."""
    (flags,) = struct.unpack_from("=H", message, 6)
    return message[:6] + struct.pack("=H", flags & ~NLM_F_ACK) + bytes(8) + message[16:]


def circuit_requests(change) -> list[bytes]:
    """What change(links) queues, normalized; nothing is sent."""
    with tc.Links() as links:
        links.by_name = {VETH: (VETH_INDEX, "veth"), tc.ifb_name(VETH): (IFB_INDEX, "ifb")}
        change(links)
        return [normalized(data) for _, data, _ in links.batch.pending]


def pyroute2_requests(*calls) -> list[bytes]:
    """What IPBatch encodes for calls of (method, args, kwargs), split and normalized."""
    batch = IPBatch()
    for method, args, kwargs in calls:
        getattr(batch, method)(*args, **kwargs)
    data, messages = bytes(batch.batch), []
    while data:
        (length,) = struct.unpack_from("=I", data)
        messages.append(normalized(data[:length]))
        data = data[(length + 3) & ~3:]
    return messages


def htb(index: int, rate: int, ceil: int, **class_options) -> list[tuple]:
    """`tc qdisc add … root handle 1: htb default 10` and its two classes, as pyroute2 calls."""
    return [
        ("tc", ("add", "htb"), {"index": index, "handle": "1:", "default": 0x10}),
        ("tc", ("replace-class", "htb"), {"index": index, "handle": "1:1", "parent": "1:",
                                          "rate": f"{ceil}bit", "ceil": f"{ceil}bit"}),
        ("tc", ("replace-class", "htb"), {"index": index, "handle": "1:10", "parent": "1:1",
                                          "rate": f"{rate}bit", "ceil": f"{ceil}bit",
                                          **class_options}),
    ]


NETEM_50MS = ("tc", ("replace", "netem"), {"index": VETH_INDEX, "handle": "10:",
                                           "parent": "1:10", "delay": 50_000, "limit": 100_000})
INGRESS = ("tc", ("add", "ingress"), {"index": VETH_INDEX})
REDIRECT_TO_IFB = ("tc", ("replace-filter", "u32"), {
    "index": VETH_INDEX, "handle": 0x80000800, "parent": "ffff:", "protocol": ETH_P_ALL,
    "prio": 1, "target": "1:10", "keys": ["0x0/0x0+0"],
    "action": {"kind": "mirred", "direction": "egress", "action": "redirect",
               "ifindex": IFB_INDEX}})
NO_INGRESS = [("tc", ("del",), {"index": VETH_INDEX, "handle": "ffff:", "parent": TC_H_INGRESS}),
              ("link", ("del",), {"ifname": tc.ifb_name(VETH)})]


@pytest.mark.parametrize(("shape", "previous", "expected"), [
    (tc.Shape(rate=5_000_000, ceil=6_000_000, delay=50_000, buffer=15_000, cbuffer=3_000,
              priority=3),
     None,
     [*htb(VETH_INDEX, 5_000_000, 6_000_000, prio=3, burst=15_000, cburst=3_000), NETEM_50MS,
      *htb(IFB_INDEX, 5_000_000, 6_000_000, prio=3, burst=15_000, cburst=3_000),
      INGRESS, REDIRECT_TO_IFB]),
    (tc.Shape(rate=2_000_000, ceil=2_000_000), tc.Shape(rate=5_000_000, delay=50_000),
     [*htb(VETH_INDEX, 2_000_000, 2_000_000, prio=0),
      ("tc", ("del",), {"index": VETH_INDEX, "handle": "10:", "parent": "1:10"}),
      *htb(IFB_INDEX, 2_000_000, 2_000_000, prio=0), INGRESS, REDIRECT_TO_IFB]),
    (tc.Shape(delay=50_000), None,
     [*htb(VETH_INDEX, tc.UNLIMITED, tc.UNLIMITED, prio=0), NETEM_50MS, *NO_INGRESS]),
], ids=["rate-ceiling-delay-bursts-priority", "delay-dropped", "delay-only"])
def test_setup_sends_what_pyroute2_sends(shape, previous, expected):
    assert circuit_requests(lambda links: tc.setup_shaping(links, VETH, shape, previous)) == \
        pyroute2_requests(*expected)


def test_teardown_sends_what_pyroute2_sends():
    root = ("tc", ("del",), {"index": VETH_INDEX, "parent": TC_H_ROOT})
    assert circuit_requests(lambda links: tc.teardown_shaping(links, VETH)) == \
        pyroute2_requests(root, *NO_INGRESS)


POLICIES = {"rate-ceiling-delay-bursts-priority": {"rate": 5_000_000, "ceil": 6_000_000,
                                                   "delay": 50_000, "buffer": 15_000,
                                                   "cbuffer": 3_000, "priority": 3},
            "rate": {"rate": 5_000_000, "ceil": 5_000_000}, "delay-only": {"delay": 50_000},
            "unshaped": None}


@pytest.mark.parametrize(("policy", "ifb_exists"), [
    ("rate-ceiling-delay-bursts-priority", True), ("rate", True), ("delay-only", True),
    ("delay-only", False), ("unshaped", True), ("unshaped", False)])
def test_the_stored_plan_stamped_for_a_device_is_what_the_pyroute2_path_sends(policy, ifb_exists):
    """The plan kept for a policy, through JSON, stamped for a veth (whose IFB exists or not)
    queues the requests the pyroute2 path queues for that veth, and its link requests are
    pyroute2's for the veth's IFB."""
    network = POLICIES[policy]
    stored = json.loads(json.dumps(plan.build(network)))
    ready = plan.usable(stored, network)
    ifb = tc.ifb_name(VETH)
    with tc.Links() as links:
        plan.queue(ready, links.batch, plan.values(VETH_INDEX, ifb,
                                                   IFB_INDEX if ifb_exists else None))
        stamped = [normalized(data) for _, data, _ in links.batch.pending]

    def pyroute2_path(links):
        if not ifb_exists:
            del links.by_name[ifb]
        if network is None:
            tc.teardown_shaping(links, VETH)
        else:
            tc.setup_shaping(links, VETH, policy_module.shape(network))
    assert stamped == circuit_requests(pyroute2_path)
    with tc.Links() as links:
        links.batch.add_copy(ready.make_ifb, {"name": ifb.encode() + b"\0"})
        links.batch.add_copy(ready.delete_ifb, {"name": ifb.encode() + b"\0"})
        made = [normalized(data) for _, data, _ in links.batch.pending]
    assert made == pyroute2_requests(("link", ("add",), {"ifname": ifb, "kind": "ifb",
                                                         "state": "up"}),
                                     ("link", ("del",), {"ifname": ifb}))


def test_a_plan_from_another_pyroute2_or_layout_or_policy_is_not_used(tmp_path):
    """The plan is kept in this host's cache, never in the shared qos record; one kept by
    another pyroute2 or other layout code, or for another policy, is not used."""
    from circuit_common.store import Store

    store, network = Store(tmp_path), POLICIES["rate"]
    policy_module.save(store, "sandbox", {"network": network, "attachments": {}})
    assert json.loads((tmp_path / "qos" / "sandbox.json").read_text()) == {
        "schema": 1, "network": network, "attachments": {}}  # policy only
    cached = tmp_path / "cache" / "qos-plans" / "sandbox.json"
    stored = json.loads(cached.read_text())
    assert plan.ready(store, "sandbox", network) is not None
    assert plan.ready(store, "sandbox", POLICIES["delay-only"]) is None
    assert plan.ready(store, "other", network) is None  # nothing kept for it
    for changed in ({"tag": {**stored["tag"], "pyroute2": "0.8.0"}},
                    {"tag": {**stored["tag"], "layout": [[1, 2]]}},
                    {"policy": POLICIES["delay-only"]}, {"requests": [{"template": {}}]}):
        cached.write_text(json.dumps({**stored, **changed}))
        assert plan.ready(store, "sandbox", network) is None, changed
    plan.keep(store, "sandbox", network)  # encoded again
    assert plan.ready(store, "sandbox", network) is not None
    policy_module.save(store, "sandbox", policy_module.EMPTY)
    assert not cached.exists() and not (tmp_path / "qos" / "sandbox.json").exists()


def test_a_plan_an_older_circuit_stored_in_the_shared_record_is_never_read(tmp_path):
    """qos/<network>.json from before holds a "plan" (hostile here: one request aimed at
    device 1): it is not a policy, nothing reads it, and the record's next write drops it."""
    from circuit_common.store import Store

    store, network = Store(tmp_path), POLICIES["rate"]
    old = plan.build(network)
    data = bytearray.fromhex(old["requests"][0]["template"]["data"])
    struct.pack_into("=i", data, plan.DEVICE_INDEX, 1)
    old["requests"][0] = {"template": {"data": data.hex(), "slots": {}}, "values": {},
                          "ignore": []}
    path = policy_module.policy_path(store, "sandbox")
    store.write(path, {"network": network, "attachments": {}, "plan": old})
    assert policy_module.load(store, "sandbox") == {"network": network, "attachments": {}}
    assert plan.ready(store, "sandbox", network) is None  # the record's plan is not the cache
    policy_module.save(store, "sandbox", policy_module.load(store, "sandbox"), if_changed=True)
    assert json.loads((tmp_path / "qos" / "sandbox.json").read_text()) == {
        "schema": 1, "network": network, "attachments": {}}
    assert plan.ready(store, "sandbox", network) is not None


def test_a_stored_plan_asks_the_kernel_nothing_else():
    """A plan read back from this host's cache is refused (the pyroute2 path runs instead)
    when it holds a request of another type, more than one request in a template, a request
    that names no device of the attachment, or the kernel numbers it checks drift."""
    import copy

    from pyroute2.netlink import rtnl

    assert (plan.RTM_NEWLINK, plan.RTM_DELLINK) == (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK)
    assert plan.REQUEST_TYPES == (rtnl.RTM_NEWQDISC, rtnl.RTM_DELQDISC, rtnl.RTM_NEWTCLASS,
                                  rtnl.RTM_NEWTFILTER, rtnl.RTM_DELLINK)
    policy = {"rate": 5_000_000, "ceil": 5_000_000}
    kept = plan.build(policy)
    assert plan.usable(kept, policy) is not None

    def planted(change) -> dict:
        evil = copy.deepcopy(kept)
        change(evil)
        return evil

    def retype(p):  # an RTM_DELLINK where an RTM_NEWQDISC was
        data = bytearray.fromhex(p["requests"][0]["template"]["data"])
        struct.pack_into("=H", data, 4, rtnl.RTM_DELLINK)
        p["requests"][0]["template"]["data"] = data.hex()

    def two_in_one(p):  # a second request hidden behind the first
        p["requests"][0]["template"]["data"] *= 2

    def no_roles(p):  # sent as it is, whatever device it names
        p["requests"][0]["values"] = {}

    def make_ifb_as_delete(p):
        p["make_ifb"] = p["delete_ifb"]

    def fixed_device(p):  # the device index left as it is: another device than the veth's
        p["requests"][0]["values"] = {"redirect": "ifb_index"}
        p["requests"][0]["template"]["slots"] = {"redirect": [20, 4]}

    def delete_by_index(p):  # the IFB delete aimed at device 1 by its index
        data = bytearray.fromhex(p["delete_ifb"]["data"])
        struct.pack_into("=i", data, plan.DEVICE_INDEX, 1)
        p["delete_ifb"]["data"] = data.hex()

    for change in (retype, two_in_one, no_roles, make_ifb_as_delete, fixed_device,
                   delete_by_index):
        assert plan.usable(planted(change), policy) is None, change.__name__


def test_qdisc_fields_are_read_as_pyroute2_encodes_them():
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    for kind, index, handle, parent in (("htb", 7, 0x10000, 0xFFFFFFFF),
                                        ("ingress", 300, 0xFFFF0000, 0xFFFFFFF1),
                                        ("fq_codel", 2, 0, 0xFFFFFFFF)):
        msg = tcmsg()
        msg["index"], msg["handle"], msg["parent"] = index, handle, parent
        msg["attrs"] = [("TCA_KIND", kind)]
        msg.encode()
        payload = bytes(msg.data)[16:]  # after the netlink header, as the kernel answers
        assert tc.qdisc_fields(payload) == (index, handle, parent, kind)
