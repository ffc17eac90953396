"""The VXLAN overlay of a cluster network on this host, as flannel's vxlan backend builds it:
one device per network (its VNI, no learning), its VTEP address the host subnet's first
address (/32), and for every other host's subnet a route, a neighbour and an FDB entry that
send it to that host's underlay address. VTEP MACs are derived from the VTEP address
(0a:58:<IPv4>, as the CNI plugins derive theirs), so hosts need not publish them.

ensure_device / remove_device and program_peers (which adds what is missing and removes what
is no longer wanted) are the whole contract, all through pyroute2; program_masquerade keeps the
one nftables table that lets containers reach addresses outside the cluster."""

import contextlib
import ipaddress
import os
import socket

from circuit_common.errors import Conflict, EnvironmentFault

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer IPv4 + UDP + VXLAN + inner Ethernet headers
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
RTPROT_STATIC = 4


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
def _ipr():
    """pyroute2's IPRoute; a request the kernel refuses is one line (EnvironmentFault)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as e:
        raise EnvironmentFault(f"the kernel refused a VXLAN device, route, neighbour or FDB "
                               f"change: {os.strerror(e.code)} (errno {e.code})") from None


def _index(ipr, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def underlay_mtu(ipr, address: str) -> int:
    """The MTU of the interface that holds this host's underlay address."""
    for msg in ipr.get_addr(family=socket.AF_INET):
        if msg.get_attr("IFA_ADDRESS") == address:
            return ipr.link("get", index=msg["index"])[0].get_attr("IFLA_MTU")
    raise EnvironmentFault(f"no interface here has the cluster address {address}; join again "
                           "with --address of this host's underlay interface")


def ensure_device(vni: int, subnet: str, address: str) -> int:
    """The network's VXLAN device, up with its VTEP address, sending from address (made again
    when it sends from another); its MTU (the containers' too)."""
    name, local = device_name(vni), vtep(subnet)
    with _ipr() as ipr:
        mtu = underlay_mtu(ipr, address) - VXLAN_OVERHEAD
        index = _index(ipr, name)
        if index is not None and _vxlan_local(ipr, index) not in (address, None):
            ipr.link("del", index=index)
            index = None
        if index is None:
            ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=address,
                     vxlan_port=VXLAN_PORT, vxlan_learning=0, address=vtep_mac(local), mtu=mtu)
            index = _index(ipr, name)
        else:
            info = ipr.link("get", index=index)[0].get_attr("IFLA_LINKINFO")
            data = info.get_attr("IFLA_INFO_DATA") if info else None
            if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan" \
                    or data.get_attr("IFLA_VXLAN_ID") != vni:
                raise Conflict(f"interface {name} exists and is not VXLAN {vni}; remove it")
            mtu = ipr.link("get", index=index)[0].get_attr("IFLA_MTU")
        ipr.addr("replace", index=index, address=local, prefixlen=32)
        ipr.link("set", index=index, state="up")
        return mtu


def _vxlan_local(ipr, index: int) -> str | None:
    info = ipr.link("get", index=index)[0].get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info else None
    return data.get_attr("IFLA_VXLAN_LOCAL") if data else None


def check_address(address: str) -> None:
    """EnvironmentFault unless an interface here holds address."""
    with _ipr() as ipr:
        underlay_mtu(ipr, address)


def remove_device(vni: int) -> None:
    """Delete the network's VXLAN device (its routes, neighbours and FDB go with it)."""
    with _ipr() as ipr:
        index = _index(ipr, device_name(vni))
        if index is not None:
            ipr.link("del", index=index)


def program_peers(vni: int, peers: dict[str, str]) -> None:
    """Make the device's routes, neighbours and FDB entries exactly those for peers
    ({subnet: underlay address of the host that leased it})."""
    with _ipr() as ipr:
        index = _index(ipr, device_name(vni))
        if index is None:
            return
        wanted_routes = {subnet: vtep(subnet) for subnet in peers}
        wanted_neigh = {vtep(s): vtep_mac(vtep(s)) for s in peers}
        wanted_fdb = {vtep_mac(vtep(s)): address for s, address in peers.items()}
        present = set()
        for route in ipr.route("dump", oif=index, family=socket.AF_INET):
            if route["proto"] != RTPROT_STATIC:
                continue
            dst = f"{route.get_attr('RTA_DST')}/{route['dst_len']}"
            if wanted_routes.get(dst) == route.get_attr("RTA_GATEWAY"):
                present.add(("route", dst))
            else:
                ipr.route("del", dst=dst, oif=index)
        for neigh in ipr.neigh("dump", ifindex=index, family=socket.AF_INET):
            dst = neigh.get_attr("NDA_DST")
            if not neigh["state"] & NUD_PERMANENT:
                continue
            if wanted_neigh.get(dst) == neigh.get_attr("NDA_LLADDR"):
                present.add(("neigh", dst))
            else:
                ipr.neigh("del", dst=dst, ifindex=index)
        for entry in ipr.fdb("dump", ifindex=index):
            mac, dst = entry.get_attr("NDA_LLADDR"), entry.get_attr("NDA_DST")
            if not (dst and entry["flags"] & NTF_SELF):
                continue
            if wanted_fdb.get(mac) == dst:
                present.add(("fdb", mac))
            else:
                ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst, flags=NTF_SELF)
        for subnet, address in peers.items():
            gateway = vtep(subnet)
            mac = vtep_mac(gateway)
            if ("neigh", gateway) not in present:
                ipr.neigh("replace", dst=gateway, lladdr=mac, ifindex=index,
                          state=NUD_PERMANENT)
            if ("fdb", mac) not in present:
                ipr.fdb("replace", ifindex=index, lladdr=mac, dst=address,
                        state=NUD_PERMANENT, flags=NTF_SELF)
            if ("route", subnet) not in present:
                ipr.route("replace", dst=subnet, gateway=gateway, oif=index,
                          flags=RTNH_F_ONLINK, proto=RTPROT_STATIC)
