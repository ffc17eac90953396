"""circuit's fork server: one resident process that has imported every circuit module and keeps
children forked from it waiting on a Unix socket; the `circuit` dispatcher hands a command to
one of them, so a command (a runc hook above all) pays no imports and no fork. It is optional:
where none listens, or it declines, the dispatcher runs the command itself, as it always did.

The child runs the command as the caller would have: the caller's argv, environment, umask,
working directory, stdin/stdout/stderr and network namespace. A caller it cannot stand in for
is declined: another uid; another namespace but the network's, root directory, credentials,
capabilities, no_new_privs, seccomp mode or LSM label (see context); another installation (its
dispatcher script); or code changed on disk since the server started (the server then drains
and exits, so its service manager starts a fresh one).

The protocol: circuit_dispatch.protocol. A client that goes away (killed) takes its child
with it (SIGKILL): what a kill -9 of an in-process command would do, which circuit's intents
repair.
"""

import contextlib
import fcntl
import gc
import importlib
import os
import pkgutil
import select
import signal
import socket
import stat
import struct
import sys
import threading
import traceback
from collections.abc import Callable

from circuit_common.errors import EnvironmentFault, UsageError
from circuit_common.proc import CLONE_NEWNET, PR_SET_PDEATHSIG, checked, libc
from circuit_dispatch import DEFAULT_SOCKET, GROUPS, protocol, socket_path
from circuit_dispatch.protocol import ACCEPTED, DECLINED, GO, STDIO_AND_CWD

UCRED = struct.Struct("3i")  # pid, uid, gid
IDLE_CHILDREN = 4  # forked ahead, waiting in accept() each
MAX_CHILDREN = 64  # idle and busy: beyond, connections wait in the listen queue
IDLE_DEATHS = 8  # idle children dying in a row (none taking a connection between): stop
REPORT = struct.Struct("ci")  # a child's report to the server: TAKEN or STALE, and its pid
TAKEN, STALE = b"T", b"S"
REQUEST_TIMEOUT = 2.0  # seconds a client may take to send its request, and then "go"
LOG_LIMIT = 4096  # bytes of one log entry (PIPE_BUF: written at once even into a pipe)
NAMESPACES = ("pid", "mnt", "user", "uts", "ipc", "cgroup", "time")  # all but net: entered
STATUS_FIELDS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                 "NoNewPrivs", "Seccomp")
OWN_PREFIX = "circuit_"  # circuit's own packages: circuit_common, circuit_net, ...


class Request:
    """One command sent by a client: what the child needs to stand in for it."""

    def __init__(self, payload: bytes, fds: list[int], peer: tuple[int, int, int]):
        if len(fds) != STDIO_AND_CWD:
            raise ValueError("not a circuit fork server request")
        self.script, self.umask, self.argv, self.environ = protocol.parse_request(payload)
        self.stdio, self.cwd = fds[:3], fds[3]
        self.pid, self.uid, _ = peer
        self.fds = fds
        self.netns = -1  # opened by Worker.refusal

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def preload() -> None:
    """Import every module of circuit's packages, and what their functions import lazily, so a
    child imports nothing. The packages: the dispatcher's, its command groups' (GROUPS) and
    the circuit packages those import (circuit_common, circuit_netlink)."""
    walked: set[str] = set()
    pending = ["circuit_dispatch", *(module.split(".")[0] for module in GROUPS.values())]
    while pending:
        package = pending.pop(0)
        if package in walked:
            continue
        walked.add(package)
        try:
            root = importlib.import_module(package)
        except ImportError:
            continue  # a tool not installed
        for info in pkgutil.walk_packages(getattr(root, "__path__", []), f"{package}."):
            if not info.name.endswith(".__main__"):
                importlib.import_module(info.name)
        pending += [name for name in own_packages() if name not in walked]
    for name in sorted(lazy_imports()):
        with contextlib.suppress(ImportError):  # an optional one (cluster's, pyroute2's)
            importlib.import_module(name)
    warm_parsers()


