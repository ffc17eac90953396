"""circuit-lb: load balancing with IPVS or nftables.

Usage:
  circuit-lb create NAME ADDR [--scheduler S] [--protocol P] [--persistent SECONDS]
                    [--backend B]
  circuit-lb edit NAME --scheduler S
  circuit-lb add NAME TARGET... [--weight W] [--forward F]
  circuit-lb remove NAME TARGET...
  circuit-lb check NAME CHECK [--interval S] [--timeout S] [--rise N] [--fall N]
                   [--slow-start S] [--sorry TARGET]
  circuit-lb agent
  circuit-lb delete NAME
  circuit-lb clear
  circuit-lb list [--details] [--stats] [--format FMT] [-q]
  circuit-lb restore
  circuit-lb (-h | --help)

Also reached as `circuit lb ...`. ADDR and TARGET are IP:PORT ([IPv6]:PORT); a TARGET may be
CONTAINER:PORT (a runc id or container name: its address on its one network of the service's
IP version; removed from the service when that container leaves the network). TARGET `-` reads
targets from stdin, one per line: `TARGET [WEIGHT]`. CHECK is tcp (a connection is accepted),
http:PATH[=STATUS] (GET PATH answers STATUS, 200 by default), exec:CMD (CMD, split as a shell
would but run without one, with the target's address and port appended and in
CIRCUIT_TARGET_IP and CIRCUIT_TARGET_PORT, exits 0) or none; `agent` runs the checks of every
service until SIGTERM: a target failing --fall checks in a row gets weight 0 until --rise checks
pass. See docs/lb.md.

Options:
  --scheduler S          rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, ... [default: rr]
  --protocol P           tcp or udp [default: tcp]
  --persistent SECONDS   send each client to the same target for this long
  --backend B            ipvs or nftables (rr, wrr, sh); default: ipvs where the kernel has it
  --weight W             target weight 0..65535 [default: 1]
  --forward F            masq, route or tunnel [default: masq]
  --interval S           seconds between a target's checks, 0.1..3600 (2)
  --timeout S            seconds a check may take, at most the interval (1)
  --rise N               passed checks that bring a target back, 1..100 (2)
  --fall N               failed checks that take a target out, 1..100 (3)
  --slow-start S         seconds over which a target back up ramps from weight 1 to its own
  --sorry TARGET         the target that takes the traffic while every target is down
  --details              show targets
  --stats                show connections, packets and bytes from the kernel
  --format FMT           table or json [default: table]
  -q                     names only (not with --format json)

Examples:
  circuit lb create web 10.100.99.1:80 --scheduler wrr
  circuit lb add web 10.100.10.2:80 10.100.10.3:80 --weight 2
  circuit lb edit web --scheduler rr
  printf '10.100.10.4:80 3\n10.100.10.5:80\n' | circuit lb add web -
  circuit lb check web http:/healthz --interval 1 --fall 2
  circuit lb check web 'exec:/usr/local/bin/check-web --quiet' --slow-start 30
  circuit lb check web tcp --sorry 10.100.10.9:80
  circuit lb agent
  circuit lb list --details --stats
  circuit lb remove web 10.100.10.3:80
  circuit lb delete web
"""

import re
import sys
import time
from itertools import repeat
from operator import itemgetter

from circuit_common import cli, output
from circuit_common.config import GLOBAL_HELP
from circuit_common.errors import InvalidInput, StateCorrupt
from circuit_common.validate import ascii_number

from . import health
from .address import Endpoint, Named, parse_endpoint, parse_target
from .services import Services, check_weight

# What a pipeline writes on stdin: lines of a canonical IPv4 address (as normal_ip gives it
# back), a port and maybe a weight, no comment, no blank line. Such a text is read by C loops;
# any other line by line (the same targets, and the errors name the line).
OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
PLAIN_LINE = (rf"^[ \t]*({OCTET}(?:\.{OCTET}){{3}}):([1-9][0-9]{{0,4}})"
              r"(?:[ \t]+([0-9]{1,5}))?[ \t]*$")


