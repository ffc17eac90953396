"""circuit-lb: load balancing with IPVS.

Usage:
  circuit-lb create NAME ADDR [--scheduler S] [--protocol P] [--persistent SECONDS]
  circuit-lb add NAME TARGET... [--weight W] [--forward F]
  circuit-lb remove NAME TARGET...
  circuit-lb delete NAME
  circuit-lb clear
  circuit-lb list [--details] [--stats] [--format FMT] [-q]
  circuit-lb restore
  circuit-lb (-h | --help)

Also reached as `circuit lb ...`. Not implemented yet: see issue 7.

Options:
  --scheduler S          rr, wrr, lc, wlc, ... [default: rr]
  --protocol P           tcp or udp [default: tcp]
  --persistent SECONDS   send one client to one target for this long
  --weight W             target weight 0..65535 [default: 1]
  --forward F            masq, route or tunnel [default: masq]
  --details              show targets
  --stats                show connections, packets and bytes
  --format FMT           table or json [default: table]
  -q                     names only
"""

from circuit_common import cli
from circuit_common.config import GLOBAL_HELP
from circuit_common.errors import CircuitError


def handle(argv: list[str], ctx: cli.Context) -> int:
    a = cli.parse(__doc__ + "\n" + GLOBAL_HELP, argv)
    if a["restore"]:
        return 0  # no load-balancer state exists yet
    raise CircuitError("lb is not implemented yet in this version of circuit")


def main(argv: list[str] | None = None) -> int:
    return cli.run(handle, argv)
