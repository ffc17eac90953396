"""Shaping host-side veths with tc, in both directions, through pyroute2's tc messages.

Into the container (egress of the veth):    htb 1: default 1:10 -> class 1:1 at the ceiling
                                            -> class 1:10 at the rate [-> netem 10:]
Out of the container (ingress of the veth): ingress ffff: -> u32 match-all -> mirred redirect
                                            -> IFB device -> htb 1: (the same classes)
As the CNI bandwidth plugin does, traffic leaving the container is shaped on an IFB device,
because a qdisc can only shape what a device sends.

setup_shaping / teardown_shaping are the symmetric pair. They queue their requests on the
Links' Batch, and `Links.commit()` sends what every attachment needs in a few system calls;
IFB devices are made first (`Links.add_ifbs`), since the redirect names their index. Every
attachment of a network gets the same requests but for its device: pyroute2 encodes each once
(`Links.tc`), the others are copies with the device's index. counters reads live statistics.
"""

import errno
import socket
import struct

from circuit_common.errors import NotFound
from circuit_netlink import (
    CREATE,
    NETLINK_ROUTE,
    NLM_F_DUMP,
    REPLACE,
    Batch,
    NetlinkError,
    Template,
    attributes,
    lean_pyroute2,
)

from . import devices
from .devices import ifb_name
from .refused import explain
from .shape import Shape

lean_pyroute2()  # every function here speaks netlink: load only the pyroute2 modules used

from pyroute2.netlink.rtnl import (  # noqa: E402
    RTM_DELLINK,
    RTM_DELQDISC,
    RTM_GETQDISC,
    RTM_GETTCLASS,
    RTM_NEWLINK,
    RTM_NEWQDISC,
    RTM_NEWTCLASS,
    RTM_NEWTFILTER,
    TC_H_INGRESS,
    TC_H_ROOT,
)
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg  # noqa: E402
from pyroute2.netlink.rtnl.tcmsg import plugins, tcmsg  # noqa: E402

ROOT = 0x10000  # 1:
PARENT = 0x10001  # 1:1, at the ceiling: what class 1:10 may borrow up to
CLASS = 0x10010  # 1:10, the default class: it catches all traffic
NETEM = 0x100000  # 10:
INGRESS = 0xFFFF0000  # ffff:
FILTER = 0x80000800  # u32 800::800, the one match-all redirect filter
MIRRED_IFINDEX = ("TCA_OPTIONS", "TCA_U32_ACT", "TCA_ACT_PRIO_1", "TCA_ACT_OPTIONS",
                  "TCA_MIRRED_PARMS", "ifindex")
ETH_P_ALL = 0x0003
UNLIMITED = 100 * 10**9  # bit/s: the class rate when only a delay is set
GONE = (errno.ENOENT, errno.EINVAL, errno.ENODEV)  # deleting what is not there


class Links:
    """The netns's links by name, looked up when first asked (if_nametoindex and the ethtool
    driver, ≈ 15 µs each: a dump decoded by pyroute2 took ≈ 0.2 ms a link), and the Batch that
    changes them. batch: where requests are queued (a plan's recorder; a new Batch when
    None)."""

    def __init__(self, batch=None):
        self.batch = batch or Batch(NETLINK_ROUTE)
        self.templates: dict[tuple, Template] = {}
        self.by_name: dict[str, tuple] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.batch.close()

    def _look_up(self, name: str) -> tuple:
        if name not in self.by_name:
            index = devices.index(name)
            self.by_name[name] = (index, None if index is None else devices.driver(name))
        return self.by_name[name]

    def index(self, name: str) -> int | None:
        return self._look_up(name)[0]

    def kind(self, name: str) -> str | None:
        """The link's kind as its driver names it (veth, ifb, bridge)."""
        return self._look_up(name)[1]

    def add_ifbs(self, names: list[str]) -> None:
        """Make the IFB devices that do not exist yet, up, now."""
        missing = [name for name in names if self.index(name) is None]
        for name in missing:
            self.batch.add_copy(*self.link_request(RTM_NEWLINK, name, "ifb"))
        self.commit()
        for name in missing:
            self.by_name[name] = (socket.if_nametoindex(name), "ifb")

    def delete(self, name: str) -> None:
        """Queue removing a link (one that is gone already counts as removed)."""
        if self.index(name) is not None:
            self.batch.add_copy(*self.link_request(RTM_DELLINK, name), ignore=(errno.ENODEV,))
            self.by_name[name] = (None, None)

    def link_request(self, command: int, name: str, kind: str | None = None) -> tuple:
        """(Template, values) of a request for link name: RTM_NEWLINK makes it, of kind and up;
        RTM_DELLINK deletes it."""
        key = (command, kind, len(name))
        values = {"name": name.encode() + b"\0"}
        if key not in self.templates:
            self.templates[key] = Template(_link_message(command, name, kind), CREATE if kind
                                           else 0, {"name": ("IFLA_IFNAME",)}, values)
        return self.templates[key], values

    def tc(self, command: int, index: int, handle: int, parent: int, kind: str | None = None,
           flags: int = 0, ignore=(), info: int = 0, redirect: int | None = None,
           **options) -> None:
        """Queue a tc request for device index (redirect: where a mirred action sends packets):
        a copy of the same request pyroute2 encoded for the first device."""
        key = (command, handle, parent, kind, flags, info, repr(sorted(options.items())))
        slots = {"index": ("index",)}
        values = {"index": struct.pack("=i", index)}
        if redirect is not None:
            options["action"] = {"kind": "mirred", "direction": "egress", "action": "redirect",
                                 "ifindex": redirect}
            slots["redirect"] = MIRRED_IFINDEX
            values["redirect"] = struct.pack("=I", redirect)
        if key not in self.templates:
            self.templates[key] = Template(
                _tc_message(command, index, handle, parent, kind, info, **options), flags, slots,
                values)
        self.batch.add_copy(self.templates[key], values, ignore)

    def commit(self, delay: bool = False) -> None:
        """Send every queued request; KernelUnsupported for the first the kernel refused
        (delay: a netem qdisc was among them)."""
        try:
            self.batch.send()
        except NetlinkError as e:
            raise explain(e, delay) from None


