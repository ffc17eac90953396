"""Shaping one host-side veth with tc through pyroute2, in both directions.

Into the container (egress of the veth):    htb 1: default 1:10 -> class 1:1 at the ceiling
                                            -> class 1:10 at the rate [-> netem 10:]
Out of the container (ingress of the veth): ingress ffff: -> u32 match-all -> mirred redirect
                                            -> IFB device -> htb 1: (the same classes)
As the CNI bandwidth plugin does, traffic leaving the container is shaped on an IFB device,
because a qdisc can only shape what a device sends.

setup_shaping / teardown_shaping are the symmetric pair; counters reads the live statistics.
"""

import errno
import hashlib
from collections import namedtuple

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from circuit_common.errors import KernelUnsupported, NotFound

ROOT = 0x10000  # 1:
PARENT = 0x10001  # 1:1, at the ceiling: what class 1:10 may borrow up to
CLASS = 0x10010  # 1:10, the default class: it catches all traffic
NETEM = 0x100000  # 10:
INGRESS = 0xFFFF0000  # ffff:
ETH_P_ALL = 0x0003
UNLIMITED = 100 * 10**9  # bit/s: the class rate when only a delay is set


# What to apply to one attachment (rates in bit/s, delay in µs, sizes in bytes).
Shape = namedtuple("Shape", "rate ceil delay buffer cbuffer priority", defaults=(None,) * 6)


def ifb_name(veth: str) -> str:
    """The IFB device that shapes traffic out of a container through veth."""
    return "cq" + hashlib.sha1(veth.encode()).hexdigest()[:12]


