"""The rtnetlink link and address messages circuit spells without pyroute2: link dumps and
gets, deleting a link, setting one up, isolating a bridge port, address dumps. What circuit-net
needs (a bridge removed when nothing is plugged into it, --no-icc's ports) and the overlay's
lookups; sent through a Batch."""

import _socket
import errno
import struct
from collections import namedtuple

from . import NLM_F_ACK, NLM_F_DUMP, Batch, NetlinkError, attribute, attributes

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_GETADDR = 22
IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_PROTINFO, IFLA_LINKINFO = 3, 4, 10, 12, 18
IFLA_BRPORT_ISOLATED = 33
AF_BRIDGE, NLA_F_NESTED = 7, 0x8000
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFA_ADDRESS = 1
IFF_UP = 0x1
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
U32 = struct.Struct("=I")


# One link as the kernel describes it: kind is IFLA_INFO_KIND ("bridge", "veth", "vxlan"; ""
# for a link without one), master the index of the bridge it is plugged into (or None), data
# IFLA_INFO_DATA's attributes (the kind's own settings). A namedtuple: typing costs 7 ms.
Link = namedtuple("Link", "index name kind master mtu data")


def read_link(payload: bytes) -> Link:
    """The Link an RTM_NEWLINK answer's payload describes."""
    index = IFINFOMSG.unpack_from(payload)[2]
    attrs = attributes(payload, IFINFOMSG.size)
    info = attributes(attrs.get(IFLA_LINKINFO, b""))
    master, mtu = attrs.get(IFLA_MASTER), attrs.get(IFLA_MTU)
    return Link(index, _text(attrs.get(IFLA_IFNAME, b"")), _text(info.get(IFLA_INFO_KIND, b"")),
                U32.unpack_from(master)[0] if master else None,
                U32.unpack_from(mtu)[0] if mtu else None,
                attributes(info.get(IFLA_INFO_DATA, b"")))


def links(batch: Batch) -> list[Link]:
    """Every link of the batch's netns (one dump)."""
    return [read_link(payload) for payload in
            batch.query_bytes(RTM_GETLINK, _ifinfo(0), NLM_F_DUMP)]


def link(batch: Batch, name: str | None = None, index: int = 0) -> Link | None:
    """The link called name, or with index; None when there is none."""
    try:
        return read_link(batch.query_bytes(RTM_GETLINK, _ifinfo(index, name))[0])
    except NetlinkError as e:
        if e.errno == errno.ENODEV:
            return None
        raise


def delete_link(batch: Batch, name: str | None = None, index: int = 0) -> bool:
    """Delete the link called name, or with index, now: True when it went, False when there
    was none; NetlinkError for another refusal."""
    try:
        batch.query_bytes(RTM_DELLINK, _ifinfo(index, name), NLM_F_ACK)
    except NetlinkError as e:
        if e.errno == errno.ENODEV:
            return False
        raise
    return True


def add_set_up(batch: Batch, index: int) -> None:
    """Queue setting link index up."""
    batch.add_request(RTM_NEWLINK, IFINFOMSG.pack(_socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP))


def isolate_port(batch: Batch, index: int) -> None:
    """Make bridge port index isolated now (IFLA_BRPORT_ISOLATED, Linux 4.18): the bridge
    forwards nothing between it and another isolated port. NetlinkError when refused."""
    body = IFINFOMSG.pack(AF_BRIDGE, 0, index, 0, 0) + attribute(
        IFLA_PROTINFO | NLA_F_NESTED, attribute(IFLA_BRPORT_ISOLATED, b"\1"))
    batch.query_bytes(RTM_SETLINK, body, NLM_F_ACK)


def addresses(batch: Batch, family: int) -> list[tuple[int, str]]:
    """(link index, address) of every address of family in the batch's netns (one dump)."""
    found = []
    for payload in batch.query_bytes(RTM_GETADDR, IFADDRMSG.pack(family, 0, 0, 0, 0),
                                     NLM_F_DUMP):
        address = attributes(payload, IFADDRMSG.size).get(IFA_ADDRESS)
        if address:
            found.append((IFADDRMSG.unpack_from(payload)[4], _socket.inet_ntop(family, address)))
    return found


def _ifinfo(index: int, name: str | None = None) -> bytes:
    """An ifinfomsg for link index, or (index 0) the one called name."""
    body = IFINFOMSG.pack(_socket.AF_UNSPEC, 0, index, 0, 0)
    return body + attribute(IFLA_IFNAME, name.encode() + b"\0") if name else body


def _text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace")
