"""This host as a member of the cluster, from its local files (cluster/ in the state dir):
its join record, its subnet leases and its view of the other hosts, which the reconcile pass
(sync.py) keeps current. circuit-net reaches it through the state backend's hooks
(ReplicatedStore, placement.py): reading a lease is a file read; only a network's first
attach on this host talks to etcd, to lease a subnet.

etcd keys below the prefix (docs/cluster.md):
    records/<path>                     a shared record (replica.py)
    hosts/<host>                       {name, address, joined, ttl, lastSeen}
    alive/<host>                       the host's address, bound to its etcd lease
    subnets/<network>/<a.b.c.d-len>    {network, subnet, host, address, leased}: a block
    attachments/<host>/<network>/<cid>@<ifname>   {host, network, containerId, ifName, ips,
                                       pid, target}, bound to the host's lease
    locks/store                        the cluster's store lock, bound to its holder's lease
"""

import contextlib
import ipaddress
import json
import time

from circuit_common.errors import Conflict, InvalidInput

MAX_CLAIMS = 64  # subnet claims lost to other hosts before giving up


def subnet_key(subnet: str) -> str:
    return subnet.replace("/", "-")


def subnet_value(network: str, subnet: str, host: dict) -> bytes:
    """A subnet key's value: which host holds the block, and where the others send to it."""
    return json.dumps({"network": network, "subnet": subnet, "host": host["name"],
                       "address": host["address"], "leased": time.time()}).encode()


def leased_for(lease: dict, network: dict) -> bool:
    """Whether a lease belongs to this very network (not an earlier one of its name)."""
    spec = network["overlay"]
    return (lease.get("vni"), lease.get("cidr"), lease.get("hostSubnetSize"),
            lease.get("created")) == (spec["vni"], spec["subnet"], spec["hostSubnetSize"],
                                      network.get("created"))


def subnet_lease(value: bytes, spec: dict) -> dict | None:
    """A subnet key's value when it is well formed: a host's block of the network's subnet, of
    its host subnet size, and an IPv4 underlay address; None otherwise (ignored: whatever
    wrote it, it must not become a route)."""
    try:
        lease = json.loads(value)
        block = ipaddress.ip_network(lease["subnet"])
        ipaddress.IPv4Address(lease["address"])
        if not (isinstance(lease["host"], str) and block.version == 4
                and block.prefixlen == spec["hostSubnetSize"]
                and block.subnet_of(ipaddress.ip_network(spec["subnet"]))):
            return None
    except (ValueError, TypeError, KeyError):
        return None
    return lease


def refuse_routed(subnet: str, bridge: str | None) -> None:
    """Conflict when this host already routes its block elsewhere than the network's own bridge
    and VXLAN device (its underlay, say)."""
    from circuit_common.proc import routes

    block = ipaddress.ip_network(subnet)
    for route, dev in routes():
        if route.prefixlen and route.version == 4 and route.overlaps(block) \
                and dev != bridge and not dev.startswith("cvx"):
            raise Conflict(f"this host's subnet {block} of the cluster network overlaps its "
                           f"route {route} (dev {dev}); create the network over another "
                           "--subnet")


