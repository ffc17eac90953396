"""An attachment's devices in circuit's netns, without pyroute2: the IFB device's name, a link's
index (if_nametoindex) and its driver (ethtool), which tells the host-side veth from the bridge.
/sys/class/net would not do: it shows the links of the netns that mounted it."""

import array
import errno
import fcntl
import hashlib
import socket
import struct

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x3
DRVINFO = struct.Struct("=I32s")  # struct ethtool_drvinfo: cmd, driver[32], ...
DRVINFO_SIZE = 196
IFREQ = struct.Struct("16sP16x")  # struct ifreq: name, then a pointer in its 24-byte union


def ifb_name(veth: str) -> str:
    """The IFB device that shapes traffic out of a container through veth."""
    return "cq" + hashlib.sha1(veth.encode()).hexdigest()[:12]


def index(name: str) -> int | None:
    """The index of link name, None when there is none."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def driver(name: str) -> str | None:
    """The driver of link name ("veth", "bridge", "ifb"); None when there is no such link or
    it names none (lo)."""
    if len(name.encode()) > 15:
        return None
    info = array.array("B", DRVINFO.pack(ETHTOOL_GDRVINFO, b"").ljust(DRVINFO_SIZE, b"\0"))
    request = IFREQ.pack(name.encode(), info.buffer_info()[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.EOPNOTSUPP):
                return None
            raise
    return DRVINFO.unpack_from(info)[1].split(b"\0", 1)[0].decode()


def host_veth(names: list[str]) -> str | None:
    """The first of names that is a veth in this netns."""
    return next((name for name in names if driver(name) == "veth"), None)
