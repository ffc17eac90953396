"""circuit-net: define CNI networks and connect running containers to them.

Usage:
  circuit-net create PATH [--name NAME]
  circuit-net create NAME [--subnet CIDR]... [--ipv6] [--gateway IP] [--driver DRIVER]
                     [--bridge IF] [--parent IF] [--mtu N] [--internal] [--no-masquerade]
                     [--label KV]... [--overlay KIND [--vni N] [--host-subnet-size N]]
                     [--dns | --no-dns] [--isolate MODE] [--no-icc]
  circuit-net spec [NAME (--subnet CIDR)... [--gateway IP] [--driver DRIVER] [--bridge IF]
                   [--parent IF] [--mtu N] [--internal] [--no-masquerade] [--label KV]...
                   [--overlay KIND [--vni N] [--host-subnet-size N]] [--dns | --no-dns]
                   [--isolate MODE] [--no-icc]]
  circuit-net list [--format FMT] [-q] [--running]
  circuit-net inspect NAME [--format FMT]
  circuit-net connect TARGET NETWORK [--ifname IF] [--ip IP]... [--mac MAC] [--args ARGS]
                      [--publish SPEC]... [--cap CAP]... [--name NAME] [--alias NAME]...
                      [--format FMT] [--host-netns]
  circuit-net disconnect TARGET NETWORK
  circuit-net check TARGET NETWORK
  circuit-net gc
  circuit-net delete NAME [--force]
  circuit-net prune [--force] [-q]
  circuit-net (-h | --help)

Also reached as `circuit network ...`. TARGET is a PID or a runc container id; a running
container is one target under both (the same process): a second connect to a network it is on,
by either name, is refused unless --ifname asks for another interface, and disconnect by either
name removes every interface it has there. Tables name a container by its runc id (or, when
connected by PID, by its --name).
`create PATH` reads a .conf/.conflist; `create NAME [--subnet CIDR ...]` writes the conflist
from flags (`spec` prints it): bridge + host-local over every subnet (IPv4 and IPv6) +
portmap + firewall, at the highest cniVersion the plugins share. Without --subnet it picks
the first free /24 of 10.89.0.0/16, 10.90.0.0/15, ... 10.128.0.0/9 (podman's pools), and
with --ipv6 also a random /64 of fd00::/8. A subnet overlapping another network's or a route
of the host is refused. Creating a network again with the same definition changes nothing
("NAME exists, unchanged"); another definition under its name is refused. Deleting a network
removes the bridge its plugins created when no other network uses it.

Options:
  --name NAME      create: network name, instead of the config's "name"; connect: the
                   container's name on the network (DNS, with circuit-dns)
  --alias NAME     connect: another name of the container on the network (repeat for several)
  --format FMT     table or json (default: table; json for inspect)
  -q               names only (not with --format json)
  --ifname IF      interface inside the container (default: the first free ethN)
  --ip IP          request this address, CIDR or not; repeat for IPv4 and IPv6
                   (runtimeConfig "ips", or CNI_ARGS IP); with host-local, one
                   in its range, not the gateway nor another container's
  -p SPEC, --publish SPEC  publish a port: [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]
                   (runtimeConfig "portMappings", for the plugins that declare it)
  --cap CAP        another capability arg, NAME=JSON (bandwidth, ipRanges, aliases, ...)
  --mac MAC        request this MAC (runtimeConfig "mac", or CNI_ARGS MAC)
  --args ARGS      extra CNI_ARGS, KEY=VALUE;KEY=VALUE
  --host-netns     connect even a process in the host's network namespace (PID 1's):
                   its new interface, address and routes change the host's own
  --force          delete: disconnect attached containers first; prune: do not ask
  --running        list: leave out containers that exited (gc releases them)
  --subnet CIDR    a subnet of the network (repeat for several, IPv4 and IPv6; default:
                   a free one picked)
  --ipv6           dual stack: pick an IPv6 subnet too, unless --subnet gives one
  --gateway IP     the gateway in its subnet (default: the subnet's first address)
  --driver DRIVER  bridge, macvlan, ipvlan or ptp [default: bridge]
  --bridge IF      the bridge device (default: cni-NAME)
  --parent IF      macvlan/ipvlan: the host interface they hang off
  --mtu N          the interfaces' MTU
  --internal       no masquerade, no default route: containers reach only each other
  --no-masquerade  no SNAT of traffic leaving the network
  --label KV       KEY=VALUE kept in the config (circuitLabels)
  --overlay KIND   vxlan: a cluster network (etcd state) whose subnet the hosts share out,
                   one --host-subnet-size block each, joined by VXLAN (docs/cluster.md)
  --vni N          the VXLAN network identifier (default: the lowest free one)
  --host-subnet-size N  the prefix length of each host's block (default: 24)
  --dns            containers find each other by name (circuit-dns; the default for bridge
                   networks that are neither --internal nor --overlay, docs/dns.md)
  --no-dns         no DNS server for the network
  --isolate MODE   none, normal or strict [default: none]: normal cuts the network's
                   containers off from every other isolated network's (both ways), strict
                   from every other circuit network's; published ports and LB VIPs still
                   reach them (table inet circuit_isolation, as netavark's isolate)
  --no-icc         the network's containers do not reach each other (as Docker's
                   icc=false: bridge ports isolated, and same-subnet drops in table inet
                   circuit_isolation); they reach the gateway, published ports and LB VIPs

Examples:
  circuit network create sandbox --subnet 10.100.10.0/24 --subnet fd00:100:10::/64
  circuit network create web --ipv6                     # subnets picked: IPv4 and IPv6
  circuit network create /etc/cni/net.d/10-sandbox.conflist
  circuit network connect web-00 sandbox -p 8080:80     # a runc id, or a PID
  circuit network list --format json | jq -r '.[].peers[].ips[]'
  circuit network disconnect web-00 sandbox
  circuit network gc                                    # release what exited
  circuit network delete sandbox --force
"""

