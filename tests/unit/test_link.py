"""circuit_netlink.rtnl, circuit-net's link messages read without pyroute2 (names, kinds,
masters): crafted answers, and the running kernel's own dump (reads only)."""

import socket
import struct

from circuit_netlink import NETLINK_ROUTE, Batch, attribute, rtnl


def newlink(index: int, name: str, kind: str = "", master: int | None = None,
            data: bytes = b"") -> bytes:
    body = rtnl.IFINFOMSG.pack(0, 1, index, 0, 0) + attribute(rtnl.IFLA_IFNAME,
                                                              name.encode() + b"\0")
    if kind:
        info = attribute(rtnl.IFLA_INFO_KIND, kind.encode() + b"\0")
        if data:
            info += attribute(rtnl.IFLA_INFO_DATA | 0x8000, data)
        body += attribute(rtnl.IFLA_LINKINFO | 0x8000, info)  # NLA_F_NESTED
    if master is not None:
        body += attribute(rtnl.IFLA_MASTER, struct.pack("=I", master))
    return body


def test_links_their_kinds_masters_and_kind_data_are_read():
    assert rtnl.read_link(newlink(1, "lo")) == rtnl.Link(1, "lo", "", None, None, {})
    assert rtnl.read_link(newlink(8, "veth1", "veth", 7)) \
        == rtnl.Link(8, "veth1", "veth", 7, None, {})
    vxlan = rtnl.read_link(newlink(9, "cvx7", "vxlan", data=attribute(1, struct.pack("=I", 7))))
    assert (vxlan.kind, vxlan.data) == ("vxlan", {1: struct.pack("=I", 7)})


def test_the_kernels_links_and_addresses_are_read_without_pyroute2():
    with Batch(NETLINK_ROUTE) as batch:
        links = {link.name: link for link in rtnl.links(batch)}
        assert links["lo"].index == socket.if_nametoindex("lo") and links["lo"].mtu
        assert rtnl.link(batch, "lo") == links["lo"]
        assert rtnl.link(batch, index=links["lo"].index) == links["lo"]
        assert rtnl.link(batch, "circuit-nosuch") is None
        assert rtnl.delete_link(batch, "circuit-nosuch") is False
        assert all(isinstance(index, int) for index, _ in rtnl.addresses(batch, socket.AF_INET))
