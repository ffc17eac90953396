"""IPVS services and targets through netlink: requests encoded by pyroute2's ipvsmsg (its
modules loaded only where one is encoded), target changes sent in batches as copies of kept
templates (Requests)."""

import errno
import os
import struct
import sys
from _socket import AF_INET, AF_INET6, inet_ntoa, inet_pton
from contextlib import contextmanager
from itertools import repeat
from operator import itemgetter

from circuit_netlink import (
    CREATE,
    CTRL_CMD_GETFAMILY,
    GENL_ID_CTRL,
    NETLINK_GENERIC,
    NLM_F_DUMP,
    NLM_F_REPLACE,
    Batch,
    Template,
    family_of,
    family_request,
    lean_pyroute2,
)
from circuit_netlink.kept import Kept

from . import ipvs
from .address import Endpoint, ip_family
from .ipvs import (
    CMD_DEL_DEST,
    CMD_DEL_SERVICE,
    CMD_GET_DEST,
    CMD_GET_SERVICE,
    CMD_NEW_DEST,
    CMD_NEW_SERVICE,
    CMD_SET_DEST,
    CMD_SET_SERVICE,
    FORWARDS,
    PERSISTENT,
    PROTOCOLS,
    service_error,
)


@contextmanager
def connection(store):
    """An IPVS netlink connection keeping its encoded requests in store's cache;
    KernelUnsupported where the kernel has no IPVS."""
    ipvs.ensure_ipvs()
    connected = Ipvs(store)
    try:
        yield connected
    finally:
        connected.batch.close()


class Ipvs:
    """IPVS requests, encoded with pyroute2's ipvsmsg and sent in batches: queue target
    changes with set_target / del_target, then `commit()`. Target requests are copies of
    templates (Requests) that pyroute2 encoded once and this host's cache keeps."""

    def __init__(self, store):
        self.batch = Batch(NETLINK_GENERIC)
        try:
            self.requests = Requests.kept_or_encoded(store)
            self.family = family_of(self.batch, self.requests.family)
        except BaseException:
            self.batch.close()
            raise
        # (command, the service's key): its template with the service's values stamped in
        self.templates: dict[tuple, Template] = {}

    def _message(self, command: int, service: dict, dest: dict | None = None):
        return message(self.family, command, service, dest)

    def _send_one(self, command: int, service: dict, flags: int = 0, ignore=()) -> None:
        self.batch.add(self._message(command, service), flags, ignore)
        self.commit()

    def add_service(self, service: dict) -> None:
        try:
            self._send_one(CMD_NEW_SERVICE, service, CREATE)
        except OSError as e:
            raise service_error(e, service) from None

    def set_service(self, service: dict) -> None:
        try:
            self._send_one(CMD_SET_SERVICE, service, NLM_F_REPLACE)
        except OSError as e:
            raise service_error(e, service) from None

    def del_service(self, service: dict) -> None:
        self._send_one(CMD_DEL_SERVICE, service, ignore=(errno.ESRCH, errno.ENOENT))

    def set_target(self, service: dict, target: dict, exists: bool) -> None:
        """Queue adding target, or changing its weight and forwarding when it exists."""
        self.queue_targets(CMD_SET_DEST if exists else CMD_NEW_DEST, service, [target])

    def del_target(self, service: dict, target: dict) -> None:
        """Queue removing target; one that is not there counts as removed."""
        self.queue_targets(CMD_DEL_DEST, service, [target])

    def queue_targets(self, command: int, service: dict, targets: list[dict]) -> None:
        """Queue command (CMD_NEW_DEST, _SET_DEST or _DEL_DEST) for each of targets, in order:
        copies of command's template stamped with service, with each target's values
        (thousands of targets: pyroute2 takes ≈ 0.3 ms to encode one, 30 times that in the
        kernel tier's VM). A target removed that is not there counts as removed."""
        ignore = (errno.ESRCH, errno.ENOENT) if command == CMD_DEL_DEST else ()
        if {":" in target["addr"] for target in targets} - {":" in service["addr"]}:
            # targets of another IP version than their service's (never from Services)
            for target in targets:
                self.batch.add_copies(self._template(command, service, target), [
                    target_values(target)], ignore)
        elif targets:
            self.batch.add_columns(self._template(command, service, targets[0]),
                                   target_columns(targets), len(targets), ignore)

    def _template(self, command: int, service: dict, target: dict) -> Template:
        key = (command, service["protocol"], service["addr"], service["port"],
               ip_family(target["addr"]))
        template = self.templates.get(key)
        if template is None:
            template = self.templates[key] = self.requests.target(
                command, service, key[-1]).retyped(self.family)
        return template

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
        for msg in self.batch.query(self._message(CMD_GET_SERVICE, service)):
            found["service"] = counters(msg.get_nested("IPVS_CMD_ATTR_SERVICE",
                                                       "IPVS_SVC_ATTR_STATS64"))
        for msg in self.batch.query(self._message(CMD_GET_DEST, service), NLM_F_DUMP):
            dest = msg.get("IPVS_CMD_ATTR_DEST")
            where = Endpoint(str(dest.get("IPVS_DEST_ATTR_ADDR")), dest.get("IPVS_DEST_ATTR_PORT"))
            found["targets"][str(where)] = counters(dest.get("IPVS_DEST_ATTR_STATS64"))
        return found


