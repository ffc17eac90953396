"""Load-balancer services in the state store, kept in step with the kernel.

State: services/<name>.json  {"name", "addr", "port", "protocol", "scheduler", "persistent",
                              "backend", "vip_added", "check"?, "targets": [{"addr", "port",
                              "weight", "forward"}]}
       lb-health/<name>.json  this host's view of the targets' health (health.py, the agent)
Every change takes the store-wide lock (services share table circuit_lb and may share VIPs),
computes what it will do, changes the kernel, and then writes the record; when a step fails,
the kernel's changes are undone, so store and kernel never disagree after a failure. The kernel
gets each record as health.live makes it: targets this host found down with weight 0.
"""

import contextlib
import os
import re
import time
from itertools import repeat
from operator import itemgetter

from circuit_common import containers, extensions
from circuit_common.cli import Context
from circuit_common.errors import Conflict, InvalidInput, NotFound
from circuit_common.validate import ascii_number, check_name

from . import backends, health, ipvs
from .address import Endpoint, Named, check_usable
from .backends import endpoint

SCHEDULER_RE = re.compile(r"[a-z]{1,15}")


def check_weight(value) -> int:
    weight = value if type(value) is int else ascii_number(value)
    if weight is None or not 0 <= weight <= 65535:
        raise InvalidInput(f"invalid weight {value!r}: use 0..65535")
    return weight


def check_scheduler(scheduler: str) -> None:
    if not SCHEDULER_RE.fullmatch(scheduler):
        raise InvalidInput(f"invalid scheduler {scheduler!r}: rr, wrr, lc, wlc, lblc, "
                           "lblcr, dh, sh, sed, nq, ...")


def check_service(record: dict, path: str) -> None:
    """A service record as circuit writes it, at services/<name>.json (ValueError: what is
    wrong). Targets are checked by type only: a service may hold thousands."""
    from .address import normal_ip

    if os.path.basename(path) != f"{record.get('name')}.json":
        raise ValueError("it names another service than its file is for")
    normal_ip(record.get("addr"))
    if type(record.get("port")) is not int or not 0 < record["port"] < 65536:
        raise ValueError(f"port {record.get('port')!r} is not 1-65535")
    if record.get("protocol") not in ipvs.PROTOCOLS \
            or not SCHEDULER_RE.fullmatch(str(record.get("scheduler"))) \
            or record.get("backend", "ipvs") not in backends.NAMES:
        raise ValueError("its protocol, scheduler or backend is not one circuit knows")
    targets = record.get("targets")
    if not isinstance(targets, list) or not _well_typed(targets):
        raise ValueError("its targets must be a list of {addr, port, weight, forward}")
    health.check_check(record.get("check"))


def _well_typed(targets: list) -> bool:
    """Whether every target is a dict with a str addr, int port and weight, and a forwarding
    circuit knows (the loops run in C: a service may hold thousands)."""
    if not all(map(isinstance, targets, repeat(dict))):
        return False
    get = dict.get
    try:
        return {*map(type, map(get, targets, repeat("addr")))} <= {str} \
            and {*map(type, map(get, targets, repeat("port"))),
                 *map(type, map(get, targets, repeat("weight")))} <= {int} \
            and {*map(get, targets, repeat("forward"))}.issubset(ipvs.FORWARDS)
    except TypeError:  # an unhashable forwarding
        return False


