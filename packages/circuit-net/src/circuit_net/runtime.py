"""What a connect asks of the plugins at run time (libcni's RuntimeConf): capability args
(runtimeConfig: portMappings, ips, mac, any other declared capability) and CNI_ARGS.

Parsers of the command line's --publish / --cap / --ip and of the hook's circuit.publish live
here, so the CLI and the hook read them the same way.
"""

import json

from circuit_common.errors import InvalidInput, UsageError
from circuit_common.validate import ascii_number

from . import cni

PROTOCOLS = ("tcp", "udp", "sctp")


def parse_publish(spec: str) -> dict:
    """One portMappings entry from [HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTO] (HOSTIP of IPv6 in
    brackets), as libcni's callers pass it: hostPort, containerPort, protocol, hostIP."""
    text, slash, protocol = spec.partition("/")
    protocol = protocol or ("" if slash else "tcp")  # "8080:80/" names no protocol
    if protocol not in PROTOCOLS:
        raise InvalidInput(f"bad --publish {spec!r}: protocol must be {', '.join(PROTOCOLS)}")
    host_ip = None
    if text.startswith("["):
        host_ip, _, text = text[1:].partition("]")
        text = text.removeprefix(":")
    parts = text.split(":")
    if host_ip is None and len(parts) == 3:
        host_ip = parts.pop(0)
    if len(parts) != 2:
        raise InvalidInput(f"bad --publish {spec!r}: use [HOSTIP:]HOSTPORT:CONTAINERPORT"
                           "[/tcp|udp]")
    entry = {"hostPort": _port(parts[0], spec), "containerPort": _port(parts[1], spec),
             "protocol": protocol}
    if host_ip:
        import ipaddress  # only for --publish with a host IP

        try:
            entry["hostIP"] = str(ipaddress.ip_address(host_ip))
        except ValueError:
            raise InvalidInput(f"bad --publish {spec!r}: {host_ip!r} is not an IP address") \
                from None
    return entry


def _port(text: str, spec: str) -> int:
    port = ascii_number(text)
    if port is None or not 0 < port < 65536:
        raise InvalidInput(f"bad --publish {spec!r}: {text!r} is not a port from 1 to 65535")
    return port


def parse_publish_list(text: str) -> list[dict]:
    """portMappings from a comma-separated list (annotation circuit.publish, CIRCUIT_PUBLISH),
    spaces around an item allowed; each host port at most once."""
    return check_published([parse_publish(item.strip()) for item in text.split(",")
                            if item.strip()])


def check_published(mappings: list[dict]) -> list[dict]:
    """mappings, refused when two take one host port (the same mapping twice included)."""
    for i, mapping in enumerate(mappings):
        for other in mappings[:i]:
            if same_host_port(mapping, other):
                both = " and ".join(describe_ports([other, mapping]))
                raise InvalidInput(f"host port {mapping['hostPort']}/"
                                   f"{mapping.get('protocol', 'tcp')} is "
                                   f"published twice ({both}); publish each host port once")
    return mappings


def same_host_port(one: dict, other: dict) -> bool:
    """Whether two portMappings take the same host port (no hostIP: every address)."""
    return (one["hostPort"], one.get("protocol", "tcp")) == \
        (other.get("hostPort"), other.get("protocol", "tcp")) \
        and (not one.get("hostIP") or not other.get("hostIP")
             or one["hostIP"] == other["hostIP"])




def parse_cap(text: str) -> tuple[str, object]:
    """NAME and its JSON value from --cap NAME=JSON."""
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise InvalidInput(f"bad --cap {text!r}: use NAME=JSON, e.g. "
                           """--cap 'bandwidth={"ingressRate":1000000,"ingressBurst":100000}'""")
    try:
        return name, json.loads(value)
    except (ValueError, RecursionError):
        raise InvalidInput(f"bad --cap {text!r}: {value!r} is not JSON") from None


def parse_ips(values: list[str]) -> list[str]:
    """Requested addresses (IPv4 and IPv6, with or without a prefix), as given."""
    import ipaddress  # only for --ip: the hook's path does without it

    seen = set()
    for value in values:
        try:
            ip = ipaddress.ip_interface(value).ip
        except ValueError:
            raise InvalidInput(f"bad --ip {value!r}: not an IP address or CIDR; give one "
                               "as 10.89.0.5, 10.89.0.5/24 or fd00::5") from None
        if ip in seen:
            raise InvalidInput(f"--ip {ip} given twice; give it once")
        seen.add(ip)
    return list(values)