import os
import sys

from circuit_common import cli, extensions, output
from circuit_common.config import GLOBAL_HELP
from circuit_common.errors import InvalidInput, NotFound, StateCorrupt, UsageError
from circuit_common.validate import check_dns_domain, check_dns_name, check_mac

from . import cni, runtime
from .intents import owner_alive
from .networks import Networks
from .records import container_name
from .stored import attachment_netns
from .target import resolve


def handle(argv: list[str], ctx: cli.Context) -> int:
    a = cli.parse(__doc__ + "\n" + GLOBAL_HELP, argv)
    nets = Networks(ctx)
    runc_root = ctx.settings.runc_root
    if a["create"] and a["PATH"] and not names_a_network(a["PATH"], a["--name"]):
        record, new = nets.create(a["PATH"], a["--name"])
        print(f"{record['name']} created" if new else f"{record['name']} exists, unchanged")
    elif a["create"]:
        wanted = flags(check_flags_name(a["NAME"] or a["PATH"]), a)
        given = list(wanted.subnets)
        record, new = nets.create_from_flags(wanted)
        if wanted.dns:
            extensions.enable(ctx, record, "dns")
        picked = [str(s) for s in wanted.subnets if s not in given]
        print(f"{record['name']} exists, unchanged" if not new else
              f"{record['name']} created" + (f" ({', '.join(picked)})" if picked else ""))
    elif a["list"]:
        return list_networks(nets, output.check_format(a["--format"], a["-q"]), a["-q"],
                             a["--running"])
    elif a["inspect"]:
        fmt = output.check_format(a["--format"] or "json")
        network = nets.get(a["NAME"])
        attachments = [describe(x) for x in nets.attachments(a["NAME"]).records]
        if fmt == "json":
            output.emit_json({**network, "attachments": attachments})
        else:
            print_inspect(network, attachments)
    elif a["spec"]:
        from .spec import conflist

        output.emit_json(conflist(flags(a["NAME"] or "sandbox", a), nets.plugins,
                                  nets.ipam_dir()))
    elif a["connect"]:
        fmt = output.check_format(a["--format"])
        caps = runtime.capabilities([runtime.parse_publish(p) for p in a["--publish"]],
                                    a["--cap"])
        record = nets.connect(a["NETWORK"], resolve(a["TARGET"], runc_root), a["--ifname"],
                              tuple(runtime.parse_ips(a["--ip"])),
                              a["--mac"] and check_mac(a["--mac"]),
                              tuple(parse_cni_args(a["--args"])), caps,
                              aliases=aliases(a["--name"], a["--alias"], a["NETWORK"]),
                              host_netns=a["--host-netns"])
        if fmt == "json":
            output.emit_json(describe(record))
        else:
            print(f"connected container {a['TARGET']} to network {a['NETWORK']}")
    elif a["disconnect"]:
        nets.disconnect(a["NETWORK"], resolve(a["TARGET"], runc_root, must_run=False))
        print(f"disconnected container {a['TARGET']} from network {a['NETWORK']}")
    elif a["check"]:
        for record in nets.check(a["NETWORK"], resolve(a["TARGET"], runc_root)):
            print(f"container {a['TARGET']} on network {a['NETWORK']} ({record['ifName']}): ok")
    elif a["gc"]:
        released = []
        try:
            for name, record in nets.gc():  # under a network's lock: released after
                ips = ", ".join(cni.result_ips(record.get("result") or {})) or "no address"
                print(f"released {record['containerId']} {record['ifName']} ({ips}) "
                      f"from network {name}")
                released.append((name, record))
        finally:
            nets.notify_released(released)
    elif a["delete"]:
        for record in nets.delete(a["NAME"], a["--force"]):
            print(f"disconnected container {record['circuit']['target']} from network "
                  f"{a['NAME']}")
        print(f"{a['NAME']} deleted")
    elif a["prune"]:
        prune(nets, a["--force"], a["-q"])
    return 0


