"""Cluster policy for networks, behind the state backend's hooks (ReplicatedStore): a cluster
network's VNI, and a network's config as one host runs it (this host's subnet of a cluster
network, this host's IPAM directory for a network from flags)."""

import ipaddress

from circuit_common.errors import Conflict
from circuit_net.spec import MAX_VNI


def place_overlay(requested: dict, networks: list[dict]) -> dict:
    """The overlay part of a cluster network's record: its VNI (the lowest free one unless
    one is requested) and how the subnet is shared out among hosts."""
    taken = {n["overlay"]["vni"] for n in networks if n.get("overlay")}
    vni = requested["vni"] or next(v for v in range(1, MAX_VNI + 1) if v not in taken)
    if vni in taken:
        raise Conflict(f"--vni {vni} is another cluster network's; choose another")
    return {**requested, "vni": vni}


def host_config(netconf: dict, lease: dict, data_dir: str | None) -> dict:
    """A cluster network's config on this host: host-local over this host's subnet (its first
    address the gateway) with this host's data_dir (None: the plugin's default), the overlay's
    MTU; with DNS, the CNI result names this host's gateway as the server."""
    subnet = ipaddress.ip_network(lease["subnet"])
    conf = with_data_dir(netconf, data_dir)
    main = conf["plugins"][0]
    main["ipam"]["ranges"] = [[{"subnet": str(subnet), "gateway": str(subnet[1])}]]
    main["mtu"] = lease["mtu"]
    if isinstance(main.get("dns"), dict):
        main["dns"] = {**main["dns"], "nameservers": [str(subnet[1])]}
    return conf


def with_data_dir(netconf: dict, data_dir: str | None) -> dict:
    """A copy of a network from flags whose host-local keeps its reservations in data_dir
    (None: the plugin's default)."""
    import json

    conf = json.loads(json.dumps(netconf))  # a deep copy (json is loaded already; copy is not)
    ipam = conf["plugins"][0]["ipam"]
    ipam.pop("dataDir", None)
    if data_dir:
        ipam["dataDir"] = data_dir
    return conf


def network_here(member, network: dict, ipam_dir: str | None, lease: bool) -> dict:
    """A network record as this host (member) runs it: a network from flags gets this host's
    IPAM directory (every DEL must see what the ADD saw), and a cluster network runs over the
    subnet this host leased (as stored before its first attach here; with lease: leased
    now)."""
    if not network.get("overlay"):
        if network.get("source") != "flags":
            return network
        return {**network, "config": with_data_dir(network["config"], ipam_dir)}
    found = member.lease(network) if lease else member.local_lease(network)
    if found is None:
        return network
    return {**network, "config": host_config(network["config"], found, ipam_dir)}