def read_targets(words: list[str]) -> list[tuple[Endpoint | Named, int | None]]:
    """TARGET words (ADDR:PORT, CONTAINER:PORT), with `-` standing for `TARGET [WEIGHT]`
    lines on stdin (either form)."""
    targets = []
    for word in words:
        if word == "-":
            targets += read_stdin_targets(sys.stdin.read())
        else:
            targets.append((parse_target(word, "target"), None))
    if not targets:
        raise InvalidInput("no targets given")
    if len(set(map(itemgetter(0), targets))) == len(targets):
        return targets
    seen = set()
    for endpoint, _ in targets:
        if endpoint in seen:
            raise InvalidInput(f"target {endpoint} is given twice; give each target once")
        seen.add(endpoint)
    return targets


def read_stdin_targets(text: str) -> list[tuple[Endpoint | Named, int | None]]:
    """The `TARGET [WEIGHT]` lines of text (stdin's), in order: ADDR:PORT or
    CONTAINER:PORT, as TARGET words."""
    found = re.findall(PLAIN_LINE, text, re.MULTILINE) if text else []
    # a match per line (it spans one, from ^ to $) when each line is a plain one
    if found and len(found) == text.count("\n") + (not text.endswith("\n")):
        ips, ports, weights = zip(*found, strict=True)
        ports = list(map(int, ports))
        weights = list(map(int, weights)) if "" not in weights else [
            int(weight) if weight else None for weight in weights]
        if max(ports) <= 65535 and max(filter(None, weights), default=0) <= 65535:
            # Endpoints made without their Python-level __new__
            return list(zip(map(tuple.__new__, repeat(Endpoint), zip(ips, ports, strict=True)),
                            weights, strict=True))
    targets = []
    lines = text.split("\n")  # as iterating stdin gives them: each with its newline
    lines = [f"{line}\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 2:
            raise InvalidInput(f"stdin line {number}: use TARGET [WEIGHT], not {line!r}")
        try:
            weight = check_weight(fields[1]) if len(fields) == 2 else None
        except InvalidInput as e:
            raise InvalidInput(f"stdin line {number}: {e}") from None
        targets.append((parse_target(fields[0], f"target on stdin line {number}"), weight))
    return targets


MAX_PERSISTENT = 86400


def persistent_seconds(value: str | None) -> int | None:
    if value is None:
        return None
    seconds = ascii_number(value)
    if not seconds or seconds > MAX_PERSISTENT:
        raise InvalidInput(f"invalid --persistent {value!r}: give a number of seconds from 1 "
                           f"to {MAX_PERSISTENT} (a day)")
    return seconds


def handle(argv: list[str], ctx: cli.Context) -> int:
    a = cli.parse(__doc__ + "\n" + GLOBAL_HELP, argv)
    services = Services(ctx)
    name = a["NAME"]
    if a["create"]:
        services.create(name, parse_endpoint(a["ADDR"]), a["--scheduler"], a["--protocol"],
                        persistent_seconds(a["--persistent"]), a["--backend"])
        print(f"service {name} created")
    elif a["edit"]:
        services.edit(name, a["--scheduler"])
        print(f"service {name} updated")
    elif a["add"]:
        services.add(name, read_targets(a["TARGET"]), check_weight(a["--weight"]),
                     a["--forward"])
        print(f"service {name} updated")
    elif a["remove"]:
        services.remove(name, [where for where, _ in read_targets(a["TARGET"])])
        print(f"service {name} updated")
    elif a["check"]:
        check = health.parse_check(a["CHECK"], a["--interval"], a["--timeout"], a["--rise"],
                                   a["--fall"], a["--slow-start"], a["--sorry"])
        services.set_check(name, check)
        print(f"service {name} updated")
    elif a["agent"]:
        from .agent import Agent

        return Agent(services).run()
    elif a["delete"]:
        services.delete(name)
        print(f"service {name} removed")
    elif a["clear"]:
        for removed in services.clear():
            print(f"service {removed} removed")
    elif a["list"]:
        return list_services(services, a)
    elif a["restore"]:
        return restore(ctx)
    return 0


def restore(ctx: cli.Context) -> int:
    """`circuit restore`'s part: every stored service back in the kernel."""
    for restored in Services(ctx).restore():
        print(f"service {restored} restored")
    return 0


def list_services(services: Services, a: dict) -> int:
    fmt = output.check_format(a["--format"], a["-q"])
    records, unreadable = services.all()
    errors = unreadable + [f"{line}; run `circuit restore`"
                           for line in services.drift(services.live(records))]
    stats = services.stats(records) if a["--stats"] else {}
    healths = services.healths() if any(r.get("check") for r in records) else {}
    for error in errors:
        print(f"circuit: {error}", file=sys.stderr)
    if a["-q"]:
        output.emit_names([r["name"] for r in records])
    elif fmt == "json":
        output.emit_json([{**r, **({"stats": stats.get(r["name"])} if a["--stats"] else {}),
                           **({"health": health.target_health(r, healths.get(r["name"]))}
                              if r.get("check") else {})} for r in records])
    else:
        headers = ["name", "addr", "protocol", "scheduler", "backend"]
        if a["--stats"]:
            headers += ["conns", "inpkts", "outpkts", "inbytes", "outbytes"]
        rows, details = [], {}
        for i, r in enumerate(records):
            where = str(Endpoint(r["addr"], r["port"]))
            row = [r["name"], where, r["protocol"], r["scheduler"], r.get("backend", "ipvs")]
            if a["--stats"]:
                row += counter_cells(stats[r["name"]]["service"])
            rows.append(row)
            if a["--stats"]:
                states = health.target_health(r, healths.get(r["name"])) if r.get("check") else {}
                details[i] = [target_line(t, stats.get(r["name"]), True)
                              + health_cells(states.get(str(Endpoint(t["addr"], t["port"]))))
                              for t in r["targets"]]
            elif a["--details"]:
                details[i] = target_lines(r["targets"])
        output.emit(output.render_table(headers, rows, details))
    return StateCorrupt.exit_code if unreadable else 0


def health_cells(state: dict | None) -> str:
    if state is None:
        return ""
    checked = "never" if state["last_check"] is None else time.strftime(
        "%H:%M:%S", time.localtime(state["last_check"]))
    return f"  {state['state']} checked {checked} failures {state['failures']}"


def counter_cells(counters: dict) -> list:
    return [counters.get(k, 0) for k in ("connections", "packets_in", "packets_out",
                                          "bytes_in", "bytes_out")]


def target_lines(targets: list[dict]) -> list[str]:
    """target_line of each target, without counters (thousands: no call per target)."""
    lines = []
    for target in targets:
        addr, port = target["addr"], target["port"]
        where = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
        lines.append(f"  -> {where:<22} {target['forward']:<7} weight {target['weight']}"
                     f"{added_as(target)}")
    return lines


def added_as(target: dict) -> str:
    """"  container NAME" for a target added as CONTAINER:PORT, else nothing."""
    container = target.get("container")
    return f"  container {container['name']}" if isinstance(container, dict) \
        and isinstance(container.get("name"), str) else ""


def target_line(target: dict, stats: dict | None, with_stats: bool) -> str:
    where = str(Endpoint(target["addr"], target["port"]))
    line = (f"  -> {where:<22} {target['forward']:<7} weight {target['weight']}"
            f"{added_as(target)}")
    if with_stats:
        counters = (stats or {}).get("targets", {}).get(where, {})
        line += "  conns {} inpkts {} outpkts {} inbytes {} outbytes {}".format(
            *counter_cells(counters))
    return line


def main(argv: list[str] | None = None) -> int:
    return cli.run(handle, argv)
