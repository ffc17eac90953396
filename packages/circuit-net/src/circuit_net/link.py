"""A network's bridge deleted on delete, when nothing is plugged into it: through circuit's
netlink core, whose link messages need no pyroute2 (circuit-net never loads it)."""

from circuit_netlink import NETLINK_ROUTE, Batch, NetlinkError, rtnl


def delete_unused_bridge(name: str) -> bool:
    """Delete the bridge name when no interface is plugged into it: True when it went; False
    when there is none, it is not a bridge, or something (not circuit's) still uses it.
    OSError when the kernel refuses the dump or the deletion."""
    with Batch(NETLINK_ROUTE) as batch:
        try:
            links = rtnl.links(batch)
        except NetlinkError as e:
            raise OSError(e.errno, f"cannot list links: {e.strerror}") from None
        bridge = next((link for link in links if link.name == name), None)
        if bridge is None or bridge.kind != "bridge" \
                or any(link.master == bridge.index for link in links):
            return False
        try:
            return rtnl.delete_link(batch, name)
        except NetlinkError as e:
            raise OSError(e.errno, f"cannot delete link {name}: {e.strerror}") from None