def capabilities(publish: list[dict], caps: list[str]) -> dict:
    """The capability args asked for on a command line or by a hook: --publish and --cap."""
    wanted: dict = {"portMappings": check_published(publish)} if publish else {}
    for name, value in map(parse_cap, caps):
        if name in OWN_OPTIONS:
            raise InvalidInput(f"give {OWN_OPTIONS[name]}, not --cap {name}: circuit checks "
                               "it against the network before any plugin runs")
        if name == "portMappings":
            value = check_published(check_mappings(value))
        if name in wanted:
            raise UsageError(f"capability {name} given twice (--cap {name}, or --publish with "
                             "--cap portMappings); give it once")
        wanted[name] = value
    return wanted


OWN_OPTIONS = {"ips": "addresses with --ip", "mac": "the MAC with --mac"}


def check_mappings(value) -> list[dict]:
    """--cap portMappings=JSON in the shape portmap loads: a list of {hostPort, containerPort
    (1-65535), protocol (tcp, udp, sctp), hostIP (an address)} objects."""
    import ipaddress

    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"bad --cap portMappings: {why}; give a list of objects as "
                            '[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], '
                            "or -p 8080:80")

    if not isinstance(value, list):
        raise bad("not a list")
    for entry in value:
        if not isinstance(entry, dict):
            raise bad(f"{entry!r} is not an object")
        for key in ("hostPort", "containerPort"):
            port = entry.get(key)
            if type(port) is not int or not 0 < port < 65536:
                raise bad(f"{key} {port!r} is not a port from 1 to 65535")
        if entry.get("protocol", "tcp") not in PROTOCOLS:
            raise bad(f"protocol {entry['protocol']!r} is not one of {', '.join(PROTOCOLS)}")
        if entry.get("hostIP"):
            try:
                ipaddress.ip_address(entry["hostIP"])
            except (TypeError, ValueError):
                raise bad(f"hostIP {entry['hostIP']!r} is not an IP address") from None
    return value


def check_declared(netconfs: list[dict], wanted: dict) -> None:
    """Refuse a capability that no plugin of the networks declares (it would reach nobody)."""
    declared = set().union(*(cni.declared_capabilities(c) for c in netconfs))
    for name in wanted:
        if name not in declared:
            names = ", ".join(c["name"] for c in netconfs)
            plugins = ", ".join(p["type"] for c in netconfs for p in c["plugins"])
            raise InvalidInput(f"no plugin of network {names} declares capability {name} "
                               f"(plugins: {plugins}); add it to a plugin's 'capabilities' "
                               "or leave it out")


def runtime_args(netconf: dict, ips: list[str], mac: str | None,
                 wanted: dict) -> tuple[dict, list[tuple[str, str]]]:
    """runtimeConfig and CNI_ARGS for one attachment: capabilities the chain declares; --ip and
    --mac as the ips/mac capabilities when declared, else CNI_ARGS IP and MAC."""
    declared = cni.declared_capabilities(netconf)
    capability_args = {k: v for k, v in wanted.items() if k in declared}
    args: list[tuple[str, str]] = []
    if ips:
        if "ips" in declared:
            capability_args["ips"] = list(ips)
        else:
            args.append(("IP", cni_args_ip(netconf, ips)))
    if mac:
        if "mac" in declared:
            capability_args["mac"] = mac
        else:
            args.append(("MAC", mac))
    return capability_args, ([("IgnoreUnknown", "1"), *args] if args else [])


def cni_args_ip(netconf: dict, ips: list[str]) -> str:
    """CNI_ARGS IP as the network's IPAM reads it: static takes CIDRs, comma-separated;
    host-local and the others one address."""
    if any((p.get("ipam") or {}).get("type") == "static" for p in netconf["plugins"]):
        return ",".join(ips)
    if len(ips) > 1:
        raise InvalidInput(f"network {netconf['name']} takes one --ip through CNI_ARGS; for "
                           "several, declare the ips capability on its main plugin "
                           """("capabilities": {"ips": true}, host-local reads it; a network """
                           "from flags of an older circuit: delete it and create it again)")
    return ips[0].split("/")[0]


def describe_ports(mappings: list[dict]) -> list[str]:
    """Published ports as people read them: [HOSTIP:]HOSTPORT->CONTAINERPORT/PROTO."""
    return [f"{_host_ip(m.get('hostIP'))}{m.get('hostPort')}->{m.get('containerPort')}/"
            f"{m.get('protocol', 'tcp')}" for m in mappings if isinstance(m, dict)]


def _host_ip(ip) -> str:
    if not ip:
        return ""
    return f"[{ip}]:" if ":" in str(ip) else f"{ip}:"
