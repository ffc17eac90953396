"""circuit-hook: a runc OCI hook that attaches a container to networks on start, detaches on stop.

Usage:
  circuit-hook [attach | detach]
  circuit-hook install BUNDLE [--network NAME]... [--publish SPEC]... [--alias ALIAS]...
  circuit-hook uninstall BUNDLE
  circuit-hook (-h | --help)

Reads the container's OCI state JSON on stdin. With a pid (prestart, createRuntime) it attaches;
with status "stopped" (poststop) it detaches. `attach` / `detach` force the phase.
Also reached as `circuit hook ...`, and as plain `circuit` with the state on stdin.

Networks, the first that is set wins:
  CNI_CONF=PATH            a .conf/.conflist: the network is created if absent, reused if identical
  CIRCUIT_NETWORK=A,B      existing networks, each once, attached in order as eth0, eth1, ...
  annotation circuit.networks=A,B in the container's config.json
CNI_PATH (colon-separated) says where the plugins are.

Published ports ([HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp], comma-separated), the first set wins:
  CIRCUIT_PUBLISH=8080:80,5353:53/udp   in the hook's env
  annotation circuit.publish=8080:80    in the container's config.json
They reach the plugins that declare portMappings (portmap) on every network attached.

Names beside the container id (DNS, with circuit-dns), comma-separated, on every network:
  annotation circuit.aliases=web,www

`install BUNDLE` writes the hooks into BUNDLE/config.json (createRuntime and poststop, running
this circuit with this command's state, CNI path, libcni cache and runc root) and the
annotations circuit.networks, circuit.publish and circuit.aliases, and, when the first network
with DNS has one (circuit-dns), its resolv.conf bind-mounted read-only as /etc/resolv.conf;
installing again replaces them. `uninstall BUNDLE` removes them. The networks must exist.
docs/walkthrough.md goes from `runc spec` to ping, a published port and an LB address.

Options:
  --network NAME           install: a network to attach (repeat: eth0, eth1, ...)
  -p SPEC, --publish SPEC  install: publish a port, [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]
  --alias ALIAS            install: another name of the container on its networks

Examples:
  runc spec --bundle /root/web-00
  circuit hook install /root/web-00 --network sandbox -p 8080:80
  runc run -d --bundle /root/web-00 web-00
What it writes into /root/web-00/config.json (runc spec's other keys unchanged):
  {
    "ociVersion": "1.0.2-dev",
    "process": {"...": "as runc spec made it"},
    "root": {"path": "rootfs", "readonly": true},
    "mounts": [
      {"destination": "/proc", "type": "proc", "source": "proc"},
      {"destination": "/etc/resolv.conf", "type": "bind",
       "source": "/var/lib/circuit/dns/sandbox/resolv.conf", "options": ["rbind", "ro"]}
    ],
    "hooks": {
      "createRuntime": [{"path": "/usr/local/bin/circuit",
                         "env": ["CIRCUIT_STATE=/var/lib/circuit", "CNI_PATH=/usr/lib/cni",
                                 "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}],
      "poststop": [{"path": "/usr/local/bin/circuit",
                    "env": ["CIRCUIT_STATE=/var/lib/circuit", "CNI_PATH=/usr/lib/cni",
                            "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}]
    },
    "annotations": {"circuit.networks": "sandbox", "circuit.publish": "8080:80"},
    "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]}
  }
"""

import json
import os
import sys

from circuit_common import cli
from circuit_common.config import GLOBAL_HELP
from circuit_common.errors import InvalidInput, NotFound
from circuit_common.proc import process
from circuit_common.validate import check_dns_name, check_name, check_once, check_pid
from circuit_net.attach import check_connectable
from circuit_net.networks import Networks
from circuit_net.runtime import check_declared, parse_publish_list
from circuit_net.target import Target

MAX_STATE = 1 << 20


def read_state(stream) -> dict:
    """The OCI state from stdin, refused beyond 1 MiB or when it is not a state object."""
    data = stream.buffer.read(MAX_STATE + 1)
    if len(data) > MAX_STATE:
        raise InvalidInput("OCI state on stdin is larger than 1 MiB; is this really a runc hook?")
    try:
        state = json.loads(data)
    except (ValueError, RecursionError):
        raise InvalidInput("stdin is not the OCI state JSON that runc passes to hooks") from None
    if not isinstance(state, dict) or "id" not in state:
        raise InvalidInput("OCI state on stdin has no container 'id'")
    check_name(state["id"], "container id")
    pid = state.get("pid")
    if pid is not None and not (type(pid) is int and pid == 0):  # 0 or none: stopped
        if type(pid) is not int:  # "2" is refused, never coerced
            raise InvalidInput(f"invalid pid in the OCI state {pid!r}: a PID is a JSON number, "
                               "as runc writes it")
        check_pid(pid, "pid in the OCI state")
    if not isinstance(state.get("status", ""), str):
        raise InvalidInput(f"status in the OCI state is {state['status']!r}, not a string")
    annotations = {} if state.get("annotations") is None else state["annotations"]
    if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
        raise InvalidInput("annotations in the OCI state must map strings to strings")
    return state


