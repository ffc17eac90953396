"""circuit-qos in the attachment lifecycle (entry point circuit.extensions: qos): a network's
policy shapes each new attachment, a detached one leaves no IFB device or policy behind,
`circuit restore` re-applies every policy, and in a cluster resync reshapes this host's
attachments when policies changed on another host.

The hook runs attached and detached on every container start and stop: they send the plan this
host keeps for the network's policy (plan.py), without loading pyroute2. Without a plan the
installed code made for that policy (another pyroute2, another circuit, a policy set on another
host), they go through pyroute2 (tc.py), and attached keeps the plan for the next one."""

import os
import sys

from circuit_common.cli import Context
from circuit_common.errors import CircuitError
from circuit_common.extensions import Attachment

from . import devices, plan, policy


def ifnames(attachment: Attachment) -> list[str]:
    """The host-side interfaces of an attachment and the IFB devices that would shape them."""
    names = attachment.host_ifnames
    return names + [devices.ifb_name(name) for name in names]


def attached(ctx: Context, attachment: Attachment) -> None:
    """Shape a new attachment by its network's policy."""
    record = policy.load(ctx.store, attachment.network)
    ready = plan.ready(ctx.store, attachment.network, record["network"])
    if ready is not None and attachment.key not in record["attachments"]:
        if attachment.running():
            plan.shape_fresh(ready, policy.host_veth(attachment))
        return
    from .tc import Links  # pyroute2 (≈ 60 ms): only where tc is spoken

    with Links() as links:
        policy.apply_all(links, [attachment], policy.EMPTY, record)
    if ready is None:
        plan.keep(ctx.store, attachment.network, record["network"])


def detached(ctx: Context, attachment: Attachment) -> None:
    """Remove what shaping left beside the veth (its IFB device), and its own policy."""
    record = policy.load(ctx.store, attachment.network)
    ready = plan.ready(ctx.store, attachment.network, record["network"])
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
    from .tc import Links  # pyroute2 (≈ 60 ms): only where tc is spoken

    with Links() as links:
        for name in ifnames(attachment):
            if links.kind(name) == "ifb":
                links.delete(name)
        links.commit()


def network_deleted(ctx: Context, network: str) -> None:
    ctx.store.remove(policy.policy_path(ctx.store, network))
    plan.forget(ctx.store, network)


def restore(ctx: Context) -> int:
    """Re-apply every stored policy to the attachments whose containers still run."""
    for name in reapply(ctx):
        print(f"qos restored for {name}")
    return 0


def resync(ctx: Context, before: dict) -> None:
    """Policies changed on another host (before: {record name, as qos/blue.json: the record
    before, None when new}); the records here are already the new ones. Shape this host's
    attachments of each such network from the policies before to those now, quietly and
    writing nothing to the store: an attachment no policy covers any more is unshaped, one
    that neither covered is left alone. Under each network's lock, taken in turn (the caller
    holds no lock). An attachment another tool shapes is left to it; a network that fails
    does not stop the others: the first failure is raised at the end."""
    changed = {}
    for name, old in before.items():
        network = _network_of(name)
        if network is not None:
            changed[network] = _policies(old, name)
    failures = []
    for network, old in sorted(changed.items()):
        try:
            _reshape(ctx, network, old)
        except (CircuitError, OSError) as e:  # OSError: netlink's refusals among them
            failures.append(e)
    if failures:
        raise failures[0]


def _network_of(name: str) -> str | None:
    """The network a qos record name (qos/<network>.json) is for; None for any other name."""
    from circuit_common.validate import check_name

    directory, _, file = name.partition("/")
    if directory != "qos" or not file.endswith(".json"):
        return None
    try:
        return check_name(file[:-len(".json")], "network name")
    except CircuitError:
        return None


def _policies(record, name: str) -> dict:
    """The policies of a record from before (EMPTY when there was none, or not one circuit
    wrote)."""
    if not isinstance(record, dict):
        return policy.EMPTY
    try:
        policy.check_record(record, name)
    except (AttributeError, KeyError, TypeError, ValueError):
        return policy.EMPTY
    return policy.policies(record)


def _reshape(ctx: Context, network: str, old: dict) -> None:
    """This host's running attachments of network that old's or the stored policies cover,
    shaped from old's to the stored ones (those another tool shapes left alone, then named)."""
    from circuit_net.networks import Networks

    from .tc import Links, foreign_shaping  # pyroute2 (≈ 60 ms): only where tc is spoken

    with ctx.store.lock("network", network):
        new = policy.load(ctx.store, network)
        if new == policy.EMPTY:
            plan.forget(ctx.store, network)
        else:
            plan.keep(ctx.store, network, new["network"])  # for this host's next attach
        chosen = {}  # veth: attachment
        for attachment in policy.select(Networks(ctx), network):
            if (policy.effective(old, attachment) or policy.effective(new, attachment)) \
                    and attachment.running():
                veth = devices.host_veth(attachment.host_ifnames)
                if veth is not None:  # gone with its container, or no veth to shape
                    chosen[veth] = attachment
        if not chosen:
            return
        with Links() as links:
            fresh = [(veth, a) for veth, a in chosen.items()
                     if policy.effective(new, a) and not policy.effective(old, a)]
            foreign = foreign_shaping(links, [veth for veth, _ in fresh]) if fresh else {}
            mine = [a for veth, a in chosen.items() if veth not in foreign]
            if mine:
                policy.apply_all(links, mine, old, new)
            policy.refuse_foreign(links, [(veth, a) for veth, a in fresh if veth in foreign])


def reapply(ctx: Context):
    """Apply each network's stored policies; yields the network's name when done."""
    from circuit_net.networks import Networks

    from .tc import Links  # pyroute2 (≈ 60 ms): only where tc is spoken

    nets = Networks(ctx)
    names = [os.path.basename(p)[:-len(".json")]
             for p in ctx.store.records(ctx.store.path("qos"))]
    if not names:
        return
    with Links() as links:
        for name in names:
            with ctx.store.lock("network", name):
                path = policy.policy_path(ctx.store, name)
                stored = ctx.store.read(path, check=policy.check_record)
                if stored is not None and "plan" in stored:
                    print(f"circuit: {path} holds netlink requests an older circuit stored "
                          "(its plan), which circuit never sends: the record now holds the "
                          "policy only", file=sys.stderr)
                record = policy.policies(stored)
                # marks networks of older circuit versions; writes only what changed
                policy.save(ctx.store, name, record, if_changed=True)
                policy.apply_all(links, policy.select(nets, name), record, record)
            yield name
