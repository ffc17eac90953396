"""TARGET on the command line: a PID or a runc container id, pinned so PID reuse cannot fool us."""

import json
import re
import subprocess
from collections import namedtuple

from circuit_common.errors import InvalidInput, NotFound
from circuit_common.proc import Process, process
from circuit_common.validate import ascii_number, check_name, check_pid

NOT_CANONICAL_PID = re.compile(r"\s*[+-]?\s*[0-9]+\s*", re.ASCII)  # " 12", "+12", "12 "


class Target(namedtuple("Target", "container_id label process", defaults=(None,))):
    """A container as circuit keys it: its CNI container id and, while it runs, its process."""

    __slots__ = ()

    @property
    def netns(self) -> str:
        """The netns path while the very process runs, else "" (CNI DEL with the netns gone)."""
        return self.process.netns if self.process and self.process.alive() else ""

    def matches(self, attachment: dict) -> bool:
        """Whether an attachment record belongs to this container."""
        if attachment["containerId"] == self.container_id:
            return True
        meta = attachment["circuit"]
        # A running container is one target under its PID and its runc id (the same process);
        # a PID that is gone names its stale attachments.
        if self.process is not None:
            return (meta["pid"], meta["start_time"]) == tuple(self.process)
        return meta["pid"] == ascii_number(self.label)


def pid_container_id(proc: Process) -> str:
    """A container id for a bare PID that a later process with the same PID cannot share."""
    return f"pid{proc.pid}-{proc.start_time}"


DEFAULT_RUNC_ROOT = "/run/runc"  # runc's own --root for root


def runc_pid(container: str, runc_root: str | None) -> int | None:
    """The init PID of a runc container, None when runc knows no such running container."""
    cmd = ["runc"] + (["--root", runc_root] if runc_root else []) + ["state", container]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=10)
    except FileNotFoundError:
        raise NotFound(f"{container!r} is not a PID and runc is not installed") from None
    if proc.returncode != 0:
        return None
    state = json.loads(proc.stdout)
    return state.get("pid") if state.get("status") in ("created", "running") else None


def resolve(target: str, runc_root: str | None = None, must_run: bool = True) -> Target:
    """The Target named on the command line; NotFound when it must run and does not."""
    if target.isascii() and target.isdigit():  # all digits: a PID, never a runc id
        if len(target) > 1 and target.startswith("0"):
            raise InvalidInput(f"TARGET {target!r} is not a PID as the kernel writes it: give "
                               f"{target.lstrip('0') or '0'}, without leading zeros")
        proc = process(check_pid(target))
        if proc is None:
            if must_run:
                raise NotFound(f"no process with PID {target}; give the PID of a running "
                               "container or its runc id")
            return Target(container_id="", label=target)
        return Target(pid_container_id(proc), target, proc)
    if NOT_CANONICAL_PID.fullmatch(target):
        raise InvalidInput(f"TARGET {target!r} is not a PID as the kernel writes it: give its "
                           "digits alone, without sign or spaces")
    check_name(target, "container id")
    pid = runc_pid(target, runc_root)
    proc = process(pid) if pid else None
    if proc is None and must_run:
        root = runc_root or DEFAULT_RUNC_ROOT
        raise NotFound(f"no running runc container {target!r} in runc root {root} (see "
                       f"'runc --root {root} list'); for another root give --runc-root DIR "
                       "or CIRCUIT_RUNC_ROOT")
    return Target(target, target, proc)
