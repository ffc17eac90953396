"""circuit: container network management for runc. Dispatches to the circuit tools in-process.

Usage:
  circuit network create|list|inspect|spec|connect|disconnect|check|gc|delete|prune ...
  circuit network qos set|reset|show ...
  circuit lb create|add|remove|delete|clear|list ...
  circuit cluster join|leave|forget|list|sync|agent ...  (hosts sharing state through etcd)
  circuit dns show|status|serve|stop ...       (containers find each other by name)
  circuit metrics [--openmetrics] [--textfile DIR] [--listen ADDR:PORT]  (for Prometheus)
  circuit top [--once] [--format FMT] [--interval SEC]  (containers' traffic, LB targets, live)
  circuit hook [attach|detach]      (runc hooks: plain `circuit` with the OCI state on stdin)
  circuit hook install|uninstall BUNDLE ...  (write the hooks into a bundle's config.json)
  circuit restore                   re-apply QoS and LB state from the store after a reboot
  circuit version [--format FMT]    circuit's version and what it runs against
  circuit doctor [--format FMT]     what is missing on this machine, per feature, and the fix
  circuit completion bash|zsh       the shell completion script
  circuit manpages DIR              write the man pages circuit(1), circuit-net(1), ... into DIR
  circuit forkserver [--socket PATH]  keep circuit loaded: hooks and commands skip its imports
  circuit COMMAND ...               runs circuit-COMMAND from PATH, as git does

Each group has its own help: `circuit network --help`, `circuit network qos --help`,
`circuit lb --help`, `circuit cluster --help`, `circuit hook --help`.
"""

import os
import sys

DEFAULT_SOCKET = "/run/circuit/forkserver.sock"
RUN_HERE = {"forkserver", "agent", "serve", "--listen", "top"}  # the server itself; the
# cluster agent, `circuit dns serve` and `circuit metrics --listen` never end; `circuit top`
# runs until q

GROUPS = {
    ("network", "qos"): "circuit_qos.cli",
    ("network",): "circuit_net.cli",
    ("lb",): "circuit_lb.cli",
    ("hook",): "circuit_hook.cli",
    ("cluster",): "circuit_cluster.cli",
    ("dns",): "circuit_dns.cli",
    ("metrics",): "circuit_metrics.cli",
}
ALIASES = {"top": ("metrics", "top")}  # `circuit top …` is `circuit metrics top …` (completion too)


def positional_indexes(argv: list[str]) -> list[int]:
    """Indexes of the words that are not global options or their values."""
    from circuit_common.config import GLOBAL_VALUE_OPTIONS

    indexes, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in GLOBAL_VALUE_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            indexes.append(i)
    return indexes


def tool_main(module: str):
    from importlib import import_module

    return import_module(module).main


RESTORE_HELP = """circuit restore: re-apply QoS and LB state from the store after a reboot.

Every installed extension (circuit-qos, circuit-lb) makes this host's kernel match its records:
QoS policies on the attachments that exist, LB services, targets and VIPs. One failing does
not stop the others; the exit code is the worst of theirs. circuit-restore.service runs it at
boot (`just install`)."""


def restore(argv: list[str]) -> int:
    """Every installed extension re-applies its kernel state; one failing does not stop the
    others, and the worst exit code wins."""
    from circuit_common import cli, extensions
    from circuit_common.errors import CircuitError, UsageError

    def each(rest: list[str], ctx: cli.Context) -> int:
        if rest in (["-h"], ["--help"]):
            print(RESTORE_HELP)
            return 0
        if rest:
            raise UsageError("circuit restore takes no arguments; see circuit --help")
        worst = 0
        for name, module in extensions.registered():
            if hasattr(module, "restore"):
                try:
                    worst = max(worst, module.restore(ctx) or 0)
                except CircuitError as e:
                    print(f"circuit: restore of {name}: {e}", file=sys.stderr)
                    worst = max(worst, e.exit_code)
        return worst

    return cli.run(each, argv)


