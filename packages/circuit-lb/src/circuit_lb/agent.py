"""`circuit lb agent`: one process checking the targets of every service with a check, until
SIGTERM. Checks are non-blocking sockets on one selector (an exec check: its command's pidfd),
each service's spread evenly over its interval; timers are handled once a tick (the checks due
in it start together, one wakeup for them all), a connection ends with a reset (no FIN
exchange, no TIME_WAIT on this host). A state change (fall failures: down, rise passes: up)
goes to the kernel through Services.set_health, under the store lock the lb commands take;
only changes are logged. The stored services are read again only when their files changed.
A target back up with a slow start ramps its weight once a second."""

import contextlib
import ctypes
import errno
import heapq
import itertools
import os
import selectors
import signal
import socket
import struct
import sys
import time

from circuit_common.errors import CircuitError

from .address import Endpoint
from .services import Services

RELOAD_SECONDS = 1.0  # how often the stored services' files are looked at for changes
SAVE_SECONDS = 1.0  # how often last checks and counts are written (not durably)
TICK = 0.02  # timer granularity: checks due within a tick start at its beginning
RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST
RAMP_SECONDS = 1.0  # how often ramping targets' weights grow
PR_SET_CHILD_SUBREAPER = 36
NULL_STDIO = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]


class Target:
    """One target of one service as the agent checks it."""

    __slots__ = ("addr", "check", "failures", "family", "key", "last_check", "passes", "port",
                 "ramp", "ramp_start", "reason", "service", "up")

    def __init__(self, service: str, addr: str, port: int, saved: dict):
        self.service, self.addr, self.port = service, addr, port
        self.key = str(Endpoint(addr, port))
        self.family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.up = saved.get("up", True)
        self.failures = saved.get("failures", 0)
        self.passes = saved.get("passes", 0)
        self.last_check = saved.get("last_check")
        self.reason = saved.get("reason", "")
        self.ramp = saved.get("ramp")  # slow start: the part of its weight it has, 0..1
        self.ramp_start = 0.0
        self.check: dict = {}

    def state(self) -> dict:
        state = {"up": self.up, "failures": self.failures, "passes": self.passes,
                 "last_check": self.last_check, "reason": self.reason}
        if self.ramp is not None:
            state["ramp"] = self.ramp
        return state


class Probe:
    """One check in flight: a non-blocking socket and what it waits for."""

    __slots__ = ("deadline", "reply", "sent", "sock", "target")

    def __init__(self, target: Target, deadline: float):
        self.target, self.deadline = target, deadline
        self.sock = socket.socket(target.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        self.reply = b""
        self.sent = False

    def close(self) -> None:
        self.sock.close()


class Run:
    """One exec check in flight: the command in a process group of its own, with the target's
    address and port as its last two arguments and in its environment; its pidfd (sock)
    becomes readable when it exits."""

    __slots__ = ("deadline", "pid", "sock", "target")

    def __init__(self, target: Target, deadline: float):
        self.target, self.deadline = target, deadline
        argv = [*target.check["command"], target.addr, str(target.port)]
        env = {**os.environ, "CIRCUIT_TARGET_IP": target.addr,
               "CIRCUIT_TARGET_PORT": str(target.port)}
        self.pid = os.posix_spawn(argv[0], argv, env, file_actions=NULL_STDIO, setpgroup=0)
        self.sock = os.pidfd_open(self.pid)

    def result(self) -> tuple[bool, str]:
        """Whether the command (exited: a zombie still) passed, and why not."""
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info.si_code == os.CLD_EXITED:
            return info.si_status == 0, "" if info.si_status == 0 else \
                f"exit status {info.si_status}"
        return False, f"killed by signal {info.si_status}"

    def close(self) -> None:
        """Kill what is left of its process group (all of it on a timeout), reap it."""
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError):
                kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.sock)


