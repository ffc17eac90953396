"""circuit-net: define CNI networks and connect running containers to them.

Usage:
  circuit-net create PATH [--name NAME]
  circuit-net list [--format FMT] [-q]
  circuit-net inspect NAME [--format FMT]
  circuit-net spec
  circuit-net connect TARGET NETWORK [--ifname IF] [--ip IP]... [--mac MAC] [--args ARGS]
                      [--publish SPEC]... [--cap CAP]... [--format FMT]
  circuit-net disconnect TARGET NETWORK
  circuit-net check TARGET NETWORK
  circuit-net gc
  circuit-net delete NAME [--force]
  circuit-net (-h | --help)

Also reached as `circuit network ...`. TARGET is a PID or a runc container id.

Options:
  --name NAME      network name, instead of the config's "name"
  --format FMT     table or json (default: table; json for inspect)
  -q               names only
  --ifname IF      interface inside the container (default: the first free ethN)
  --ip IP          request this address, CIDR or not; repeat for IPv4 and IPv6
                   (runtimeConfig "ips", or CNI_ARGS IP)
  -p SPEC, --publish SPEC  publish a port: [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]
                   (runtimeConfig "portMappings", for the plugins that declare it)
  --cap CAP        another capability arg, NAME=JSON (bandwidth, ipRanges, aliases, ...)
  --mac MAC        request this MAC (runtimeConfig "mac", or CNI_ARGS MAC)
  --args ARGS      extra CNI_ARGS, KEY=VALUE;KEY=VALUE
  --force          disconnect attached containers before deleting
"""

import ipaddress
import sys

from circuit_common import cli, output
from circuit_common.config import GLOBAL_HELP
from circuit_common.errors import StateCorrupt
from circuit_common.validate import check_mac

from . import cni, runtime
from .networks import Networks, parse_cni_args
from .target import resolve

SPEC = {
    "cniVersion": "1.0.0",
    "name": "sandbox",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "sandbox0",
            "isGateway": True,
            "ipMasq": True,
            "ipam": {
                "type": "host-local",
                "subnet": "10.100.10.0/24",
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


def handle(argv: list[str], ctx: cli.Context) -> int:
    a = cli.parse(__doc__ + "\n" + GLOBAL_HELP, argv)
    nets = Networks(ctx)
    runc_root = ctx.settings.runc_root
    if a["create"]:
        record = nets.create(a["PATH"], a["--name"])
        print(f"{record['name']} created")
    elif a["list"]:
        return list_networks(nets, output.check_format(a["--format"]), a["-q"])
    elif a["inspect"]:
        fmt = output.check_format(a["--format"] or "json")
        network = nets.get(a["NAME"])
        attachments = [describe(x) for x in nets.attachments(a["NAME"]).records]
        if fmt == "json":
            output.emit_json({**network, "attachments": attachments})
        else:
            print_inspect(network, attachments)
    elif a["spec"]:
        output.emit_json(SPEC)
    elif a["connect"]:
        fmt = output.check_format(a["--format"])
        caps = runtime.capabilities([runtime.parse_publish(p) for p in a["--publish"]],
                                    a["--cap"])
        record = nets.connect(a["NETWORK"], resolve(a["TARGET"], runc_root), a["--ifname"],
                              tuple(runtime.parse_ips(a["--ip"])),
                              a["--mac"] and check_mac(a["--mac"]),
                              tuple(parse_cni_args(a["--args"])), caps)
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
        for name, record in nets.gc():
            ips = ", ".join(cni.result_ips(record.get("result") or {})) or "no address"
            print(f"released {record['containerId']} {record['ifName']} ({ips}) "
                  f"from network {name}")
    elif a["delete"]:
        for record in nets.delete(a["NAME"], a["--force"]):
            print(f"disconnected container {record['circuit']['target']} from network "
                  f"{a['NAME']}")
        print(f"{a['NAME']} deleted")
    return 0


def describe(attachment: dict) -> dict:
    """An attachment as users see it: who, where, which addresses."""
    from .cni import result_ips, result_mac
    from .networks import attachment_netns

    meta = attachment["circuit"]
    return {"container_id": attachment["containerId"], "pid": meta["pid"],
            "target": meta["target"], "netns": attachment_netns(attachment) or None,
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
        [(x["target"], x["pid"], x["ifname"], ", ".join(x["ips"]) or "-", x["mac"] or "-",
          ", ".join(x["ports"]) or "-")
         for x in attachments], min_width=10))


def _ip_key(peer: dict) -> tuple:
    ip = ipaddress.ip_interface(peer["ips"][0]).ip if peer["ips"] else None
    return (ip is None, ip.version if ip else 0, ip or 0, peer["container_id"])


def describe_peer(peer: dict) -> str:
    """A peer in the table: its address, then pid, state unless attached, published ports."""
    notes = [str(peer["pid"]), *([] if peer["state"] == "attached" else [peer["state"]]),
             *peer["ports"]]
    return f"{ipaddress.ip_interface(peer['ips'][0]).ip} ({', '.join(notes)})"


def list_networks(nets: Networks, fmt: str, quiet: bool) -> int:
    listing = nets.all()
    errors = list(listing.errors)
    rows = []
    for network in listing.records:
        attached = nets.attachments(network["name"])
        intents = nets.intents(network["name"])
        errors.extend(attached.errors + intents.errors)
        ops = {(i["attachment"]["containerId"], i["attachment"]["ifName"]): i["op"]
               for i in intents.records}
        peers = sorted((describe(a) for a in attached.records), key=_ip_key)
        for peer in peers:
            op = ops.get((peer["container_id"], peer["ifname"]))
            peer["state"] = ("attaching" if op == "add" else "detaching" if op == "del"
                             else "attached" if peer["netns"] else "exited")
        config = network["config"]
        rows.append({"name": network["name"], "type": config["plugins"][0]["type"],
                     "plugins": [p["type"] for p in config["plugins"]],
                     "version": config["cniVersion"],
                     "peers": [{k: p[k] for k in ("container_id", "pid", "ifname", "ips", "ports",
                                                  "state")}
                               for p in peers]})
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


def main(argv: list[str] | None = None) -> int:
    return cli.run(handle, argv)