def main(argv: list[str], in_fork_server: bool = False) -> int:
    """The command argv names, run in this process; a `circuit-foo` program from PATH replaces
    it (in a fork server's child: runs as its child, so its exit code gets back)."""
    words = positional_indexes(argv)
    if not words:
        if {"-h", "--help"} & set(argv) or sys.stdin.isatty():
            print(__doc__.strip())
            return 0 if {"-h", "--help"} & set(argv) else 2
        return tool_main("circuit_hook.cli")(argv)  # a runc hook: OCI state on stdin
    first = argv[words[0]]
    rest = [a for i, a in enumerate(argv) if i != words[0]]
    if first in ("version", "doctor"):
        return tool_main("circuit_common.doctor")(argv)
    if first in ALIASES:
        group, *words_ = ALIASES[first]
        return tool_main(GROUPS[group,])([*words_, *rest])
    if first == "help":
        print(__doc__.strip())
        return 0
    if first == "completion":
        from circuit_common import completion

        return completion.main(rest, __doc__, GROUPS, ALIASES)
    if first == "manpages":
        from importlib import import_module

        from circuit_common import manpage
        from circuit_common.usage import tool_name

        return manpage.main(rest, {"circuit": __doc__} | {
            tool_name(module): import_module(module).__doc__ for module in GROUPS.values()})
    if first == "restore":
        return restore(rest)
    if first == "forkserver":
        from circuit_dispatch import forkserver

        return forkserver.main(rest, run=lambda command: main(command, in_fork_server=True))
    second = argv[words[1]] if len(words) > 1 else None
    if (first, second) in GROUPS:
        return tool_main(GROUPS[first, second])([a for i, a in enumerate(argv)
                                                  if i not in words[:2]])
    if (first,) in GROUPS:
        return tool_main(GROUPS[first,])(rest)
    try:
        if in_fork_server:
            import subprocess

            return subprocess.call([f"circuit-{first}", *rest])
        os.execvp(f"circuit-{first}", [f"circuit-{first}", *rest])
    except OSError:
        print(f"circuit: unknown command {first!r}; see circuit --help", file=sys.stderr)
        return 2


def socket_path(environ=os.environ) -> str | None:
    """The fork server's socket CIRCUIT_FORKSERVER names (DEFAULT_SOCKET when unset); None
    when it turns the fork server off (`off` or empty)."""
    path = environ.get("CIRCUIT_FORKSERVER", DEFAULT_SOCKET)
    return None if path in ("", "off") else path


def through_forkserver(argv: list[str]) -> int | None:
    """Run the command in circuit's fork server when one listens (CIRCUIT_FORKSERVER, or its
    default socket), and return its exit code; None when there is none, it declines or does
    not answer in its HANDOFF_TIMEOUT, and the command runs here: never in both, for the
    server's child runs it only once told "go". Costs one stat when none listens; then imports
    the protocol (circuit_dispatch.protocol) and what is built in."""
    path = socket_path()
    if path is None or RUN_HERE & set(argv):
        return None
    try:
        os.stat(path)
    except OSError:
        return None
    import _signal
    import _socket

    from circuit_dispatch import protocol

    script = os.path.abspath(sys.argv[0])  # the installation: the server runs the same one
    umask = os.umask(0o22)
    os.umask(umask)
    message = protocol.request(script, umask, argv, os.environb)
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    cwd = -1
    try:
        conn.settimeout(protocol.HANDOFF_TIMEOUT)  # a stopped or wedged server: run it here
        conn.connect(path)
        cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
        fds = protocol.pack_descriptors([0, 1, 2, cwd])
        sent = conn.sendmsg([message], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        conn.sendall(message[sent:])
        if conn.recv(1) != protocol.ACCEPTED:
            return None  # declined (the reason follows), or the server died first
        conn.sendall(protocol.GO)  # from here on the command is the child's
    except OSError:
        return None
    finally:
        if cwd >= 0:
            os.close(cwd)
    conn.settimeout(None)
    relayed = []

    def relay(number: int, _frame) -> None:
        relayed.append(number)
        try:  # noqa: SIM105 (contextlib is not loaded on this path)
            conn.send(bytes([number]))
        except OSError:
            pass  # the child is done: its code is on its way

    for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(sig, relay)
    reply = b""
    while len(reply) < protocol.RESULT_SIZE:
        try:
            more = conn.recv(protocol.RESULT_SIZE - len(reply))
        except OSError:
            more = b""
        if not more:
            if relayed and relayed[-1] != _signal.SIGINT:  # the child died of it: so do we
                _signal.signal(relayed[-1], _signal.SIG_DFL)
                os.kill(os.getpid(), relayed[-1])
            print("circuit: the fork server's child running the command died (killed?); "
                  "see the server's log, then run the command again", file=sys.stderr)
            return 70
        reply += more
    return protocol.exit_code(reply)


def run() -> None:
    """bin/circuit: the command through the fork server when one takes it, else here."""
    code = through_forkserver(sys.argv[1:])
    sys.exit(main(sys.argv[1:]) if code is None else code)
