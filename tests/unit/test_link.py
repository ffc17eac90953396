"""circuit_net.link: the link dump read without pyroute2 (names, kinds, masters)."""

import struct

import pytest

from circuit_net.link import (
    IFINFOMSG,
    IFLA_IFNAME,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IFLA_MASTER,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HEADER,
    RTATTR,
    RTM_NEWLINK,
    parse_links,
)


def attr(kind: int, value: bytes) -> bytes:
    return RTATTR.pack(RTATTR.size + len(value), kind) + value + b"\0" * (-len(value) % 4)


def message(kind: int, body: bytes) -> bytes:
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, 2, 1, 0) + body


def newlink(index: int, name: str, kind: str = "", master: int | None = None) -> bytes:
    body = IFINFOMSG.pack(0, 1, index, 0, 0) + attr(IFLA_IFNAME, name.encode() + b"\0")
    if kind:
        body += attr(IFLA_LINKINFO | 0x8000, attr(IFLA_INFO_KIND, kind.encode() + b"\0"))
    if master is not None:
        body += attr(IFLA_MASTER, struct.pack("=I", master))
    return message(RTM_NEWLINK, body)


def test_links_their_kinds_and_masters_are_read_from_a_dump():
    data = newlink(1, "lo") + newlink(7, "br0", "bridge") + newlink(8, "veth1", "veth", 7)
    assert parse_links(data) == ({"lo": (1, ""), "br0": (7, "bridge"), "veth1": (8, "veth")},
                                 {8: 7}, False)
    assert parse_links(message(NLMSG_DONE, struct.pack("=i", 0)))[2] is True


def test_a_netlink_error_in_the_dump_is_an_oserror():
    with pytest.raises(OSError, match="cannot list links"):
        parse_links(message(NLMSG_ERROR, struct.pack("=i", -1) + b"\0" * 16))
