"""`circuit lb agent`: one process checking the targets of every service with a check, until
SIGTERM. Checks are non-blocking sockets on one selector, each service's spread evenly over
its interval; timers are handled once a tick (the checks due in it start together, one wakeup
for them all), a connection ends with a reset (no FIN exchange, no TIME_WAIT on this host).
A state change (fall failures: down, rise passes: up) goes to the kernel through
Services.set_health, under the store lock the lb commands take; only changes are logged. The
stored services are read again only when their files changed."""

import errno
import heapq
import itertools
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


class Target:
    """One target of one service as the agent checks it."""

    __slots__ = ("addr", "check", "failures", "family", "key", "last_check", "passes", "port",
                 "reason", "service", "up")

    def __init__(self, service: str, addr: str, port: int, saved: dict):
        self.service, self.addr, self.port = service, addr, port
        self.key = str(Endpoint(addr, port))
        self.family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.up = saved.get("up", True)
        self.failures = saved.get("failures", 0)
        self.passes = saved.get("passes", 0)
        self.last_check = saved.get("last_check")
        self.reason = saved.get("reason", "")
        self.check: dict = {}

    def state(self) -> dict:
        return {"up": self.up, "failures": self.failures, "passes": self.passes,
                "last_check": self.last_check, "reason": self.reason}


class Probe:
    """One check in flight: a non-blocking socket and what it waits for."""

    __slots__ = ("deadline", "reply", "sent", "sock", "target")

    def __init__(self, target: Target, deadline: float):
        self.target, self.deadline = target, deadline
        self.sock = socket.socket(target.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        self.reply = b""
        self.sent = False


class Agent:
    def __init__(self, services: Services, log=sys.stderr):
        self.services, self.log = services, log
        self.targets: dict[tuple[str, str], Target] = {}
        self.due: list = []  # (monotonic time, seq, Target)
        self.deadlines: list = []  # (monotonic time, seq, Probe)
        self.seq = itertools.count()
        self.selector = selectors.DefaultSelector()
        self.in_flight: dict[Target, Probe] = {}
        self.changed: set[str] = set()  # services with a target whose state changed
        self.dirty: set[str] = set()  # services with new check results
        self.stopping = False
        self.stamps: list | None = None  # the services' files when last read
        self.wall = 0.0  # time.time() of this turn of the loop, for last_check

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        saved = self.services.healths()
        next_reload = next_save = next_tick = 0.0
        due, deadlines, select = self.due, self.deadlines, self.selector.select
        while not self.stopping:
            now, self.wall = time.monotonic(), round(time.time(), 3)
            if now >= next_tick:
                next_tick = now + TICK
                if now >= next_reload:
                    self._reload(saved, now)
                    saved, next_reload = {}, now + RELOAD_SECONDS
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
                target.check = check
                wanted[key] = target
        for key in self.targets.keys() - wanted.keys():
            probe = self.in_flight.get(self.targets[key])
            if probe is not None:
                self._close(probe)
        self.targets = wanted

    def _start(self, target: Target, now: float) -> None:
        if target in self.in_flight:  # the last check has not ended: it fails now
            self._finish(self.in_flight[target], False, "timed out")
        probe = Probe(target, now + target.check["timeout"])
        code = probe.sock.connect_ex((target.addr, target.port))
        if code not in (0, errno.EINPROGRESS):
            probe.sock.close()
            self._result(target, False, errno.errorcode.get(code, str(code)))
            return
        self.in_flight[target] = probe
        self.selector.register(probe.sock, selectors.EVENT_WRITE, probe)
        heapq.heappush(self.deadlines, (probe.deadline, next(self.seq), probe))

    def _ready(self, probe: Probe) -> None:
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
        probe.sock.close()

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
        else:
            target.passes, target.failures, target.reason = 0, target.failures + 1, reason
            if target.up and target.failures >= target.check["fall"]:
                target.up = False
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
