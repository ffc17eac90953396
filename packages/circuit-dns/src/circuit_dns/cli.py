"""circuit-dns: containers on a circuit network find each other by name.

Usage:
  circuit-dns show [NETWORK] [--format FMT] [-q]
  circuit-dns status [--format FMT]
  circuit-dns serve
  circuit-dns stop
  circuit-dns enable NETWORK
  circuit-dns disable NETWORK
  circuit-dns (-h | --help)

Also reached as `circuit dns ...`. A network created with --dns (the default for bridge
networks from flags) gets a DNS server on its gateway address, started at its first attach:
a container asks it for the others on its networks by container id, --name and --alias of
connect (the hook: annotation circuit.aliases), each also as NAME.NETWORK; A, AAAA and PTR.
Other names go to the host's resolvers (none from --internal networks). The state holds each
network's resolv.conf and hosts file (dns/NETWORK/), ready to bind-mount. `show` lists the
names, `status` the server of this state in this network namespace, `serve` runs it in the
foreground (circuit-dns.service), `stop` ends it. `enable` gives DNS to a network made
from a config file, whose plugin names the server: "dns": {"nameservers": [its gateway]};
`disable` takes DNS away from a network. See docs/dns.md.

Options:
  --format FMT  table or json [default: table]
  -q            names only (not with --format json)
"""

import os
import signal

from circuit_common import cli, output
from circuit_common.config import GLOBAL_HELP
from circuit_common.errors import NotFound

from . import control, records


def handle(argv: list[str], ctx: cli.Context) -> int:
    a = cli.parse(__doc__ + "\n" + GLOBAL_HELP, argv)
    store = ctx.store
    if a["show"]:
        fmt = output.check_format(a["--format"], a["-q"])
        names = [a["NETWORK"]] if a["NETWORK"] else records.dns_networks(store)
        rows = []
        for network in names:
            if store.read(records.record_path(store, network)) is None:
                raise NotFound(f"network {network} has no DNS (create it with --dns)")
            for key, entry in sorted(records.load(store, network)["entries"].items()):
                rows.append({"network": network, "attachment": key, "names": entry["names"],
                             "ips": entry["ips"]})
        if a["-q"]:
            output.emit_names(sorted({n for r in rows for n in r["names"]}))
        elif fmt == "json":
            output.emit_json(rows)
        else:
            output.emit(output.render_table(
                ["network", "names", "ips"],
                [(r["network"], ", ".join(r["names"]), ", ".join(r["ips"])) for r in rows]))
    elif a["status"]:
        fmt = output.check_format(a["--format"])
        answer = control.request(store, "status")
        if answer is None:
            raise NotFound(f"no DNS server of {store.root} runs in this network namespace "
                           "(it starts at the first attach to a DNS network)")
        if fmt == "json":
            output.emit_json(answer)
        else:
            print(f"pid {answer['pid']}")
            for line in answer["listening"]:
                print(f"listening {line}")
            print(f"upstreams {' '.join(answer['upstreams']) or '-'}")
            for network, error in sorted(answer["errors"].items()):
                print(f"network {network}: {error}")
    elif a["serve"]:
        from .server import serve

        return serve(store, stay=True)
    elif a["enable"]:
        from .extension import enable

        print(f"dns enabled for {enable(ctx, a['NETWORK'])}")
    elif a["disable"]:
        from .extension import disable

        print(f"dns disabled for {disable(ctx, a['NETWORK'])}")
    elif a["stop"]:
        proc = control.running(store)
        if proc is None:
            raise NotFound(f"no DNS server of {store.root} runs in this network namespace")
        os.kill(proc.pid, signal.SIGTERM)
        print(f"DNS server {proc.pid} stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(handle, argv)
