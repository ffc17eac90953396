"""Load-balancer services in the state store, kept in step with IPVS.

State: services/<name>.json  {"name", "addr", "port", "protocol", "scheduler", "persistent",
                              "vip_added", "targets": [{"addr", "port", "weight", "forward"}]}
Every change takes the store-wide lock: services share the SNAT table and VIPs.
"""

import re
import time

from circuit_common.cli import Context
from circuit_common.errors import Conflict, InvalidInput, NotFound
from circuit_common.validate import check_name
from circuit_netlink import NetlinkError

from . import kernel
from .address import Endpoint

SCHEDULER_RE = re.compile(r"[a-z]{1,15}")


def endpoint(record: dict) -> Endpoint:
    return Endpoint(record["addr"], record["port"])


def check_weight(value) -> int:
    try:
        weight = int(value)
    except (TypeError, ValueError):
        weight = -1
    if not 0 <= weight <= 65535:
        raise InvalidInput(f"invalid weight {value!r}: use 0..65535")
    return weight


class Services:
    """The services of one state store."""

    def __init__(self, ctx: Context):
        self.store = ctx.store

    def path(self, name: str):
        return self.store.path("services", f"{check_name(name, 'service name')}.json")

    def get(self, name: str) -> dict:
        record = self.store.read(self.path(name))
        if record is None:
            raise NotFound(f"no service named {name!r} (see 'circuit lb list')")
        return record

    def all(self) -> tuple[list[dict], list[str]]:
        """Every service record, and one message per record that could not be read."""
        return self.store.read_all(self.store.path("services"))

    def _others(self, name: str) -> list[dict]:
        """Every service record but name's (the one a command changes, and holds in memory:
        reading its thousands of targets back would cost as much as writing them)."""
        return self.store.read_all(self.store.path("services"), skip=self.path(name)).records

    def _save_and_sync(self, record: dict | None, name: str) -> None:
        if record is None:
            self.store.remove(self.path(name))
        else:
            self.store.write(self.path(name), record)
        kernel.sync_snat(self._others(name) + ([record] if record else []))

    def create(self, name: str, where: Endpoint, scheduler: str, protocol: str,
               persistent: int | None) -> dict:
        check_name(name, "service name")
        if not SCHEDULER_RE.fullmatch(scheduler):
            raise InvalidInput(f"invalid scheduler {scheduler!r}: rr, wrr, lc, wlc, lblc, "
                               "lblcr, dh, sh, sed, nq, ...")
        if protocol not in kernel.PROTOCOLS:
            raise InvalidInput(f"invalid protocol {protocol!r}: use tcp or udp")
        kernel.ensure_ipvs()
        with self.store.lock_all():
            if self.store.read(self.path(name)) is not None:
                raise Conflict(f"service {name} exists already")
            for other in self.all()[0]:
                if (other["protocol"], endpoint(other)) == (protocol, where):
                    raise Conflict(f"service {other['name']} already balances {protocol} "
                                   f"{where}")
            record = {"name": name, "addr": where.ip, "port": where.port, "protocol": protocol,
                      "scheduler": scheduler, "persistent": persistent, "targets": [],
                      "vip_added": False, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                   time.gmtime())}
            with kernel.ipvs() as sock:
                sock.add_service(record)
                try:
                    if not kernel.vip_is_local(where.ip):
                        kernel.add_vip(where.ip)
                        record["vip_added"] = True
                    self._save_and_sync(record, name)
                except BaseException:
                    sock.del_service(record)
                    if record["vip_added"]:
                        kernel.del_vip(where.ip)
                    raise
        return record

    def add(self, name: str, targets: list[tuple[Endpoint, int | None]], weight: int,
            forward: str) -> dict:
        """Add targets, or update the weight and forwarding of those already there."""
        if forward not in kernel.FORWARDS:
            raise InvalidInput(f"invalid forwarding {forward!r}: use masq, route or tunnel")
        kernel.ensure_ipvs()
        with self.store.lock_all():
            record = self.get(name)
            current = {endpoint(t): t for t in record["targets"]}
            wanted = {}
            for where, own_weight in targets:
                wanted[where] = {"addr": where.ip, "port": where.port, "forward": forward,
                                 "weight": weight if own_weight is None else own_weight}
            if any(w.version != endpoint(record).version for w in wanted):
                raise InvalidInput("targets must be of the service's IP version")
            self._apply(record, current, {**current, **wanted})
        return record

    def remove(self, name: str, targets: list[Endpoint]) -> dict:
        kernel.ensure_ipvs()
        with self.store.lock_all():
            record = self.get(name)
            current = {endpoint(t): t for t in record["targets"]}
            for where in targets:
                if where not in current:
                    raise NotFound(f"target {where} is not in service {name}")
            self._apply(record, current, {k: v for k, v in current.items()
                                          if k not in targets})
        return record

    def _apply(self, record: dict, current: dict, wanted: dict) -> None:
        """Make the kernel's targets go from current to wanted; back to current on failure."""
        with kernel.ipvs() as sock:
            touched = []
            try:
                for where, target in wanted.items():
                    if current.get(where) != target:
                        sock.set_target(record, target, exists=where in current)
                        touched.append(where)
                for where, target in current.items():
                    if where not in wanted:
                        sock.del_target(record, target)
                        touched.append(where)
                try:
                    sock.commit()
                except NetlinkError as e:
                    touched = [touched[i] for i in e.done]  # a refused request changed nothing
                    raise kernel.target_error(e, record) from None
                record["targets"] = sorted(wanted.values(), key=lambda t: endpoint(t))
                self._save_and_sync(record, record["name"])
            except BaseException:
                self._rollback(sock, record, current, touched)
                raise

    @staticmethod
    def _rollback(sock, record: dict, current: dict, touched: list[Endpoint]) -> None:
        """Put the targets a failed change touched back as they were."""
        seen = kernel.read_proc().get((record["protocol"], endpoint(record)), {"targets": {}})
        for where in touched:
            if where in current:
                sock.set_target(record, current[where], exists=where in seen["targets"])
            elif where in seen["targets"]:
                sock.del_target(record, placeholder(where))
        sock.commit()
        record["targets"] = list(current.values())

    def delete(self, name: str) -> None:
        kernel.ensure_ipvs()
        with self.store.lock_all():
            record = self.get(name)
            self._delete(record)

    def _delete(self, record: dict) -> None:
        with kernel.ipvs() as sock:
            sock.del_service(record)
        others = self._others(record["name"])
        if record["vip_added"] and not any(s["addr"] == record["addr"] for s in others):
            kernel.del_vip(record["addr"])
        self._save_and_sync(None, record["name"])

    def clear(self) -> list[str]:
        kernel.ensure_ipvs()
        with self.store.lock_all():
            records = self.all()[0]
            for record in records:
                self._delete(record)
        return [r["name"] for r in records]

    @staticmethod
    def drift(records: list[dict]) -> list[str]:
        """How the kernel differs from the stored services, one line each (no pyroute2)."""
        found = kernel.read_proc()
        lines = []
        for record in records:
            name = record["name"]
            seen = found.get((record["protocol"], endpoint(record)))
            if seen is None:
                lines.append(f"service {name} is missing from the kernel")
                continue
            if seen["scheduler"] != record["scheduler"]:
                lines.append(f"service {name} has scheduler {seen['scheduler']} in the kernel")
            # (addr, port) tuples: equal to the kernel's Endpoints, and cheaper by the thousand
            stored = {(t["addr"], t["port"]): (t["forward"], t["weight"])
                      for t in record["targets"]}
            kernel_targets = seen["targets"]
            for how, differing in (
                    ("is missing from the kernel", stored.keys() - kernel_targets.keys()),
                    ("is in the kernel only", kernel_targets.keys() - stored.keys()),
                    ("differs in the kernel", [w for w in stored.keys() & kernel_targets.keys()
                                               if stored[w] != kernel_targets[w]])):
                lines += [f"service {name}: target {Endpoint(*where)} {how}"
                          for where in sorted(differing)]
        return lines

    def restore(self) -> list[str]:
        """Make the kernel match the stored services again (after a reboot or ipvsadm -C)."""
        with self.store.lock_all():
            records = self.all()[0]
            if not records:
                return []
            kernel.ensure_ipvs()
            found = kernel.read_proc()
            with kernel.ipvs() as sock:
                for record in records:
                    seen = found.get((record["protocol"], endpoint(record)))
                    if seen is None:
                        sock.add_service(record)
                        seen = {"targets": {}}
                    elif seen["scheduler"] != record["scheduler"]:
                        sock.set_service(record)
                    for target in record["targets"]:
                        where = endpoint(target)
                        if seen["targets"].get(where) != (target["forward"], target["weight"]):
                            sock.set_target(record, target, exists=where in seen["targets"])
                    stored = {endpoint(t) for t in record["targets"]}
                    for where in seen["targets"].keys() - stored:
                        sock.del_target(record, placeholder(where))
                    try:
                        sock.commit()
                    except NetlinkError as e:
                        raise kernel.target_error(e, record) from None
                    if record["vip_added"] and not kernel.vip_is_local(record["addr"]):
                        kernel.add_vip(record["addr"])
            kernel.sync_snat(records)
        return [r["name"] for r in records]


def placeholder(where: tuple[str, int]) -> dict:
    """A target record for an (ip, port) that only needs deleting."""
    return {"addr": where[0], "port": where[1], "weight": 0, "forward": "masq"}
