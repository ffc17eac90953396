"""Health-check helpers, shared by the integration and kernel tiers and bench/: busybox httpd
backends the test kills and starts again, `circuit lb agent` started by the test (a process, or
a fork of the warm process in the kernel tier), what it reports, and the kernel's IPVS table."""

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from harness.netns import CIRCUIT, Host, terminate

CLONE_NEWNET = 0x40000000


class Backend:
    """A container whose busybox httpd (serving its name, and health.html while it is healthy)
    the test can kill and start again in the same netns (same address)."""

    def __init__(self, host: Host, www_root: Path, name: str, network: str = "sandbox"):
        self.www = www_root / name
        self.www.mkdir()
        (self.www / "index.html").write_text(f"{name}\n")
        (self.www / "health.html").write_text("ok\n")
        self.container = host.container()
        host.circuit("network", "connect", self.container.pid, network)
        self.ip = self.container.addresses()[0]
        self.httpd = None
        self.start()

    def start(self):
        self.httpd = subprocess.Popen(
            ["nsenter", f"--net={self.container.netns}", "busybox", "httpd", "-f", "-p", "80",
             "-h", self.www], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def serving(self) -> int:
        """How many connections its httpd's children are serving."""
        path = Path(f"/proc/{self.httpd.pid}/task/{self.httpd.pid}/children")
        return len(path.read_text().split())

    def stop(self):
        """SIGKILL the httpd (its children serving open connections finish them)."""
        if self.httpd is not None and self.httpd.poll() is None:
            self.httpd.kill()
            self.httpd.wait()


def backends(host: Host, www_root: Path, names=("alpha", "beta", "gamma")) -> dict:
    """A Backend per name on the seed's bridge network (created first)."""
    from harness.netns import bridge_conf

    host.circuit("network", "create", host.conf(bridge_conf()))
    made: dict = {}
    try:
        for name in names:
            made[name] = Backend(host, www_root, name)
    except BaseException:
        for backend in made.values():
            backend.stop()
        raise
    return made


def health(host: Host, name: str = "web") -> dict:
    """Service name's per-target health, as `lb list --format json` shows it."""
    listed = json.loads(host.circuit("lb", "list", "--format", "json").stdout)
    return next(s for s in listed if s["name"] == name)["health"]


def states(host: Host, name: str = "web") -> dict:
    return {where: h["state"] for where, h in health(host, name).items()}


class Forked:
    """A long-running fork of this process that entered a netns (Popen's poll, wait,
    send_signal, terminate, kill), its stdout and stderr on a file."""

    def __init__(self, netns: str, main, env: dict, log) -> None:
        self.returncode = None
        self.pid = os.fork()
        if self.pid == 0:
            code = 99
            try:
                fd = os.open(netns, os.O_RDONLY)
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                import io
                import sys

                sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False),
                                              line_buffering=True)
                sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False),
                                              line_buffering=True)
                os.environ.clear()
                os.environ.update(env)
                code = main() or 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"fork {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, signum):
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


@contextlib.contextmanager
def lb_agent(host: Host, log_path: Path):
    """`circuit lb agent` in the host netns (forked from this warm process where the host's
    circuit is forked); SIGTERM at the end (SIGKILL if it lingers). Its log is .log."""
    env = {k: v for k, v in os.environ.items() if k != "CNI_PATH"}
    argv = [str(a) for a in (*host.state_args(), "lb", "agent")]
    with open(log_path, "w+") as log:
        if host.fork_circuit:
            from harness.forked import dispatcher

            proc = Forked(host.netns, lambda: dispatcher().main(argv), env, log)
        else:
            proc = subprocess.Popen(["nsenter", f"--net={host.netns}", CIRCUIT, *argv],
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
        proc.log = log
        try:
            yield proc
        finally:
            terminate(proc)


def ipvs_table(pid: int) -> dict:
    """The IPVS table of process pid's netns, from /proc/PID/net/ip_vs:
    {"ADDR:PORT" of a TCP service: {"ADDR:PORT" of a target: weight}} (IPv4)."""
    table: dict = {}
    service = None

    def where(hexed: str) -> str:
        addr, port = hexed.split(":")
        return f"{socket.inet_ntoa(bytes.fromhex(addr))}:{int(port, 16)}"

    for line in Path(f"/proc/{pid}/net/ip_vs").read_text().splitlines():
        fields = line.split()
        if fields[:1] == ["TCP"]:
            service = table.setdefault(where(fields[1]), {})
        elif fields[:1] == ["->"] and service is not None and ":" in fields[1] \
                and len(fields[1]) == 13:
            service[where(fields[1])] = int(fields[3])
    return table


def connect_in(netns: str, address: str, port: int) -> socket.socket:
    """A TCP connection from inside netns, held by this process (the calling thread enters
    netns for the connect and comes back)."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(netns, os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            return socket.create_connection((address, port), timeout=5)
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(there)


def get_on(sock: socket.socket) -> str:
    """The body of one HTTP/1.0 GET / on a held connection (then closed)."""
    with sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode().strip()
