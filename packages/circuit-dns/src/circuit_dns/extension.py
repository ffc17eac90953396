"""circuit-dns in the attachment lifecycle (entry point circuit.extensions: dns): a new
attachment's names are stored and answered before its connect returns (the network's server
started on the first), a detached one's go, a deleted network's files go, and `circuit
restore` rebuilds every network's names from its attachments and starts the server.

On the hook's path: no dnslib, no socket module (control.py talks through _socket)."""

import contextlib
import ipaddress
import os

from circuit_common import extensions
from circuit_common.cli import Context
from circuit_common.errors import CircuitError, InvalidInput
from circuit_common.extensions import Attachment
from circuit_common.validate import check_dns_domain

from . import control, records


def attached(ctx: Context, attachment: Attachment) -> None:
    """Store the attachment's names and have the server answer them; raising (port 53 taken)
    rolls the attach back."""
    record = records.load(ctx.store, attachment.network)
    entry = record["entries"][attachment.key] = records.entry(attachment)
    records.save(ctx.store, record)
    if entry["servers"]:  # a cluster network's: this host's gateway
        records.write_resolv_conf(ctx.store, attachment.network, entry["servers"])
    control.reload(ctx.store, attachment.network)


def bundle_mounts(ctx: Context, network: str) -> list[dict]:
    """The bind mount a runc bundle on the network needs to ask its server by name (`circuit
    hook install`): the network's resolv.conf as /etc/resolv.conf, read-only. Not the hosts
    file: it is replaced (atomically) at every attach, and a bind mount keeps the file it
    found, so a container would see it as its own start left it; the server answers those
    names."""
    return [{"destination": "/etc/resolv.conf", "type": "bind",
             "source": records.resolv_conf_path(ctx.store, network), "options": ["rbind", "ro"]}]


def detached(ctx: Context, attachment: Attachment) -> None:
    """Drop the attachment's names; a server that runs stops answering them (none is started
    for it, and a detach never fails on the server)."""
    record = records.load(ctx.store, attachment.network)
    if record["entries"].pop(attachment.key, None) is not None:
        records.save(ctx.store, record)
        with contextlib.suppress(CircuitError):
            control.reload(ctx.store, start=False)


def network_created(ctx: Context, network: dict) -> None:
    """The network's resolv.conf and hosts file, and its (empty) names."""
    records.write_resolv_conf(ctx.store, network["name"],
                              records.server_addresses(network["config"]))
    if ctx.store.read(records.record_path(ctx.store, network["name"])) is None:
        records.save(ctx.store, {"network": network["name"], "entries": {}})


def network_deleted(ctx: Context, network: str) -> None:
    store = ctx.store
    for path in (records.record_path(store, network), records.resolv_conf_path(store, network),
                 records.hosts_path(store, network)):
        store.remove(path)
    with contextlib.suppress(OSError):
        os.rmdir(records.files_dir(store, network))
    with contextlib.suppress(CircuitError):
        control.reload(store, start=False)


def check_servers(network: dict) -> None:
    """InvalidInput in one line unless the network's config names where its server listens:
    addresses of its own subnets (the gateway), as `network create --dns` writes."""
    from circuit_net.spec import netconf_subnets

    name = network["name"]
    servers = records.server_addresses(network["config"])
    if not servers:
        raise InvalidInput(f"network {name} names no DNS server: give its bridge plugin "
                           '"dns": {"nameservers": [its gateway]} (isGateway: true), as '
                           "network create --dns writes it")
    subnets = netconf_subnets(network["config"])
    for text in servers:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise InvalidInput(f"network {name}: DNS server {text!r} is no IP address") \
                from None
        if not any(ip in subnet for subnet in subnets):
            raise InvalidInput(f"network {name}: DNS server {text} is outside its subnets: "
                               "name its gateway")


def enable(ctx: Context, name: str) -> str:
    """DNS for a network that has none (one from a config file): marked, its files written,
    the names of its running containers stored and answered."""
    from circuit_net.networks import Networks
    from circuit_net.stored import as_attachment

    nets = Networks(ctx)
    with nets.network_lock(name):  # no lock file for a name never created
        network = nets.get(name)
        check_dns_domain(name)
        check_servers(network)
        extensions.enable(ctx, network, "dns")
        running = [a for a in map(as_attachment, nets.attachments(name).records)
                   if a.running()]
        records.save(ctx.store, {"network": name,
                                 "entries": {a.key: records.entry(a) for a in running}})
        if running:
            try:
                control.reload(ctx.store, name)
            except CircuitError:
                extensions.unmark(ctx.store, name, "dns")
                network_deleted(ctx, name)
                raise
    return name


def disable(ctx: Context, name: str) -> str:
    """No DNS for the network any more: its marker, names and files gone, the server told."""
    from circuit_net.networks import Networks

    nets = Networks(ctx)
    with nets.network_lock(name):
        nets.get(name)
        extensions.unmark(ctx.store, name, "dns")
        network_deleted(ctx, name)
    return name


def restore(ctx: Context) -> int:
    """Every DNS network's names again from its attachments whose containers run, its
    resolv.conf from the host's; the server started when a name is to be answered."""
    from circuit_net.networks import Networks
    from circuit_net.stored import as_attachment

    nets = Networks(ctx)
    restored = []
    for name in records.dns_networks(ctx.store):
        with ctx.store.lock("network", name):
            network = nets.get(name)
            running = [a for a in map(as_attachment, nets.attachments(name).records)
                       if a.running()]
            entries = {a.key: records.entry(a) for a in running}
            records.save(ctx.store, {"network": name, "entries": entries})
            records.write_resolv_conf(ctx.store, name,
                                      records.server_addresses(network["config"], entries))
        restored.append((name, bool(running)))
    if any(serving for _, serving in restored):
        control.reload(ctx.store)
    for name, _ in restored:
        print(f"dns restored for {name}")
    return 0