# Where a template's slots are: the service's key (its address family is the template's) and
# the target's values.
SERVICE_SLOTS = {name: ("IPVS_CMD_ATTR_SERVICE", f"IPVS_SVC_ATTR_{attr}") for name, attr in (
    ("protocol", "PROTOCOL"), ("vip", "ADDR"), ("vport", "PORT"))}
TARGET_SLOTS = {name: ("IPVS_CMD_ATTR_DEST", f"IPVS_DEST_ATTR_{attr}") for name, attr in (
    ("addr", "ADDR"), ("port", "PORT"), ("weight", "WEIGHT"), ("forward", "FWD_METHOD"))}
TARGET_COMMANDS = (CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST)
GENL_COMMAND = 16  # where a generic netlink request holds its command (after nlmsghdr)
GENL_FAMILIES = range(16, 1 << 16)  # the message types generic netlink gives out (GENL_ID_CTRL on)
# Made-up services and targets the kept templates are encoded with (each slot is checked to
# hold its value), one per address family.
SAMPLES = {AF_INET: ({"addr": "192.0.2.1", "port": 4660, "protocol": "udp"},
                            {"addr": "192.0.2.2", "port": 22136, "weight": 258,
                             "forward": "tunnel"}),
           AF_INET6: ({"addr": "2001:db8::1", "port": 4660, "protocol": "udp"},
                             {"addr": "2001:db8::2", "port": 22136, "weight": 258,
                              "forward": "tunnel"})}
KEPT_AS = "ipvs-requests.json"  # below the state directory's cache/
LAYOUT = (os.path.abspath(__file__),)  # besides circuit_netlink: decides the requests' bytes


