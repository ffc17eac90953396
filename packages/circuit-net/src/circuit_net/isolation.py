"""Networks isolated from each other (`network create --isolate normal|strict`, as netavark's
isolate=true|strict) and containers of one network from each other (`--no-icc`, as Docker's
icc=false): the table `inet circuit_isolation`, rebuilt from the stored networks in one
nftables transaction whenever one that is isolated, or could be blocked, comes or goes.

    forward      filter hook: ct status dnat accept (published ports, LB VIPs reach their
                 targets from anywhere), then per blocked pair of networks A, B and IP version:
                 ip saddr {A's subnets} ip daddr {B's subnets} drop, and B to A; per --no-icc
                 network: ip saddr {its subnets} ip daddr {its subnets} drop (what the host
                 routes, or bridges with br_netfilter)

A normal network is cut off from every other isolated network (normal or strict), a strict one
from every other circuit network. Traffic to the host and beyond is left alone. At L2 a
--no-icc bridge network's ports are isolated (IFLA_BRPORT_ISOLATED on each container's
host-side veth, set on connect by isolate_ports; gone with the veth): the bridge forwards
nothing between two of them, the host is still reached (so is a published port of another
network; one of the same network is not: with br_netfilter the bridge forwards the DNATed
frame port to port, which isolation drops). Rules follow the networks' names. Without
anything to block there is no table. `circuit restore` rebuilds it (entry point
circuit.extensions: isolation), `circuit doctor` reports how it drifted (circuit_net.doctor)."""

from circuit_common import nft

TABLE = {"family": "inet", "name": "circuit_isolation"}
KEY = "circuitIsolate"  # in the network's config list: "normal" or "strict"; absent: none
NO_ICC_KEY = "circuitNoIcc"  # true: its containers do not reach each other; absent: they do
MODES = ("none", "normal", "strict")


def mode(netconf: dict) -> str:
    """A network's isolation mode, none when its config names none."""
    return netconf.get(KEY, "none")


def no_icc(netconf: dict) -> bool:
    """Whether a network's containers are kept from reaching each other (--no-icc)."""
    return netconf.get(NO_ICC_KEY) is True


def isolated(netconf: dict) -> bool:
    """Whether a network asks anything of the table (an isolate mode, or --no-icc)."""
    return mode(netconf) != "none" or no_icc(netconf)


def check_config(netconf: dict) -> None:
    """The isolation a config asks for is one circuit knows (ValueError: what is wrong)."""
    if mode(netconf) not in MODES:
        raise ValueError(f"{KEY} {netconf[KEY]!r} is not one of {', '.join(MODES)}")
    if netconf.get(NO_ICC_KEY, True) is not True:
        raise ValueError(f"{NO_ICC_KEY} must be true, or left out")


def blocked_pairs(netconfs: list[dict]) -> list[tuple[dict, dict]]:
    """The pairs of networks whose containers must not reach each other (each pair once)."""
    pairs = []
    for i, a in enumerate(netconfs):
        for b in netconfs[i + 1:]:
            modes = {mode(a), mode(b)}
            if "strict" in modes or modes == {"normal"}:
                pairs.append((a, b))
    return pairs


def rules(netconfs: list[dict]) -> list[dict]:
    """The forward chain's drop rules, {"expr", "comment"} each: between blocked pairs, then
    within each --no-icc network."""
    netconfs = sorted(netconfs, key=lambda n: n["name"])  # the same order however read
    pairs = [(src, dst) for a, b in blocked_pairs(netconfs) for src, dst in ((a, b), (b, a))]
    pairs += [(n, n) for n in netconfs if no_icc(n)]
    return [{"comment": f"{src['name']} to {dst['name']}" if src is not dst
             else f"{src['name']} within", "expr": [*match, {"drop": None}]}
            for src, dst in pairs for match in _between(src, dst)]


def _between(src: dict, dst: dict) -> list[list[dict]]:
    """The saddr/daddr matches of traffic from src's subnets to dst's, per IP version."""
    from .spec import netconf_subnets

    found = []
    for version, family in ((4, "ip"), (6, "ip6")):
        saddr = [s for s in netconf_subnets(src) if s.version == version]
        daddr = [s for s in netconf_subnets(dst) if s.version == version]
        if saddr and daddr:
            found.append([_match(family, "saddr", saddr), _match(family, "daddr", daddr)])
    return found


