"""circuit-qos: quality of service for circuit networks and container interfaces.

Usage:
  circuit-qos set [--rate R] [--ceiling C] [--delay D] [--container TARGET | --interface IFACE]
                  NETWORK
  circuit-qos reset [--container TARGET | --interface IFACE] NETWORK
  circuit-qos show NETWORK [--format FMT]
  circuit-qos restore
  circuit-qos (-h | --help)

Also reached as `circuit network qos ...`. Not implemented yet: see issue 5.

Options:
  --rate R           guaranteed rate (kbit/s, or 5mbit, 800kbit)
  --ceiling C        maximum rate
  --delay D          added latency (50ms, 1s, 500us)
  --container TARGET one container's attachment (PID or runc id)
  --interface IFACE  one host-side interface
  --format FMT       table or json [default: table]
"""

from circuit_common import cli
from circuit_common.config import GLOBAL_HELP
from circuit_common.errors import CircuitError


def handle(argv: list[str], ctx: cli.Context) -> int:
    a = cli.parse(__doc__ + "\n" + GLOBAL_HELP, argv)
    if a["restore"]:
        return 0  # no QoS state exists yet
    raise CircuitError("qos is not implemented yet in this version of circuit")


def main(argv: list[str] | None = None) -> int:
    return cli.run(handle, argv)
