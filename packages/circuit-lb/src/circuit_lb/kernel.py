"""IPVS in the kernel: services and targets through pyroute2's netlink API, a text view from
/proc/net/ip_vs for the paths that must not load pyroute2, the VIP made local, and the SNAT
that brings masq replies back through the host (nftables table `circuit_lb`)."""

import errno
import os
import socket
import subprocess
from contextlib import contextmanager

from circuit_common.errors import InvalidInput, KernelUnsupported, NotFound

from .address import Endpoint

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
FORWARDS = {"masq": 0, "tunnel": 2, "route": 3}  # IP_VS_CONN_F_MASQ / _TUNNEL / _DROUTE
PERSISTENT = 0x0001  # IP_VS_SVC_F_PERSISTENT
PROC = "/proc/net/ip_vs"
NO_IPVS = ("this kernel has no IPVS (ip_vs module): load it with `modprobe ip_vs` or use a "
           "kernel that has it")


def ensure_ipvs() -> None:
    """KernelUnsupported unless IPVS is there; loads the ip_vs module when it is loadable."""
    if not os.path.exists(PROC):
        subprocess.run(["modprobe", "-q", "ip_vs"], capture_output=True, check=False)
    if not os.path.exists(PROC):
        raise KernelUnsupported(NO_IPVS)


def read_proc() -> dict[tuple, dict]:
    """{(protocol, Endpoint): {"scheduler", "targets": {Endpoint: (forward, weight)}}}."""
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
            current["targets"][_proc_endpoint(fields[1])] = (names[words[fields[2]]],
                                                             int(fields[3]))
        elif fields[0] in ("TCP", "UDP"):
            current = {"scheduler": fields[2], "targets": {}}
            found[(fields[0].lower(), _proc_endpoint(fields[1]))] = current
    return found


def _proc_endpoint(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    if host.startswith("["):
        import ipaddress

        ip = str(ipaddress.ip_address(host[1:-1]))
    else:
        ip = socket.inet_ntoa(int(host, 16).to_bytes(4, "big"))
    return Endpoint(ip, int(port, 16))


@contextmanager
def ipvs():
    """A pyroute2 IPVS socket; KernelUnsupported where the kernel has none."""
    ensure_ipvs()
    from pyroute2 import IPVS

    sock = IPVS()
    try:
        yield sock
    finally:
        sock.close()


def service_spec(service: dict):
    from pyroute2 import IPVSService

    spec = {"addr": service["addr"], "port": service["port"],
            "protocol": PROTOCOLS[service["protocol"]], "sched_name": service["scheduler"]}
    if service.get("persistent"):
        spec["flags"] = {"flags": PERSISTENT, "mask": 0xFFFFFFFF}
        spec["timeout"] = service["persistent"]
    return IPVSService(**spec)


def dest_spec(target: dict):
    from pyroute2 import IPVSDest

    return IPVSDest(addr=target["addr"], port=target["port"], weight=target["weight"],
                    fwd_method=FORWARDS[target["forward"]])


def netlink_error(e, service: dict) -> Exception:
    code = getattr(e, "code", None)
    if code == errno.ENOENT:
        return InvalidInput(f"scheduler {service['scheduler']!r} is not available in this "
                            "kernel (rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, ...)")
    if code == errno.EEXIST:
        return InvalidInput(f"the kernel already has a service at {service['protocol']} "
                            f"{service['addr']}:{service['port']} (made outside circuit?)")
    return KernelUnsupported(f"IPVS refused the change: {e}")


def add_service(sock, service: dict) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        sock.service("add", service=service_spec(service))
    except NetlinkError as e:
        raise netlink_error(e, service) from None


def del_service(sock, service: dict) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        sock.service("del", service=service_spec(service))
    except NetlinkError as e:
        if e.code not in (errno.ESRCH, errno.ENOENT):
            raise


def set_target(sock, service: dict, target: dict, exists: bool) -> None:
    sock.dest("set" if exists else "add", service=service_spec(service),
              dest=dest_spec(target))


def del_target(sock, service: dict, target: dict) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        sock.dest("del", service=service_spec(service), dest=dest_spec(target))
    except NetlinkError as e:
        if e.code not in (errno.ESRCH, errno.ENOENT):
            raise


def stats(sock, service: dict) -> dict:
    """Connections, packets and bytes of a service and of each target, from the kernel."""

    def counters(nla) -> dict:
        if nla is None:
            return {}
        return {"connections": nla.get("IPVS_STATS_ATTR_CONNS"),
                "packets_in": nla.get("IPVS_STATS_ATTR_INPKTS"),
                "packets_out": nla.get("IPVS_STATS_ATTR_OUTPKTS"),
                "bytes_in": nla.get("IPVS_STATS_ATTR_INBYTES"),
                "bytes_out": nla.get("IPVS_STATS_ATTR_OUTBYTES")}

    spec = service_spec(service)
    found = {"service": {}, "targets": {}}
    for msg in sock.service("get", service=spec):
        found["service"] = counters(msg.get_nested("IPVS_CMD_ATTR_SERVICE",
                                                   "IPVS_SVC_ATTR_STATS64"))
    for msg in sock.dest("dump", service=spec):
        dest = msg.get("IPVS_CMD_ATTR_DEST")
        key = str(Endpoint(str(dest.get("IPVS_DEST_ATTR_ADDR")), dest.get("IPVS_DEST_ATTR_PORT")))
        found["targets"][key] = counters(dest.get("IPVS_DEST_ATTR_STATS64"))
    return found


# -- the VIP made local, so that traffic to it reaches IPVS -------------------------------------

def vip_is_local(ip: str) -> bool:
    """Whether ip is an address of this netns (bind() succeeds only for local addresses)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, 0))
            return True
        except OSError:
            return False


def add_vip(ip: str) -> None:
    """Put ip on lo as a host address (/32 or /128)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=ip,
                 prefixlen=128 if ":" in ip else 32)


def del_vip(ip: str) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            ipr.addr("del", index=ipr.link_lookup(ifname="lo")[0], address=ip,
                     prefixlen=128 if ":" in ip else 32)
        except NetlinkError as e:
            if e.code != errno.EADDRNOTAVAIL:
                raise


# -- SNAT for masq services ----------------------------------------------------------------------

def sync_snat(services: list[dict]) -> None:
    """Make table circuit_lb masquerade the connections of every masq service, atomically.

    With net.ipv4.vs.conntrack=1 IPVS keeps conntrack entries whose original tuple is the
    client's to the VIP; masquerading them sends replies back through the host, so a client on
    the same bridge as the backend (hairpin) gets its answers from the VIP."""
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
