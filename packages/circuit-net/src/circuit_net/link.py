"""A network's bridge deleted on delete, when nothing is plugged into it, with rtnetlink
requests over the stdlib socket module: all the netlink circuit-net needs, so it never loads
pyroute2."""

import errno
import os
import socket
import struct

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST_ACK = 0x1 | 0x4
NLM_F_REQUEST_DUMP = 0x1 | 0x300
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 10, 18, 1
NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
RTATTR = struct.Struct("=HH")  # length, type


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


def attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """The rtattrs between start and end by type (the nested flag dropped)."""
    found = {}
    while start + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, start)
        if length < RTATTR.size:
            break
        found[kind & 0x3FFF] = data[start + RTATTR.size:start + length]
        start += (length + 3) & ~3
    return found


def parse_links(data: bytes) -> tuple[dict[str, tuple[int, str]], dict[int, int], bool]:
    """RTM_NEWLINK messages: {name: (index, kind)}, {index: master index}, and whether the
    dump's end (NLMSG_DONE) was among them; OSError for a netlink error."""
    links, masters, done, offset = {}, {}, False, 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _, _, _ = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size:
            break
        if kind == NLMSG_DONE:
            done = True
        elif kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", data, offset + NLMSG_HEADER.size)[0]
            raise OSError(code, f"cannot list links: {os.strerror(code)}")
        elif kind == RTM_NEWLINK:
            body = offset + NLMSG_HEADER.size
            index = IFINFOMSG.unpack_from(data, body)[2]
            attrs = attributes(data, body + IFINFOMSG.size, offset + length)
            linkinfo = attrs.get(IFLA_LINKINFO, b"")
            info = attributes(linkinfo, 0, len(linkinfo))
            name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
            links[name] = (index, info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode())
            if IFLA_MASTER in attrs:
                masters[index] = struct.unpack("=I", attrs[IFLA_MASTER][:4])[0]
        offset += (length + 3) & ~3
    return links, masters, done


def dump_links() -> tuple[dict[str, tuple[int, str]], dict[int, int]]:
    """Every link of circuit's netns: {name: (index, kind)} and {index: master index}."""
    request = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    links, masters = {}, {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.sendto(NLMSG_HEADER.pack(NLMSG_HEADER.size + len(request), RTM_GETLINK,
                                      NLM_F_REQUEST_DUMP, 1, 0) + request, (0, 0))
        done = False
        while not done:
            more_links, more_masters, done = parse_links(sock.recv(1 << 20))
            links.update(more_links)
            masters.update(more_masters)
    return links, masters


def delete_unused_bridge(name: str) -> bool:
    """Delete the bridge name when no interface is plugged into it: True when it went; False
    when there is none, it is not a bridge, or something (not circuit's) still uses it."""
    links, masters = dump_links()
    index, kind = links.get(name, (0, ""))
    if kind != "bridge" or index in masters.values():
        return False
    return delete_link(name)