def _match(family: str, field: str, subnets: list) -> dict:
    prefixes = [{"prefix": {"addr": str(s.network_address), "len": s.prefixlen}}
                for s in subnets]
    return {"match": {"op": "==", "left": {"payload": {"protocol": family, "field": field}},
                      "right": {"set": prefixes} if len(prefixes) > 1 else prefixes[0]}}


def commands(netconfs: list[dict], present: bool) -> list[dict]:
    """One transaction making the table match netconfs (present: whether it exists now)."""
    wanted = rules(netconfs)
    table = {"table": dict(TABLE)}
    out = [{"add": table}, {"delete": table}] if present or wanted else []
    if not wanted:
        return out
    where = {"family": TABLE["family"], "table": TABLE["name"]}
    chain = {**where, "chain": "forward"}
    out += [{"add": table},
            {"add": {"chain": {**where, "name": "forward", "type": "filter", "hook": "forward",
                               "prio": 0, "policy": "accept"}}},
            {"add": {"rule": {**chain, "comment": "published ports and LB VIPs", "expr": [
                {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                {"accept": None}]}}}]
    out += [{"add": {"rule": {**chain, **rule}}} for rule in wanted]
    return out


def present() -> bool:
    """Whether the table exists in this network namespace."""
    return bool(nft.objects("table", TABLE["family"], TABLE["name"]))


def sync(netconfs: list[dict]) -> None:
    """Make the table match the stored networks' configs (nothing asked of nft when nothing is
    to be blocked and nft is not installed: then there is no table either)."""
    import shutil  # off the hook's path: it checks each record with check_config

    if not rules(netconfs) and shutil.which("nft") is None:
        return
    nft.transaction(commands(netconfs, present()))


def drift(netconfs: list[dict]) -> str | None:
    """How the kernel's table differs from the one the networks need, None when it does not."""
    wanted = {r["comment"] for r in rules(netconfs)}
    listed = nft.objects("table", TABLE["family"], TABLE["name"])
    if not wanted:
        return "table inet circuit_isolation is there, no network is isolated" if listed \
            else None
    if not listed:
        return "table inet circuit_isolation is missing"
    have = {o["rule"].get("comment") for o in listed if "rule" in o} - {
        "published ports and LB VIPs"}
    if have != wanted:
        missing, extra = sorted(wanted - have), sorted(have - wanted)
        return "table inet circuit_isolation differs: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else [])
            + ([f"extra {', '.join(extra)}"] if extra else []))
    return None


def isolate_ports(netconf: dict, result: dict) -> None:
    """On connect to a --no-icc bridge network: the host-side interfaces of a CNI result that
    are plugged into a bridge (the container's veth) become isolated ports, through circuit's
    netlink core (no pyroute2 on connect). PluginError when the result names none; OSError
    when the kernel refuses."""
    from circuit_common.errors import PluginError
    from circuit_netlink import NETLINK_ROUTE, Batch, NetlinkError, rtnl

    names = [i["name"] for i in result.get("interfaces") or [] if not i.get("sandbox")]
    with Batch(NETLINK_ROUTE) as batch:
        ports = [link for link in (rtnl.link(batch, name) for name in names)
                 if link is not None and link.master is not None]
        for port in ports:
            try:
                rtnl.isolate_port(batch, port.index)
            except NetlinkError as e:
                raise OSError(e.errno, f"cannot isolate bridge port {port.name}: "
                                       f"{e.strerror}") from None
    if not ports and netconf["plugins"][0]["type"] == "bridge":
        raise PluginError(f"network {netconf['name']} is --no-icc but the bridge plugin's "
                          "result names no host-side port to isolate (cniVersion 0.3.0 or "
                          "later gives one)")


def stored(ctx) -> list[dict]:
    """The configs of the stored networks."""
    return [n["config"] for n in ctx.store.read_all(ctx.store.path("networks")).records]


def restore(ctx) -> int:
    """`circuit restore`'s part: the table as the stored networks need it."""
    sync(stored(ctx))
    return 0
