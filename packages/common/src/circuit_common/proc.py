"""Facts about processes read from /proc: identity that survives PID reuse, and their netns."""

from collections import namedtuple


class Process(namedtuple("Process", "pid start_time")):
    """A process pinned by its PID and its start time (clock ticks since boot)."""

    __slots__ = ()

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def alive(self) -> bool:
        """True while this very process (not a later one with its PID) runs."""
        return start_time(self.pid) == self.start_time


def start_time(pid: int) -> int | None:
    """The start time of pid from /proc/PID/stat; None when there is no such process, or only
    its remains: a zombie (Z) or a dead task (X) has exited, even if no parent reaped it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # field 3, the state
        return None
    return int(fields[19])  # field 22 of stat, the 20th after comm


def process(pid: int) -> Process | None:
    """The running process with this PID, None when there is none."""
    started = start_time(pid)
    return None if started is None else Process(pid, started)


def interfaces(pid: int) -> set[str]:
    """Names of the network interfaces in the netns of pid, read without entering it."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.readlines()[2:]
    except FileNotFoundError:
        return set()
    return {line.split(":", 1)[0].strip() for line in lines}
