"""The two ways a service is balanced in the kernel, behind one interface:

ipvs      IPVS services and targets through netlink (ipvs.py); the masquerade of masq replies
          is in table circuit_lb
nftables  DNAT chains in table circuit_lb and nothing else (table.py)

Table circuit_lb itself is changed by Services for both, from the stored records. A change
returns its undo: what puts the kernel back when a later step of the command fails."""

from collections.abc import Callable

from circuit_common.errors import Conflict, InvalidInput, KernelUnsupported

from . import ipvs
from .address import Endpoint

Undo = Callable[[], None]


def endpoint(record: dict) -> Endpoint:
    return Endpoint(record["addr"], record["port"])


def _nothing() -> None:
    """The undo of a change that left the kernel alone."""


def _refuse_drift(record: dict, seen: dict | None, expected: dict) -> None:
    """Conflict unless the kernel's view of record's service (seen) is what it should be."""
    if seen is None:
        how = "is missing from the kernel"
    elif seen["scheduler"] != record["scheduler"] or seen["targets"] != expected:
        how = "differs in the kernel"
    else:
        return
    raise Conflict(f"service {record['name']} {how}; `circuit lb list` shows how, `circuit "
                   "restore` makes the kernel match")


class Ipvs:
    """IPVS of one store: its connections keep their encoded requests in the store's cache."""

    name = "ipvs"

    def __init__(self, store):
        self.store = store

    def _connection(self):
        """An IPVS netlink connection (ipvs_netlink.connection)."""
        from . import ipvs_netlink  # netlink code: not on the path of `lb list`

        return ipvs_netlink.connection(self.store)

    @staticmethod
    def available() -> bool:
        try:
            ipvs.ensure_ipvs()
            return True
        except KernelUnsupported:
            return False

    @staticmethod
    def ensure() -> None:
        ipvs.ensure_ipvs()

    @staticmethod
    def check(record: dict) -> None:
        """The kernel judges the scheduler: it refuses one it has no module for."""

    def create(self, record: dict) -> Undo:
        ipvs.track_connections()
        with self._connection() as sock:
            sock.add_service(record)
        return lambda: self.delete(record)

    def delete(self, record: dict) -> Undo:
        with self._connection() as sock:
            sock.del_service(record)
        return lambda: self.restore([record])

    def change(self, old: dict, new: dict) -> Undo:
        """Targets from old's to new's in one batch; only the requests carried out are put
        back when the kernel refuses one."""
        from circuit_netlink import NetlinkError

        # (addr, port) keys: equal to Endpoints, and cheaper by the thousand
        current = {(t["addr"], t["port"]): t for t in old["targets"]}
        wanted = {(t["addr"], t["port"]): t for t in new["targets"]}
        added = [where for where in wanted if where not in current]
        changed = [where for where, target in wanted.items()
                   if where in current and current[where] != target] if current else []
        removed = [where for where in current if where not in wanted]
        touched = added + changed + removed  # in the order the requests are queued
        rescheduled = old["scheduler"] != new["scheduler"]
        with self._connection() as sock:
            if rescheduled:  # `lb edit`: sent on its own, before any target
                sock.set_service(new)
            sock.queue_targets(ipvs.CMD_NEW_DEST, new, [wanted[w] for w in added])
            sock.queue_targets(ipvs.CMD_SET_DEST, new, [wanted[w] for w in changed])
            sock.queue_targets(ipvs.CMD_DEL_DEST, new, [current[w] for w in removed])
            try:
                sock.commit()
            except NetlinkError as e:
                self._put_back(old, current, [touched[i] for i in e.done], rescheduled)
                raise ipvs.target_error(e, old) from None
        return lambda: self._put_back(old, current, touched, rescheduled)

    def verify(self, old: dict, new: dict) -> None:
        """Refuse (Conflict) a change that sends IPVS nothing when the kernel does not hold
        old: its requests, when there are any, find that out themselves."""
        if old["targets"] == new["targets"] and old["scheduler"] == new["scheduler"]:
            _refuse_drift(old, ipvs.read_proc().get((old["protocol"], endpoint(old))),
                          self.expected(old))

    def _put_back(self, record: dict, current: dict, touched: list[Endpoint],
                  rescheduled: bool = False) -> None:
        seen = ipvs.read_proc().get((record["protocol"], endpoint(record)), {"targets": {}})
        with self._connection() as sock:
            if rescheduled:
                sock.set_service(record)
            for where in touched:
                if where in current:
                    sock.set_target(record, current[where], exists=where in seen["targets"])
                elif where in seen["targets"]:
                    sock.del_target(record, placeholder(where))
            sock.commit()

    @staticmethod
    def read() -> dict[tuple, dict]:
        ipvs.ensure_ipvs()
        return ipvs.read_proc()

    @staticmethod
    def expected(record: dict) -> dict[tuple, tuple]:
        return {(t["addr"], t["port"]): (t["forward"], t["weight"]) for t in record["targets"]}

    def stats(self, records: list[dict]) -> dict[str, dict]:
        with self._connection() as sock:
            return {r["name"]: sock.stats(r) for r in records}

    def restore(self, records: list[dict]) -> None:
        """Add what is missing, fix what differs, remove targets the records do not have."""
        from circuit_netlink import NetlinkError

        ipvs.track_connections()
        found = ipvs.read_proc()
        with self._connection() as sock:
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
                    raise ipvs.target_error(e, record) from None


