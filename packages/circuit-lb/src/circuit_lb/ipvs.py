"""IPVS in the kernel: services and targets through pyroute2's netlink messages (its constants
loaded with them, only where a request is made), and a text view from /proc/net/ip_vs for the
paths that must not load pyroute2."""

import errno
import os
import socket
import struct
import sys
from contextlib import contextmanager

from circuit_common.errors import Conflict, InvalidInput, KernelUnsupported
from circuit_netlink import (
    CREATE,
    NETLINK_GENERIC,
    NLM_F_DUMP,
    NLM_F_REPLACE,
    Batch,
    Template,
    family_id,
    lean_pyroute2,
)

from .address import Endpoint, ip_family, normal_ip

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
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
    with open(PROC) as f:
        lines = f.read().splitlines()[3:]
    found: dict[tuple, dict] = {}
    targets = None  # the targets of the service being read, None for one circuit skips
    for line in lines:
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "->":
            if targets is not None:
                targets[_proc_address(fields[1])] = (fields[2].lower(), int(fields[3]))
        elif fields[0] in ("TCP", "UDP"):
            service = {"scheduler": fields[2], "targets": {}}
            found[(fields[0].lower(), Endpoint(*_proc_address(fields[1])))] = service
            targets = service["targets"]
        else:  # SCTP, FWM, …
            targets = None
    return found


def _proc_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host.startswith("["):
        ip = normal_ip(host[1:-1])
    else:
        ip = socket.inet_ntoa(int(host, 16).to_bytes(4, "big"))
    return ip, int(port, 16)


@contextmanager
def ipvs():
    """An IPVS netlink connection; KernelUnsupported where the kernel has none."""
    ensure_ipvs()
    connection = Ipvs()
    try:
        yield connection
    finally:
        connection.batch.close()


class Ipvs:
    """IPVS requests, encoded with pyroute2's ipvsmsg and sent in batches: queue target
    changes with set_target / del_target, then `commit()`."""

    def __init__(self):
        self.p = pyroute2_ipvs()
        self.batch = Batch(NETLINK_GENERIC)
        self.family = family_id(self.batch, "IPVS")
        self.templates: dict[tuple, Template] = {}

    def _message(self, command: int, service: dict, dest: dict | None = None):
        return message(self.family, command, service, dest)

    def _send_one(self, command: int, service: dict, flags: int = 0, ignore=()) -> None:
        self.batch.add(self._message(command, service), flags, ignore)
        self.commit()

    def add_service(self, service: dict) -> None:
        try:
            self._send_one(self.p.IPVS_CMD_NEW_SERVICE, service, CREATE)
        except OSError as e:
            raise service_error(e, service) from None

    def set_service(self, service: dict) -> None:
        try:
            self._send_one(self.p.IPVS_CMD_SET_SERVICE, service, NLM_F_REPLACE)
        except OSError as e:
            raise service_error(e, service) from None

    def del_service(self, service: dict) -> None:
        self._send_one(self.p.IPVS_CMD_DEL_SERVICE, service,
                       ignore=(errno.ESRCH, errno.ENOENT))

    def set_target(self, service: dict, target: dict, exists: bool) -> None:
        """Queue adding target, or changing its weight and forwarding when it exists."""
        command = self.p.IPVS_CMD_SET_DEST if exists else self.p.IPVS_CMD_NEW_DEST
        self._queue_target(command, service, target)

    def del_target(self, service: dict, target: dict) -> None:
        """Queue removing target; one that is not there counts as removed."""
        self._queue_target(self.p.IPVS_CMD_DEL_DEST, service, target,
                           ignore=(errno.ESRCH, errno.ENOENT))

    def _queue_target(self, command: int, service: dict, target: dict, ignore=()) -> None:
        """A copy of the service's template for command, with target's values (thousands of
        targets: pyroute2 encodes one message per command, service and IP version)."""
        family = ip_family(target["addr"])
        key = (command, family, service["protocol"], service["addr"], service["port"])
        values = target_values(target)
        if key not in self.templates:
            self.templates[key] = Template(self._message(command, service, target), 0,
                                           TARGET_SLOTS, values)
        self.batch.add_copy(self.templates[key], values, ignore)

    def commit(self) -> None:
        """Send what is queued; NetlinkError (an OSError) for the first refused request."""
        self.batch.send()

    def stats(self, service: dict) -> dict:
        """Connections, packets and bytes of a service and of each target."""
        def counters(nla) -> dict:
            if nla is None:
                return {}
            return {"connections": nla.get("IPVS_STATS_ATTR_CONNS"),
                    "packets_in": nla.get("IPVS_STATS_ATTR_INPKTS"),
                    "packets_out": nla.get("IPVS_STATS_ATTR_OUTPKTS"),
                    "bytes_in": nla.get("IPVS_STATS_ATTR_INBYTES"),
                    "bytes_out": nla.get("IPVS_STATS_ATTR_OUTBYTES")}

        found = {"service": {}, "targets": {}}
        for msg in self.batch.query(self._message(self.p.IPVS_CMD_GET_SERVICE, service)):
            found["service"] = counters(msg.get_nested("IPVS_CMD_ATTR_SERVICE",
                                                       "IPVS_SVC_ATTR_STATS64"))
        for msg in self.batch.query(self._message(self.p.IPVS_CMD_GET_DEST, service), NLM_F_DUMP):
            dest = msg.get("IPVS_CMD_ATTR_DEST")
            where = Endpoint(str(dest.get("IPVS_DEST_ATTR_ADDR")), dest.get("IPVS_DEST_ATTR_PORT"))
            found["targets"][str(where)] = counters(dest.get("IPVS_DEST_ATTR_STATS64"))
        return found