def own_packages() -> set[str]:
    """circuit's packages among those loaded."""
    return {name.split(".")[0] for name in list(sys.modules) if name.startswith(OWN_PREFIX)}


def warm_parsers() -> None:
    """Let docopt compile its regular expressions here, once (re caches them), not in every
    child: ≈ 3 ms of every command that parses its arguments."""
    from circuit_common.cli import parse
    from circuit_common.config import GLOBAL_HELP

    for name, module in list(sys.modules.items()):
        if name.startswith(OWN_PREFIX) and name.endswith(".cli") and module.__doc__:
            with contextlib.suppress(Exception):  # no command given: a usage error
                parse(module.__doc__ + "\n" + GLOBAL_HELP, [])


def lazy_imports() -> set[str]:
    """The modules circuit's functions import when called (the hot path defers them)."""
    import ast

    names = set()
    for path in circuit_files():
        if not path.endswith(".py"):
            continue
        with open(path, "rb") as source:
            tree = ast.parse(source.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
    return names


def circuit_files() -> list[str]:
    """The source files of circuit's loaded modules."""
    return [module.__file__ for name, module in list(sys.modules.items())
            if name.startswith(OWN_PREFIX) and getattr(module, "__file__", None)]


def code_files() -> list[str]:
    """What an upgrade replaces under a running server: the dispatcher script, then the file of
    every loaded module but the standard library's: circuit's and those of the third-party
    distributions it loaded (pyroute2, docopt, etcd3gw, requests, ...)."""
    import sysconfig

    stdlib = os.path.join(os.path.dirname(os.__file__), "")
    installed = tuple({os.path.join(sysconfig.get_path(kind), "") for kind in ("purelib",
                                                                              "platlib")})
    files = [os.path.realpath(sys.argv[0])]
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and (not path.startswith(stdlib) or path.startswith(installed)):
            files.append(path)
    return files


def fingerprint(files: list[str]) -> list[tuple[int, int, int, int]]:
    """Each file's identity, size and modification time: a change means the server runs stale
    code (an installer replaces files: a new inode, even where it keeps the time)."""
    stamps = []
    for path in files:
        try:
            stat_result = os.stat(path)
        except OSError:
            stamps.append((-1, -1, -1, -1))
        else:
            stamps.append((stat_result.st_dev, stat_result.st_ino, stat_result.st_size,
                           stat_result.st_mtime_ns))
    return stamps


def changed(files: list[str], stamps: list[tuple[int, int, int, int]]) -> str | None:
    """The first of files that is not what stamps say, None when none changed."""
    for path, now, then in zip(files, fingerprint(files), stamps, strict=True):
        if now != then:
            return path
    return None


def log(message: str) -> None:
    """One entry on the server's log (its stderr) in one write(), cut to LOG_LIMIT bytes, so
    the entries of concurrent children never split or run into each other."""
    entry = f"circuit forkserver: {message}".encode(errors="backslashreplace")
    with contextlib.suppress(OSError):  # a log that is gone: nothing to tell it
        os.write(2, entry[:LOG_LIMIT - 1] + b"\n")


def append_only(fd: int) -> None:
    """Where fd is a file, every write lands at its end (O_APPEND): children sharing it never
    write over each other's lines."""
    if stat.S_ISREG(os.fstat(fd).st_mode):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)


