"""IPVS in the kernel: services and targets through pyroute2's netlink API, a text view from
/proc/net/ip_vs for the paths that must not load pyroute2, the VIP made local, and the SNAT
that brings masq replies back through the host (nftables table `circuit_lb`)."""

import errno
import os
import socket
import struct
import sys
from contextlib import contextmanager

from circuit_common.errors import Conflict, InvalidInput, KernelUnsupported, NotFound
from circuit_netlink import (
    CREATE,
    NETLINK_GENERIC,
    NETLINK_ROUTE,
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


def read_proc() -> dict[tuple, dict]:
    """{(protocol, Endpoint): {"scheduler", "targets": {(ip, port): (forward, weight)}}}: the
    targets' keys are plain tuples (equal to Endpoints), cheaper by the thousand."""
    with open(PROC) as f:
        lines = f.read().splitlines()[3:]
    found: dict[tuple, dict] = {}
    current = None
    names = {v: k for k, v in FORWARDS.items()} | {1: "local"}
    words = {"Masq": 0, "Local": 1, "Tunnel": 2, "Route": 3}
    for line in lines:
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "->":
            current["targets"][_proc_address(fields[1])] = (names[words[fields[2]]],
                                                            int(fields[3]))
        elif fields[0] in ("TCP", "UDP"):
            current = {"scheduler": fields[2], "targets": {}}
            found[(fields[0].lower(), Endpoint(*_proc_address(fields[1])))] = current
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
            self._send_one(IPVS_CMD_NEW_SERVICE, service, CREATE)
        except OSError as e:
            raise service_error(e, service) from None

    def set_service(self, service: dict) -> None:
        try:
            self._send_one(IPVS_CMD_SET_SERVICE, service, NLM_F_REPLACE)
        except OSError as e:
            raise service_error(e, service) from None

    def del_service(self, service: dict) -> None:
        self._send_one(IPVS_CMD_DEL_SERVICE, service, ignore=(errno.ESRCH, errno.ENOENT))

    def set_target(self, service: dict, target: dict, exists: bool) -> None:
        """Queue adding target, or changing its weight and forwarding when it exists."""
        self._queue_target(IPVS_CMD_SET_DEST if exists else IPVS_CMD_NEW_DEST, service, target)

    def del_target(self, service: dict, target: dict) -> None:
        """Queue removing target; one that is not there counts as removed."""
        self._queue_target(IPVS_CMD_DEL_DEST, service, target, ignore=(errno.ESRCH, errno.ENOENT))

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
        for msg in self.batch.query(self._message(IPVS_CMD_GET_SERVICE, service)):
            found["service"] = counters(msg.get_nested("IPVS_CMD_ATTR_SERVICE",
                                                       "IPVS_SVC_ATTR_STATS64"))
        for msg in self.batch.query(self._message(IPVS_CMD_GET_DEST, service), NLM_F_DUMP):
            dest = msg.get("IPVS_CMD_ATTR_DEST")
            where = Endpoint(str(dest.get("IPVS_DEST_ATTR_ADDR")), dest.get("IPVS_DEST_ATTR_PORT"))
            found["targets"][str(where)] = counters(dest.get("IPVS_DEST_ATTR_STATS64"))
        return found


IPVS_CMD_NEW_SERVICE, IPVS_CMD_SET_SERVICE, IPVS_CMD_DEL_SERVICE, IPVS_CMD_GET_SERVICE = 1, 2, 3, 4
IPVS_CMD_NEW_DEST, IPVS_CMD_SET_DEST, IPVS_CMD_DEL_DEST, IPVS_CMD_GET_DEST = 5, 6, 7, 8
TARGET_SLOTS = {name: ("IPVS_CMD_ATTR_DEST", f"IPVS_DEST_ATTR_{attr}") for name, attr in (
    ("addr", "ADDR"), ("port", "PORT"), ("weight", "WEIGHT"), ("forward", "FWD_METHOD"))}


def message(family: int, command: int, service: dict, dest: dict | None = None):
    """An IPVS request (pyroute2's ipvsmsg) about service, or about its target dest."""
    lean_pyroute2()
    from pyroute2.netlink.generic.ipvs import ipvsmsg

    msg = ipvsmsg()
    msg["cmd"] = command
    msg["version"] = 1
    full = command in (IPVS_CMD_NEW_SERVICE, IPVS_CMD_SET_SERVICE)
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


# -- the VIP made local, so that traffic to it reaches IPVS -------------------------------------

def vip_is_local(ip: str) -> bool:
    """Whether ip is an address of this netns (bind() succeeds only for local addresses)."""
    family = ip_family(ip)
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, 0))
            return True
        except OSError:
            return False


def add_vip(ip: str) -> None:
    """Put ip on lo as a host address (/32 or /128)."""
    _vip_request(ip, RTM_NEWADDR, CREATE)


def del_vip(ip: str) -> None:
    _vip_request(ip, RTM_DELADDR, ignore=(errno.EADDRNOTAVAIL,))


RTM_NEWADDR, RTM_DELADDR = 20, 21


def _vip_request(ip: str, command: int, flags: int = 0, ignore=()) -> None:
    lean_pyroute2()
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    family = ip_family(ip)
    msg = ifaddrmsg()
    msg["family"] = family
    msg["prefixlen"] = 128 if family == socket.AF_INET6 else 32
    msg["index"] = socket.if_nametoindex("lo")
    msg["attrs"] = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)]
    msg["header"]["type"] = command
    with Batch(NETLINK_ROUTE) as batch:
        batch.add(msg, flags, ignore)
        batch.send()


# -- SNAT for masq services ----------------------------------------------------------------------

def sync_snat(services: list[dict]) -> None:
    """Make table circuit_lb masquerade the connections of every masq service, atomically.

    With net.ipv4.vs.conntrack=1 IPVS keeps conntrack entries whose original tuple is the
    client's to the VIP; masquerading them sends replies back through the host, so a client on
    the same bridge as the backend (hairpin) gets its answers from the VIP."""
    import subprocess

    with open("/proc/sys/net/ipv4/vs/conntrack", "w") as f:
        f.write("1")
    script = []
    for family, version in (("ip", 4), ("ip6", 6)):
        rules = [f"    meta l4proto {s['protocol']} ct original {family} daddr {s['addr']} "
                 f"ct original proto-dst {s['port']} masquerade comment \"{s['name']}\""
                 for s in services if Endpoint(s["addr"], s["port"]).version == version
                 and any(t["forward"] == "masq" for t in s["targets"])]
        script += [f"table {family} circuit_lb {{}}", f"delete table {family} circuit_lb"]
        if rules:
            script += [f"table {family} circuit_lb {{", "  chain postrouting {",
                       "    type nat hook postrouting priority srcnat; policy accept;",
                       *rules, "  }", "}"]
    try:
        proc = subprocess.run(["nft", "-f", "-"], input="\n".join(script) + "\n",
                              capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise NotFound("nft is not installed; circuit-lb needs nftables for masq SNAT") from None
    if proc.returncode != 0:
        raise KernelUnsupported(f"nftables refused circuit's SNAT rules: "
                                f"{proc.stderr.strip().splitlines()[-1]}")
