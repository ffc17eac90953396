"""QoS policies in the state store and their application to attachments.

State: qos/<network>.json  {"network": {policy} | null, "attachments": {"<cid>@<ifname>": {policy}}}
A policy is {"rate", "ceil" (bit/s), "delay" (µs), "buffer", "cbuffer" (bytes), "priority"}.
The network's policy applies to every attachment, present and future; an attachment's own
policy (--container / --interface) replaces it for that attachment.
"""

import contextlib

from circuit_common.errors import InvalidInput, NotFound
from circuit_net.networks import Networks, attachment_netns

FIELDS = ("rate", "ceil", "delay", "buffer", "cbuffer", "priority")


def policy_path(nets: Networks, name: str):
    return nets.store.path("qos", f"{name}.json")


def load(nets: Networks, name: str) -> dict:
    return nets.store.read(policy_path(nets, name)) or {"network": None, "attachments": {}}


def save(nets: Networks, name: str, record: dict) -> None:
    if record["network"] is None and not record["attachments"]:
        nets.store.remove(policy_path(nets, name))
    else:
        nets.store.write(policy_path(nets, name), {"network": record["network"],
                                                   "attachments": record["attachments"]})


def key(attachment: dict) -> str:
    return f"{attachment['containerId']}@{attachment['ifName']}"


def merge(old: dict | None, changes: dict) -> dict:
    """A policy with changes applied over old; refused when it makes no sense."""
    policy = {k: v for k, v in {**(old or {}), **changes}.items() if v is not None}
    if "ceil" in changes and "rate" not in policy:
        raise InvalidInput("--ceiling needs a --rate (now or set before)")
    if "rate" in changes and "ceil" not in changes:
        policy["ceil"] = policy["rate"]  # a rate alone is a flat rate
    if "rate" in policy and policy.get("ceil", policy["rate"]) < policy["rate"]:
        raise InvalidInput(f"ceiling ({policy['ceil'] // 1000} kbit/s) is below the rate "
                           f"({policy['rate'] // 1000} kbit/s); the ceiling is the maximum")
    if not 0 <= policy.get("priority", 0) <= 7:
        raise InvalidInput(f"priority must be 0..7, not {policy['priority']}")
    if not policy:
        raise InvalidInput("nothing to set: give --rate, --ceiling or --delay")
    return policy


def effective(record: dict, attachment: dict) -> dict | None:
    return record["attachments"].get(key(attachment)) or record["network"]


def host_veth(links, attachment: dict) -> str:
    """The host-side veth of an attachment, from its cached CNI result."""
    for iface in attachment["result"].get("interfaces", []):
        if not iface.get("sandbox") and links.kind(iface["name"]) == "veth":
            return iface["name"]
    raise InvalidInput(f"attachment {key(attachment)} has no host-side veth: QoS needs a "
                       "veth-based network (bridge, ptp)")


def shape(policy: dict | None):
    from .tc import Shape

    return None if policy is None else Shape(**{k: policy.get(k) for k in FIELDS})


def apply_all(links, attachments: list[dict], old: dict, new: dict) -> None:
    """Make every attachment's shaping match new, in one batch; if that fails, put back old."""
    try:
        _apply(links, attachments, new, old)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            _apply(links, attachments, old, new)
        raise


def _apply(links, attachments: list[dict], record: dict, previous: dict) -> None:
    """Shape the attachments whose containers still run by record's policies (None:
    unshaped), from previous's; a container that has exited took its veth with it."""
    from . import tc

    planned = [(host_veth(links, a), effective(record, a), effective(previous, a))
               for a in attachments if attachment_netns(a)]
    links.add_ifbs([tc.ifb_name(veth) for veth, policy, _ in planned
                    if policy and policy.get("rate")])
    for veth, policy, before in planned:
        if policy is None:
            tc.teardown_shaping(links, veth)
        else:
            tc.setup_shaping(links, veth, shape(policy), shape(before))
    links.commit(delay=any(policy and policy.get("delay") for _, policy, _ in planned))


def select(nets: Networks, name: str, container=None, interface: str | None = None,
           links=None) -> list[dict]:
    """The attachments of a network that --container / --interface name (all when neither)."""
    attachments = nets.attachments(name).records
    if container is not None:
        chosen = [a for a in attachments if container.matches(a)]
        if not chosen:
            raise NotFound(f"container {container.label} is not connected to network {name}")
        return chosen
    if interface is not None:
        chosen = [a for a in attachments
                  if attachment_netns(a) and host_veth(links, a) == interface]
        if not chosen:
            raise NotFound(f"no attachment of network {name} has host interface {interface}")
        return chosen
    return attachments


# -- called by circuit-net for each attach and detach on a network that has a QoS policy ------

def host_links(attachment: dict) -> list[str]:
    """The host-side interfaces of an attachment and the IFB devices that would shape them."""
    from .tc import ifb_name

    names = [i["name"] for i in attachment["result"].get("interfaces", [])
             if not i.get("sandbox")]
    return names + [ifb_name(name) for name in names]


def attached(nets: Networks, network: dict, attachment: dict) -> None:
    """Shape a new attachment by its network's policy."""
    from .tc import Links

    record = load(nets, network["name"])
    with Links(host_links(attachment)) as links:
        _apply(links, [attachment], record, {"network": None, "attachments": {}})


def detached(nets: Networks, network: dict, attachment: dict) -> None:
    """Remove what shaping left beside the veth (its IFB device), and its own policy."""
    from . import tc

    with tc.Links(host_links(attachment)) as links:
        for name in host_links(attachment):
            if links.kind(name) == "ifb":
                links.delete(name)
        links.commit()
    record = load(nets, network["name"])
    if record["attachments"].pop(key(attachment), None) is not None:
        save(nets, network["name"], record)
