"""circuit-qos: rate, ceiling and delay for a network's containers, with live counters.

Usage:
  circuit-qos set [--rate R] [--ceiling C] [--delay D] [--buffer B] [--cbuffer B]
                  [--priority P] [--container TARGET] [--interface IFACE] NETWORK
  circuit-qos reset [--container TARGET] [--interface IFACE] NETWORK
  circuit-qos show [NETWORK] [--format FMT] [-q]
  circuit-qos restore
  circuit-qos (-h | --help)

Also reached as `circuit network qos ...`. A network's policy shapes every container on it, now
and later, in both directions; --container or --interface sets one attachment's own policy.
`set` again changes only the values given (a --rate alone is a flat rate). See docs/qos.md.

Options:
  --rate R            guaranteed rate: kbit/s when a bare number (5000), or 5mbit, 800kbit
  --ceiling C         maximum rate when there is spare bandwidth (default: the rate)
  --delay D           latency added on the way into the container: 50ms, 1s, 500us
  --buffer B          HTB burst in bytes (15k)
  --cbuffer B         HTB ceiling burst in bytes
  --priority P        HTB class priority 0..7
  --container TARGET  one container's attachment (PID or runc id)
  --interface IFACE   one attachment by its host-side interface
  --format FMT        table or json [default: table]
  -q                  the shaped containers only (PID or runc id, as connected)

Examples:
  circuit network qos set --rate 5000 --ceiling 6000 sandbox    # 5 Mbit/s, up to 6
  circuit network qos set --delay 50ms sandbox                  # rate kept, delay added
  circuit network qos set --rate 1mbit --container web-00 sandbox
  circuit network qos show sandbox --format json
  circuit network qos show                                      # every network
  circuit network qos reset sandbox
"""

import copy
import sys

from circuit_common import cli, output
from circuit_common.config import GLOBAL_HELP
from circuit_common.errors import Conflict, InvalidInput, StateCorrupt
from circuit_common.validate import ascii_number, check_ifname
from circuit_net.networks import Networks
from circuit_net.stored import as_attachment
from circuit_net.target import resolve

from . import extension
from . import policy as qos
from .units import format_delay, format_rate, parse_delay, parse_rate, parse_size


def changes_from(a: dict) -> dict:
    """The policy values given on the command line, parsed and checked."""
    changes = {}
    if a["--rate"] is not None:
        changes["rate"] = parse_rate(a["--rate"])
    if a["--ceiling"] is not None:
        changes["ceil"] = parse_rate(a["--ceiling"])
    if a["--delay"] is not None:
        changes["delay"] = parse_delay(a["--delay"])
    for option, field in (("--buffer", "buffer"), ("--cbuffer", "cbuffer")):
        if a[option] is not None:
            changes[field] = parse_size(a[option])
    if a["--priority"] is not None:
        priority = ascii_number(a["--priority"])
        if priority is None:
            raise InvalidInput(f"priority must be 0..7, not {a['--priority']!r}")
        changes["priority"] = priority
    if not changes:
        raise InvalidInput("nothing to set: give --rate, --ceiling or --delay")
    return changes


def describe(policy: dict | None, direction: str = "in") -> str:
    """A policy as show prints it; out of the container only the rate applies (the delay is
    added on the way in)."""
    parts = []
    if policy and "rate" in policy:
        parts.append(f"rate {format_rate(policy['rate'])} ceil {format_rate(policy['ceil'])}")
    if policy and "delay" in policy and direction == "in":
        parts.append(f"delay {format_delay(policy['delay'])}")
    return " ".join(parts) or "unshaped"


