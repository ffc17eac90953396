"""circuit-metrics: circuit's networks, QoS classes and LB services for Prometheus; circuit top.

Usage:
  circuit-metrics [--openmetrics]
  circuit-metrics --textfile DIR
  circuit-metrics --listen ADDR:PORT
  circuit-metrics top [--once] [--format FMT] [--interval SEC]
  circuit-metrics (-h | --help)

Also reached as `circuit metrics ...` and `circuit top`. Prints the metrics of this host
in Prometheus' text format (OpenMetrics with --openmetrics): attachments per network and each
container's traffic, every QoS class's bytes, packets, drops, overlimits and backlog per
network, container and direction, every LB service's and target's connections, packets and
bytes (IPVS or nftables), targets' weights and health, and circuit's build.
With --textfile it writes them to DIR/circuit.prom atomically, for node_exporter's textfile
collector; with --listen it serves them at http://ADDR:PORT/metrics (OpenMetrics when the
scraper's Accept asks for it). `top` shows each container's rates in and out and drops,
and LB targets' new connections per second and health, refreshed every --interval; `q`
quits; --once prints one table measured over one interval (for a pipe, a script). See
docs/metrics.md.

Options:
  --openmetrics       OpenMetrics 1.0.0 text (ends with # EOF) instead of Prometheus 0.0.4
  --textfile DIR      write DIR/circuit.prom (a temp file renamed over it), print nothing
  --listen ADDR:PORT  serve GET /metrics until stopped (127.0.0.1:9464, [::1]:9464, :9464)
  --once              one table, not a live view (no terminal needed)
  --format FMT        table or json [default: table] (with --once)
  --interval SEC      seconds between refreshes, and what --once measures over [default: 1]

Examples:
  circuit metrics
  circuit metrics --openmetrics | grep circuit_qos_drops
  circuit metrics --textfile /var/lib/prometheus/node-exporter
  circuit metrics --listen 127.0.0.1:9464
  circuit top
  circuit top --once --format json | jq .
"""

import errno
import ipaddress
import os
import sys

from circuit_common import cli, metrics, output
from circuit_common.config import GLOBAL_HELP
from circuit_common.errors import Conflict, EnvironmentFault, InvalidInput, NotFound, UsageError
from circuit_common.store import replace_file

from . import exposition

TEXTFILE = "circuit.prom"


def scrape(ctx: cli.Context, openmetrics: bool = False) -> tuple[str, list]:
    """The exposition of every collector's families, and the collectors' errors."""
    families, errors = metrics.collect(ctx)
    return exposition.render(families, openmetrics), errors


def report(errors: list) -> int:
    """Each collector's error on one line; the worst exit code (0 without any)."""
    for error in errors:
        print(f"circuit: {error}", file=sys.stderr)
    return max((e.exit_code for e in errors), default=0)


def write_textfile(ctx: cli.Context, directory: str) -> int:
    if not os.path.isdir(directory):
        raise NotFound(f"textfile directory {directory} does not exist (node_exporter's "
                       "--collector.textfile.directory)")
    text, errors = scrape(ctx)
    path = os.path.join(directory, TEXTFILE)
    try:
        replace_file(path, text.encode(), mode=0o644)
    except OSError as e:
        raise EnvironmentFault(f"cannot write {path}: {e.strerror}") from None
    return report(errors)


def parse_listen(value: str) -> tuple[str, int]:
    """(address, port) of ADDR:PORT, [IPv6]:PORT or :PORT (every address)."""
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536 or port != str(int(port)):
        raise InvalidInput(f"invalid --listen {value!r}: give ADDR:PORT, as 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise InvalidInput(f"invalid --listen {value!r}: brackets hold an IPv6 address")
    elif ":" in host:
        raise InvalidInput(f"invalid --listen {value!r}: write an IPv6 address in brackets, "
                           "as [::1]:9464")
    try:
        if host:
            ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(f"invalid --listen {value!r}: {host!r} is not an IP address "
                           "(give ADDR:PORT, as 127.0.0.1:9464)") from None
    return host, int(port)


def wants_openmetrics(accept: str) -> bool:
    """Whether an Accept header asks for OpenMetrics (a quality above 0)."""
    for item in accept.split(","):
        kind, *params = (part.strip() for part in item.split(";"))
        if kind == "application/openmetrics-text" and not any(
                p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
            return True
    return False


def serve(ctx: cli.Context, listen: str) -> int:
    """Answer GET /metrics (and /) until stopped; each scrape reads the state and the kernel
    afresh, one at a time."""
    import socket
    from http.server import BaseHTTPRequestHandler, HTTPServer

    host, port = parse_listen(listen)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404, "circuit serves /metrics only")
                return
            openmetrics = wants_openmetrics(self.headers.get("Accept", ""))
            text, errors = scrape(ctx, openmetrics)
            report(errors)
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", exposition.OPENMETRICS if openmetrics
                             else exposition.PROMETHEUS)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            """Scrapes are not logged; collectors' errors are, on stderr."""

    class Server(HTTPServer):
        address_family = socket.AF_INET6 if ":" in host or not host else socket.AF_INET

        def server_bind(self):
            if self.address_family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, bool(host))
            super().server_bind()

    try:
        server = Server((host or "::", port), Handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise Conflict(f"{listen} is in use: another program listens there") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise InvalidInput(f"no interface of this host has address {host}") from None
        raise EnvironmentFault(f"cannot listen on {listen}: {e.strerror}") from None
    print(f"serving metrics at http://{listen}/metrics", file=sys.stderr, flush=True)
    with server:
        server.serve_forever()
    return 0


def handle(argv: list[str], ctx: cli.Context) -> int:
    a = cli.parse(__doc__ + "\n" + GLOBAL_HELP, argv)
    if a["top"]:
        from . import top

        interval = top.parse_interval(a["--interval"])
        if output.check_format(a["--format"]) == "json" and not a["--once"]:
            raise UsageError("--format json needs --once (the live view is a table)")
        if a["--once"]:
            return top.once(ctx, interval, a["--format"])
        return top.live(ctx, interval)
    if a["--textfile"] is not None:
        return write_textfile(ctx, a["--textfile"])
    if a["--listen"] is not None:
        return serve(ctx, a["--listen"])
    text, errors = scrape(ctx, a["--openmetrics"])
    sys.stdout.write(text)
    sys.stdout.flush()
    return report(errors)


def main(argv: list[str] | None = None) -> int:
    return cli.run(handle, argv)
