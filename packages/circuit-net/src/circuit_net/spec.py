"""Networks from flags: the conflist `network create NAME --subnet ...` writes, the subnets a
config holds, the overlap check against other networks and the host's routes, and the free
subnets `network create NAME` without --subnet picks."""

import ipaddress
import os

from circuit_common.errors import Conflict, InvalidInput, UsageError
from circuit_common.proc import routes
from circuit_common.validate import ascii_number, check_ifname, check_name

from . import cni
from .isolation import KEY as ISOLATE_KEY
from .isolation import MODES, NO_ICC_KEY

DRIVERS = ("bridge", "macvlan", "ipvlan", "ptp")
DEFAULT_ROUTES = {4: "0.0.0.0/0", 6: "::/0"}


class Flags:
    """What the flags of `network create NAME` / `network spec NAME` ask for, checked."""

    def __init__(self, name: str, subnets: list[str], gateway: str | None = None,
                 driver: str | None = None, bridge: str | None = None,
                 parent: str | None = None, mtu: str | None = None, internal: bool = False,
                 masquerade: bool = True, labels: list[str] = (), overlay: str | None = None,
                 vni: str | None = None, host_subnet_size: str | None = None,
                 dns: bool | None = None, ipv6: bool = False, isolate: str | None = None,
                 icc: bool = True):
        self.name = check_name(name, "network name")
        self.subnets = [parse_subnet(s) for s in subnets]
        self.ipv6 = ipv6
        self.driver = driver or "bridge"
        if self.driver not in DRIVERS:
            raise InvalidInput(f"unknown --driver {self.driver!r}; use {', '.join(DRIVERS)}")
        if gateway and not self.subnets:
            raise UsageError("--gateway needs the --subnet it is in (a picked subnet's gateway "
                             "is its first address)")
        self.gateway = parse_gateway(gateway, self.subnets) if gateway else None
        self.bridge = check_ifname(bridge) if bridge else None
        self.parent = check_ifname(parent) if parent else None
        self.mtu = parse_mtu(mtu) if mtu else None
        self.internal = internal
        self.masquerade = masquerade and not internal
        self.labels = parse_labels(labels)
        self.overlay = overlay
        self.vni = parse_number(vni, "--vni", 1, MAX_VNI) if vni else None
        self.host_subnet_size = parse_number(host_subnet_size, "--host-subnet-size", 8, 30) \
            if host_subnet_size else None
        self.check_driver_flags()
        self.check_overlay_flags()
        self.dns = self.check_dns(dns)
        self.isolate = isolate or "none"
        if self.isolate not in MODES:
            raise UsageError(f"unknown --isolate {self.isolate!r}; use {', '.join(MODES)}")
        if self.isolate != "none" and self.driver in ("macvlan", "ipvlan"):
            raise UsageError(f"--isolate is for networks routed through this host (--driver "
                             f"bridge or ptp); {self.driver} traffic leaves by --parent")
        self.icc = icc
        if not icc and (self.driver in ("macvlan", "ipvlan") or self.overlay):
            raise UsageError("--no-icc is for --driver bridge or ptp networks of this host "
                             "(not macvlan, ipvlan or an --overlay, whose traffic passes "
                             "elsewhere)")

    def missing_families(self) -> list[int]:
        """The IP versions of the subnets to pick: IPv4 when no --subnet is given, IPv6 with
        --ipv6 when no IPv6 --subnet is."""
        versions = {s.version for s in self.subnets}
        return [v for v, wanted in ((4, not self.subnets), (6, self.ipv6)) if wanted
                and v not in versions]

    def check_dns(self, dns: bool | None) -> bool:
        """Whether the network gets DNS (circuit-dns): asked, or by default a bridge network
        that is neither internal nor an overlay (a cluster network asks with --dns)."""
        if dns is None:
            return self.driver == "bridge" and not self.overlay and not self.internal
        if dns and self.driver != "bridge":
            raise UsageError("--dns is for --driver bridge networks")
        return dns

    def check_driver_flags(self) -> None:
        if self.bridge and self.driver != "bridge":
            raise UsageError("--bridge is for --driver bridge")
        if self.driver in ("macvlan", "ipvlan") and not self.parent:
            raise UsageError(f"--driver {self.driver} needs --parent IFNAME (the host interface "
                             "it hangs off)")
        if self.parent and self.driver not in ("macvlan", "ipvlan"):
            raise UsageError("--parent is for --driver macvlan or ipvlan")

    def check_overlay_flags(self) -> None:
        if not self.overlay:
            if self.vni or self.host_subnet_size:
                raise UsageError("--vni and --host-subnet-size are for --overlay vxlan")
            return
        if self.overlay != "vxlan":
            raise InvalidInput(f"unknown --overlay {self.overlay!r}; use vxlan")
        if self.driver != "bridge":
            raise UsageError("--overlay vxlan is for --driver bridge")
        if len(self.subnets) != 1 or self.subnets[0].version != 4:
            raise InvalidInput("--overlay vxlan takes one IPv4 --subnet, which the hosts share "
                               "out among themselves (IPv6 overlays are not supported yet)")
        size = self.host_subnet_size or DEFAULT_HOST_SUBNET_SIZE
        if size <= self.subnets[0].prefixlen:
            raise InvalidInput(f"--host-subnet-size /{size} must be longer than the subnet's "
                               f"/{self.subnets[0].prefixlen}, so several hosts get one each")
        self.host_subnet_size = size
        if self.gateway:
            raise UsageError("--gateway is chosen per host with --overlay (each host's subnet's "
                             "first address)")
        if self.internal:
            raise UsageError("--internal does not go with --overlay: containers reach the "
                             "other hosts through their host's gateway (--no-masquerade keeps "
                             "them from reaching beyond the cluster with the host's address)")