class Requests:
    """The requests every IPVS connection sends, encoded by pyroute2: the one that asks for
    IPVS's generic netlink family, and per target command and address family a template with
    the service's and the target's values as slots. They are kept in this host's cache
    (cache/ipvs-requests.json, circuit_netlink.kept: tagged with pyroute2's version and the
    size and time of the code that lays them out), so that a target change loads no pyroute2
    (≈ 0.1 s here, seconds in the kernel tier's VM); a cache made by other code is encoded
    again."""

    def __init__(self, family: Template, targets: dict[tuple[int, int], Template]):
        self.family = family
        self.targets = targets  # {(command, address family): Template}

    @classmethod
    def kept_or_encoded(cls, store) -> "Requests":
        """The requests store's cache keeps, else encoded now and kept there."""
        kept = cls.kept(store)
        if kept is not None:
            return kept
        requests = cls.encoded()
        requests.keep(store)
        return requests

    @classmethod
    def encoded(cls) -> "Requests":
        targets = {}
        for family, (service, target) in SAMPLES.items():
            for command in TARGET_COMMANDS:
                targets[(command, family)] = Template(
                    message(GENL_FAMILIES[0], command, service, target), 0,
                    SERVICE_SLOTS | TARGET_SLOTS, service_values(service) | target_values(target))
        return cls(family_request("IPVS"), targets)

    def keep(self, store) -> None:
        """Keep them in store's cache (a cache: nothing fails when it cannot)."""
        kept_at(store).keep({
            "family": self.family.saved(),
            "targets": {f"{command}/{family}": template.saved()
                        for (command, family), template in self.targets.items()}})

    @classmethod
    def kept(cls, store) -> "Requests | None":
        """The requests store's cache keeps, if this code made them; else None."""
        record = kept_at(store).load()
        if record is None:
            return None
        try:
            family = Template.restored(record["family"], (GENL_ID_CTRL,))
            targets = {}
            for key, saved in record["targets"].items():
                command, af = map(int, key.split("/"))
                template = Template.restored(saved, GENL_FAMILIES)
                if command not in TARGET_COMMANDS or af not in SAMPLES \
                        or template.data[GENL_COMMAND] != command \
                        or {name: length for name, (_, length) in template.slots.items()} \
                        != slot_sizes(af):
                    return None
                targets[(command, af)] = template
            if family.data[GENL_COMMAND] != CTRL_CMD_GETFAMILY or family.slots \
                    or targets.keys() != {(c, f) for c in TARGET_COMMANDS for f in SAMPLES}:
                return None
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        return cls(family, targets)

    def target(self, command: int, service: dict, family: int) -> Template:
        """command's template for a target of family, with service's values stamped in."""
        if family != ip_family(service["addr"]):  # not kept: encoded now, with service's key
            target = SAMPLES[family][1]
            return Template(message(GENL_FAMILIES[0], command, service, target), 0,
                            TARGET_SLOTS, target_values(target))
        return self.targets[(command, family)].stamped(service_values(service))


def slot_sizes(family: int) -> dict[str, int]:
    """The size of each slot of a kept template for targets of family."""
    size = 16 if family == AF_INET6 else 4
    return {"protocol": 2, "vip": size, "vport": 2, "addr": size, "port": 2, "weight": 4,
            "forward": 4}


def kept_at(store):
    """Where this host keeps the requests (circuit_netlink.kept.Kept)."""
    return Kept(store, KEPT_AS, LAYOUT)


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
    addr = target["addr"]
    return {"addr": inet_pton(AF_INET6 if ":" in addr else AF_INET, addr),
            "port": PORT.pack(target["port"]),
            "weight": WEIGHT.pack(target["weight"]),
            "forward": FORWARD_VALUES[target["forward"]]}


def target_columns(targets: list[dict]) -> dict[str, list[bytes]]:
    """target_values of targets of one address family, slot by slot (C loops: thousands)."""
    addrs = list(map(itemgetter("addr"), targets))
    family = AF_INET6 if ":" in addrs[0] else AF_INET
    return {"addr": list(map(inet_pton, repeat(family), addrs)),
            "port": list(map(PORT.pack, map(itemgetter("port"), targets))),
            "weight": list(map(WEIGHT.pack, map(itemgetter("weight"), targets))),
            "forward": list(map(FORWARD_VALUES.__getitem__,
                                map(itemgetter("forward"), targets)))}


def service_values(service: dict) -> dict[str, bytes]:
    """A service's values for the SERVICE_SLOTS of a template."""
    return {"protocol": struct.pack("=H", PROTOCOLS[service["protocol"]]),
            "vip": inet_pton(ip_family(service["addr"]), service["addr"]),
            "vport": struct.pack("!H", service["port"])}


WEIGHT, PORT = struct.Struct("=I"), struct.Struct("!H")
FORWARD_VALUES = {name: struct.pack("=I", value) for name, value in FORWARDS.items()}

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
        netmask = "255.255.255.255" if family == AF_INET else inet_ntoa(
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
