"""The nftables table `inet circuit_lb`, computed from the stored services, and the change from
one such table to another as the commands of one transaction (see nft.py).

For services of the nftables backend (modelled on kube-proxy's nftables mode):
  prerouting, output    nat, dstnat: jump services (so containers and the host itself reach VIPs)
  services              one rule per service: ip daddr VIP tcp dport PORT goto svc/NAME
  svc/NAME              ct mark |= MARK (the rule's comment names the scheduler), then
                        `numgen inc` (rr, wrr) or `jhash` of the source address (sh, persistent)
                        mod the sum of the widths, into a vmap that gives each target a range as
                        wide as its weight (rr: 1)
  ep/NAME/ADDR/PORT     counter (a nat chain sees each connection's first packet only), dnat
  postrouting           nat, srcnat: ct mark & MARK masquerade (replies come back through the
                        host, so a client on its target's bridge works), and the masquerade of
                        IPVS services with masq targets (by conntrack's original VIP and port)
  count-out, count-in   filter: packets and bytes to and from each target, into named counters
                        out/PROTO/ADDR/PORT, in/PROTO/ADDR/PORT through the maps out4, in4, …
Names spell an IPv6 address with '.' for ':', which nft's names cannot hold.
"""

from collections import namedtuple

from .address import Endpoint

TABLE = {"family": "inet", "table": "circuit_lb"}
MARK = 0x10000000  # ct mark bit: a connection to an nftables-backend service, masqueraded
SCHEDULERS = ("rr", "wrr", "sh")  # what nftables can express
SEED = 0xC1C  # jhash seed: a client keeps its target while the targets stay the same

Table = namedtuple("Table", "chains counters maps elements")
# chains {name: (hook spec or None, [rule])}, rule {"expr": […], "comment"?}; counters {name};
# maps {name: spec}; elements {(map, (proto, addr, port)): counter name}
EMPTY = Table({}, set(), {}, {})


def build(records: list[dict]) -> Table:
    """The table the stored services need (EMPTY when there are none)."""
    if not records:
        return EMPTY
    nat = {"type": "nat", "policy": "accept"}
    count = {"type": "filter", "prio": -150, "policy": "accept"}
    jump = [{"expr": [{"jump": {"target": "services"}}]}]
    masquerade = [{"expr": [_match({"&": [{"ct": {"key": "mark"}}, MARK]}, MARK),
                            {"masquerade": None}]}]
    table = Table({"prerouting": ({**nat, "hook": "prerouting", "prio": -100}, jump),
                   "output": ({**nat, "hook": "output", "prio": -100}, jump),
                   "postrouting": ({**nat, "hook": "postrouting", "prio": 100}, masquerade),
                   "count-out": ({**count, "hook": "postrouting"}, []),
                   "count-in": ({**count, "hook": "prerouting"}, []),
                   "services": (None, [])}, set(), {}, {})
    for version, family in ((4, "ip"), (6, "ip6")):
        for way, chain, field in (("out", "count-out", "daddr"), ("in", "count-in", "saddr")):
            name = f"{way}{version}"
            table.maps[name] = {"type": ["inet_proto", f"ipv{version}_addr", "inet_service"],
                                "map": "counter"}
            port = "dport" if field == "daddr" else "sport"
            table.chains[chain][1].append({"expr": [
                _match({"&": [{"ct": {"key": "mark"}}, MARK]}, MARK),
                _match({"ct": {"key": "direction"}}, "original" if way == "out" else "reply"),
                {"counter": {"map": {"key": {"concat": [
                    {"meta": {"key": "l4proto"}}, _payload(family, field),
                    _payload("th", port)]}, "data": f"@{name}"}}}]})
    for record in records:
        if record.get("backend") == "nftables":
            _add_service(table, record)
        elif any(t["forward"] == "masq" for t in record["targets"]):
            table.chains["postrouting"][1].append(_ipvs_masquerade(record))
    return table