class Nftables:
    name = "nftables"

    @staticmethod
    def ensure() -> None:
        """nft's absence shows at the first transaction (one line naming it)."""

    @staticmethod
    def check(record: dict) -> None:
        """Refuse what nftables cannot express."""
        from . import table

        if record["scheduler"] not in table.SCHEDULERS:
            raise InvalidInput(f"scheduler {record['scheduler']!r} is not available with the "
                               f"nftables backend: use {', '.join(table.SCHEDULERS)} (or "
                               "--backend ipvs)")
        for target in record["targets"]:
            if target["forward"] != "masq":
                raise InvalidInput(f"forwarding {target['forward']!r} needs the ipvs backend: "
                                   "the nftables backend forwards by masq (DNAT) only")

    @staticmethod
    def create(record: dict) -> Undo:
        return _nothing

    @staticmethod
    def delete(record: dict) -> Undo:
        return _nothing

    @staticmethod
    def change(old: dict, new: dict) -> Undo:
        return _nothing

    def verify(self, old: dict, new: dict) -> None:
        """Refuse (Conflict) a change that leaves table circuit_lb as it is (a weight under
        rr, a check) when the kernel's chain of the service is not old's: nft refuses only
        commands, and there are none (one chain listed, not the table's counted sets)."""
        from . import nft, table

        rules = [item["rule"] for item in nft.list_chain(f"svc/{old['name']}")
                 if "rule" in item]
        seen = table.read_service(rules, {}, old["protocol"], 6 if ":" in old["addr"] else 4)
        _refuse_drift(old, seen if rules else None, self.expected(old))

    @staticmethod
    def read() -> dict[tuple, dict]:
        from . import nft, table

        return table.read(nft.list_table(table.TABLE["family"], table.TABLE["table"]))

    @staticmethod
    def expected(record: dict) -> dict[tuple, tuple]:
        """The targets in the service's DNAT map (one of weight 0 has no range there)."""
        from . import table

        return {(t["addr"], t["port"]): ("masq", width)
                for t, width in zip(record["targets"], table.widths(record), strict=True)
                if width}

    def stats(self, records: list[dict]) -> dict[str, dict]:
        found = self.read()
        result = {}
        for record in records:
            counters = found.get((record["protocol"], endpoint(record)), {}).get("counters", {})
            total = {}
            for values in counters.values():
                for key, value in values.items():
                    total[key] = total.get(key, 0) + value
            result[record["name"]] = {"service": total, "targets": {
                str(Endpoint(*where)): values for where, values in counters.items()}}
        return result

    @staticmethod
    def restore(records: list[dict]) -> None:
        """Nothing besides table circuit_lb, which Services rebuilds."""


NAMES = ("ipvs", "nftables")


class Backends:
    """The backends of one store, by name."""

    def __init__(self, store):
        self.ipvs, self.nftables = Ipvs(store), Nftables()
        self.named = {"ipvs": self.ipvs, "nftables": self.nftables}

    def of(self, record: dict):
        """The backend of a stored service (records from before backends were IPVS's)."""
        return self.named[record.get("backend", "ipvs")]

    def choose(self, name: str | None):
        """The backend named, or IPVS where the kernel has it (or can load it), else
        nftables."""
        if name is None:
            return self.ipvs if self.ipvs.available() else self.nftables
        if name not in self.named:
            raise InvalidInput(f"invalid backend {name!r}: use ipvs or nftables")
        return self.named[name]


def placeholder(where: tuple[str, int]) -> dict:
    """A target record for an (ip, port) that only needs deleting."""
    return {"addr": where[0], "port": where[1], "weight": 0, "forward": "masq"}
