"""The VXLAN overlay of a cluster network on this host, as flannel's vxlan backend builds it:
one device per network (its VNI, no learning), its VTEP address the host subnet's first
address (/32), and for every other host's subnet a route, a neighbour and an FDB entry that
send it to that host's underlay address. VTEP MACs are derived from the VTEP address
(0a:58:<IPv4>, as the CNI plugins derive theirs), so hosts need not publish them.

ensure_device / remove_device and program_peers (which adds what is missing and removes what
is no longer wanted) are the whole contract, all through circuit's netlink core (its link and
address messages; pyroute2's for the VXLAN device, routes, neighbours and FDB entries, sent in
batches); program_masquerade keeps the one nftables table that lets containers reach addresses
outside the cluster."""

import contextlib
import ipaddress
import socket
import sys

from circuit_common.errors import Conflict, EnvironmentFault
from circuit_netlink import (
    CREATE,
    NETLINK_ROUTE,
    NLM_F_DUMP,
    REPLACE,
    Batch,
    NetlinkError,
    lean_pyroute2,
    rtnl,
)

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer IPv4 + UDP + VXLAN + inner Ethernet headers
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
RTPROT_STATIC = 4
RTN_UNICAST = 1
RT_TABLE_MAIN = 254
AF_BRIDGE = 7


MASQUERADE_TABLE = "circuit_overlay"


def program_masquerade(subnets: dict[str, str]) -> None:
    """Table ip circuit_overlay, replaced in one transaction: traffic from each cluster subnet
    ({network: subnet}) to an address outside it leaves with this host's address. Traffic
    between hosts keeps its source (the bridge's own ipMasq is off on cluster networks). No
    subnets: no table."""
    from circuit_common import nft

    table = {"family": "ip", "name": MASQUERADE_TABLE}
    commands = [{"add": {"table": table}}, {"delete": {"table": table}}]
    if subnets:
        commands += [{"add": {"table": table}},
                     {"add": {"chain": {"family": "ip", "table": MASQUERADE_TABLE,
                                        "name": "postrouting", "type": "nat",
                                        "hook": "postrouting", "prio": 100,
                                        "policy": "accept"}}}]
    for network, subnet in sorted(subnets.items()):
        address, _, length = subnet.partition("/")
        prefix = {"prefix": {"addr": address, "len": int(length)}}
        commands.append({"add": {"rule": {
            "family": "ip", "table": MASQUERADE_TABLE, "chain": "postrouting",
            "comment": f"circuit network {network}",
            "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": prefix}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                           "right": prefix}},
                {"masquerade": None}]}}})
    nft.transaction(commands)


def device_name(vni: int) -> str:
    return f"cvx{vni}"


def vtep(subnet: str) -> str:
    """A host's VTEP address in the network: the first address of its subnet."""
    return str(ipaddress.ip_network(subnet).network_address)


def vtep_mac(address: str) -> str:
    return "0a:58:" + ":".join(f"{b:02x}" for b in socket.inet_aton(address))


@contextlib.contextmanager
def _netlink():
    """A Batch of circuit's netlink core, pyroute2's message modules ready to import; a
    request the kernel refuses is one line (EnvironmentFault)."""
    lean_pyroute2()
    try:
        with Batch(NETLINK_ROUTE) as batch:
            yield batch
    except NetlinkError as e:
        raise EnvironmentFault(f"the kernel refused a VXLAN device, route, neighbour or FDB "
                               f"change: {e.strerror} (errno {e.errno})") from None


def underlay_mtu(batch: Batch, address: str) -> int:
    """The MTU of the interface that holds this host's underlay address."""
    for index, held in rtnl.addresses(batch, socket.AF_INET):
        if held == address:
            return rtnl.link(batch, index=index).mtu
    raise EnvironmentFault(f"no interface here has the cluster address {address}; join again "
                           "with --address of this host's underlay interface")