def wanted_networks(nets: Networks, state: dict, env=os.environ) -> list[str]:
    """The networks to attach, from CNI_CONF, CIRCUIT_NETWORK or the circuit.networks annotation."""
    if env.get("CNI_CONF"):
        return [nets.create(env["CNI_CONF"])[0]["name"]]
    names = env.get("CIRCUIT_NETWORK") or (state.get("annotations") or {}).get("circuit.networks")
    if not names:
        raise InvalidInput("no network for the hook: set CNI_CONF or CIRCUIT_NETWORK in the "
                           "hook's env, or the annotation circuit.networks")
    found = check_once([check_name(n.strip(), "network name") for n in names.split(",")
                        if n.strip()], "network")
    if not found:  # " , " attached nothing and said 0
        where = "CIRCUIT_NETWORK" if env.get("CIRCUIT_NETWORK") else "annotation circuit.networks"
        raise InvalidInput(f"{where} {names!r} names no network; give NAME[,NAME...]")
    return found


def wanted_capabilities(state: dict, env=os.environ) -> dict:
    """Capability args for every network: portMappings from CIRCUIT_PUBLISH or the annotation
    circuit.publish."""
    text = env.get("CIRCUIT_PUBLISH") or (state.get("annotations") or {}).get("circuit.publish")
    mappings = parse_publish_list(text) if text else []
    return {"portMappings": mappings} if mappings else {}


def wanted_aliases(state: dict, networks: list[str]) -> tuple[str, ...]:
    """The container's names from the circuit.aliases annotation, checked as host names, and
    NAME.NETWORK on each of the networks."""
    text = (state.get("annotations") or {}).get("circuit.aliases") or ""
    found = tuple(dict.fromkeys(check_dns_name(n.strip(), "alias in circuit.aliases")
                                for n in text.split(",") if n.strip()))
    for network in networks:
        for alias in found:
            check_dns_name(alias, "alias in circuit.aliases", network)
    return found


def attach(nets: Networks, state: dict) -> None:
    """Attach the container to each wanted network; on any failure detach what this hook
    attached (never what another process attached since), then fail."""
    pid = check_pid(state.get("pid"), "pid in the OCI state")
    proc = process(pid)
    if proc is None:
        raise NotFound(f"container {state['id']}: no process with PID {pid}")
    target = Target(state["id"], state["id"], proc)
    names = wanted_networks(nets, state)
    caps = wanted_capabilities(state)
    aliases = wanted_aliases(state, names)
    configs = [nets.get(name)["config"] for name in names]  # all must exist before attaching
    check_declared(configs, caps)  # published ports must reach at least one network
    check_connectable(target)  # before any plugin runs ADD or DEL
    # a repeated start replaces, never duplicates; another running container's id: refused
    nets.detach_container(target.container_id, hook=True, owner=proc)
    made = []
    try:
        for name in names:
            made.append((name, nets.connect(name, target, caps=caps, only_declared=True,
                                                    aliases=aliases)))
    except BaseException:
        for name, record in reversed(made):
            nets.release(name, record)
        raise


def handle(argv: list[str], ctx: cli.Context) -> int:
    # runc calls the hook without arguments: spare it docopt on every container start
    a = cli.parse(__doc__ + "\n" + GLOBAL_HELP, argv) if argv else {
        "attach": False, "detach": False, "install": False, "uninstall": False}
    if a["install"] or a["uninstall"]:
        from circuit_hook import install

        if a["install"]:
            print(install.install(Networks(ctx), a["BUNDLE"], a["--network"], a["--publish"],
                                  a["--alias"]))
        else:
            print(install.uninstall(a["BUNDLE"]))
        return 0
    state = read_state(sys.stdin)
    nets = Networks(ctx)
    stopping = state.get("status") == "stopped" or not state.get("pid")
    if a["attach"] or (not a["detach"] and not stopping):
        attach(nets, state)
    else:
        nets.detach_container(state["id"], hook=not a["detach"])
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(handle, argv)