def reap(running: set[int]) -> None:
    """Reap the agent's exited children other than running (what exec checks' killed process
    groups leave to the agent, their subreaper)."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid in running:
            return
        os.waitpid(info.si_pid, 0)


class Agent:
    def __init__(self, services: Services, log=None):
        # sys.stderr when the agent starts, not at import: a process that imported circuit
        # and then gave the agent other stdio (a fork) has it log there
        self.services, self.log = services, sys.stderr if log is None else log
        self.targets: dict[tuple[str, str], Target] = {}
        self.due: list = []  # (monotonic time, seq, Target)
        self.deadlines: list = []  # (monotonic time, seq, Probe)
        self.seq = itertools.count()
        self.selector = selectors.DefaultSelector()
        self.in_flight: dict[Target, Probe] = {}
        self.changed: set[str] = set()  # services with a target whose state changed
        self.dirty: set[str] = set()  # services with new check results
        self.ramping: set[Target] = set()  # targets up again whose weights ramp
        self.subreaper = False  # set once a service has an exec check
        self.stopping = False
        self.stamps: list | None = None  # the services' files when last read
        self.wall = 0.0  # time.time() of this turn of the loop, for last_check

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        saved = self.services.healths()
        next_reload = next_save = next_tick = next_ramp = 0.0
        due, deadlines, select = self.due, self.deadlines, self.selector.select
        while not self.stopping:
            now, self.wall = time.monotonic(), round(time.time(), 3)
            if now >= next_tick:
                next_tick = now + TICK
                if now >= next_reload:
                    self._reload(saved, now)
                    saved, next_reload = {}, now + RELOAD_SECONDS
                    if self.subreaper:
                        reap({p.pid for p in self.in_flight.values() if type(p) is Run})
                if self.ramping and now >= next_ramp:
                    self._ramp(now)
                    next_ramp = now + RAMP_SECONDS
                while due and due[0][0] < next_tick:
                    when, _, target = heapq.heappop(due)
                    if self.targets.get((target.service, target.key)) is target:
                        self._start(target, now)
                        heapq.heappush(due, (max(when + target.check["interval"], now),
                                             next(self.seq), target))
                while deadlines and deadlines[0][0] <= now:
                    probe = heapq.heappop(deadlines)[2]
                    if self.in_flight.get(probe.target) is probe:
                        self._finish(probe, False, "timed out")
            wake = max(next_tick, min([next_reload] + [q[0][0] for q in (due, deadlines) if q]))
            for key, _ in select(max(wake - time.monotonic(), 0)):
                self._ready(key.data)
            if self.changed:
                self._apply(self.changed)
            if self.dirty and time.monotonic() >= next_save:
                self._save(self.dirty)
                next_save = time.monotonic() + SAVE_SECONDS
        for probe in list(self.in_flight.values()):
            self._close(probe)
        return 0

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def _reload(self, saved: dict, now: float) -> None:
        """Follow the stored services when their files changed: new targets checked (spread
        over the interval), gone ones forgotten."""
        stamps = self.services.stamps()
        if stamps == self.stamps:
            return
        self.stamps = stamps
        wanted = {}
        for record in self.services.all()[0]:
            check = record.get("check")
            if not check:
                continue
            states = saved.get(record["name"], {}).get("targets", {})
            count = len(record["targets"])
            for i, t in enumerate(record["targets"]):
                where = str(Endpoint(t["addr"], t["port"]))
                key = (record["name"], where)
                target = self.targets.get(key)
                if target is None:
                    target = Target(record["name"], t["addr"], t["port"],
                                    states.get(where, {}))
                    heapq.heappush(self.due, (now + check["interval"] * i / count,
                                              next(self.seq), target))
                    if target.ramp is not None:  # saved mid-ramp: it goes on from there
                        target.ramp_start = now - target.ramp * check.get("slow_start", 0)
                        self.ramping.add(target)
                target.check = check
                wanted[key] = target
            if check["kind"] == "exec" and not self.subreaper:
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
                self.subreaper = True
        for key in self.targets.keys() - wanted.keys():
            probe = self.in_flight.get(self.targets[key])
            if probe is not None:
                self._close(probe)
        self.targets = wanted

    def _start(self, target: Target, now: float) -> None:
        if target in self.in_flight:  # the last check has not ended: it fails now
            self._finish(self.in_flight[target], False, "timed out")
        if target.check["kind"] == "exec":
            self._run(target, now)
            return
        probe = Probe(target, now + target.check["timeout"])
        code = probe.sock.connect_ex((target.addr, target.port))
        if code not in (0, errno.EINPROGRESS):
            probe.sock.close()
            self._result(target, False, errno.errorcode.get(code, str(code)))
            return
        self.in_flight[target] = probe
        self.selector.register(probe.sock, selectors.EVENT_WRITE, probe)
        heapq.heappush(self.deadlines, (probe.deadline, next(self.seq), probe))

    def _run(self, target: Target, now: float) -> None:
        try:
            run = Run(target, now + target.check["timeout"])
        except OSError as e:
            self._result(target, False, f"exec: {e.strerror}")
            return
        self.in_flight[target] = run
        self.selector.register(run.sock, selectors.EVENT_READ, run)
        heapq.heappush(self.deadlines, (run.deadline, next(self.seq), run))

    def _ready(self, probe: Probe) -> None:
        if probe.__class__ is Run:
            self._finish(probe, *probe.result())
            return
        target = probe.target
        if not probe.sent:
            code = probe.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._finish(probe, False, f"connect: {errno.errorcode.get(code, code)}")
            elif target.check["kind"] == "tcp":
                self._finish(probe, True, "")
            else:
                request = (f"GET {target.check['path']} HTTP/1.0\r\nHost: {target.key}\r\n"
                           "User-Agent: circuit-lb-agent\r\nConnection: close\r\n\r\n")
                try:
                    probe.sock.send(request.encode())
                except OSError as e:
                    self._finish(probe, False, f"send: {e.strerror}")
                    return
                probe.sent = True
                self.selector.modify(probe.sock, selectors.EVENT_READ, probe)
            return
        try:
            chunk = probe.sock.recv(512)
        except BlockingIOError:
            return
        except OSError as e:
            self._finish(probe, False, f"receive: {e.strerror}")
            return
        probe.reply += chunk
        if b"\n" not in probe.reply and chunk and len(probe.reply) < 4096:
            return
        words = probe.reply.split(b"\n", 1)[0].split()
        status = int(words[1]) if len(words) > 1 and words[1].isdigit() else None
        wanted = target.check["status"]
        self._finish(probe, status == wanted,
                     "" if status == wanted else f"HTTP status {status}, not {wanted}")

    def _close(self, probe: Probe) -> None:
        self.in_flight.pop(probe.target, None)
        self.selector.unregister(probe.sock)
        probe.close()

    def _finish(self, probe: Probe, passed: bool, reason: str) -> None:
        self._close(probe)
        self._result(probe.target, passed, reason)

    def _result(self, target: Target, passed: bool, reason: str) -> None:
        target.last_check = self.wall
        self.dirty.add(target.service)
        if passed:
            target.failures, target.passes = 0, target.passes + 1
            if not target.up and target.passes >= target.check["rise"]:
                target.up, target.reason = True, ""
                self.changed.add(target.service)
                if target.check.get("slow_start"):
                    target.ramp, target.ramp_start = 0.0, time.monotonic()
                    self.ramping.add(target)
        else:
            target.passes, target.failures, target.reason = 0, target.failures + 1, reason
            if target.up and target.failures >= target.check["fall"]:
                target.up, target.ramp = False, None
                self.ramping.discard(target)
                self.changed.add(target.service)

    def _ramp(self, now: float) -> None:
        """Each ramping target's part of its weight: the time since it came up over the slow
        start; the whole (no ramp) once that has passed."""
        for target in list(self.ramping):
            seconds = target.check.get("slow_start", 0)
            part = (now - target.ramp_start) / seconds if seconds else 1
            if part >= 1 or self.targets.get((target.service, target.key)) is not target:
                target.ramp = None
                self.ramping.discard(target)
            else:
                target.ramp = round(part, 3)
            self.changed.add(target.service)

    def _states(self, service: str) -> dict:
        return {"targets": {t.key: t.state() for (name, _), t in self.targets.items()
                            if name == service}}

    def _save(self, services: set[str]) -> None:
        for name in services:
            self._write(name, changed=False)
        services.clear()

    def _apply(self, services: set[str]) -> None:
        """Each service's changed targets to the kernel, one line logged per change."""
        for name in services:
            before = {k: s["up"] for k, s in ((self.services.healths().get(name) or {})
                                             .get("targets", {})).items()}
            flipped = [t for (service, key), t in self.targets.items()
                       if service == name and before.get(key, True) != t.up]
            if not self._write(name, changed=True):
                for target in flipped:  # tried again at its next check
                    target.up = not target.up
                continue
            for target in flipped:
                how = (f"down after {target.failures} failed checks ({target.reason})"
                       if not target.up else f"up after {target.passes} passed checks")
                print(f"service {name}: target {target.key} {how}", file=self.log, flush=True)
            self.dirty.discard(name)
        services.clear()

    def _write(self, name: str, changed: bool) -> bool:
        try:
            return self.services.set_health(name, self._states(name), changed)
        except CircuitError as e:
            print(f"circuit: service {name}: {e}", file=self.log, flush=True)
            return False


def run(services: Services) -> int:
    return Agent(services).run()
