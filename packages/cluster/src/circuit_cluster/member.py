"""This host as a member of the cluster, from its local files (cluster/ in the state dir):
its join record, its subnet leases and its view of the other hosts, which the reconcile pass
(sync.py) keeps current. circuit-net reaches it as store.cluster: reading a lease is a file
read; only a network's first attach on this host talks to etcd, to lease a subnet.

etcd keys below the prefix (docs/cluster.md):
    records/<path>                     a shared record (replica.py)
    hosts/<host>                       {name, address, joined, lastSeen}
    alive/<host>                       the host's address, bound to its etcd lease
    subnets/<network>/<a.b.c.d-len>    {network, subnet, host, address}: a host subnet lease
    attachments/<host>/<network>/<cid>@<ifname>   {containerId, ifName, ips, pid, target}
"""

import contextlib
import ipaddress
import json
import time

from circuit_common.errors import Conflict, InvalidInput

MAX_CLAIMS = 64  # subnet claims lost to other hosts before giving up


def subnet_key(subnet: str) -> str:
    return subnet.replace("/", "-")


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

    def host(self) -> dict:
        """The join record; InvalidInput when this host has not joined."""
        host = self.store.read(self.host_path)
        if host is None:
            raise InvalidInput("this host has not joined the cluster: run `circuit cluster join "
                               "--address UNDERLAY_IP` first")
        return host

    def view(self) -> dict:
        """The other hosts as the last reconcile pass saw them."""
        return self.store.read(self.view_path) or {"hosts": {}, "attachments": {}}

    def peer_attachments(self, network: str) -> list[dict]:
        """The attachments other hosts published on network, each with its host."""
        return self.view()["attachments"].get(network, [])

    def leases(self) -> list[dict]:
        return self.store.read_all(self.store.path("cluster", "leases")).records

    # -- leases -------------------------------------------------------------------------------

    def local_lease(self, network: dict) -> dict | None:
        """This host's lease of a cluster network, from its local file (None: not leased)."""
        lease = self.store.read(self.lease_path(network["name"]))
        return lease if lease is not None and lease.get("vni") == network["overlay"]["vni"] \
            else None

    def lease(self, network: dict) -> dict:
        """This host's subnet of a cluster network and the overlay's MTU: from the local lease,
        or (first attach here) leased in etcd, with the VXLAN device and routes to the other
        hosts set up before the first container needs them."""
        from . import overlay

        name, spec = network["name"], network["overlay"]
        lease = self.local_lease(network)
        if lease is not None:
            return lease
        with self.store.lock("lease", name):
            lease = self.local_lease(network)
            if lease is not None:
                return lease
            host = self.host()
            subnet = self.claim(network, host)
            mtu = overlay.ensure_device(spec["vni"], subnet, host["address"])
            lease = {"network": name, "subnet": subnet, "vni": spec["vni"], "mtu": mtu,
                     "cidr": spec["subnet"], "masquerade": spec.get("masquerade", True),
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
            held = [json.loads(kv.value) for kv in kvs]
            mine = [h["subnet"] for h in held if h.get("host") == host["name"]]
            if mine:
                return mine[0]
            taken = {h["subnet"] for h in held}
            free = next((str(s) for s in ipaddress.ip_network(spec["subnet"]).subnets(
                new_prefix=spec["hostSubnetSize"]) if str(s) not in taken), None)
            if free is None:
                raise Conflict(f"network {network['name']} has no free /"
                               f"{spec['hostSubnetSize']} left in {spec['subnet']} for host "
                               f"{host['name']}; a host that left frees its subnet")
            value = {"network": network["name"], "subnet": free, "host": host["name"],
                     "address": host["address"], "leased": time.time()}
            if etcd.create(prefix + subnet_key(free).encode(), json.dumps(value).encode()):
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
