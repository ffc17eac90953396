"""The nftables table `inet circuit_lb`, computed from the stored services, and the change from
one such table to another as the commands of one transaction (see nft.py).

For services of the nftables backend (after kube-proxy's nftables mode):
  prerouting, output    nat, dstnat: jump services (so containers and the host itself reach VIPs)
  services              one rule per service: ip daddr VIP tcp dport PORT goto svc/NAME
  svc/NAME              ct mark |= MARK (the rule's comment names the scheduler), then DNAT to
                        `numgen inc` (rr, wrr) or `jhash` of the source address (sh, persistent)
                        mod the sum of the widths, through a map that gives each target a range
                        as wide as its weight (rr: 1; a weight of 0: no range)
  postrouting           nat, srcnat: ct mark & MARK masquerade (replies come back through the
                        host, so a client on its target's bridge works), and the masquerade of
                        IPVS services with masq targets (by conntrack's original VIP and port)
  count-out, count-in   filter: look each packet of a marked connection up in sets whose
                        elements are targets (PROTO . ADDR . PORT) with a counter each: conns4
                        (first packets), out4 (to the target), in4 (its replies), conns6, …
"""

from collections import namedtuple

from .address import Endpoint

TABLE = {"family": "inet", "table": "circuit_lb"}
MARK = 0x10000000  # ct mark bit: a connection to an nftables-backend service, masqueraded
SCHEDULERS = ("rr", "wrr", "sh")  # what nftables can express
SEED = 0xC1C  # jhash seed: a client keeps its target while the targets stay the same
COUNTS = ("conns", "out", "in")

Table = namedtuple("Table", "chains sets elements")
# chains {name: (hook spec or None, [rule])}, rule {"expr": […], "comment"?};
# sets {name: spec}; elements {(set, (proto, addr, port))}
EMPTY = Table({}, {}, set())


def build(records: list[dict]) -> Table:
    """The table the stored services need (EMPTY when there are none)."""
    if not records:
        return EMPTY
    nat = {"type": "nat", "policy": "accept"}
    count = {"type": "filter", "prio": -150, "policy": "accept"}
    jump = [{"expr": [{"jump": {"target": "services"}}]}]
    marked = _match({"&": [{"ct": {"key": "mark"}}, MARK]}, MARK)
    table = Table({"prerouting": ({**nat, "hook": "prerouting", "prio": -100}, jump),
                   "output": ({**nat, "hook": "output", "prio": -100}, jump),
                   "postrouting": ({**nat, "hook": "postrouting", "prio": 100},
                                   [{"expr": [marked, {"masquerade": None}]}]),
                   "count-out": ({**count, "hook": "postrouting"}, []),
                   "count-in": ({**count, "hook": "prerouting"}, []),
                   "services": (None, [])}, {}, set())
    for version, family in ((4, "ip"), (6, "ip6")):
        for name in COUNTS:
            table.sets[f"{name}{version}"] = {
                "type": ["inet_proto", f"ipv{version}_addr", "inet_service"],
                "stmt": [{"counter": None}]}
        for name, chain, which, field in (
                ("conns", "count-out", {"ct": {"key": "state"}}, "new"),
                ("out", "count-out", {"ct": {"key": "direction"}}, "original"),
                ("in", "count-in", {"ct": {"key": "direction"}}, "reply")):
            addr, port = ("saddr", "sport") if name == "in" else ("daddr", "dport")
            key = {"concat": [{"meta": {"key": "l4proto"}}, _payload(family, addr),
                              _payload("th", port)]}
            table.chains[chain][1].append({"expr": [marked, _match(which, field),
                                                    _match(key, f"@{name}{version}")]})
    for record in records:
        if record.get("backend") == "nftables":
            _add_service(table, record)
        elif any(t["forward"] == "masq" for t in record["targets"]):
            table.chains["postrouting"][1].append(_ipvs_masquerade(record))
    return table


def _add_service(table: Table, record: dict) -> None:
    name, protocol = record["name"], record["protocol"]
    family = _family(record["addr"])
    version = 6 if family == "ip6" else 4
    chain = f"svc/{name}"
    table.chains["services"][1].append({"expr": [
        _match(_payload(family, "daddr"), record["addr"]),
        _match(_payload(protocol, "dport"), record["port"]), {"goto": {"target": chain}}]})
    rules = [{"comment": record["scheduler"], "expr": [{"mangle": {
        "key": {"ct": {"key": "mark"}}, "value": {"|": [{"ct": {"key": "mark"}}, MARK]}}}]}]
    ranges, start = [], 0
    counted = [f"{count}{version}" for count in COUNTS]
    for target, width in zip(record["targets"], widths(record), strict=True):
        key = (protocol, target["addr"], target["port"])
        table.elements.update([(name, key) for name in counted])
        if width:
            low = start if width == 1 else {"range": [start, start + width - 1]}
            ranges.append([low, {"concat": [target["addr"], target["port"]]}])
            start += width
    if ranges:
        if record["scheduler"] == "sh" or record.get("persistent"):
            pick = {"jhash": {"mod": start, "seed": SEED, "expr": _payload(family, "saddr")}}
        else:
            pick = {"numgen": {"mode": "inc", "mod": start, "offset": 0}}
        rules.append({"expr": [_match({"meta": {"key": "l4proto"}}, protocol), {"dnat": {
            "family": family, "addr": {"map": {"key": pick, "data": {"set": ranges}}}}}]})
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
    commands += [{"add": {"set": _ref(name, **spec)}} for name, spec in new.sets.items()
                 if name not in old.sets]
    commands += [{"add": {"chain": _ref(name, **(hook or {}))}}
                 for name, (hook, _) in new.chains.items() if name not in old.chains]
    commands += [{"flush": {"chain": _ref(name)}} for name in gone]
    for name, (_, rules) in new.chains.items():
        if name in old.chains and old.chains[name][1] == rules:
            continue
        if name in old.chains:
            commands.append({"flush": {"chain": _ref(name)}})
        commands += [{"add": {"rule": {**TABLE, "chain": name, **rule}}} for rule in rules]
    commands += _elements("delete", old.elements - new.elements)
    commands += _elements("add", new.elements - old.elements)
    commands += [{"delete": {"chain": _ref(name)}} for name in gone]
    commands += [{"delete": {"set": _ref(name)}} for name in old.sets if name not in new.sets]
    return commands