def ensure_device(vni: int, subnet: str, address: str) -> int:
    """The network's VXLAN device, up with its VTEP address, sending from address (made again
    when it sends from another); its MTU (the containers' too)."""
    name, local = device_name(vni), vtep(subnet)
    with _netlink() as batch:
        mtu = underlay_mtu(batch, address) - VXLAN_OVERHEAD
        device = rtnl.link(batch, name)
        if device is not None and _vxlan_local(device) not in (address, None):
            rtnl.delete_link(batch, index=device.index)
            device = None
        if device is None:
            batch.add(_vxlan_device(name, vni, address, vtep_mac(local), mtu), CREATE)
            batch.send()
            device = rtnl.link(batch, name)
        elif device.kind != "vxlan" or _vxlan_id(device) != vni:
            raise Conflict(f"interface {name} exists and is not VXLAN {vni}; remove it")
        else:
            mtu = device.mtu
        batch.add(_address(device.index, local), REPLACE)
        rtnl.add_set_up(batch, device.index)
        batch.send()
        return mtu


IFLA_VXLAN_ID, IFLA_VXLAN_LOCAL = 1, 4  # in a vxlan link's IFLA_INFO_DATA


def _vxlan_local(device: rtnl.Link) -> str | None:
    local = device.data.get(IFLA_VXLAN_LOCAL) if device.kind == "vxlan" else None
    return socket.inet_ntoa(local) if local else None


def _vxlan_id(device: rtnl.Link) -> int | None:
    vni = device.data.get(IFLA_VXLAN_ID)
    return int.from_bytes(vni, sys.byteorder) if vni else None


def _vxlan_device(name: str, vni: int, address: str, mac: str, mtu: int):
    """RTM_NEWLINK of the network's VXLAN device, as IPRoute.link("add", kind="vxlan") has it."""
    from pyroute2.netlink.rtnl import RTM_NEWLINK
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    data = [("IFLA_VXLAN_ID", vni), ("IFLA_VXLAN_LOCAL", address),
            ("IFLA_VXLAN_PORT", VXLAN_PORT), ("IFLA_VXLAN_LEARNING", 0)]
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_NEWLINK
    msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_ADDRESS", mac), ("IFLA_MTU", mtu),
                    ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "vxlan"),
                                                 ("IFLA_INFO_DATA", {"attrs": data})]})]
    return msg


def _address(index: int, address: str):
    """RTM_NEWADDR of address/32 on link index."""
    from pyroute2.netlink.rtnl import RTM_NEWADDR
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    msg = ifaddrmsg()
    msg["header"]["type"] = RTM_NEWADDR
    msg["family"], msg["prefixlen"], msg["index"] = socket.AF_INET, 32, index
    msg["attrs"] = [("IFA_ADDRESS", address), ("IFA_LOCAL", address)]
    return msg


def check_address(address: str) -> None:
    """EnvironmentFault unless an interface here holds address."""
    with _netlink() as batch:
        underlay_mtu(batch, address)


def remove_device(vni: int) -> None:
    """Delete the network's VXLAN device (its routes, neighbours and FDB go with it)."""
    with _netlink() as batch:
        rtnl.delete_link(batch, device_name(vni))


