"""Deleting a link by name with one rtnetlink request over the stdlib socket module: all the
netlink circuit-net needs (a network's bridge on delete), so it never loads pyroute2."""

import errno
import os
import socket
import struct

RTM_DELLINK = 17
NLMSG_ERROR = 2
NLM_F_REQUEST_ACK = 0x1 | 0x4
IFLA_IFNAME = 3
NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change


def dellink_request(name: str) -> bytes:
    """RTM_DELLINK for the link called name (index 0: the kernel looks the name up)."""
    value = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(value), IFLA_IFNAME) + value
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr + b"\0" * (-len(attr) % 4)
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), RTM_DELLINK, NLM_F_REQUEST_ACK,
                             1, 0) + body


def delete_link(name: str) -> bool:
    """Delete the link name in circuit's netns: True when it went, False when there was none;
    OSError for any other refusal."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.sendto(dellink_request(name), (0, 0))
        reply = sock.recv(65536)
    _, kind, _, _, _ = NLMSG_HEADER.unpack_from(reply)
    code = -struct.unpack_from("=i", reply, NLMSG_HEADER.size)[0] if kind == NLMSG_ERROR else 0
    if code == errno.ENODEV:
        return False
    if code:
        raise OSError(code, f"cannot delete link {name}: {os.strerror(code)}")
    return True
