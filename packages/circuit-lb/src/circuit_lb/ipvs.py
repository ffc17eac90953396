"""IPVS in the kernel: a text view from /proc/net/ip_vs for the paths that must not load
netlink code (`lb list`), and what the netlink connection (ipvs_netlink.py, above this module,
loaded only where a request is made) shares with them: numbers and messages."""

import errno
import os
from _socket import IPPROTO_TCP, IPPROTO_UDP, inet_ntoa
from itertools import repeat

from circuit_common.errors import Conflict, InvalidInput, KernelUnsupported

from .address import Endpoint, normal_ip

PROTOCOLS = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}
# pyroute2.netlink.generic.ipvs's IPVS_CMD_* (a unit test compares them): target changes go out
# as copies of kept requests, without loading pyroute2
CMD_NEW_SERVICE, CMD_SET_SERVICE, CMD_DEL_SERVICE, CMD_GET_SERVICE = 1, 2, 3, 4
CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST, CMD_GET_DEST = 5, 6, 7, 8
FORWARDS = {"masq": 0, "tunnel": 2, "route": 3}  # IP_VS_CONN_F_MASQ / _TUNNEL / _DROUTE
PERSISTENT = 0x0001  # IP_VS_SVC_F_PERSISTENT
PROC = "/proc/net/ip_vs"
NO_IPVS = ("this kernel has no IPVS (ip_vs module): load it with `modprobe ip_vs` or use a "
           "kernel that has it")


def ensure_ipvs() -> None:
    """KernelUnsupported unless IPVS is there; loads the ip_vs module when it is loadable."""
    if not os.path.exists(PROC):
        import subprocess

        subprocess.run(["modprobe", "-q", "ip_vs"], capture_output=True, check=False)
    if not os.path.exists(PROC):
        raise KernelUnsupported(NO_IPVS)


def track_connections() -> None:
    """net.ipv4.vs.conntrack=1: conntrack entries for IPVS connections, which the masquerade
    rules of table circuit_lb match."""
    with open("/proc/sys/net/ipv4/vs/conntrack", "w") as f:
        f.write("1")


def read_proc() -> dict[tuple, dict]:
    """{(protocol, Endpoint): {"scheduler", "targets": {(ip, port): (forward, weight)}}} of the
    TCP and UDP services (the kinds circuit makes): SCTP and firewall-mark services, made by
    ipvsadm or another tool, are skipped with their targets. The targets' keys are plain
    tuples (equal to Endpoints), cheaper by the thousand."""
    import re

    with open(PROC) as f:
        text = f.read()
    found: dict[tuple, dict] = {}
    # a service's line, then its targets' lines ("  -> …"), after 3 lines of headings
    for block in re.split(r"\n(?=\S)", text.split("\n", 3)[3] if text.count("\n") >= 3 else ""):
        head, _, lines = block.partition("\n")
        fields = head.split()
        if not fields or fields[0] not in ("TCP", "UDP"):  # SCTP, FWM, …
            continue
        service = {"scheduler": fields[2], "targets": _proc_targets(lines)}
        found[(fields[0].lower(), Endpoint(*_proc_address(fields[1])))] = service
    return found


def _proc_targets(lines: str) -> dict[tuple, tuple]:
    """{(ip, port): (forward, weight)} of a service's target lines: IPv4 ones by C loops."""
    import re

    matches = re.findall(r"^  -> ([0-9A-F]{8}):([0-9A-F]{4}) +(\w+) +([0-9]+)", lines,
                         re.MULTILINE)
    if matches and len(matches) == lines.count("->"):
        hexes, ports, forwards, weights = zip(*matches, strict=True)
        ips = map(inet_ntoa, map(bytes.fromhex, hexes))
        ports = map(int, ports, repeat(16))
        return dict(zip(zip(ips, ports, strict=True),
                        zip(map(str.lower, forwards), map(int, weights), strict=True),
                        strict=True))
    targets = {}
    for line in lines.splitlines():
        fields = line.split()
        if fields and fields[0] == "->":
            targets[_proc_address(fields[1])] = (fields[2].lower(), int(fields[3]))
    return targets


def _proc_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (normal_ip(host[1:-1]) if host.startswith("[") else inet_ntoa(bytes.fromhex(host)),
            int(port, 16))


def service_error(e: OSError, service: dict) -> Exception:
    if e.errno == errno.ENOENT:
        return InvalidInput(f"scheduler {service['scheduler']!r} is not available in this "
                            "kernel (rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, ...)")
    if e.errno == errno.ESRCH:  # a change of a service someone deleted (ipvsadm -D)
        return Conflict(f"service {service['name']} is missing from the kernel; `circuit lb "
                        "list` shows how, `circuit restore` makes the kernel match")
    if e.errno == errno.EEXIST:
        return InvalidInput(f"the kernel already has a service at {service['protocol']} "
                            f"{service['addr']}:{service['port']} (made outside circuit?)")
    return KernelUnsupported(f"IPVS refused the change: {e}")


def target_error(e: OSError, service: dict) -> Exception:
    if e.errno in (errno.EEXIST, errno.ENOENT, errno.ESRCH):
        return Conflict(f"the kernel's targets of service {service['name']} differ from "
                        f"circuit's ({e.strerror}); `circuit lb list` shows how, `circuit "
                        "restore` makes the kernel match")
    return KernelUnsupported(f"IPVS refused the change: {e.strerror}")
