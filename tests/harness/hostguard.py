"""The machine's own network namespace, watched: what the test process's netns holds (nftables
tables, chains and rule counts, legacy iptables tables, links, addresses, routes, qdiscs,
forwarding switches, IPVS services), read before and after each test module and the session by
tests/conftest.py. Tests run circuit in namespaces of their own, so any difference is a test
(or a helper beside it) acting on the machine: the run fails naming it. A circuit nftables table
that appeared is removed; nothing else is touched.

One exception, the kernel's own: loading the ifb module (a netlink request for an IFB link in
any netns autoloads it) makes its numifbs (default 2) devices ifb0, ifb1, … in the initial netns.
New DOWN ifbN links are tolerated only when the module was not loaded before and is after."""

import _socket
import json
import os
import re
import struct
import subprocess
from collections import namedtuple

from circuit_netlink import NETLINK_ROUTE, NLM_F_DUMP, Batch, attributes
from circuit_netlink.rtnl import IFADDRMSG, IFINFOMSG, RTM_GETADDR, RTM_GETLINK, read_link

RTM_GETROUTE, RTM_GETQDISC = 26, 38
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type
TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
IFA_ADDRESS, IFA_LOCAL = 1, 2
TCA_KIND = 1
IFF_UP = 0x1
IFB_MODULE = "/sys/module/ifb"
SWITCHES = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")
CIRCUIT_TABLE = re.compile(r"circuit")  # circuit_lb, circuit_isolation, circuit_…: by prefix

Snapshot = namedtuple("Snapshot", "tables chains links addresses routes qdiscs switches kernel "
                                  "ifb_loaded")


def take() -> Snapshot:
    """What this process's netns holds now (≈ 5 ms: one `nft -j list ruleset`, netlink dumps)."""
    tables, chains = nft_ruleset()
    with Batch(NETLINK_ROUTE) as batch:
        links, names = {}, {}
        for payload in batch.query_bytes(RTM_GETLINK, IFINFOMSG.pack(0, 0, 0, 0, 0), NLM_F_DUMP):
            link = read_link(payload)
            names[link.index] = link.name
            links[link.name] = (link.kind, bool(IFINFOMSG.unpack_from(payload)[3] & IFF_UP),
                                link.mtu, link.master)
        links = {name: (kind, up, mtu, names.get(master, master))
                 for name, (kind, up, mtu, master) in links.items()}
        addresses = set()
        for family in (_socket.AF_INET, _socket.AF_INET6):
            for payload in batch.query_bytes(RTM_GETADDR, IFADDRMSG.pack(family, 0, 0, 0, 0),
                                             NLM_F_DUMP):
                _, prefix, _, _, index = IFADDRMSG.unpack_from(payload)
                attrs = attributes(payload, IFADDRMSG.size)
                address = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
                if address:
                    addresses.add(f"{_socket.inet_ntop(family, address)}/{prefix} dev "
                                  f"{names.get(index, index)}")
        routes = {route(payload, names) for family in (_socket.AF_INET, _socket.AF_INET6)
                  for payload in batch.query_bytes(RTM_GETROUTE, RTMSG.pack(
                      family, 0, 0, 0, 0, 0, 0, 0, 0), NLM_F_DUMP)}
        qdiscs = set()
        for payload in batch.query_bytes(RTM_GETQDISC, TCMSG.pack(0, 0, 0, 0, 0), NLM_F_DUMP):
            _, index, handle, parent, _ = TCMSG.unpack_from(payload)
            kind = attributes(payload, TCMSG.size).get(TCA_KIND, b"").rstrip(b"\0").decode()
            qdiscs.add(f"{kind} {handle >> 16:x}: parent {parent:#x} dev "
                       f"{names.get(index, index)}")
    return Snapshot(tables, chains, links, addresses, routes, qdiscs, read_switches(),
                    kernel_tables(), os.path.isdir(IFB_MODULE))


def nft_ruleset() -> tuple[set[tuple[str, str]], dict[tuple[str, str, str], int]]:
    """(family, table) of every nftables table (iptables-nft's among them), and the number of
    rules in each (family, table, chain)."""
    proc = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"nft -j list ruleset failed: {proc.stderr.strip()}")
    tables, chains = set(), {}
    for item in json.loads(proc.stdout or '{"nftables": []}')["nftables"]:
        if "table" in item:
            tables.add((item["table"]["family"], item["table"]["name"]))
        elif "chain" in item:
            c = item["chain"]
            chains[(c["family"], c["table"], c["name"])] = 0
        elif "rule" in item:
            r = item["rule"]
            key = (r["family"], r["table"], r["chain"])
            chains[key] = chains.get(key, 0) + 1
    return tables, chains


