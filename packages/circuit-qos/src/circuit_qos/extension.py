"""circuit-qos in the attachment lifecycle (entry point circuit.extensions: qos): a network's
policy shapes each new attachment, a detached one leaves no IFB device or policy behind, and
`circuit restore` re-applies every policy.

The hook runs attached and detached on every container start and stop: they send the plan kept
with the network's policy (plan.py), without loading pyroute2. Without a plan the installed
code made (another pyroute2, another circuit), they go through pyroute2 (tc.py)."""

import os

from circuit_common.cli import Context
from circuit_common.extensions import Attachment

from . import devices, plan, policy


def ifnames(attachment: Attachment) -> list[str]:
    """The host-side interfaces of an attachment and the IFB devices that would shape them."""
    names = attachment.host_ifnames
    return names + [devices.ifb_name(name) for name in names]


def attached(ctx: Context, attachment: Attachment) -> None:
    """Shape a new attachment by its network's policy."""
    record = policy.load(ctx.store, attachment.network)
    ready = plan.ready(record)
    if ready is not None and attachment.key not in record["attachments"]:
        if attachment.running():
            plan.shape_fresh(ready, policy.host_veth(attachment))
        return
    from .tc import Links

    with Links(ifnames(attachment)) as links:
        policy.apply_all(links, [attachment], policy.EMPTY, record)


def detached(ctx: Context, attachment: Attachment) -> None:
    """Remove what shaping left beside the veth (its IFB device), and its own policy."""
    record = policy.load(ctx.store, attachment.network)
    ready = plan.ready(record)
    if ready is not None:
        plan.delete_ifbs(ready, attachment.host_ifnames)
    else:
        _delete_ifbs(attachment)
    if attachment.key in record["attachments"]:
        record = {**record, "attachments": {k: v for k, v in record["attachments"].items()
                                            if k != attachment.key}}
        policy.save(ctx.store, attachment.network, record)


def _delete_ifbs(attachment: Attachment) -> None:
    """The IFB devices of an attachment deleted through pyroute2."""
    from .tc import Links

    with Links(ifnames(attachment)) as links:
        for name in ifnames(attachment):
            if links.kind(name) == "ifb":
                links.delete(name)
        links.commit()


def network_deleted(ctx: Context, network: str) -> None:
    ctx.store.remove(policy.policy_path(ctx.store, network))


def restore(ctx: Context) -> int:
    """Re-apply every stored policy to the attachments whose containers still run."""
    for name in reapply(ctx):
        print(f"qos restored for {name}")
    return 0


def resync(ctx: Context, before: dict) -> None:
    """Policies changed on another host (before: {record name: the record before, None when
    new}): apply them to this host's attachments, quietly."""
    for _ in reapply(ctx):
        pass


def reapply(ctx: Context):
    """Apply each network's stored policies; yields the network's name when done."""
    from circuit_net.networks import Networks

    from .tc import Links

    nets = Networks(ctx)
    names = [os.path.basename(p)[:-len(".json")]
             for p in ctx.store.records(ctx.store.path("qos"))]
    if not names:
        return
    with Links() as links:
        for name in names:
            with ctx.store.lock("network", name):
                record = policy.load(ctx.store, name)
                policy.save(ctx.store, name, record)  # marks networks of older circuit versions
                policy.apply_all(links, policy.select(nets, name), record, record)
            yield name
