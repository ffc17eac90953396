"""circuit-qos in the attachment lifecycle (entry point circuit.extensions: qos): a network's
policy shapes each new attachment, a detached one leaves no IFB device or policy behind, and
`circuit restore` re-applies every policy."""

import os

from circuit_common.cli import Context
from circuit_common.extensions import Attachment

from . import policy


def ifnames(attachment: Attachment) -> list[str]:
    """The host-side interfaces of an attachment and the IFB devices that would shape them."""
    from .tc import ifb_name

    names = attachment.host_ifnames
    return names + [ifb_name(name) for name in names]


def attached(ctx: Context, attachment: Attachment) -> None:
    """Shape a new attachment by its network's policy."""
    from .tc import Links

    record = policy.load(ctx.store, attachment.network)
    with Links(ifnames(attachment)) as links:
        policy.apply(links, [attachment], record, policy.EMPTY)


def detached(ctx: Context, attachment: Attachment) -> None:
    """Remove what shaping left beside the veth (its IFB device), and its own policy."""
    from .tc import Links

    with Links(ifnames(attachment)) as links:
        for name in ifnames(attachment):
            if links.kind(name) == "ifb":
                links.delete(name)
        links.commit()
    record = policy.load(ctx.store, attachment.network)
    if attachment.key in record["attachments"]:
        record = {**record, "attachments": {k: v for k, v in record["attachments"].items()
                                            if k != attachment.key}}
        policy.save(ctx.store, attachment.network, record)


def network_deleted(ctx: Context, network: str) -> None:
    ctx.store.remove(policy.policy_path(ctx.store, network))


def restore(ctx: Context) -> int:
    """Re-apply every stored policy to the attachments whose containers still run."""
    from circuit_net.networks import Networks

    from .tc import Links

    nets = Networks(ctx)
    names = [os.path.basename(p)[:-len(".json")]
             for p in ctx.store.records(ctx.store.path("qos"))]
    if not names:
        return 0
    with Links() as links:
        for name in names:
            with ctx.store.lock("network", name):
                record = policy.load(ctx.store, name)
                policy.save(ctx.store, name, record)  # marks networks of older circuit versions
                policy.apply_all(links, policy.select(nets, name), record, record)
            print(f"qos restored for {name}")
    return 0