class Member:
    """This host in the cluster (store: its ReplicatedStore)."""

    def __init__(self, store):
        self.store = store

    @property
    def host_path(self) -> str:
        return self.store.path("cluster", "host.json")

    @property
    def view_path(self) -> str:
        return self.store.path("cluster", "view.json")

    def lease_path(self, network: str) -> str:
        return self.store.path("cluster", "leases", f"{network}.json")

    def joined(self) -> dict | None:
        """The join record (None: this host has not joined); InvalidInput when this state
        dir joined under another etcd prefix (its mirror is of another cluster's records)."""
        host = self.store.read(self.host_path)
        prefix = self.store.etcd_state.prefix
        if host is not None and host.get("prefix") != prefix:
            raise InvalidInput(f"{self.store.root} belongs to the cluster at etcd prefix "
                               f"{host.get('prefix')}, not {prefix}: give that --state, or "
                               "another --local-state")
        return host

    def host(self) -> dict:
        """The join record; InvalidInput when this host has not joined."""
        host = self.joined()
        if host is None:
            raise InvalidInput("this host has not joined the cluster: run `circuit cluster join "
                               "--address UNDERLAY_IP` first")
        return host

    def view(self) -> dict:
        """The other hosts' attachments as the last reconcile pass saw them."""
        return self.store.read(self.view_path) or {"attachments": {}}

    def peer_attachments(self, network: str) -> list[dict]:
        """The attachments other hosts published on network, each with its host."""
        return self.view()["attachments"].get(network, [])

    def hosts_using(self, network: str) -> list[str]:
        """The other hosts with attachments on the network, as etcd has them now (not as this
        host last synced)."""
        etcd = self.store.etcd
        start = len(etcd.key("attachments", ""))
        me = self.host()["name"]
        found = set()
        for kv in etcd.range(etcd.key("attachments", ""))[1]:
            host, _, rest = kv.key[start:].decode(errors="replace").partition("/")
            if host != me and rest.partition("/")[0] == network:
                found.add(host)
        return sorted(found)

    def in_use(self, network: str) -> bool:
        """Whether a container here is attached to the network (or being attached)."""
        return any(any(self.store.records(self.store.path(kind, network)))
                   for kind in ("attachments", "intents"))

    def leases(self) -> list[dict]:
        return self.store.read_all(self.store.path("cluster", "leases")).records

    # -- leases -------------------------------------------------------------------------------

    def local_lease(self, network: dict) -> dict | None:
        """This host's lease of a cluster network, from its local file (None: not leased, or
        leased for an earlier network of that name)."""
        lease = self.store.read(self.lease_path(network["name"]))
        return lease if lease is not None and leased_for(lease, network) else None

    def lease(self, network: dict) -> dict:
        """This host's subnet of a cluster network and the overlay's MTU: from the local lease,
        or (first attach here) leased in etcd, with the VXLAN device and routes to the other
        hosts set up before the first container needs them."""
        name, spec = network["name"], network["overlay"]
        lease = self.local_lease(network)
        if lease is not None:
            return lease
        with self.store.lock("lease", name):
            lease = self.local_lease(network)
            if lease is not None:
                return lease
            stale = self.store.read(self.lease_path(name))
            if stale is not None:  # of a network deleted and made again meanwhile
                self.release(stale)
            host = self.host()
            subnet = self.claim(network, host)
            refuse_routed(subnet, network["config"]["plugins"][0].get("bridge"))
            from . import overlay  # the netlink core: only when this host takes a lease

            mtu = overlay.ensure_device(spec["vni"], subnet, host["address"])
            lease = {"network": name, "subnet": subnet, "vni": spec["vni"], "mtu": mtu,
                     "cidr": spec["subnet"], "hostSubnetSize": spec["hostSubnetSize"],
                     "created": network["created"],
                     "masquerade": spec.get("masquerade", True),
                     "bridge": network["config"]["plugins"][0].get("bridge")}
            self.store.write(self.lease_path(name), lease)
            from .sync import Reconciler

            Reconciler(None, self).program_network(lease)
        return lease

    def claim(self, network: dict, host: dict) -> str:
        """A host subnet of the network for this host: the one it holds in etcd, else the
        first free one, created only if absent (two hosts never get the same)."""
        etcd = self.store.etcd
        spec = network["overlay"]
        prefix = etcd.key("subnets", network["name"], "")
        for _ in range(MAX_CLAIMS):
            _, kvs = etcd.range(prefix)
            held = [lease for kv in kvs if (lease := subnet_lease(kv.value, spec))]
            mine = [h["subnet"] for h in held if h["host"] == host["name"]]
            if mine:
                return mine[0]
            # a key whose value is unreadable still takes its subnet (from the key's name)
            taken = {kv.key[len(prefix):].decode().replace("-", "/") for kv in kvs}
            free = next((str(s) for s in ipaddress.ip_network(spec["subnet"]).subnets(
                new_prefix=spec["hostSubnetSize"]) if str(s) not in taken), None)
            if free is None:
                raise Conflict(f"network {network['name']} has no free /"
                               f"{spec['hostSubnetSize']} left in {spec['subnet']} for host "
                               f"{host['name']}; a host that left frees its subnet")
            if etcd.create(prefix + subnet_key(free).encode(),
                           subnet_value(network["name"], free, host)):
                return free
        raise Conflict(f"could not lease a subnet of network {network['name']}: other hosts "
                       "took each one first; try again")

    def network_deleted(self, network: str) -> None:
        """A cluster network was deleted here: this host's lease goes now, and every host's
        subnet key (the others let go of their devices on their next pass)."""
        lease = self.store.read(self.lease_path(network))
        if lease is not None:
            self.release(lease)
        etcd = self.store.etcd
        etcd.delete(etcd.key("subnets", network, ""), prefix=True)

    def release(self, lease: dict) -> None:
        """Give a lease back: the VXLAN device, the network's bridge when nothing is plugged
        into it, etcd's subnet key (if still this host's), the local file."""
        from circuit_net.link import delete_unused_bridge

        from . import overlay

        overlay.remove_device(lease["vni"])
        if lease.get("bridge"):
            with contextlib.suppress(OSError):  # in use after all: left, as on one host
                delete_unused_bridge(lease["bridge"])
        etcd = self.store.etcd
        key = etcd.key("subnets", lease["network"], subnet_key(lease["subnet"]))
        found = etcd.get(key)
        if found is not None and json.loads(found.value).get("host") == self.host()["name"]:
            etcd.swap(key, found.value, None)
        self.store.remove(self.lease_path(lease["network"]))