MAX_VNI = (1 << 24) - 1
DEFAULT_HOST_SUBNET_SIZE = 24


def parse_number(text: str, option: str, low: int, high: int) -> int:
    number = ascii_number(text)
    if number is None or not low <= number <= high:
        raise InvalidInput(f"bad {option} {text!r}: a whole number from {low} to {high}")
    return number


def parse_subnet(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        subnet = ipaddress.ip_network(text)
    except ValueError:
        raise InvalidInput(f"bad --subnet {text!r}: use a network in CIDR notation, "
                           "as 10.89.0.0/24 or fd00:89::/64 (host bits zero)") from None
    check_subnet(subnet, text)
    return subnet


def parse_gateway(text: str, subnets: list) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        gateway = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidInput(f"bad --gateway {text!r}: not an IP address") from None
    if not any(gateway in s for s in subnets):
        raise InvalidInput(f"--gateway {gateway} is in none of the subnets "
                           f"{', '.join(map(str, subnets))}")
    for subnet in subnets:
        if gateway in subnet:
            check_gateway(gateway, subnet)
    return gateway


def parse_mtu(text: str) -> int:
    return parse_number(text, "--mtu", 68, 65535)


def parse_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key or not item.isprintable():
            raise InvalidInput(f"bad --label {item!r}: use KEY=VALUE")
        if key in labels:
            raise InvalidInput(f"--label {key} is given twice; give each key once")
        labels[key] = value
    return labels


def default_bridge(name: str) -> str:
    """The bridge of a network from flags: cni-NAME, or a digest when NAME is too long."""
    import hashlib

    bridge = f"cni-{name}"
    return bridge if len(bridge) <= 15 else "cni-" + hashlib.sha256(name.encode()).hexdigest()[:11]


def highest_common_version(plugins: cni.Plugins, kinds: list[str]) -> str:
    """The highest cniVersion circuit and every plugin support (each plugin's VERSION)."""
    common = set(cni.SUPPORTED_VERSIONS)
    for kind in dict.fromkeys(kinds):
        common &= set(plugins.supported_versions(kind))
    if not common:
        raise InvalidInput(f"plugins {', '.join(dict.fromkeys(kinds))} share no cniVersion "
                           f"with circuit ({', '.join(cni.SUPPORTED_VERSIONS)})")
    return max(common, key=cni.version_tuple)


def ipam(flags: Flags, data_dir: str | None) -> dict:
    """host-local over every subnet (a range set each: dual-stack), routes unless internal."""
    ranges = [[{"subnet": str(s), **({"gateway": str(flags.gateway)}
                                     if flags.gateway and flags.gateway in s else {})}]
              for s in flags.subnets]
    conf: dict = {"type": "host-local", "ranges": ranges}
    if not flags.internal:
        conf["routes"] = [{"dst": DEFAULT_ROUTES[v]}
                          for v in sorted({s.version for s in flags.subnets})]
    if data_dir:
        conf["dataDir"] = data_dir
    return conf


def gateways(flags: Flags) -> list:
    """The gateway of each subnet: --gateway in its own, else the subnet's first address."""
    return [flags.gateway if flags.gateway and flags.gateway in s else s[1]
            for s in sorted(flags.subnets, key=lambda s: s.version)]


def main_plugin(flags: Flags, data_dir: str | None) -> dict:
    """The interface plugin of the chain, by driver; it declares the ips capability, so
    --ip of each family reaches host-local (runtimeConfig "ips")."""
    plugin: dict = {"type": flags.driver, "capabilities": dict(IPS_CAPABILITY)}
    if flags.driver == "bridge":
        # a DNS server listens on the gateway address, so an internal network with DNS has one
        plugin.update(bridge=flags.bridge or default_bridge(flags.name),
                      isGateway=not flags.internal or flags.dns, ipMasq=flags.masquerade,
                      hairpinMode=True)
        if flags.dns:  # the CNI result's dns, which the bridge plugin passes on
            plugin["dns"] = {"nameservers": [str(g) for g in gateways(flags)],
                             "search": [flags.name]}
        if flags.overlay:
            plugin["ipMasq"] = False  # traffic between hosts keeps its source address
    elif flags.driver == "ptp":
        plugin["ipMasq"] = flags.masquerade
    else:
        plugin.update(master=flags.parent, mode="bridge" if flags.driver == "macvlan" else "l2")
    if flags.mtu:
        plugin["mtu"] = flags.mtu
    plugin["ipam"] = ipam(flags, data_dir)
    return plugin


IPS_CAPABILITY = {"ips": True}


def same_network(stored: dict, netconf: dict) -> bool:
    """Whether a stored network record and a config asked for again are one network: the
    same config, or a network from flags stored before flags declared the ips capability
    and the config the same flags give now (its main plugin's only difference)."""
    if stored["config"] == netconf:
        return True
    plugins = netconf.get("plugins") or [{}]
    if stored.get("source") != "flags" or plugins[0].get("capabilities") != IPS_CAPABILITY:
        return False
    main = {k: v for k, v in plugins[0].items() if k != "capabilities"}
    return stored["config"] == {**netconf, "plugins": [main, *plugins[1:]]}


def conflist(flags: Flags, plugins: cni.Plugins, data_dir: str | None = None) -> dict:
    """The config list of a network from flags: the driver's plugin, then portmap and firewall
    where the host routes to the containers (bridge, ptp), at the highest common cniVersion."""
    chain = [main_plugin(flags, data_dir)]
    if flags.driver in ("bridge", "ptp"):
        chain += [{"type": "portmap", "capabilities": {"portMappings": True}},
                  {"type": "firewall"}]
    version = highest_common_version(plugins, [p["type"] for p in chain])
    if not cni.at_least(version, "0.4.0"):  # firewall needs 0.4.0
        chain = [p for p in chain if p["type"] != "firewall"]
    conf: dict = {"cniVersion": version, "name": flags.name, "plugins": chain}
    if flags.labels:
        conf["circuitLabels"] = flags.labels
    if flags.isolate != "none":
        conf[ISOLATE_KEY] = flags.isolate
    if not flags.icc:
        conf[NO_ICC_KEY] = True
    return conf


def requested_overlay(flags: Flags) -> dict | None:
    """What the flags ask of a cluster network's overlay, for the state backend to place
    (StateBackend.place_overlay): its "vni" is None unless --vni."""
    if not flags.overlay:
        return None
    return {"type": flags.overlay, "vni": flags.vni, "subnet": str(flags.subnets[0]),
            "hostSubnetSize": flags.host_subnet_size, "masquerade": flags.masquerade}


def netconf_subnets(netconf: dict) -> list:
    """The subnets a config's IPAM hands out (host-local subnet/ranges, static addresses)."""
    found = []
    for plugin in netconf["plugins"]:
        conf = plugin.get("ipam") if isinstance(plugin.get("ipam"), dict) else {}
        texts = [conf.get("subnet")]
        texts += [r.get("subnet") for rs in conf.get("ranges") or [] if isinstance(rs, list)
                  for r in rs if isinstance(r, dict)]
        texts += [a.get("address") for a in conf.get("addresses") or [] if isinstance(a, dict)]
        for text in texts:
            try:
                found.append(ipaddress.ip_network(text, strict=False))
            except (TypeError, ValueError):
                continue
    return found


def taken(others: list[dict], own: set = frozenset()) -> list[tuple]:
    """What a new network's subnets must not overlap: each other network's subnets and each
    route of circuit's netns but the default routes and own (route, dev) pairs, as (subnet,
    whose: words naming it)."""
    found = [(theirs, f"{theirs} of network {other['name']}")
             for other in others for theirs in netconf_subnets(other)]
    found += [(route, f"the host's route {route} (dev {dev})")
              for route, dev in routes() if route.prefixlen and (route, dev) not in own]
    return found


def left_on_own_bridge(netconf: dict, subnets: list) -> set:
    """The network's own subnets routed on its own bridge (the bridge plugin's, cni0 unless
    named): what an earlier run of the same network, e.g. by plain CNI, leaves behind; the
    bridge plugin takes that bridge and address over, so they are no overlap."""
    bridges = {p.get("bridge") or "cni0" for p in netconf["plugins"]
               if p.get("type") == "bridge" and isinstance(p.get("bridge", ""), str)}
    return {(route, dev) for route, dev in routes() if dev in bridges and route in subnets}


def check_overlap(netconf: dict, others: list[dict], source: str = "flags") -> None:
    """Refuse subnets that overlap another network's or a route of circuit's netns (the
    default routes aside), naming the other owner and what to change: --subnet, or for a
    network from a file (source: its path) the file's ipam subnet."""
    mine = netconf_subnets(netconf)
    held = taken(others, left_on_own_bridge(netconf, mine))
    remedy = ("choose another --subnet" if source == "flags" else
              f"edit the ipam subnet (or ranges) in {source} to a free one")
    for subnet in mine:
        for theirs, whose in held:
            if subnet.version == theirs.version and subnet.overlaps(theirs):
                raise Conflict(f"subnet {subnet} overlaps {whose}; {remedy}")


# Where `network create NAME` without --subnet takes an IPv4 subnet: podman's default
# subnet pools (containers.conf default_subnet_pools), /24 blocks, lowest free first.
IPV4_POOLS = [ipaddress.ip_network(p) for p in
              ("10.89.0.0/16", "10.90.0.0/15", "10.92.0.0/14", "10.96.0.0/11", "10.128.0.0/9")]
IPV4_BLOCK = 24
# and an IPv6 one (--ipv6): a random unique local /64 (RFC 4193's fd00::/8), as podman
IPV6_POOL = ipaddress.ip_network("fd00::/8")
IPV6_TRIES = 1000


def pick_subnets(flags: Flags, existing: dict | None, others: list[dict]) -> list:
    """The subnets of the families flags leave to circuit (Flags.missing_families): an
    existing network of that name keeps its own (so creating it again changes nothing), else
    the first free one of the pool. Conflict when a pool has none left. The caller holds the
    store's lock, so no concurrent create picks the same."""
    kept = netconf_subnets(existing) if existing else []
    held = [subnet for subnet, _ in taken(others)]
    picked = []
    for version in flags.missing_families():
        mine = [s for s in kept if s.version == version]
        subnet = mine[0] if mine else free_ipv4(held) if version == 4 else free_ipv6(held)
        if subnet is None:
            pool = ", ".join(map(str, IPV4_POOLS)) if version == 4 else str(IPV6_POOL)
            raise Conflict(f"no free IPv{version} subnet left in {pool} (other networks and "
                           "the host's routes hold them); give one with --subnet")
        picked.append(subnet)
    return picked


def free_ipv4(held: list) -> ipaddress.IPv4Network | None:
    """The lowest /24 of the IPv4 pools that overlaps nothing held: a walk over the held
    spans in order, jumping past each, not a test of every block against every span."""
    spans = sorted((int(n.network_address), int(n.broadcast_address))
                   for n in held if n.version == 4)
    size = 1 << (32 - IPV4_BLOCK)
    for pool in IPV4_POOLS:
        start, last = int(pool.network_address), int(pool.broadcast_address)
        blocking = iter(spans)
        span = next(blocking, None)
        while start + size - 1 <= last:
            while span is not None and span[1] < start:
                span = next(blocking, None)
            if span is None or span[0] > start + size - 1:
                return ipaddress.IPv4Network((start, IPV4_BLOCK))
            start = (span[1] // size + 1) * size  # the first block past what holds this one
    return None


def free_ipv6(held: list) -> ipaddress.IPv6Network | None:
    """A random /64 of fd00::/8 that overlaps nothing held (None after IPV6_TRIES draws)."""
    held = [n for n in held if n.version == 6]
    for _ in range(IPV6_TRIES):
        subnet = ipaddress.IPv6Network((int.from_bytes(b"\xfd" + os.urandom(7), "big") << 64,
                                        64))
        if not any(subnet.overlaps(n) for n in held):
            return subnet
    return None


RESERVED_V6 = ipaddress.ip_network("::/8")


def check_subnet(subnet, text: str) -> None:
    """Refuse a subnet no container could get an address from (text: as given)."""
    if "/" not in str(text):
        raise InvalidInput(f"subnet {text!r} is a bare address; give a subnet in CIDR "
                           "notation, as 10.89.0.0/24")
    smallest = 30 if subnet.version == 4 else 126
    kind = next((k for k, bad in (("loopback", subnet.is_loopback),
                                  ("multicast", subnet.is_multicast),
                                  ("link-local (the kernel's own on every interface)",
                                   subnet.version == 6 and subnet.is_link_local),
                                  ("unspecified", subnet.network_address.is_unspecified),
                                  ("in ::/8, which the IETF reserves (IPv4-mapped, "
                                   "IPv4-compatible, NAT64's 64:ff9b::/96) and where the CNI "
                                   "plugins cannot count addresses",
                                   subnet.version == 6 and subnet.network_address in RESERVED_V6))
                 if bad), None)
    if kind:
        example = "10.89.0.0/24" if subnet.version == 4 else "fd00:89::/64"
        raise InvalidInput(f"subnet {subnet} is {kind}: no container can use it; choose "
                           f"another subnet, as {example}")
    if subnet.prefixlen > smallest:
        raise InvalidInput(f"subnet {subnet} is too small for a gateway and a container; give "
                           f"/{smallest} or shorter")


def check_gateway(gateway, subnet) -> None:
    """Refuse a gateway that is its subnet's network address (IPv6's: the subnet-router
    anycast address, which the kernel answers on every router) or IPv4's broadcast address."""
    refused = (subnet.network_address, subnet.broadcast_address) if subnet.version == 4 \
        else (subnet.network_address,)
    if gateway in refused:
        which = "network" if gateway == subnet.network_address else "broadcast"
        raise InvalidInput(f"gateway {gateway} is the {which} address of {subnet}; choose "
                           f"another, as {subnet[1]}")


def ipam_subnets(ipam: dict) -> list[tuple[str, str | None]]:
    """The subnets of an IPAM config as written (host-local's subnet or ranges), each with
    its gateway."""
    found = [(ipam["subnet"], ipam.get("gateway"))] if ipam.get("subnet") else []
    found += [(r["subnet"], r.get("gateway")) for rs in ipam.get("ranges") or []
              if isinstance(rs, list) for r in rs if isinstance(r, dict) and r.get("subnet")]
    return found


def check_usable(netconf: dict, present: dict[str, bool]) -> None:
    """Refuse at create what the first connect would fail on, or worse: unusable subnets and
    gateways, subnets overlapping within the network, a bridge that is no bridge or a
    name too long, a macvlan/ipvlan parent that is missing or lo. present: circuit's netns's
    interfaces, each with whether it is a bridge."""
    seen: list = []
    for plugin in netconf["plugins"]:
        check_shapes(netconf["name"], plugin)
        conf = plugin.get("ipam") or {}
        for text, gateway in ipam_subnets(conf):
            try:
                subnet = ipaddress.ip_network(text)
            except (TypeError, ValueError):
                raise InvalidInput(f"subnet {text!r} of network {netconf['name']} is not a "
                                   "network in CIDR notation (host bits zero)") from None
            check_subnet(subnet, text)
            for other in seen:
                if subnet.version == other.version and subnet.overlaps(other):
                    raise InvalidInput(f"subnet {subnet} overlaps {other} of the same network; "
                                       "give each range once")
            seen.append(subnet)
            if gateway:
                try:
                    check_gateway(ipaddress.ip_address(gateway), subnet)
                except ValueError:
                    raise InvalidInput(f"gateway {gateway!r} is not an IP address") from None
        if conf.get("type") == "host-local":
            check_host_local(netconf["name"], conf)
        kind = plugin.get("type")
        if kind == "bridge":
            bridge = plugin.get("bridge") or "cni0"
            check_ifname(bridge)
            if bridge in present and not present[bridge]:
                raise InvalidInput(f"bridge {bridge} exists and is not a bridge; name another "
                                   "(--bridge)")
        if kind in ("macvlan", "ipvlan") and plugin.get("master") is not None:
            parent = check_ifname(plugin["master"])
            if parent == "lo" or parent not in present:
                what = "the loopback" if parent == "lo" else "not an interface here"
                raise InvalidInput(f"parent {parent} of {kind} is {what}; name a host "
                                   "interface such as eth0 (--parent)")
    check_mtus(netconf, seen)


def check_shapes(name: str, plugin: dict) -> None:
    """Refuse the keys every plugin reads (the CNI spec's and host-local's, static's) in a
    shape the plugins cannot load, which failed every connect in the plugin (exit 7): an ipam
    that is no object, capabilities that are not true/false, a route's dst or gw, a static
    address, dns lists."""
    kind = plugin.get("type")

    def bad(what: str, value, should: str) -> InvalidInput:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "..."
        return InvalidInput(f"{what} {shown} of plugin {kind} in network {name} is not "
                            f"{should}; fix it in the config")

    ipam = {} if plugin.get("ipam") is None else plugin["ipam"]
    if not isinstance(ipam, dict):
        raise bad("ipam", ipam, 'an object, as {"type": "host-local", "subnet": ...}')
    for cap, on in (plugin.get("capabilities") or {}).items():
        if type(on) is not bool:
            raise bad(f"capability {cap}", on, "true or false")
    for route in ipam.get("routes") or []:
        if not isinstance(route, dict) or not is_cidr(route.get("dst"), strict=False):
            raise bad("route", route, 'a {"dst": CIDR} object, as {"dst": "0.0.0.0/0"}')
        if route.get("gw") is not None and not is_address(route["gw"]):
            raise bad("route gw", route["gw"], "an IP address")
    for entry in ipam.get("addresses") or [] if ipam.get("type") == "static" else []:
        if not isinstance(entry, dict) or not is_cidr(entry.get("address"), strict=False) \
                or "/" not in entry["address"]:
            raise bad("static address", entry, 'an {"address": CIDR} object, as '
                      '{"address": "10.89.0.5/24"}')
    dns = {} if plugin.get("dns") is None else plugin["dns"]
    if not isinstance(dns, dict) or not all(
            isinstance(dns.get(k, []), list) and all(isinstance(v, str) for v in dns.get(k, []))
            for k in ("nameservers", "search", "options")):
        raise bad("dns", dns, "an object of string lists (nameservers, search, options)")


def is_cidr(text, strict: bool = True) -> bool:
    try:
        ipaddress.ip_network(text, strict=strict)
    except (TypeError, ValueError):
        return False
    return isinstance(text, str)


def is_address(text) -> bool:
    try:
        ipaddress.ip_address(text)
    except (TypeError, ValueError):
        return False
    return isinstance(text, str)


def check_host_local(name: str, ipam: dict) -> None:
    """Refuse a host-local IPAM that would fail every connect: no subnet at all, a gateway or
    rangeStart/rangeEnd outside its subnet, a rangeStart after its rangeEnd."""
    if not ipam_subnets(ipam):
        raise InvalidInput(f"the host-local ipam of network {name} has no subnet: give it "
                           '"subnet" or "ranges" ([[{"subnet": "10.89.0.0/24"}]])')
    entries = [ipam] if ipam.get("subnet") else []
    entries += [r for rs in ipam.get("ranges") or [] if isinstance(rs, list)
                for r in rs if isinstance(r, dict) and r.get("subnet")]
    for entry in entries:
        subnet = ipaddress.ip_network(entry["subnet"])  # check_usable read it already
        found = {}
        for key in ("gateway", "rangeStart", "rangeEnd"):
            if entry.get(key) is None:
                continue
            try:
                found[key] = ipaddress.ip_address(entry[key])
            except (TypeError, ValueError):
                raise InvalidInput(f"{key} {entry[key]!r} of network {name} is not an IP "
                                   "address") from None
            if found[key] not in subnet:
                raise InvalidInput(f"{key} {found[key]} of network {name} is outside its "
                                   f"subnet {subnet}; give one in it, as {subnet[1]}")
        if "rangeStart" in found and "rangeEnd" in found \
                and found["rangeStart"] > found["rangeEnd"]:
            raise InvalidInput(f"rangeStart {found['rangeStart']} of network {name} comes "
                               f"after its rangeEnd {found['rangeEnd']}; swap them")


IPV6_MIN_MTU = 1280


def check_mtus(netconf: dict, subnets: list) -> None:
    """Refuse a plugin's mtu that is no MTU, or one below what IPv6 needs on a network with
    an IPv6 subnet (the kernel takes IPv6 off such a link: the first connect fails adding the
    address)."""
    ipv6 = next((s for s in subnets if s.version == 6), None)
    for plugin in netconf["plugins"]:
        mtu = plugin.get("mtu")
        if mtu is None:
            continue
        if type(mtu) is not int or not 68 <= mtu <= 65535:
            raise InvalidInput(f"mtu {mtu!r} of plugin {plugin.get('type')} is not a whole "
                               "number from 68 to 65535")
        if ipv6 is not None and mtu < IPV6_MIN_MTU:
            raise InvalidInput(f"mtu {mtu} is below {IPV6_MIN_MTU}, which IPv6 needs, and the "
                               f"network has subnet {ipv6}; give --mtu {IPV6_MIN_MTU} or more")


def interfaces_here() -> dict[str, bool]:
    """circuit's netns's interfaces, each with whether it is a bridge: one link dump in the
    netns this process is in (not /sys, which shows the netns of whoever mounted it: under
    `nsenter --net` or in a fork server's child that is another one)."""
    from circuit_netlink import NETLINK_ROUTE, Batch, rtnl

    with Batch(NETLINK_ROUTE) as batch:
        return {link.name: link.kind == "bridge" for link in rtnl.links(batch)}



def check_requested_ips(netconf: dict, ips: list[str]) -> None:
    """Refuse a --ip that the network's host-local IPAM cannot hand out (outside every range
    of its family, the network or broadcast address, the gateway, a prefix not the subnet's,
    more of a family than it has range sets), before any plugin runs. Networks with other
    IPAMs (static, an overlay's) are left to their plugin."""
    name = netconf["name"]
    ranges = [r for p in netconf["plugins"] if isinstance(p.get("ipam"), dict)
              and p["ipam"].get("type") == "host-local" for r in host_local_ranges(p["ipam"])]
    if not ranges:
        return
    asked: dict = {}
    for text in ips:
        given = ipaddress.ip_interface(text)
        ip, shown = given.ip, text.split("/")[0]  # shown as given (::ffff:10.1.0.5)
        mine = [r for r in ranges if r[0].version == ip.version]
        if not mine:
            raise InvalidInput(f"--ip {shown} is IPv{ip.version} but network {name} has no "
                               f"IPv{ip.version} subnet ({describe_ranges(ranges)}); give an "
                               "address of its subnet")
        inside = next((r for r in mine if r[1] <= ip <= r[2] and ip != r[3]), None)
        if inside is None:
            hit = next((r for r in mine if ip in r[0]), None)
            if hit is None:
                why = f"is outside network {name}'s subnet"
            elif ip == hit[3]:
                why = f"is the gateway of network {name}'s subnet"
            elif ip == hit[0].network_address:
                why = f"is the network address of network {name}'s subnet"
            elif ip == hit[0].broadcast_address and ip.version == 4:
                why = f"is the broadcast address of network {name}'s subnet"
            else:
                why = f"is outside the range network {name} hands out in its subnet"
            raise InvalidInput(f"--ip {shown} {why} ({describe_ranges(mine)}); give an address "
                               "in the range, not the gateway, or leave --ip out")
        if "/" in text and given.network.prefixlen != inside[0].prefixlen:
            raise InvalidInput(f"--ip {text}: network {name}'s subnet is {inside[0]}; give "
                               f"{ip} or {ip}/{inside[0].prefixlen}")
        asked.setdefault(ip.version, set()).add(ip)
    for version, wanted in asked.items():
        sets = {r[4] for r in ranges if r[0].version == version}
        if len(wanted) > len(sets):
            raise InvalidInput(f"{len(wanted)} IPv{version} addresses asked for with --ip, but "
                               f"network {name} gives a container {len(sets)} (one per range "
                               "set); give one --ip of each family")


def host_local_ranges(ipam: dict) -> list[tuple]:
    """host-local's ranges as it reads them: (subnet, first, last, gateway, range set), the
    defaults filled in (first: network + 1; last: broadcast - 1 for IPv4, the last address
    for IPv6; gateway: network + 1). Unreadable entries are left out (the plugin refuses
    them)."""
    sets = ([[ipam]] if ipam.get("subnet") else []) + [
        rs for rs in ipam.get("ranges") or [] if isinstance(rs, list)]
    found = []
    for index, entry in ((i, r) for i, rs in enumerate(sets) for r in rs if isinstance(r, dict)):
        try:
            subnet = ipaddress.ip_network(entry["subnet"], strict=False)
            last = subnet.broadcast_address - (1 if subnet.version == 4 else 0)
            first = ipaddress.ip_address(entry.get("rangeStart") or subnet.network_address + 1)
            last = ipaddress.ip_address(entry.get("rangeEnd") or last)
            gateway = ipaddress.ip_address(entry.get("gateway") or subnet.network_address + 1)
        except (KeyError, TypeError, ValueError):
            continue
        found.append((subnet, first, last, gateway, index))
    return found


def describe_ranges(ranges: list[tuple]) -> str:
    """Ranges as people read them: 10.1.0.0/24: 10.1.0.2-10.1.0.254, gateway 10.1.0.1."""
    return "; ".join(f"{subnet}: {first + (first == gateway)}-{last}, gateway {gateway}"
                     for subnet, first, last, gateway, _ in ranges)