CONFIG_SUFFIXES = (".conf", ".conflist", ".json")


def names_a_network(path: str, name: str | None) -> bool:
    """Whether create's PATH is a plain word that is no file: a network from flags."""
    if os.path.exists(path) or "/" in path or path.endswith(CONFIG_SUFFIXES):
        return False
    if name is not None:
        raise UsageError(f"no config file {path!r}; to create a network named {path} from "
                         "flags leave out --name")
    return True


def check_flags_name(name: str) -> str:
    """A network name with flags, never a config file's path."""
    if "/" in name or name.endswith(CONFIG_SUFFIXES):
        raise UsageError(f"{name!r} is a config file, not a network name: create from a file "
                         "without --subnet and the other flags, or give a plain name")
    return name


def flags(name: str, a: dict):
    """The network that create/spec's flags describe; DNS by default only when a tool
    provides it (circuit-dns), and asked for in one line when none does."""
    from .spec import Flags

    dns = True if a["--dns"] else False if a["--no-dns"] else None
    subnets = a["--subnet"] or ([] if a["create"] else ["10.100.10.0/24"])
    wanted = Flags(name, subnets, a["--gateway"], a["--driver"], a["--bridge"], a["--parent"],
                   a["--mtu"], a["--internal"], not a["--no-masquerade"], a["--label"],
                   a["--overlay"], a["--vni"], a["--host-subnet-size"], dns, a["--ipv6"],
                   a["--isolate"], not a["--no-icc"])
    if wanted.dns and extensions.provided("dns") is None:
        if dns:
            raise NotFound("--dns needs circuit-dns, which is not installed: install it, or "
                           "leave --dns out")
        wanted.dns = False
    if wanted.dns:
        check_dns_domain(name)
    return wanted


def aliases(name: str | None, more: list[str], network: str) -> tuple[str, ...]:
    """connect's --name and --alias values, checked as host names (NAME.NETWORK too), without
    repeats."""
    return tuple(dict.fromkeys(check_dns_name(n, "container name", network) for n in
                               ([name] if name else []) + more))


