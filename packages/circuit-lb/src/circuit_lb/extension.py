"""circuit-lb's entry in the `circuit.extensions` group: `circuit restore` calls restore(ctx);
in a cluster, resync(ctx, before) when services changed on another host; circuit-net calls
released(ctx, attachment) when an interface of a container that is a target (added as
CONTAINER:PORT) leaves its network."""

from circuit_common.errors import CircuitError

from . import backends, ipvs, nft, table, vip
from .backends import endpoint
from .cli import restore
from .services import Services, check_service


def resync(ctx, before: dict) -> None:
    """Services changed on another host (before: {record name: the record before, None when
    new}); the records here are already the new ones. Make this host's kernel match them,
    quietly, writing nothing to the store: the IPVS services and VIPs of services that went
    (or moved to another address or backend) are removed, the services there are now are put
    in the kernel as `circuit restore` does (IPVS targets they no longer have removed), and
    table circuit_lb is rebuilt from them (gone with the last service). Under the store lock,
    re-entered when the caller holds it: every lb command takes it, and computes its changes
    from the kernel as this leaves it. A failing step does not stop the others; the first
    failure is raised."""
    services = Services(ctx)
    with ctx.store.lock_all():
        records = services.all()[0]
        old = [r for name, r in before.items() if _service_record(r, name)]
        failures: list[Exception] = []

        def attempt(step, *args) -> None:
            try:
                step(*args)
            except (CircuitError, OSError) as e:  # OSError: netlink's refusals among them
                failures.append(e)

        attempt(_delete_gone, services.backends, old, records)
        for backend in {services.backends.of(r) for r in records}:
            attempt(_restore, backend, [r for r in records
                                        if services.backends.of(r) is backend])
        for addr in {r["addr"] for r in records if r.get("vip_added")}:
            attempt(_add_vip, addr)
        attempt(_table, records)
        if failures:
            raise failures[0]


def _service_record(record, name: str) -> bool:
    """Whether a record from before is a service record circuit could have acted on."""
    if not isinstance(record, dict):
        return False
    try:
        check_service(record, name)
    except (AttributeError, KeyError, TypeError, ValueError):
        return False
    return True


def _delete_gone(kinds: backends.Backends, old: list[dict], records: list[dict]) -> None:
    """The IPVS services and VIPs of services that were and are no more: an IPVS service no
    current IPVS service is at (protocol, VIP, port), a VIP circuit put on lo that no current
    service has."""
    balanced = {(r["protocol"], endpoint(r)) for r in records
                if kinds.of(r) is kinds.ipvs}
    gone = [r for r in old if kinds.of(r) is kinds.ipvs
            and (r["protocol"], endpoint(r)) not in balanced]
    if gone:
        try:
            found = ipvs.read_proc()
        except FileNotFoundError:  # no IPVS loaded here: none of them was ever made
            found = {}
        for record in gone:
            if (record["protocol"], endpoint(record)) in found:
                kinds.ipvs.delete(record)
    used = {r["addr"] for r in records}
    for addr in {r["addr"] for r in old if r.get("vip_added")} - used:
        vip.remove(addr)  # one that is not on lo (or never was) counts as removed


def _restore(backend, records: list[dict]) -> None:
    """A backend's current services in the kernel with their targets (those they no longer
    have removed)."""
    backend.ensure()
    backend.restore(records)


def _add_vip(addr: str) -> None:
    if not vip.is_local(addr):
        vip.add(addr)


def _table(records: list[dict]) -> None:
    """Table circuit_lb as records need it, whatever the kernel had, in one transaction
    (removed when there are none)."""
    nft.transaction(table.rebuild(table.build(records)))


__all__ = ["restore", "resync"]


def released(ctx, attachment) -> None:
    """A container's interface left its network (disconnect, poststop, gc; no lock held):
    the targets added as that container go from every service."""
    Services(ctx).drop_container(attachment.network, attachment.container_id,
                                 attachment.ifname)