TARGET_SLOTS = {name: ("IPVS_CMD_ATTR_DEST", f"IPVS_DEST_ATTR_{attr}") for name, attr in (
    ("addr", "ADDR"), ("port", "PORT"), ("weight", "WEIGHT"), ("forward", "FWD_METHOD"))}


def pyroute2_ipvs():
    """pyroute2's IPVS module: ipvsmsg and the IPVS_CMD_* numbers."""
    lean_pyroute2()
    from pyroute2.netlink.generic import ipvs

    return ipvs


def message(family: int, command: int, service: dict, dest: dict | None = None):
    """An IPVS request (pyroute2's ipvsmsg) about service, or about its target dest."""
    p = pyroute2_ipvs()
    msg = p.ipvsmsg()
    msg["cmd"] = command
    msg["version"] = 1
    full = command in (p.IPVS_CMD_NEW_SERVICE, p.IPVS_CMD_SET_SERVICE)
    msg["attrs"] = [("IPVS_CMD_ATTR_SERVICE", {"attrs": service_attrs(service, full)})]
    if dest is not None:
        msg["attrs"].append(("IPVS_CMD_ATTR_DEST", {"attrs": dest_attrs(dest)}))
    msg["header"]["type"] = family
    return msg


def target_values(target: dict) -> dict[str, bytes]:
    """A target's values for the TARGET_SLOTS of a template, as the kernel reads them."""
    family = ip_family(target["addr"])
    return {"addr": socket.inet_pton(family, target["addr"]),
            "port": struct.pack("!H", target["port"]),
            "weight": struct.pack("=I", target["weight"]),
            "forward": struct.pack("=I", FORWARDS[target["forward"]])}


def service_attrs(service: dict, full: bool = True) -> list:
    """The IPVS_SVC_ATTR_* of a service record: its key, and with full its settings too."""
    family = ip_family(service["addr"])
    attrs = [("IPVS_SVC_ATTR_AF", family),
             ("IPVS_SVC_ATTR_PROTOCOL", PROTOCOLS[service["protocol"]]),
             ("IPVS_SVC_ATTR_ADDR", service["addr"]), ("IPVS_SVC_ATTR_PORT", service["port"])]
    if full:
        persistent = service.get("persistent") or 0
        # The kernel reads the netmask raw: all ones for IPv4, a prefix length (128) in host
        # byte order for IPv6, as ipvsadm sends it.
        netmask = "255.255.255.255" if family == socket.AF_INET else socket.inet_ntoa(
            (128).to_bytes(4, sys.byteorder))
        attrs += [("IPVS_SVC_ATTR_SCHED_NAME", service["scheduler"]),
                  ("IPVS_SVC_ATTR_FLAGS", {"flags": PERSISTENT if persistent else 0,
                                           "mask": 0xFFFFFFFF}),
                  ("IPVS_SVC_ATTR_TIMEOUT", persistent), ("IPVS_SVC_ATTR_NETMASK", netmask)]
    return attrs


def dest_attrs(target: dict) -> list:
    family = ip_family(target["addr"])
    return [("IPVS_DEST_ATTR_ADDR_FAMILY", family), ("IPVS_DEST_ATTR_ADDR", target["addr"]),
            ("IPVS_DEST_ATTR_PORT", target["port"]),
            ("IPVS_DEST_ATTR_FWD_METHOD", FORWARDS[target["forward"]]),
            ("IPVS_DEST_ATTR_WEIGHT", target["weight"]), ("IPVS_DEST_ATTR_U_THRESH", 0),
            ("IPVS_DEST_ATTR_L_THRESH", 0)]


def service_error(e: OSError, service: dict) -> Exception:
    if e.errno == errno.ENOENT:
        return InvalidInput(f"scheduler {service['scheduler']!r} is not available in this "
                            "kernel (rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, ...)")
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