def _add_service(table: Table, record: dict) -> None:
    name, protocol = record["name"], record["protocol"]
    family = _family(record["addr"])
    chain = f"svc/{name}"
    table.chains["services"][1].append({"expr": [
        _match(_payload(family, "daddr"), record["addr"]),
        _match(_payload(protocol, "dport"), record["port"]), {"goto": {"target": chain}}]})
    rules = [{"comment": record["scheduler"], "expr": [{"mangle": {
        "key": {"ct": {"key": "mark"}}, "value": {"|": [{"ct": {"key": "mark"}}, MARK]}}}]}]
    ranges, start = [], 0
    for target, width in zip(record["targets"], widths(record), strict=True):
        ip, port = target["addr"], target["port"]
        endpoint = f"ep/{name}/{_spell(ip)}/{port}"
        table.chains[endpoint] = (None, [{"expr": [
            {"counter": None}, _match({"meta": {"key": "l4proto"}}, protocol),
            {"dnat": {"family": family, "addr": ip, "port": port}}]}])
        for way in ("out", "in"):
            counter = f"{way}/{protocol}/{_spell(ip)}/{port}"
            table.counters.add(counter)
            table.elements[(f"{way}{Endpoint(ip, port).version}", (protocol, ip, port))] = counter
        if width:
            key = start if width == 1 else {"range": [start, start + width - 1]}
            ranges.append([key, {"goto": {"target": endpoint}}])
            start += width
    if ranges:
        if record["scheduler"] == "sh" or record.get("persistent"):
            pick = {"jhash": {"mod": start, "seed": SEED, "expr": _payload(family, "saddr")}}
        else:
            pick = {"numgen": {"mode": "inc", "mod": start, "offset": 0}}
        rules.append({"expr": [{"vmap": {"key": pick, "data": {"set": ranges}}}]})
    table.chains[chain] = (None, rules)


def widths(record: dict) -> list[int]:
    """Each target's share of the numgen or hash range: its weight (rr: 1; 0 stays 0)."""
    if record["scheduler"] == "rr":
        return [min(t["weight"], 1) for t in record["targets"]]
    return [t["weight"] for t in record["targets"]]


def _ipvs_masquerade(record: dict) -> dict:
    """Masquerade an IPVS service's connections: with net.ipv4.vs.conntrack=1 their conntrack
    entries hold the client's original tuple to the VIP."""
    family = _family(record["addr"])
    return {"comment": record["name"], "expr": [
        _match({"meta": {"key": "l4proto"}}, record["protocol"]),
        _match({"ct": {"key": f"{family} daddr", "dir": "original"}}, record["addr"]),
        _match({"ct": {"key": "proto-dst", "dir": "original"}}, record["port"]),
        {"masquerade": None}]}


def changes(old: Table, new: Table) -> list[dict]:
    """The commands that turn table old into table new, in an order nft accepts: objects are
    made before what refers to them, references dropped before what they refer to."""
    if not new.chains:
        return [{"delete": {"table": _ref()}}] if old.chains else []
    commands = [] if old.chains else [{"add": {"table": _ref()}}]
    gone = [name for name in old.chains if name not in new.chains]
    commands += [{"add": {"counter": _ref(name)}} for name in new.counters - old.counters]
    commands += [{"add": {"map": _ref(name, **spec)}} for name, spec in new.maps.items()
                 if name not in old.maps]
    commands += [{"add": {"chain": _ref(name, **(hook or {}))}}
                 for name, (hook, _) in new.chains.items() if name not in old.chains]
    commands += [{"flush": {"chain": _ref(name)}} for name in gone]
    for name, (_, rules) in new.chains.items():
        if name in old.chains and old.chains[name][1] == rules:
            continue
        if name in old.chains:
            commands.append({"flush": {"chain": _ref(name)}})
        commands += [{"add": {"rule": {**TABLE, "chain": name, **rule}}} for rule in rules]
    commands += _elements("delete", old.elements.items() - new.elements.items())
    commands += _elements("add", new.elements.items() - old.elements.items())
    commands += [{"delete": {"chain": _ref(name)}} for name in gone]
    commands += [{"delete": {"counter": _ref(name)}} for name in old.counters - new.counters]
    commands += [{"delete": {"map": _ref(name)}} for name in old.maps if name not in new.maps]
    return commands