def prune(nets: Networks, force: bool, quiet: bool) -> None:
    """Delete the networks without attachments, asking first on a terminal unless force;
    StateCorrupt afterwards for records that could not be read (their networks are kept)."""
    names, errors = nets.unused()
    if names and not force and sys.stdin.isatty():
        answer = input(f"delete {len(names)} network(s) without attachments: "
                       f"{', '.join(names)}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return
    for name in nets.prune(names):
        print(name if quiet else f"{name} deleted")
    if errors:
        raise StateCorrupt(f"{errors[0]}" + (f" (and {len(errors) - 1} more)"
                                             if len(errors) > 1 else ""))


def describe(attachment: dict, netns: str | None = None) -> dict:
    """An attachment as users see it: who, where, which addresses (netns: its container's,
    when the caller knows it already)."""
    from .cni import result_ips, result_mac
    from .stored import attachment_netns

    meta = attachment["circuit"]
    return {"container_id": attachment["containerId"], "pid": meta["pid"],
            "target": meta["target"], "name": container_name(meta),
            "netns": (attachment_netns(attachment) if netns is None else netns) or None,
            "ifname": attachment["ifName"], "ips": result_ips(attachment["result"]),
            "mac": result_mac(attachment["result"], attachment["ifName"]),
            "ports": runtime.describe_ports(
                (attachment.get("capabilityArgs") or {}).get("portMappings") or []),
            "created": meta["created"], "result": attachment["result"]}


def print_inspect(network: dict, attachments: list[dict]) -> None:
    """A network and its attachments, for people: its plugin chain, then one row each."""
    config = network["config"]
    chain = " -> ".join(p["type"] for p in config["plugins"])
    print(f"network {network['name']}: {chain} (CNI {config['cniVersion']})")
    output.emit(output.render_table(
        ["container", "pid", "ifname", "ips", "mac", "ports"],
        [(x["name"], x["pid"], x["ifname"], ", ".join(x["ips"]) or "-", x["mac"] or "-",
          ", ".join(x["ports"]) or "-")
         for x in attachments], min_width=10))


def _ip_key(peer: dict) -> tuple:
    """Peers by address: IPv4 before IPv6, numerically (inet_pton: thousands of peers)."""
    import _socket as socket  # for list only; the C module: socket's enums cost ≈ 5 ms

    if not peer["ips"]:
        return (True, 0, b"", peer["container_id"])
    address = peer["ips"][0].partition("/")[0]
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return (False, family == socket.AF_INET6, socket.inet_pton(family, address),
            peer["container_id"])


def peer_elsewhere(entry: dict) -> dict:
    """An attachment another host published, shaped as list shows this host's."""
    return {"container_id": entry["containerId"], "pid": entry["pid"],
            "ifname": entry["ifName"], "ips": entry["ips"], "ports": [], "state": "attached",
            "host": entry["host"]}


def describe_peer(peer: dict) -> str:
    """A peer in the table: its address, then pid, host in a cluster, state unless attached,
    published ports."""
    notes = [peer.get("name") or str(peer["pid"]), *([peer["host"]] if "host" in peer else []),
             *([] if peer["state"] == "attached" else [peer["state"]]), *peer["ports"]]
    return f"{peer['ips'][0].partition('/')[0]} ({', '.join(notes)})"


def container_netns(attachments: list[dict]) -> list[str]:
    """Each attachment's container netns ("" once it exited): one /proc read per container,
    however many attachments it has."""
    seen: dict[tuple[int, int], str] = {}
    for a in attachments:
        key = (a["circuit"]["pid"], a["circuit"]["start_time"])
        if key not in seen:
            seen[key] = attachment_netns(a)
    return [seen[a["circuit"]["pid"], a["circuit"]["start_time"]] for a in attachments]


def state(op: str | None, netns: str) -> str:
    """A peer's state in `network list`: an operation under way, else whether it runs."""
    return {"add": "attaching", "del": "detaching",
            "interrupted": "interrupted (gc finishes it)"}.get(
        op, "attached" if netns else "exited")


def list_networks(nets: Networks, fmt: str, quiet: bool, running: bool = False) -> int:
    listing = nets.all()
    errors = list(listing.errors)
    rows = []
    for network in listing.records:
        attached = nets.attachments_listed(network["name"])
        intents = nets.journal.listing(network["name"])
        errors.extend(attached.errors + intents.errors)
        ops = {(i["attachment"]["containerId"], i["attachment"]["ifName"]):
               i["op"] if owner_alive(i) else "interrupted" for i in intents.records}
        netns = container_netns(attached.records)
        here = sorted(({"container_id": a["containerId"], "pid": a["circuit"]["pid"],
                        "name": container_name(a["circuit"]),
                        "ifname": a["ifName"], "ips": a["ips"], "ports": a["ports"],
                        "state": state(ops.get((a["containerId"], a["ifName"])), ns)}
                       for a, ns in zip(attached.records, netns, strict=True)
                       if not running or ns), key=_ip_key)
        config = network["config"]
        host = nets.store.host_name()
        if host is not None:
            here = [{**p, "host": host} for p in here] + sorted(
                (peer_elsewhere(a) for a in nets.peers_elsewhere(network["name"])), key=_ip_key)
        rows.append({"name": network["name"], "type": config["plugins"][0]["type"],
                     "plugins": [p["type"] for p in config["plugins"]],
                     "version": config["cniVersion"], "peers": here})
    for error in errors:
        print(f"circuit: {error}", file=sys.stderr)
    if quiet:
        output.emit_names([r["name"] for r in rows])
    elif fmt == "json":
        output.emit_json(rows)
    else:
        output.emit(output.render_table(
            ["name", "type", "version", "peers"],
            [(r["name"], r["type"], r["version"],
              ", ".join(describe_peer(p) for p in r["peers"] if p["ips"])) for r in rows]))
    return StateCorrupt.exit_code if errors else 0


def parse_cni_args(text: str | None) -> list[tuple[str, str]]:
    """K=V;K=V from --args as a list of pairs."""
    pairs = []
    for item in filter(None, (text or "").split(";")):
        key, eq, value = item.partition("=")
        if not eq or not key or not item.isprintable():
            raise InvalidInput(f"bad --args item {item!r}: use KEY=VALUE;KEY=VALUE")
        pairs.append((key, value))
    return pairs


def main(argv: list[str] | None = None) -> int:
    return cli.run(handle, argv)