def handle(argv: list[str], ctx: cli.Context) -> int:
    a = cli.parse(__doc__ + "\n" + GLOBAL_HELP, argv)
    nets = Networks(ctx)
    if a["restore"]:
        return extension.restore(ctx)
    name = a["NETWORK"]
    if a["show"]:
        return show(nets, name, output.check_format(a["--format"], a["-q"]), a["-q"])
    if a["--container"] and a["--interface"]:
        raise InvalidInput("give --container or --interface, not both")
    if a["--interface"] is not None:
        check_ifname(a["--interface"])
    changes = changes_from(a) if a["set"] else None
    from .tc import Links  # pyroute2 (≈ 60 ms): only where tc is spoken

    with nets.network_lock(name):  # no lock file for a name never created
        network = nets.get(name)
        if a["set"] and any(p.get("type") == "bandwidth" for p in network["config"]["plugins"]):
            raise Conflict(f"network {name}'s chain has the CNI bandwidth plugin, which shapes "
                           "the same veths: take it out of the chain to shape with circuit "
                           "(or shape with its bandwidth capability: connect --cap)")
        with Links() as links:
            target = resolve(a["--container"], ctx.settings.runc_root, must_run=False) \
                if a["--container"] else None
            chosen = qos.select(nets, name, target, a["--interface"])
            old = qos.load(nets.store, name)
            new = copy.deepcopy(old)
            scoped = target is not None or a["--interface"] is not None
            if a["set"]:
                if scoped:
                    for attachment in chosen:
                        new["attachments"][attachment.key] = qos.merge(
                            qos.effective(old, attachment), changes)
                else:
                    new["network"] = qos.merge(old["network"], changes)
                if "delay" in changes:
                    from .tc import probe_netem  # pyroute2 (≈ 60 ms): only where tc is spoken

                    probe_netem(links)
            elif scoped:
                for attachment in chosen:
                    new["attachments"].pop(attachment.key, None)
            else:
                new = {"network": None, "attachments": {}}
            # the store first: a kill while the kernel changes leaves the new policies, which
            # `circuit restore` applies; a refusal puts the old ones back in both
            qos.save(nets.store, name, new, keep_empty=True)
            try:
                qos.apply_all(links, chosen, old, new)
            except BaseException:
                qos.save(nets.store, name, old)
                raise
            qos.save(nets.store, name, new)
    print(f"qos {'configured' if a['set'] else 'reset'} for {name}")
    return 0


def show(nets: Networks, name: str | None, fmt: str, quiet: bool) -> int:
    """The network's policy (every network's, without a name) and each attachment's policy and
    live counters (quiet: only the containers that have a policy, from the store)."""
    unreadable: list[str] = []
    if name is not None:
        nets.get(name)
        names = [name]
    else:
        listing = nets.all()
        names = sorted(network["name"] for network in listing.records)
        unreadable = list(listing.errors)
    if quiet:
        output.emit_names(list(dict.fromkeys(
            attached["circuit"]["target"] for network in names
            for attached in nets.attachments(network).records
            if qos.effective(qos.load(nets.store, network), as_attachment(attached)))))
        return report(unreadable)
    from .tc import Links  # pyroute2 (≈ 60 ms): only where tc is spoken

    with Links() as links:
        shown = [qos.status(nets, links, network) for network in names]
    if fmt == "json":
        output.emit_json(shown[0] if name is not None else shown)
        return report(unreadable)
    for i, status in enumerate(shown):
        print(("\n" if i else "") + f"network {status['network']}: "
              f"{describe(status['policy'])}")
        table = []
        for row in status["attachments"]:
            for direction in ("in", "out"):
                c = row["counters"].get(direction, {})
                table.append((row["name"], row["interface"] or "-", direction,
                              describe(row["policy"], direction),
                              c.get("bytes", "-"), c.get("packets", "-"), c.get("drops", "-"),
                              c.get("overlimits", "-")))
        output.emit(output.render_table(["container", "interface", "dir", "policy", "bytes",
                                         "packets", "drops", "overlimits"], table,
                                        min_width=10))
    return report(unreadable)


def report(unreadable: list[str]) -> int:
    """The networks show could not read, one line each; exit 9 when there are any."""
    for error in unreadable:
        print(f"circuit: {error}", file=sys.stderr)
    return StateCorrupt.exit_code if unreadable else 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(handle, argv)