class Links:
    """The netns's links by name, from one dump (a lookup per name would dump them all again)."""

    def __init__(self, ipr: IPRoute):
        self.ipr = ipr
        self.by_name = {link.get_attr("IFLA_IFNAME"): (
            link["index"], link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"))
            for link in ipr.get_links()}

    def index(self, name: str) -> int | None:
        return self.by_name.get(name, (None, None))[0]

    def kind(self, name: str) -> str | None:
        return self.by_name.get(name, (None, None))[1]

    def add_ifb(self, name: str) -> int:
        self.ipr.link("add", ifname=name, kind="ifb")
        index = self.ipr.link("get", ifname=name)[0]["index"]
        self.by_name[name] = (index, "ifb")
        return index

    def delete(self, name: str) -> None:
        index = self.index(name)
        if index is not None:
            _ignore((errno.ENODEV,), self.ipr.link, "del", index=index)
            del self.by_name[name]


def _ignore(errnos, call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except NetlinkError as e:
        if e.code not in errnos:
            raise
        return None


def _htb(ipr: IPRoute, index: int, shape: Shape, rate: int, delay: int | None,
         had_delay: bool) -> None:
    """HTB root, a default class at rate borrowing up to ceil, netem below it for a delay."""
    _ignore((errno.EEXIST,), ipr.tc, "add", "htb", index, ROOT, default=CLASS & 0xFFFF)
    ceil = max(shape.ceil or rate, rate)
    options = {"rate": f"{rate}bit", "ceil": f"{ceil}bit", "prio": shape.priority or 0}
    if shape.buffer:
        options["burst"] = shape.buffer
    if shape.cbuffer:
        options["cburst"] = shape.cbuffer
    ipr.tc("replace-class", "htb", index, PARENT, parent=ROOT, rate=f"{ceil}bit",
           ceil=f"{ceil}bit")
    ipr.tc("replace-class", "htb", index, CLASS, parent=PARENT, **options)
    if delay:
        ipr.tc("replace", "netem", index, NETEM, parent=CLASS, delay=delay, limit=100000)
    elif had_delay:
        _ignore((errno.ENOENT, errno.EINVAL), ipr.tc, "del", "netem", index, NETEM,
                parent=CLASS)


def setup_shaping(links: Links, veth: str, shape: Shape, previous: Shape | None = None) -> None:
    """Make veth's qdiscs match shape: rate both ways, delay into the container."""
    ipr, index = links.ipr, links.index(veth)
    if index is None:
        raise NotFound(f"interface {veth} does not exist")
    had_delay = bool(previous and previous.delay)
    try:
        _htb(ipr, index, shape, shape.rate or UNLIMITED, shape.delay, had_delay)
        if shape.rate:
            _redirect_ingress(links, index, veth, shape)
        else:
            _teardown_ingress(links, index, veth)
    except NetlinkError as e:
        raise _explain(e, shape) from None


def _redirect_ingress(links: Links, index: int, veth: str, shape: Shape) -> None:
    ipr, ifb = links.ipr, ifb_name(veth)
    ifb_index = links.index(ifb)
    if ifb_index is None:
        ifb_index = links.add_ifb(ifb)
        ipr.link("set", index=ifb_index, state="up")
    _htb(ipr, ifb_index, shape, shape.rate, None, False)
    if _ignore((errno.EEXIST,), ipr.tc, "add", "ingress", index, INGRESS) is not None:
        ipr.tc("add-filter", "u32", index, parent=INGRESS, prio=1, protocol=ETH_P_ALL, target=CLASS,
               keys=["0x0/0x0+0"], action={"kind": "mirred", "direction": "egress",
                                           "action": "redirect", "ifindex": ifb_index})


def _teardown_ingress(links: Links, index: int | None, veth: str) -> None:
    if index is not None:
        _ignore((errno.ENOENT, errno.EINVAL, errno.ENODEV), links.ipr.tc, "del", "ingress",
                index, INGRESS)
    links.delete(ifb_name(veth))


def teardown_shaping(links: Links, veth: str) -> None:
    """Remove all circuit added for veth; a veth that is already gone leaves only its IFB."""
    index = links.index(veth)
    if index is not None:
        _ignore((errno.ENOENT, errno.EINVAL, errno.ENODEV), links.ipr.tc, "del", index=index,
                handle=0, parent=0xFFFFFFFF)
    _teardown_ingress(links, index, veth)


def _explain(e: NetlinkError, shape: Shape) -> Exception:
    if shape.delay and e.code in (errno.ENOENT, errno.EOPNOTSUPP):
        return KernelUnsupported("this kernel has no netem qdisc (sch_netem), so --delay cannot "
                                 "be applied; load sch_netem or use a kernel that has it")
    return KernelUnsupported(f"tc failed: {e.args[1] if len(e.args) > 1 else e}")


def counters(links: Links, veth: str) -> dict[str, dict]:
    """Live statistics of the shaping class in each direction ("in" to the container, "out")."""
    found = {}
    for direction, device in (("in", veth), ("out", ifb_name(veth))):
        index = links.index(device)
        if index is None:
            continue
        for cls in links.ipr.get_classes(index=index):
            if cls["handle"] == CLASS:
                stats = cls.get_attr("TCA_STATS2")
                basic = stats.get_attr("TCA_STATS_BASIC") if stats else {}
                queue = stats.get_attr("TCA_STATS_QUEUE") if stats else {}
                found[direction] = {"bytes": basic.get("bytes", 0),
                                    "packets": basic.get("packets", 0),
                                    "drops": queue.get("drops", 0),
                                    "overlimits": queue.get("overlimits", 0)}
    return found


def probe_netem(ipr: IPRoute) -> None:
    """KernelUnsupported unless a netem qdisc can be made (on a scratch IFB device)."""
    import os

    scratch = f"cqprobe{os.getpid() % 100000}"
    ipr.link("add", ifname=scratch, kind="ifb")
    try:
        ipr.tc("add", "netem", ipr.link("get", ifname=scratch)[0]["index"], NETEM, delay=1000)
    except NetlinkError as e:
        raise _explain(e, Shape(delay=1)) from None
    finally:
        ipr.link("del", ifname=scratch)