def _link_message(command: int, name: str | None = None, kind: str | None = None):
    msg = ifinfmsg()
    msg["header"]["type"] = command
    msg["attrs"] = [("IFLA_IFNAME", name)] if name else []
    if kind:
        msg["flags"] = msg["change"] = IFF_UP
        msg["attrs"].append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind)]}))
    return msg


def _tc_message(command: int, index: int, handle: int, parent: int, kind: str | None = None,
                info: int = 0, **options):
    """A tc message as pyroute2's IPRoute.tc builds it (its plugin encodes the options)."""
    msg = tcmsg()
    msg["header"]["type"] = command
    msg["index"], msg["handle"], msg["parent"], msg["info"] = index, handle, parent, info
    if kind is not None:
        msg["attrs"] = [("TCA_KIND", kind)]
        if options:
            encode = (plugins[kind].get_class_parameters if command == RTM_NEWTCLASS
                      else plugins[kind].get_parameters)
            msg["attrs"].append(("TCA_OPTIONS", encode(options)))
    return msg


def _htb(links: Links, index: int, shape: Shape, rate: int, delay: int | None,
         had_delay: bool) -> None:
    """HTB root, a default class at rate borrowing up to ceil, netem below it for a delay."""
    links.tc(RTM_NEWQDISC, index, ROOT, TC_H_ROOT, "htb", CREATE, ignore=(errno.EEXIST,),
             default=CLASS & 0xFFFF)
    ceil = max(shape.ceil or rate, rate)
    options = {"rate": f"{rate}bit", "ceil": f"{ceil}bit", "prio": shape.priority or 0}
    if shape.buffer:
        options["burst"] = shape.buffer
    if shape.cbuffer:
        options["cburst"] = shape.cbuffer
    links.tc(RTM_NEWTCLASS, index, PARENT, ROOT, "htb", REPLACE, rate=f"{ceil}bit",
             ceil=f"{ceil}bit")
    links.tc(RTM_NEWTCLASS, index, CLASS, PARENT, "htb", REPLACE, **options)
    if delay:
        links.tc(RTM_NEWQDISC, index, NETEM, CLASS, "netem", REPLACE, delay=delay, limit=100000)
    elif had_delay:
        links.tc(RTM_DELQDISC, index, NETEM, CLASS, ignore=GONE)


def setup_shaping(links: Links, veth: str, shape: Shape, previous: Shape | None = None) -> None:
    """Queue what makes veth's qdiscs match shape: rate both ways, delay into the container.
    With a rate, the IFB device must exist (Links.add_ifbs)."""
    index = links.index(veth)
    if index is None:
        raise NotFound(f"interface {veth} does not exist")
    had_delay = bool(previous and previous.delay)
    _htb(links, index, shape, shape.rate or UNLIMITED, shape.delay, had_delay)
    if not shape.rate:
        _teardown_ingress(links, index, veth)
        return
    ifb_index = links.index(ifb_name(veth))
    _htb(links, ifb_index, shape, shape.rate, None, False)
    links.tc(RTM_NEWQDISC, index, INGRESS, TC_H_INGRESS, "ingress", CREATE,
             ignore=(errno.EEXIST,))
    links.tc(RTM_NEWTFILTER, index, FILTER, INGRESS, "u32", REPLACE,
             info=1 << 16 | socket.htons(ETH_P_ALL), redirect=ifb_index, target=CLASS,
             keys=["0x0/0x0+0"])


def _teardown_ingress(links: Links, index: int | None, veth: str) -> None:
    if index is not None:
        links.tc(RTM_DELQDISC, index, INGRESS, TC_H_INGRESS, ignore=GONE)
    links.delete(ifb_name(veth))


def teardown_shaping(links: Links, veth: str) -> None:
    """Queue removing all circuit added for veth; a veth already gone leaves only its IFB."""
    index = links.index(veth)
    if index is not None:
        links.tc(RTM_DELQDISC, index, 0, TC_H_ROOT, ignore=GONE)
    _teardown_ingress(links, index, veth)


