"""circuit-cluster's part in `circuit doctor` (entry point circuit.doctor: cluster): etcd3gw
installed and, when the state is in etcd (--state etcd://...), an endpoint that answers. etcd
itself need not run on this host."""

from circuit_common.doctor import Check
from circuit_common.errors import NotFound, Unavailable
from circuit_common.machine import etcd_members

from .replica import ReplicatedStore

NOT_CONFIGURED = "not configured (--state etcd://...)"
ETCD_FIX = ("start etcd on its hosts (Debian's etcd-server), or name the members that run it in "
            "--state / CIRCUIT_STATE / state in the config file")


def checks(ctx, facts: dict) -> list[Check]:
    store = ctx.store
    in_etcd = isinstance(store, ReplicatedStore)
    state = store.etcd_state if in_etcd else None
    return [cluster_check(facts["etcd3gw"], etcd_members(
        state.endpoints, tls=state if state.tls else None) if in_etcd else None)]


def cluster_check(etcd3gw: str | None, etcd: list[dict] | None) -> Check:
    """The cluster line: etcd: each endpoint's answer (machine.etcd_members) when the state is
    in etcd, else None."""
    in_use = etcd is not None
    if not etcd3gw:
        return Check("cluster", False, in_use, "no etcd3gw" + ("" if in_use else
                                                               f"; {NOT_CONFIGURED}"),
                     "reinstall circuit (just install)", NotFound.exit_code)
    if not in_use:
        return Check("cluster", True, False, NOT_CONFIGURED, "", 0)
    answered = [m for m in etcd if "version" in m]
    silent = "; ".join(f"{m['endpoint']} {m['error']}" for m in etcd if "error" in m)
    if not answered:
        return Check("cluster", False, True, f"no etcd endpoint answers: {silent}", ETCD_FIX,
                     Unavailable.exit_code)
    versions = sorted({m["version"] for m in answered})
    detail = (f"etcd {', '.join(versions)} answers at "
              f"{', '.join(m['endpoint'] for m in answered)}")
    return Check("cluster", True, True, detail + (f"; no answer: {silent}" if silent else ""),
                 "", 0)