def route(payload: bytes, names: dict[int, str]) -> str:
    family, dst_len, _, _, table, _, _, kind, _ = RTMSG.unpack_from(payload)
    attrs = attributes(payload, RTMSG.size)
    table = struct.unpack("=I", attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else table
    dst = _socket.inet_ntop(family, attrs[RTA_DST]) if RTA_DST in attrs else "default"
    text = f"{dst}/{dst_len} table {table} type {kind}"
    if RTA_GATEWAY in attrs:
        text += f" via {_socket.inet_ntop(family, attrs[RTA_GATEWAY])}"
    if RTA_OIF in attrs:
        index = struct.unpack("=I", attrs[RTA_OIF])[0]
        text += f" dev {names.get(index, index)}"
    return text


def read_switches() -> dict[str, str]:
    found = {}
    for path in SWITCHES:
        try:
            with open(path) as f:
                found[path] = f.read().strip()
        except OSError:
            pass
    return found


def kernel_tables() -> set[str]:
    """IPVS services, and legacy iptables tables (x_tables, which nft does not list)."""
    found = set()
    for path, keep in (("/proc/net/ip_vs", lambda line: line.split()[0] in ("TCP", "UDP",
                                                                             "SCTP", "FWM")),
                       ("/proc/net/ip_tables_names", bool), ("/proc/net/ip6_tables_names", bool)):
        try:
            with open(path) as f:
                found |= {f"{path}: {line.strip()}" for line in f if line.strip()
                          and keep(line)}
        except OSError:
            pass
    return found


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    """What changed from before to after, one line each; the ifb module's own devices aside."""
    found = [f"nftables table {f} {n} appeared" for f, n in sorted(after.tables - before.tables)]
    found += [f"nftables table {f} {n} went" for f, n in sorted(before.tables - after.tables)]
    changed_tables = before.tables ^ after.tables  # their chains go without saying
    for key in sorted(set(before.chains) | set(after.chains)):
        if key[:2] not in changed_tables and before.chains.get(key) != after.chains.get(key):
            found.append(f"nftables chain {' '.join(key)}: {before.chains.get(key, 'none')} "
                         f"→ {after.chains.get(key, 'none')} rules")
    for name in sorted(set(before.links) | set(after.links)):
        was, now = before.links.get(name), after.links.get(name)
        if was != now and not ifb_of_the_module(name, was, now, before, after):
            found.append(f"link {name}: {describe(was)} → {describe(now)}")
    for kind, was, now in (("address", before.addresses, after.addresses),
                           ("route", before.routes, after.routes),
                           ("qdisc", before.qdiscs, after.qdiscs),
                           ("", before.kernel, after.kernel)):
        now = {item for item in now if not of_the_modules_ifbs(item, before, after)}
        found += [f"{kind} {item} appeared".lstrip() for item in sorted(now - was)]
        found += [f"{kind} {item} went".lstrip() for item in sorted(was - now)]
    found += [f"{path} {before.switches.get(path)} → {after.switches.get(path)}"
              for path in SWITCHES if before.switches.get(path) != after.switches.get(path)]
    return found


def ifb_of_the_module(name: str, was, now, before: Snapshot, after: Snapshot) -> bool:
    """Whether link name is one the ifb module made as it was loaded: ifbN, DOWN, unplugged."""
    return (was is None and now is not None and not before.ifb_loaded and after.ifb_loaded
            and re.fullmatch(r"ifb\d+", name) is not None and now[0] == "ifb" and not now[1]
            and now[3] is None)


def of_the_modules_ifbs(item: str, before: Snapshot, after: Snapshot) -> bool:
    """A qdisc or route of a tolerated ifbN link (a DOWN link has none but its noop qdisc)."""
    name = item.rsplit(" dev ", 1)[-1] if " dev " in item else None
    return name is not None and name not in before.links and ifb_of_the_module(
        name, None, after.links.get(name), before, after)


def describe(link) -> str:
    if link is None:
        return "none"
    kind, up, mtu, master = link
    return f"{kind or 'link'} {'UP' if up else 'DOWN'} mtu {mtu}" + (
        f" master {master}" if master is not None else "")


def circuit_tables(before: Snapshot, after: Snapshot) -> list[tuple[str, str]]:
    """circuit's nftables tables that appeared from before to after: the guard removes those."""
    return sorted((f, n) for f, n in after.tables - before.tables if CIRCUIT_TABLE.match(n))


def remove_tables(tables: list[tuple[str, str]]) -> list[str]:
    """Delete each table; what nft said for those it could not delete."""
    failed = []
    for family, name in tables:
        proc = subprocess.run(["nft", "delete", "table", family, name], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            failed.append(f"{family} {name}: {proc.stderr.strip()}")
    return failed


def verdict(what: str, before: Snapshot, after: Snapshot) -> str | None:
    """None when after is before; otherwise the failure message, having removed the circuit
    tables that appeared."""
    found = differences(before, after)
    if not found:
        return None
    removed = circuit_tables(before, after)
    failed = remove_tables(removed)
    lines = [f"{what} changed the machine's own network namespace (tests must run circuit in "
             "namespaces of their own; on a shared machine another process may have done it: "
             "`nft monitor` names the process of an nftables change):", *found]
    if removed:
        lines.append("removed (they were not there before): " + ", ".join(
            f"table {f} {n}" for f, n in removed) + (f"; failed: {failed}" if failed else ""))
    return "\n  ".join(lines)