def counters(links: Links, veth: str) -> dict[str, dict]:
    """Live statistics of the shaping class in each direction ("in" to the container, "out"):
    bytes, packets, drops, overlimits, and the backlog queued now (bytes, packets). Read from
    the dump's payloads directly, and the dump asked without pyroute2 (its encoding of the request
    took ≈ 75 µs a device, decoding the answers ≈ 0.3 ms)."""
    found = {}
    for direction, device in (("in", veth), ("out", ifb_name(veth))):
        index = links.index(device)
        if index is None:
            continue
        for payload in links.batch.query_bytes(RTM_GETTCLASS, TCMSG.pack(0, index, 0, 0, 0),
                                               NLM_F_DUMP):
            _, got, handle, _, _ = TCMSG.unpack_from(payload)
            if handle == CLASS and got == index:
                found[direction] = class_stats(payload)
    return found


TCA_STATS2, TCA_STATS_BASIC, TCA_STATS_QUEUE, TCA_STATS_PKT64 = 7, 1, 3, 8
BASIC = struct.Struct("=QI")  # struct gnet_stats_basic: bytes, packets
QUEUE = struct.Struct("=IIIII")  # gnet_stats_queue: qlen, backlog, drops, requeues, overlimits


def class_stats(payload: bytes) -> dict[str, int]:
    """The counters of a class message's TCA_STATS2 (zeros where the kernel gave none)."""
    stats = attributes(attributes(payload, TCMSG.size).get(TCA_STATS2, b""))
    nbytes, packets = BASIC.unpack_from(stats[TCA_STATS_BASIC]) \
        if len(stats.get(TCA_STATS_BASIC, b"")) >= BASIC.size else (0, 0)
    if len(stats.get(TCA_STATS_PKT64, b"")) >= 8:
        packets = struct.unpack_from("=Q", stats[TCA_STATS_PKT64])[0]
    qlen, backlog, drops, _, overlimits = QUEUE.unpack_from(stats[TCA_STATS_QUEUE]) \
        if len(stats.get(TCA_STATS_QUEUE, b"")) >= QUEUE.size else (0,) * 5
    return {"bytes": nbytes, "packets": packets, "drops": drops, "overlimits": overlimits,
            "backlog_bytes": backlog, "backlog_packets": qlen}


# Root qdiscs a kernel or distribution puts on a device by itself: nobody's shaping.
DEFAULT_ROOTS = {"noqueue", "pfifo_fast", "fq_codel", "fq", "mq", "pfifo", "noop"}


def foreign_shaping(links: Links, veths: list[str]) -> dict[str, str]:
    """The veths (of those given) that another tool shapes, with the qdisc that shows it: a
    root qdisc that is neither a default nor circuit's htb 1:, or an ingress qdisc without
    circuit's IFB device beside it (the CNI bandwidth plugin: tbf, and ingress to its own
    IFB). One dump of the netns's qdiscs."""
    wanted = {links.index(veth): veth for veth in veths if links.index(veth) is not None}
    found = {}
    for payload in links.batch.query(_tc_message(RTM_GETQDISC, 0, 0, 0), NLM_F_DUMP,
                                     decode=False):
        index, handle, parent, kind = qdisc_fields(payload)
        veth = wanted.get(index)
        if veth is None or veth in found:
            continue
        if parent == TC_H_ROOT and kind not in DEFAULT_ROOTS and (kind, handle) != ("htb", ROOT):
            found[veth] = f"a {kind} root qdisc"
        elif parent == TC_H_INGRESS and links.index(ifb_name(veth)) is None:
            found[veth] = "an ingress qdisc that redirects elsewhere"
    return found


TCMSG = struct.Struct("=BxxxiIII")  # struct tcmsg: family, ifindex, handle, parent, info
RTATTR = struct.Struct("=HH")
TCA_KIND = 1


def qdisc_fields(payload: bytes) -> tuple[int, int, int, str | None]:
    """(ifindex, handle, parent, kind) of a qdisc message's payload, read directly: a dump of
    every qdisc on a host with hundreds of containers, decoded by pyroute2, took ≈ 15 ms."""
    _, index, handle, parent, _ = TCMSG.unpack_from(payload)
    offset = TCMSG.size
    while offset + RTATTR.size <= len(payload):
        length, kind = RTATTR.unpack_from(payload, offset)
        if length < RTATTR.size:
            break
        if kind == TCA_KIND:
            value = payload[offset + RTATTR.size:offset + length]
            return index, handle, parent, value.split(b"\0", 1)[0].decode()
        offset += (length + 3) & ~3
    return index, handle, parent, None


def probe_netem(links: Links) -> None:
    """KernelUnsupported unless a netem qdisc can be made (on a scratch IFB device)."""
    import os

    scratch = f"cqprobe{os.getpid() % 100000}"
    links.add_ifbs([scratch])
    try:
        links.tc(RTM_NEWQDISC, links.index(scratch), NETEM, TC_H_ROOT, "netem", CREATE,
                 delay=1000)
        links.commit(delay=True)
    finally:
        links.delete(scratch)
        links.commit()
