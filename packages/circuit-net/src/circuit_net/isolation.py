"""Networks isolated from each other (`network create --isolate normal|strict`, as netavark's
isolate=true|strict): the table `inet circuit_isolation`, rebuilt from the stored networks in
one nftables transaction whenever one that is isolated, or could be blocked, comes or goes.

    forward   filter hook: ct status dnat accept (published ports, LB VIPs reach their
              targets from anywhere), then per blocked pair of networks A, B and IP version:
              ip saddr {A's subnets} ip daddr {B's subnets} drop, and B to A

A normal network is cut off from every other isolated network (normal or strict), a strict one
from every other circuit network. Traffic within a network, to the host and beyond is left
alone. Without isolated networks there is no table. `circuit restore` rebuilds it (entry point
circuit.extensions: isolation), `circuit doctor` reports how it drifted (circuit_net.doctor)."""

from circuit_common import nft

TABLE = {"family": "inet", "name": "circuit_isolation"}
KEY = "circuitIsolate"  # in the network's config list: "normal" or "strict"; absent: none
MODES = ("none", "normal", "strict")


def mode(netconf: dict) -> str:
    """A network's isolation mode, none when its config names none."""
    return netconf.get(KEY, "none")


def check_config(netconf: dict) -> None:
    """The isolation a config asks for is one circuit knows (ValueError: what is wrong)."""
    if mode(netconf) not in MODES:
        raise ValueError(f"{KEY} {netconf[KEY]!r} is not one of {', '.join(MODES)}")


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
    """The forward chain's drop rules, {"expr", "comment"} each."""
    from .spec import netconf_subnets

    found = []
    for a, b in blocked_pairs(netconfs):
        for src, dst in ((a, b), (b, a)):
            for version, family in ((4, "ip"), (6, "ip6")):
                saddr = [s for s in netconf_subnets(src) if s.version == version]
                daddr = [s for s in netconf_subnets(dst) if s.version == version]
                if saddr and daddr:
                    found.append({"comment": f"{src['name']} to {dst['name']}", "expr": [
                        _match(family, "saddr", saddr), _match(family, "daddr", daddr),
                        {"drop": None}]})
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


def stored(ctx) -> list[dict]:
    """The configs of the stored networks."""
    return [n["config"] for n in ctx.store.read_all(ctx.store.path("networks")).records]


def restore(ctx) -> int:
    """`circuit restore`'s part: the table as the stored networks need it."""
    sync(stored(ctx))
    return 0
