"""Facts about processes read from /proc: identity that survives PID reuse, and their netns;
libc's process calls that os lacks (prctl, setns)."""

import os
from collections import namedtuple

PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000
PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread
KTHREADD = 2  # the kernel threads' parent, in the initial PID namespace
PROC = "/proc"  # the proc mount that process facts come from (unit tests: a fake tree)
_LIBC = []


class Process(namedtuple("Process", "pid start_time")):
    """A process pinned by its PID and its start time (clock ticks since boot)."""

    __slots__ = ()

    @property
    def netns(self) -> str:
        return f"{PROC}/{self.pid}/ns/net"

    def alive(self) -> bool:
        """True while this very process (not a later one with its PID) runs."""
        return start_time(self.pid) == self.start_time


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after comm (state first), None when there is no such
    process."""
    try:
        with open(f"{PROC}/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    return stat[stat.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The start time of pid from /proc/PID/stat; None when there is no such process, or only
    its remains: a zombie (Z) or a dead task (X) has exited, even if no parent reaped it."""
    fields = stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):  # field 3, the state
        return None
    return int(fields[19])  # field 22 of stat, the 20th after comm


def kernel_thread(pid: int) -> bool:
    """Whether pid is a kernel thread (whose netns is the host's): PF_KTHREAD in its flags, a
    child of kthreadd, or no executable behind it."""
    fields = stat_fields(pid)
    if fields is None:
        return False
    parent, flags = int(fields[1]), int(fields[6])  # fields 4 and 9 of stat
    if flags & PF_KTHREAD:
        return True
    if parent == KTHREADD:  # in circuit's PID namespace PID 2 may be a plain process
        kthreadd = stat_fields(KTHREADD)
        if kthreadd is not None and int(kthreadd[6]) & PF_KTHREAD:
            return True
    try:
        os.readlink(f"{PROC}/{pid}/exe")
    except FileNotFoundError:
        return start_time(pid) is not None  # exited meanwhile: not a kernel thread
    except OSError:  # not ours to read: it has an executable
        return False
    return False


def in_host_netns(pid: int) -> bool | None:
    """Whether process pid is in the host's network namespace: PID 1's as circuit's PID
    namespace sees it, or the kernel's own (kthreadd's, where PID 2 is that kernel thread:
    kernel threads live in the initial namespaces). None when neither can be read (a PID 1
    that is not dumpable, as a VM's init, hides its namespaces even from root): unknown, never
    taken for "no". False when pid is gone."""
    try:
        theirs = os.stat(f"{PROC}/{pid}/ns/net")
    except OSError:
        return False
    known = False
    for host in (1, KTHREADD):
        if host == KTHREADD:
            fields = stat_fields(KTHREADD)
            if fields is None or not int(fields[6]) & PF_KTHREAD:
                continue  # in a PID namespace of its own, PID 2 is a plain process
        try:
            st = os.stat(f"{PROC}/{host}/ns/net")
        except OSError:  # gone, or not ours to read
            continue
        known = True
        if (st.st_dev, st.st_ino) == (theirs.st_dev, theirs.st_ino):
            return True
    return False if known else None


def process(pid: int) -> Process | None:
    """The running process with this PID, None when there is none."""
    started = start_time(pid)
    return None if started is None else Process(pid, started)


def interfaces(pid: int) -> set[str]:
    """Names of the network interfaces in the netns of pid, read without entering it."""
    try:
        with open(f"{PROC}/{pid}/net/dev") as f:
            lines = f.readlines()[2:]
    except FileNotFoundError:
        return set()
    return {line.split(":", 1)[0].strip() for line in lines}


RTF_LOCAL = 0x80000000  # ipv6_route: a route to one of the netns's own addresses


def routes() -> list[tuple]:
    """The routes of circuit's own netns as (ipaddress network, device), from /proc/net/route
    and /proc/net/ipv6_route (no netlink): neither local, link-local nor multicast routes."""
    import ipaddress

    found = []
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            dev, dst, _, _, _, _, _, mask = line.split()[:8]
            address = ipaddress.IPv4Address(bytes.fromhex(dst)[::-1])
            prefix = bin(int(mask, 16)).count("1")
            found.append((ipaddress.IPv4Network(f"{address}/{prefix}", strict=False), dev))
    try:
        with open("/proc/net/ipv6_route") as f:
            lines = f.readlines()
    except FileNotFoundError:  # IPv6 disabled
        lines = []
    for line in lines:
        fields = line.split()
        network = ipaddress.IPv6Network((int(fields[0], 16), int(fields[1], 16)), strict=False)
        if int(fields[8], 16) & RTF_LOCAL or network.is_link_local or network.is_multicast:
            continue
        found.append((network, fields[9]))
    return found


def libc():
    """libc through ctypes, loaded on first use (errno kept): prctl, setns."""
    if not _LIBC:
        import ctypes

        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def checked(result: int, call: str) -> None:
    """Raise the OSError a libc call that returned -1 left in errno."""
    if result != 0:
        import ctypes

        raise OSError(ctypes.get_errno(), call)
