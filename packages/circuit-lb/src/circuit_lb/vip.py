"""The VIP made local: an address on `lo` (a /32 or /128), so that traffic the host itself
sends to it is routed locally and reaches IPVS or the nftables DNAT."""

import errno
from _socket import AF_INET6, SOCK_DGRAM, if_nametoindex, socket

from circuit_common.errors import EnvironmentFault
from circuit_netlink import CREATE, NETLINK_ROUTE, Batch, NetlinkError, lean_pyroute2

from .address import ip_family


def is_local(ip: str) -> bool:
    """Whether ip is an address of this netns (bind() succeeds only for local addresses)."""
    s = socket(ip_family(ip), SOCK_DGRAM)
    try:
        s.bind((ip, 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def add(ip: str) -> None:
    """Put ip on lo as a host address."""
    _request(ip, "RTM_NEWADDR", CREATE)


def remove(ip: str) -> None:
    """Take ip off lo; one that is gone already counts as removed."""
    _request(ip, "RTM_DELADDR", ignore=(errno.EADDRNOTAVAIL,))


def _request(ip: str, command: str, flags: int = 0, ignore=()) -> None:
    lean_pyroute2()
    from pyroute2.netlink import rtnl
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    family = ip_family(ip)
    msg = ifaddrmsg()
    msg["family"] = family
    msg["prefixlen"] = 128 if family == AF_INET6 else 32
    msg["index"] = if_nametoindex("lo")
    msg["attrs"] = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)]
    msg["header"]["type"] = getattr(rtnl, command)
    try:
        with Batch(NETLINK_ROUTE) as batch:
            batch.add(msg, flags, ignore)
            batch.send()
    except NetlinkError as e:
        doing = "put" if command == "RTM_NEWADDR" else "take"
        where = "on" if command == "RTM_NEWADDR" else "off"
        raise EnvironmentFault(f"the kernel refused to {doing} VIP {ip} {where} lo: "
                               f"{e.strerror}") from None