class Services:
    """The services of one state store."""

    def __init__(self, ctx: Context):
        self.store = ctx.store
        self.backends = backends.Backends(self.store)

    def path(self, name: str):
        return self.store.path("services", f"{check_name(name, 'service name')}.json")

    def get(self, name: str) -> dict:
        record = self.store.read(self.path(name), check=check_service)
        if record is None:
            raise NotFound(f"no service named {name!r} (see 'circuit lb list')")
        return record

    def all(self) -> tuple[list[dict], list[str]]:
        """Every service record, and one message per record that could not be read."""
        return self.store.read_all(self.store.path("services"), check=check_service)

    def stamps(self) -> list[tuple]:
        """(name, inode, mtime, size) of each service's file: when equal to an earlier
        listing's, no record changed since (the store replaces a record by rename)."""
        stamps = []
        for path in self.store.records(self.store.path("services")):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(path)
                stamps.append((path, st.st_ino, st.st_mtime_ns, st.st_size))
        return stamps

    def health_path(self, name: str):
        return self.store.path("lb-health", f"{check_name(name, 'service name')}.json")

    def health(self, name: str) -> dict | None:
        """This host's view of the health of service name's targets (None: no checks yet)."""
        return self.store.read(self.health_path(name), check=health.check_health)

    def healths(self) -> dict[str, dict]:
        """Every service's health record by service name (unreadable ones left out: the
        agent writes them again)."""
        return {h["name"]: h for h in self.store.read_all(
            self.store.path("lb-health"), check=health.check_health).records}

    def live(self, records: list[dict]) -> list[dict]:
        """records as this host programs the kernel (health.live)."""
        healths = self.healths() if any(r.get("check") for r in records) else {}
        return [health.live(r, healths.get(r["name"])) for r in records]

    def set_check(self, name: str, check: dict | None) -> dict:
        """Store service name's health check (None: none); the kernel is left as it is until
        the agent's checks change a target's state, or, without a check, put back."""
        with self.store.lock_all():
            record = self.get(name)
            if check is not None and "sorry" in check:
                self._check_sorry(record, Endpoint(check["sorry"]["addr"],
                                                   check["sorry"]["port"]))
            new = {k: v for k, v in record.items() if k != "check"}
            if check is not None:
                new["check"] = check
            self._change(record, new)
            if check is None:
                self.store.remove(self.health_path(name))
        return new

    @staticmethod
    def _check_sorry(record: dict, where: Endpoint) -> None:
        """A sorry target service record can take: usable, of its IP version, not its own
        address and not one of its targets."""
        check_usable(where, "sorry target")
        if (":" in where.ip) != (":" in record["addr"]):
            raise InvalidInput("the sorry target must be of the service's IP version")
        if where == (record["addr"], record["port"]) or where in {
                (t["addr"], t["port"]) for t in record["targets"]}:
            raise InvalidInput(f"sorry target {where} is service {record['name']}'s own "
                               "address or one of its targets: give another backend")

    def set_health(self, name: str, state: dict, changed: bool) -> bool:
        """Record service name's target health (written by the agent); when a target's
        state changed, its weight in the kernel with it (0 when down). False when the service
        is gone or has no check any more."""
        from . import nft, table

        with self.store.lock_all():
            try:
                record = self.get(name)
            except NotFound:
                return False
            if not record.get("check"):  # `lb check NAME none` since the agent last read it
                return False
            state = {**state, "name": name}
            if not changed:  # only last checks and counts: a cache a crash may lose
                self.store.write_cache(self.health_path(name), state)
                return True
            before = health.live(record, self.health(name))
            after = health.live(record, state)
            undo: list = []
            try:
                if before["targets"] != after["targets"]:
                    others = self.live(self._others(name))
                    old_table = table.build([*others, before])
                    new_table = table.build([*others, after])
                    self._change_kernel(
                        self.backends.of(record), before, after,
                        table.changes(old_table, new_table),
                        lambda: nft.transaction(table.changes(new_table, old_table)), undo)
                self.store.write(self.health_path(name), state)
            except BaseException:
                for step in reversed(undo):
                    with contextlib.suppress(Exception):
                        step()
                raise
        return True

    def _others(self, name: str) -> list[dict]:
        """Every service record but name's (the one a command changes, and holds in memory:
        reading its thousands of targets back would cost as much as writing them)."""
        return self.store.read_all(self.store.path("services"), skip=self.path(name),
                                   check=check_service).records

    def edit(self, name: str, scheduler: str) -> dict:
        """Give service name another scheduler, its targets kept (as `ipvsadm -E`)."""
        check_scheduler(scheduler)
        with self.store.lock_all():
            record = self.get(name)
            new = {**record, "scheduler": scheduler}
            backend = self.backends.of(record)
            backend.check(new)
            backend.ensure()
            self._change(record, new)
        return new

    def create(self, name: str, where: Endpoint, scheduler: str, protocol: str,
               persistent: int | None, backend: str | None = None) -> dict:
        check_name(name, "service name")
        check_usable(where, "service address")
        check_scheduler(scheduler)
        if protocol not in ipvs.PROTOCOLS:
            raise InvalidInput(f"invalid protocol {protocol!r}: use tcp or udp")
        chosen = self.backends.choose(backend)
        record = {"name": name, "addr": where.ip, "port": where.port, "protocol": protocol,
                  "scheduler": scheduler, "persistent": persistent, "backend": chosen.name,
                  "targets": [], "vip_added": False,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        chosen.check(record)
        chosen.ensure()
        with self.store.lock_all():
            if self.store.read(self.path(name), check=check_service) is not None:
                raise Conflict(f"service {name} exists already")
            for other in self.all()[0]:
                if (other["protocol"], endpoint(other)) == (protocol, where):
                    raise Conflict(f"service {other['name']} already balances {protocol} "
                                   f"{where}")
            self._change(None, record)
        return record

    def add(self, name: str, targets: list[tuple[Endpoint | Named, int | None]], weight: int,
            forward: str) -> dict:
        """Add targets, or update the weight and forwarding of those already there. A Named
        target (CONTAINER:PORT) is the container's address on its one network with an address
        of the service's IP version (container_target), recorded with where it came from."""
        if forward not in ipvs.FORWARDS:
            raise InvalidInput(f"invalid forwarding {forward!r}: use masq, route or tunnel")
        with self.store.lock_all():
            record = self.get(name)
            origins = {}
            for i, (where, own_weight) in enumerate(targets):
                if isinstance(where, Named):
                    found = container_target(self.store, where, record)
                    targets[i] = (Endpoint(found.ip, where.port), own_weight)
                    origins[(found.ip, where.port)] = {
                        "name": where.name, "id": found.container_id,
                        "network": found.network, "ifname": found.ifname,
                        **({"host": here} if (here := self.store.host_name()) else {})}
                    # circuit-net then tells lb when that attachment goes (released)
                    extensions.mark(self.store, found.network, "lb", "circuit_lb.extension")
            if len(set(map(itemgetter(0), targets))) != len(targets):
                raise InvalidInput("a container's address and the container are both given "
                                   "(or one twice); give each target once")
            # (addr, port) keys: equal to Endpoints, and cheaper by the thousand
            wanted = {(t["addr"], t["port"]): t for t in record["targets"]}
            wanted.update({(ip, port): {"addr": ip, "port": port, "forward": forward,
                                        "weight": weight if own_weight is None else own_weight,
                                        **({"container": origins[(ip, port)]}
                                           if (ip, port) in origins else {})}
                           for (ip, port), own_weight in targets})
            if {":" in ip for ip, _ in wanted} - {":" in record["addr"]}:
                raise InvalidInput("targets must be of the service's IP version")
            own = (record["addr"], record["port"])
            for where, _ in targets:
                if where == own:
                    raise InvalidInput(f"target {Endpoint(*where)} is service {name}'s own "
                                       "address: traffic to it would be balanced to itself; "
                                       "give the addresses of the backends")
                check_usable(where, "target")
            sorry = (record.get("check") or {}).get("sorry")
            if sorry is not None and (sorry["addr"], sorry["port"]) in dict(targets):
                raise InvalidInput(f"target {Endpoint(sorry['addr'], sorry['port'])} is "
                                   f"service {name}'s sorry target: give another backend, or "
                                   "another --sorry first")
            return self._change_targets(record, wanted)

    def remove(self, name: str, targets: list[Endpoint | Named]) -> dict:
        with self.store.lock_all():
            record = self.get(name)
            current = {endpoint(t): t for t in record["targets"]}
            targets = [recorded(current, where) or Endpoint(
                container_target(self.store, where, record).ip, where.port)
                if isinstance(where, Named) else where for where in targets]
            for where in targets:
                if where not in current:
                    raise NotFound(f"target {where} is not in service {name}")
            gone = set(targets)
            return self._change_targets(record, {k: v for k, v in current.items()
                                                 if k not in gone})

    def drop_container(self, network: str, container_id: str, ifname: str) -> list[str]:
        """Remove, from every service, the targets added as the container whose interface
        ifname left network (extension.released); the names of the services changed."""
        changed = []
        with self.store.lock_all():
            for record in self.all()[0]:
                keep = {endpoint(t): t for t in record["targets"]
                        if (t.get("container") or {}).get("id") != container_id
                        or t["container"].get("network") != network
                        or t["container"].get("ifname") != ifname}
                if len(keep) != len(record["targets"]):
                    self._change_targets(record, keep)
                    changed.append(record["name"])
        return changed

    def gone(self, targets) -> list[dict]:
        """The targets added as a container of this host (CONTAINER:PORT) whose attachment is
        no more: left by a circuit killed between the detach and extension.released. Those of
        another host's containers are that host's to tell (released there)."""
        found = [t for t in targets if "container" in t]
        if not found:
            return []
        here = self.store.host_name()
        return [t for t in found if isinstance(t["container"], dict)
                and t["container"].get("host") == here and not containers.attached(
                    self.store, *(t["container"].get(k) for k in ("network", "id", "ifname")))]

    def _change_targets(self, record: dict, wanted: dict) -> dict:
        """Take the service to the targets wanted ({(addr, port): target}), but for those
        gone with their container (gone)."""
        for target in self.gone(wanted.values()):
            del wanted[(target["addr"], target["port"])]
        new = {**record, "targets": [wanted[k] for k in sorted(wanted)]}
        backend = self.backends.of(record)
        backend.check(new)
        backend.ensure()
        self._change(record, new)
        return new

    def delete(self, name: str) -> None:
        with self.store.lock_all():
            record = self.get(name)
            self.backends.of(record).ensure()
            self._change(record, None)
            self.store.remove(self.health_path(name))

    def clear(self) -> list[str]:
        with self.store.lock_all():
            records = self.all()[0]
            for record in records:
                self.backends.of(record).ensure()
                self._change(record, None)
                self.store.remove(self.health_path(record["name"]))
        return [r["name"] for r in records]

    def _change(self, old: dict | None, new: dict | None) -> None:
        """Take one service from old to new (None: absent): compute, change the kernel (the
        backend's objects, the VIP, table circuit_lb), then write the record; undo the
        kernel's changes when a later step fails."""
        from . import nft, table

        if old is None or new is None:
            from . import vip
        record = new or old
        backend, addr, path = self.backends.of(record), record["addr"], self.path(record["name"])
        raw_others = self._others(record["name"])
        others = self.live(raw_others)
        checked = any(r and r.get("check") for r in (old, new))
        own_health = self.healths().get(record["name"]) if checked else None
        kernel_old, kernel_new = health.live(old, own_health), health.live(new, own_health)
        before = table.build([*others, kernel_old] if old else others)
        after = table.build([*others, kernel_new] if new else others)
        sharing = [o for o in raw_others if o["addr"] == addr]
        undo = []
        try:
            if old is None:
                local = vip.is_local(addr)
                new["vip_added"] = not local or any(o["vip_added"] for o in sharing)
                if not local:
                    vip.add(addr)
                    undo.append(lambda: vip.remove(addr))
                undo.append(backend.create(new))
            elif new is None:
                undo.append(backend.delete(old))
            if old is None or new is None:
                nft.transaction(table.changes(before, after))
                undo.append(lambda: nft.transaction(table.changes(after, before)))
            else:
                self._change_kernel(backend, kernel_old, kernel_new, table.changes(before, after),
                                    lambda: nft.transaction(table.changes(after, before)), undo)
            if new is None:
                if old["vip_added"] and not sharing:
                    vip.remove(addr)
                    undo.append(lambda: vip.add(addr))
                self.store.remove(path)
            else:
                self.store.write(path, new)
        except BaseException:
            for step in reversed(undo):
                with contextlib.suppress(Exception):  # the first failure is the one to report
                    step()
            raise

    @staticmethod
    def _change_kernel(backend, old: dict, new: dict, commands: list[dict], undo_table,
                       undo: list) -> None:
        """The backend's change from old to new, and table circuit_lb's (commands, undone by
        undo_table) alongside it: nft is a process of its own, which runs on another CPU
        while circuit encodes and sends thousands of IPVS requests. As when one ran after
        the other: the backend's failure is the one reported, the table's when only it
        failed, and the undo of each change carried out is in undo."""
        from . import nft

        if not commands:
            backend.verify(old, new)
            undo.append(backend.change(old, new))
            undo.append(undo_table)
            return
        import threading

        failed: list[BaseException] = []

        def table_change() -> None:
            try:
                nft.transaction(commands)
            except BaseException as e:  # raised below, in the command's thread
                failed.append(e)

        thread = threading.Thread(target=table_change, name="circuit-lb-nft")
        thread.start()
        try:
            undo.append(backend.change(old, new))
        finally:
            thread.join()
            if not failed:  # the table changed
                undo.append(undo_table)
        if failed:
            raise failed[0]

    def drift(self, records: list[dict]) -> list[str]:
        """How the kernel differs from the stored services, one line each (no pyroute2): a
        service, target or VIP missing, a target or table object that only the kernel has
        (table circuit_lb is read when a service of the nftables backend is stored)."""
        from . import nft, table, vip

        nftables = self.backends.nftables
        found, lines = {}, []
        for backend in {self.backends.of(r) for r in records}:
            if backend is nftables:
                objects = nft.list_table(table.TABLE["family"], table.TABLE["table"])
                found[backend] = table.read(objects)
                lines += table.strangers(objects, table.build(records))
            else:
                found[backend] = backend.read()
        for addr in sorted({r["addr"] for r in records if r.get("vip_added")}):
            if not vip.is_local(addr):
                names = ", ".join(sorted(f"service {r['name']}" for r in records
                                         if r["addr"] == addr))
                lines.append(f"VIP {addr} of {names} is not on lo (taken off by hand?)")
        for record in records:
            name, backend = record["name"], self.backends.of(record)
            seen = found[backend].get((record["protocol"], endpoint(record)))
            if seen is None:
                lines.append(f"service {name} is missing from the kernel")
                continue
            if seen["scheduler"] != record["scheduler"]:
                lines.append(f"service {name} has scheduler {seen['scheduler']} in the kernel")
            # (addr, port) tuples: equal to the kernel's Endpoints, and cheaper by the thousand
            stored = backend.expected(record)
            kernel_targets = seen["targets"]
            for how, differing in (
                    ("is missing from the kernel", stored.keys() - kernel_targets.keys()),
                    ("is in the kernel only", kernel_targets.keys() - stored.keys()),
                    ("differs in the kernel", [w for w in stored.keys() & kernel_targets.keys()
                                               if stored[w] != kernel_targets[w]])):
                lines += [f"service {name}: target {Endpoint(*where)} {how}"
                          for where in sorted(differing)]
        return lines

    def stats(self, records: list[dict]) -> dict[str, dict]:
        """{name: {"service": counters, "targets": {ADDR:PORT: counters}}} from the kernel."""
        found = {}
        for backend in {self.backends.of(r) for r in records}:
            found |= backend.stats([r for r in records if self.backends.of(r) is backend])
        return found

    def restore(self) -> list[str]:
        """Make the kernel match the stored services again (after a reboot, ipvsadm -C or
        `nft delete table`): services, targets, VIPs and table circuit_lb; targets gone with
        their container (gone) are dropped from the records first."""
        from . import nft, table, vip

        with self.store.lock_all():
            stored = self.all()[0]
            for i, record in enumerate(stored):
                gone = self.gone(record["targets"])
                if gone:  # the kernel is made to match the record below
                    stored[i] = {**record, "targets": [t for t in record["targets"]
                                                       if t not in gone]}
                    self.store.write(self.path(record["name"]), stored[i])
            records = self.live(stored)
            if not records:
                return []
            for backend in {self.backends.of(r) for r in records}:
                backend.ensure()
                backend.restore([r for r in records if self.backends.of(r) is backend])
            for addr in {r["addr"] for r in records if r["vip_added"]}:
                if not vip.is_local(addr):
                    vip.add(addr)
            nft.transaction(table.rebuild(table.build(records)))
        return [r["name"] for r in records]


def recorded(current: dict, where: Named) -> Endpoint | None:
    """The target of current ({Endpoint: target}) that was added as where (CONTAINER:PORT)."""
    return next((e for e, t in current.items() if e.port == where.port
                 and (t.get("container") or {}).get("name") == where.name), None)


def container_target(store, where: Named, record: dict) -> containers.Address:
    """The address a CONTAINER:PORT target balances to: the running container's address of
    the service's IP version, on the one network where it has one. None found: NotFound;
    several (networks or interfaces): InvalidInput naming them, to give the address."""
    version = 6 if ":" in record["addr"] else 4
    found = [a for a in containers.addresses(store, where.name)
             if (":" in a.ip) == (version == 6)]
    if not found:
        raise NotFound(f"no running container {where.name!r} with an IPv{version} address on "
                       f"a circuit network (service {record['name']} is IPv{version}): connect "
                       f"it (circuit network connect {where.name} NETWORK), or give ADDR:PORT")
    if len(found) > 1:
        each = ", ".join(f"{a.ip} on {a.network} ({a.ifname})" for a in found)
        raise InvalidInput(f"container {where.name} has {len(found)} IPv{version} addresses: "
                           f"{each}; give the one to balance to as ADDR:PORT")
    return found[0]