def rebuild(new: Table) -> list[dict]:
    """The commands that replace whatever table circuit_lb the kernel has with new."""
    return [{"add": {"table": _ref()}}, {"delete": {"table": _ref()}}, *changes(EMPTY, new)]


def _elements(verb: str, items) -> list[dict]:
    by_set: dict[str, list] = {}
    for name, key in items:
        by_set.setdefault(name, []).append({"concat": key})  # a tuple is a JSON array
    return [{verb: {"element": _ref(name, elem=elem)}} for name, elem in by_set.items()]


# -- reading the kernel's table back ---------------------------------------------------------

def read(objects: list[dict]) -> dict[tuple, dict]:
    """The nftables-backend services in the kernel's table (objects as `nft.list_table` gives
    them): {(protocol, Endpoint): {"scheduler", "targets": {(ip, port): ("masq", width)},
    "counters": {(ip, port): {"connections", "packets_in", …}}}}."""
    rules: dict[str, list[dict]] = {}
    counted: dict[tuple, dict] = {}  # (set, (proto, ip, port)): {"packets", "bytes"}
    for item in objects:
        if "rule" in item:
            rules.setdefault(item["rule"]["chain"], []).append(item["rule"])
        elif "set" in item:
            for elem in item["set"].get("elem", []):
                if isinstance(elem, dict) and "elem" in elem:
                    counted[(item["set"]["name"], tuple(elem["elem"]["val"]["concat"]))] = \
                        elem["elem"].get("counter", {})
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
            (protocol, port), (family, vip) = fields["dport"], fields["daddr"]
            version = 6 if family == "ip6" else 4
            found[(protocol, Endpoint(vip, port))] = read_service(
                rules.get(fields["chain"], []), counted, protocol, version)
    return found


def strangers(objects: list[dict], wanted: Table) -> list[str]:
    """How the kernel's table (objects as `nft.list_table` gives them) holds what the stored
    services do not make, one line each: a chain or set of another's, another hook or policy,
    more or fewer rules in a chain than circuit's (a rule added or deleted by hand). Nothing
    for a table that is gone: its services are reported missing."""
    if not objects:
        return []
    where = f"table {TABLE['family']} {TABLE['table']}"
    lines, counts = [], {}
    for item in objects:
        if "rule" in item:
            counts[item["rule"]["chain"]] = counts.get(item["rule"]["chain"], 0) + 1
    for item in objects:
        if "set" in item and item["set"]["name"] not in wanted.sets:
            lines.append(f"{where} has set {item['set']['name']}, which no service makes")
        if "chain" not in item:
            continue
        chain = item["chain"]
        if chain["name"] not in wanted.chains:
            lines.append(f"{where} has chain {chain['name']}, which no service makes")
            continue
        hook, rules = wanted.chains[chain["name"]]
        differing = [f"{key} {chain.get(key)} (circuit's: {value})"
                     for key, value in (hook or {}).items() if chain.get(key) != value]
        if hook is None and "hook" in chain:
            differing.append(f"hook {chain['hook']} (circuit's: none)")
        if differing:
            lines.append(f"chain {chain['name']} of {where} has {', '.join(differing)}")
        if counts.get(chain["name"], 0) != len(rules):
            lines.append(f"chain {chain['name']} of {where} has {counts.get(chain['name'], 0)} "
                         f"rules, the services make {len(rules)} (a rule added or deleted by "
                         "hand?)")
    listed = {item["chain"]["name"] for item in objects if "chain" in item}
    lines += [f"chain {name} of {where} is missing" for name in wanted.chains
              if name not in listed]
    return lines


def read_service(rules: list[dict], counted: dict, protocol: str, version: int) -> dict:
    targets: dict[tuple, tuple] = {}
    for rule in rules:
        for expr in rule["expr"]:
            mapping = expr.get("dnat", {}).get("addr", {})
            for key, data in mapping.get("map", {}).get("data", {}).get("set", []) \
                    if isinstance(mapping, dict) else ():
                low, high = key["range"] if isinstance(key, dict) else (key, key)
                where = tuple(data["concat"])
                targets[where] = ("masq", targets.get(where, ("masq", 0))[1] + high - low + 1)
    stats = {}
    for ip, port in targets:
        conns, out, back = (counted.get((f"{name}{version}", (protocol, ip, port)), {})
                            for name in COUNTS)
        stats[(ip, port)] = {"connections": conns.get("packets", 0),
                             "packets_in": out.get("packets", 0), "bytes_in": out.get("bytes", 0),
                             "packets_out": back.get("packets", 0),
                             "bytes_out": back.get("bytes", 0)}
    return {"scheduler": rules[0].get("comment", "") if rules else "", "targets": targets,
            "counters": stats}


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