def program_peers(vni: int, peers: dict[str, str]) -> None:
    """Make the device's routes, neighbours and FDB entries exactly those for peers
    ({subnet: underlay address of the host that leased it}): three dumps, then the changes
    in one batch."""
    with _netlink() as batch:
        from pyroute2.netlink.rtnl import (
            RTM_DELNEIGH,
            RTM_DELROUTE,
            RTM_GETNEIGH,
            RTM_GETROUTE,
            RTM_NEWNEIGH,
            RTM_NEWROUTE,
        )

        device = rtnl.link(batch, device_name(vni))
        if device is None:
            return
        index = device.index
        wanted_routes = {subnet: vtep(subnet) for subnet in peers}
        wanted_neigh = {vtep(s): vtep_mac(vtep(s)) for s in peers}
        wanted_fdb = {vtep_mac(vtep(s)): address for s, address in peers.items()}
        present = set()
        for route in batch.query(_route(RTM_GETROUTE), NLM_F_DUMP):
            if route.get_attr("RTA_OIF") != index or route["table"] != RT_TABLE_MAIN \
                    or route["proto"] != RTPROT_STATIC:
                continue
            dst = f"{route.get_attr('RTA_DST')}/{route['dst_len']}"
            if wanted_routes.get(dst) == route.get_attr("RTA_GATEWAY"):
                present.add(("route", dst))
            else:
                batch.add(_route(RTM_DELROUTE, dst, oif=index))
        for neigh in batch.query(_neighbour(RTM_GETNEIGH, socket.AF_INET), NLM_F_DUMP):
            dst = neigh.get_attr("NDA_DST")
            if neigh["ifindex"] != index or not neigh["state"] & NUD_PERMANENT:
                continue
            if wanted_neigh.get(dst) == neigh.get_attr("NDA_LLADDR"):
                present.add(("neigh", dst))
            else:
                batch.add(_neighbour(RTM_DELNEIGH, socket.AF_INET, index, NUD_PERMANENT,
                                     dst=dst))
        for entry in batch.query(_neighbour(RTM_GETNEIGH, AF_BRIDGE), NLM_F_DUMP):
            mac, dst = entry.get_attr("NDA_LLADDR"), entry.get_attr("NDA_DST")
            if entry["ifindex"] != index or not (dst and entry["flags"] & NTF_SELF):
                continue
            if wanted_fdb.get(mac) == dst:
                present.add(("fdb", mac))
            else:
                batch.add(_neighbour(RTM_DELNEIGH, AF_BRIDGE, index, NUD_PERMANENT | NUD_NOARP,
                                     NTF_SELF, lladdr=mac, dst=dst))
        for subnet, address in peers.items():
            gateway = vtep(subnet)
            mac = vtep_mac(gateway)
            if ("neigh", gateway) not in present:
                batch.add(_neighbour(RTM_NEWNEIGH, socket.AF_INET, index, NUD_PERMANENT,
                                     dst=gateway, lladdr=mac), REPLACE)
            if ("fdb", mac) not in present:
                batch.add(_neighbour(RTM_NEWNEIGH, AF_BRIDGE, index, NUD_PERMANENT, NTF_SELF,
                                     lladdr=mac, dst=address), REPLACE)
            if ("route", subnet) not in present:
                batch.add(_route(RTM_NEWROUTE, subnet, gateway, index, RTPROT_STATIC,
                                 RTN_UNICAST, RTNH_F_ONLINK), REPLACE)
        batch.send()


def _route(command: int, dst: str | None = None, gateway: str | None = None, oif: int = 0,
           proto: int = 0, kind: int = 0, flags: int = 0):
    """An IPv4 route message of the main table, as IPRoute.route builds it (a dump without
    dst)."""
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    msg = rtmsg()
    msg["header"]["type"] = command
    msg["family"], msg["table"] = socket.AF_INET, RT_TABLE_MAIN
    msg["proto"], msg["type"], msg["flags"] = proto, kind, flags
    if dst is not None:
        address, _, length = dst.partition("/")
        msg["dst_len"] = int(length)
        msg["attrs"] = [("RTA_DST", address)]
        if gateway is not None:
            msg["attrs"].append(("RTA_GATEWAY", gateway))
        msg["attrs"].append(("RTA_OIF", oif))
    return msg


def _neighbour(command: int, family: int, ifindex: int = 0, state: int = 0, flags: int = 0,
               **attrs):
    """A neighbour (AF_INET) or FDB (AF_BRIDGE) message, as IPRoute.neigh and .fdb build it
    (a dump without attributes)."""
    from pyroute2.netlink.rtnl.ndmsg import ndmsg

    msg = ndmsg()
    msg["header"]["type"] = command
    msg["family"], msg["ifindex"], msg["state"], msg["flags"] = family, ifindex, state, flags
    msg["attrs"] = [(f"NDA_{name.upper()}", value) for name, value in attrs.items()]
    return msg