def namespace(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def context(pid: int | str) -> dict[str, object]:
    """What a command's meaning and power depend on besides its network namespace: the other
    namespaces, the root directory, credentials, capabilities, no_new_privs, seccomp and the
    LSM label. A child stands in only for a client whose context is its own."""
    facts: dict[str, object] = {}
    for kind in NAMESPACES:
        with contextlib.suppress(FileNotFoundError):  # a kind this kernel lacks
            facts[f"{kind} namespace"] = namespace(pid, kind)
    root = os.stat(f"/proc/{pid}/root")
    facts["root directory"] = (root.st_dev, root.st_ino)
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in STATUS_FIELDS:
                facts[name] = value.strip()
    with contextlib.suppress(OSError), open(f"/proc/{pid}/attr/current", "rb") as label:
        facts["security label"] = label.read()
    return facts


def pdeathsig(sig: int) -> None:
    """The signal this process gets when its parent dies (0: none)."""
    checked(libc().prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl")


class ForkServer:
    """Keeps IDLE children forked and waiting in accept() on the shared socket, so no fork lies
    on a command's path; forks a replacement for each that takes a connection (up to
    MAX_CHILDREN in all: a peer that connects and sends nothing holds one child, for
    REQUEST_TIMEOUT, not the others' callers), reaps them all. Single-threaded (a poll loop),
    so fork never copies another thread's locks."""

    def __init__(self, listener: socket.socket, run: Callable[[list[str]], int],
                 idle: int = IDLE_CHILDREN):
        self.listener = listener
        self.run = run
        self.pid = os.getpid()
        self.target = idle
        self.files = code_files()
        self.stamps = fingerprint(self.files)
        self.idle: set[int] = set()
        self.idle_deaths = 0  # in a row
        self.pidfds: dict[int, int] = {}  # pidfd → pid
        self.stopping = False
        self.poll = select.poll()
        self.reports, self.report_to = os.pipe2(os.O_CLOEXEC)  # children: "taken"/"stale" + pid
        os.set_blocking(self.reports, False)

    def serve(self) -> None:
        """Until SIGTERM/SIGINT or stale code; then drain: busy children finish their command."""
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)  # the wakeup fd carries it
        self.poll.register(wake_read, select.POLLIN)
        self.poll.register(self.reports, select.POLLIN)
        gc.freeze()  # children's collections then leave the preloaded objects' pages shared
        while not self.stopping or self.pidfds:
            while (not self.stopping and len(self.idle) < self.target
                   and len(self.pidfds) < MAX_CHILDREN):
                self.spawn()
            for fd, _ in self.poll.poll():
                if fd == wake_read:
                    os.read(wake_read, 64)
                    self.stop()
                elif fd == self.reports:
                    self.read_reports()
                elif fd in self.pidfds:
                    self.reap(fd)

    def spawn(self) -> None:
        pid = os.fork()
        if pid == 0:  # the child ends here, whatever happens: never in the server's loop
            try:
                Worker(self, self.report_to).serve()
            except BaseException:
                log(f"child {os.getpid()} failed before it took a connection: "
                    f"{traceback.format_exc().rstrip()}")
            finally:
                os._exit(70)
        pidfd = os.pidfd_open(pid)
        self.pidfds[pidfd] = pid
        self.idle.add(pid)
        self.poll.register(pidfd, select.POLLIN)

    def read_reports(self) -> None:
        """Every report the children wrote (each one write, so never split)."""
        while True:
            try:
                data = os.read(self.reports, REPORT.size * 64)
            except BlockingIOError:
                return
            for kind, pid in REPORT.iter_unpack(data):
                self.idle.discard(pid)
                self.idle_deaths = 0
                if kind == STALE:
                    self.stop()

    def stop(self) -> None:
        """No more requests: idle children leave accept() (the socket is shut down under them),
        busy ones finish."""
        if not self.stopping:
            self.stopping = True
            self.listener.shutdown(socket.SHUT_RDWR)

    def reap(self, pidfd: int) -> None:
        self.read_reports()  # a child that took a request and ended is not an idle one
        pid = self.pidfds.pop(pidfd)
        self.poll.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        if pid in self.idle:
            self.idle.discard(pid)
            if not self.stopping:
                self.idle_deaths += 1
                giving_up = self.idle_deaths >= IDLE_DEATHS  # rather than fork in a loop
                log(f"idle child {pid} died (exit {os.waitstatus_to_exitcode(status)})"
                    + ("; stopping: one after another did" if giving_up else ""))
                if giving_up:
                    self.stop()


class Worker:
    """A forked child: takes one connection; runs its command when it can stand in for the
    client; exits."""

    def __init__(self, server: ForkServer, report_to: int):
        self.listener, self.run, self.report_to = server.listener, server.run, report_to
        self.server_pid = server.pid
        self.files, self.stamps = server.files, server.stamps
        self.context = context("self")

    def serve(self) -> None:
        """Never returns: the child ends with os._exit, whatever happens."""
        code, conn = 70, None
        try:
            signal.set_wakeup_fd(-1)
            pdeathsig(signal.SIGTERM)  # an idle child ends with its server
            if os.getppid() != self.server_pid:
                os._exit(0)  # it ended before the line above
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's terminal is not ours
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                conn, _ = self.listener.accept()
            except OSError:
                os._exit(0)  # shut down: the server stops
            os.write(self.report_to, REPORT.pack(TAKEN, os.getpid()))  # another one accepts
            request = self.receive(conn)
            if request is None:
                os._exit(0)
            code = self.stand_in(request, conn)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            try:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):  # a closed or broken pipe
                        stream.flush()
                code = code if isinstance(code, int) and -1 << 31 <= code < 1 << 31 else 1
                if conn is not None:
                    with contextlib.suppress(OSError):  # the client is gone
                        conn.sendall(protocol.result(code))
            finally:
                os._exit(code)

    def receive(self, conn: socket.socket) -> "Request | None":
        """The request on conn when this child can stand in for its client; otherwise the
        client is told why (it then runs the command itself) and None."""
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            request = receive(conn)
        except (OSError, ValueError) as e:
            log(f"bad request: {e}")
            conn.close()
            return None
        reason = self.refusal(request)
        if not reason:
            try:
                conn.sendall(ACCEPTED)
                if conn.recv(1) == GO:  # the client commits: it will not run it itself
                    conn.settimeout(None)
                    pdeathsig(0)  # under way, it finishes if the server dies
                    return request
            except OSError:
                pass
            os._exit(0)  # the client gave up (its timeout) or is gone: it is not ours to run
        request.close()
        log(f"declined {' '.join(request.argv)!r}: {reason}")
        with contextlib.suppress(OSError):
            conn.sendall(DECLINED + reason.encode())
        conn.close()
        if reason.startswith("stale"):
            os.write(self.report_to, REPORT.pack(STALE, os.getpid()))
            os._exit(0)
        return None

    def refusal(self, request: Request) -> str:
        """Why this child could not stand in for the client; empty when it can. The client's
        netns is opened here, by its PID: a client that dies and whose PID is taken meanwhile
        never says "go" (receive), so the namespace read is its own."""
        if request.uid != os.geteuid():
            return f"uid {request.uid} is not the server's {os.geteuid()}"
        if os.path.realpath(request.script) != self.files[0]:
            return f"another installation ({request.script!r})"
        stale = changed(self.files, self.stamps)
        if stale:
            return f"stale: {stale!r} changed since the server started"
        try:
            theirs = context(request.pid)
            request.netns = os.open(f"/proc/{request.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            request.fds.append(request.netns)
        except OSError:
            return "the client's namespaces and credentials cannot be read"
        differs = [what for what, value in self.context.items() if theirs.get(what) != value
                   and not (what == "Groups" and request.uid == 0)]  # root's: no matter
        return f"another {differs[0]}" if differs else ""

    def stand_in(self, request: Request, conn: socket.socket) -> int:
        """Become the client (namespace, directory, umask, stdio, environment), watch it, and
        run its command."""
        self.listener.close()
        os.setpgid(0, 0)  # the server's terminal, if any, signals the server, not this
        for target, fd in enumerate(request.stdio):
            os.dup2(fd, target)
        try:  # never run the command in the server's own namespace by mistake
            if os.fstat(request.netns).st_ino != namespace("self", "net"):
                checked(libc().setns(request.netns, CLONE_NEWNET), "setns")
            os.fchdir(request.cwd)
        except OSError as e:
            print(f"circuit: the fork server cannot stand in for this command ({e}); "
                  "run it with CIRCUIT_FORKSERVER=off", file=sys.stderr)
            return EnvironmentFault.exit_code
        os.umask(request.umask)
        request.close()
        if sys.stdout is not None:
            sys.stdout.reconfigure(line_buffering=os.isatty(1))
        environ = os.environb  # changed, not rebuilt: putenv for each variable costs
        for key in [key for key in environ if key not in request.environ]:
            del environ[key]
        for key, value in request.environ.items():
            if environ.get(key) != value:
                environ[key] = value
        sys.argv = [sys.argv[0], *request.argv]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Thread(target=watch, args=(conn,), daemon=True).start()
        return self.run(request.argv)


def watch(conn: socket.socket) -> None:
    """Relay the signals the client sends to this process; the client gone, die as it did."""
    while True:
        try:
            data = conn.recv(64)
        except OSError:
            data = b""
        for sig in data or [signal.SIGKILL]:
            if 0 < sig < signal.NSIG:
                os.kill(os.getpid(), sig)
        if not data:
            return


def receive(conn: socket.socket) -> Request:
    """Read one request: its length, its payload and the descriptors sent with it."""
    fds: list[int] = []
    data, ancillary, _, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(STDIO_AND_CWD * 4))
    for level, kind, chunk in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(protocol.unpack_descriptors(chunk))
    try:
        for fd in fds:
            os.set_inheritable(fd, False)
        length = protocol.request_length(data)
        payload = bytearray(data[protocol.LENGTH_SIZE:])
        while len(payload) < length:
            more = conn.recv(length - len(payload))
            if not more:
                raise ValueError("truncated request")
            payload += more
        peer = UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))
        return Request(bytes(payload), fds, peer)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def listen(path: str) -> socket.socket:
    """The server's socket at path (a directory it makes is for its owner only). What is at
    path already is replaced only when it is a socket nobody listens on: a dead server's."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if not stat.S_ISSOCK(existing.st_mode):
            raise EnvironmentFault(f"{path} exists and is not a socket; give --socket a free path")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(path) == 0:
                raise EnvironmentFault(f"a fork server listens on {path} already")
        os.unlink(path)
    old = os.umask(0o077)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(128)
    return listener


USAGE = "usage: circuit forkserver [--socket PATH]  (default: $CIRCUIT_FORKSERVER or " \
        f"{DEFAULT_SOCKET})"


def main(argv: list[str], run: Callable[[list[str]], int]) -> int:
    """`circuit forkserver`: preload circuit, then serve until SIGTERM."""
    path = socket_path()
    try:
        if argv[:1] == ["--socket"] and len(argv) == 2 and argv[1]:
            path = argv[1]
        elif argv:
            raise UsageError(USAGE)
        elif path is None:
            raise UsageError(f"CIRCUIT_FORKSERVER={os.environ['CIRCUIT_FORKSERVER']!r} turns the "
                             "fork server off; unset it, or give --socket PATH")
        preload()
        try:
            listener = listen(path)
        except OSError as e:
            raise EnvironmentFault(f"cannot listen on {path}: {e.strerror}") from None
    except UsageError as e:
        print(f"circuit: {e}", file=sys.stderr)
        return e.exit_code
    except EnvironmentFault as e:
        print(f"circuit: {e}", file=sys.stderr)
        return e.exit_code
    append_only(2)
    log(f"listening on {path}")
    mine = os.stat(path).st_ino
    try:
        ForkServer(listener, run).serve()
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == mine:  # not a later server's socket
                os.unlink(path)
    return 0