def rebuild(new: Table) -> list[dict]:
    """The commands that replace whatever table circuit_lb the kernel has with new."""
    return [{"add": {"table": _ref()}}, {"delete": {"table": _ref()}}, *changes(EMPTY, new)]


def _elements(verb: str, items) -> list[dict]:
    by_map: dict[str, list] = {}
    for (name, key), counter in sorted(items):
        by_map.setdefault(name, []).append([{"concat": list(key)}, counter])
    return [{verb: {"element": _ref(name, elem=elem)}} for name, elem in by_map.items()]


# -- reading the kernel's table back ---------------------------------------------------------

def read(objects: list[dict]) -> dict[tuple, dict]:
    """The nftables-backend services in the kernel's table (objects as `nft.list_table` gives
    them): {(protocol, Endpoint): {"scheduler", "targets": {(ip, port): ("masq", width)},
    "counters": {(ip, port): {…}}}}."""
    rules: dict[str, list[dict]] = {}
    counters = {}
    for item in objects:
        if "rule" in item:
            rules.setdefault(item["rule"]["chain"], []).append(item["rule"])
        elif "counter" in item:
            counters[item["counter"]["name"]] = item["counter"]
    found = {}
    for rule in rules.get("services", []):
        fields = {}
        for expr in rule["expr"]:
            if "match" in expr and "payload" in expr["match"]["left"]:
                payload = expr["match"]["left"]["payload"]
                fields[payload["field"]] = (payload["protocol"], expr["match"]["right"])
            elif "goto" in expr:
                fields["chain"] = expr["goto"]["target"]
        if {"daddr", "dport", "chain"} <= fields.keys():
            (protocol, port), vip = fields["dport"], fields["daddr"][1]
            found[(protocol, Endpoint(vip, port))] = _read_service(
                rules, counters, fields["chain"], protocol)
    return found


def _read_service(rules: dict, counters: dict, chain: str, protocol: str) -> dict:
    service_rules = rules.get(chain, [])
    scheduler = service_rules[0].get("comment", "") if service_rules else ""
    shares: dict[str, int] = {}
    for rule in service_rules:
        for expr in rule["expr"]:
            for key, verdict in expr.get("vmap", {}).get("data", {}).get("set", []):
                low, high = key["range"] if isinstance(key, dict) else (key, key)
                target = verdict["goto"]["target"]
                shares[target] = shares.get(target, 0) + high - low + 1
    targets, stats = {}, {}
    prefix = "ep/" + chain.split("/", 1)[1] + "/"
    for name, endpoint_rules in rules.items():
        if not name.startswith(prefix):
            continue
        for expr in endpoint_rules[0]["expr"] if endpoint_rules else ():
            if "dnat" in expr:
                where = (expr["dnat"]["addr"], expr["dnat"]["port"])
            elif "counter" in expr:
                connections = expr["counter"]["packets"]
        targets[where] = ("masq", shares.get(name, 0))
        spelled = f"{protocol}/{_spell(where[0])}/{where[1]}"
        out, back = counters.get(f"out/{spelled}", {}), counters.get(f"in/{spelled}", {})
        stats[where] = {"connections": connections, "packets_in": out.get("packets", 0),
                        "bytes_in": out.get("bytes", 0), "packets_out": back.get("packets", 0),
                        "bytes_out": back.get("bytes", 0)}
    return {"scheduler": scheduler, "targets": targets, "counters": stats}


def _ref(name: str | None = None, **spec) -> dict:
    """An object of the table: the table itself without a name."""
    if name is None:
        return {"family": TABLE["family"], "name": TABLE["table"]}
    return {**TABLE, "name": name, **spec}


def _match(left, right) -> dict:
    return {"match": {"op": "==", "left": left, "right": right}}


def _payload(protocol: str, field: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field}}


def _family(ip: str) -> str:
    return "ip6" if ":" in ip else "ip"


def _spell(ip: str) -> str:
    return ip.replace(":", ".")
