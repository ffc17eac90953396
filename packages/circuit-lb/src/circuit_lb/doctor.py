"""circuit-lb's part in `circuit doctor` (entry point circuit.doctor: lb): which backend serves
new services here and which the stored ones use, pyroute2 (VIPs, IPVS), IPVS for IPVS
services, nftables and nft for the nftables backend and masq targets."""

from circuit_common import machine
from circuit_common.doctor import KERNEL_FIX, Check, kernel_check, program_check
from circuit_common.errors import KernelUnsupported


def checks(ctx, facts: dict) -> list[Check]:
    store = ctx.store
    services = store.read_all(store.path("services")).records
    ipvs = any(s.get("backend", "ipvs") == "ipvs" for s in services)
    masq = any(s.get("backend") == "nftables" or t.get("forward") == "masq"
               for s in services for t in s.get("targets", [{}]))
    pyroute2 = facts["pyroute2"] and {"version": facts["pyroute2"]}
    return [backend_check(facts, services),
            program_check("lb", "pyroute2", pyroute2, "reinstall circuit (just install)",
                          bool(services)),
            ipvs_check(facts["kernel"], ipvs),
            kernel_check("lb nftables", facts["kernel"], ["nftables"], masq),
            program_check("lb nftables", "nft", facts["nft"], "apt-get install nftables", masq)]


def default_backend(facts: dict) -> str | None:
    """The backend a service created without --backend gets here (Backends.choose: IPVS
    where the kernel has it or can load it, else nftables), None when neither works."""
    kernel = facts["kernel"]
    if kernel["ipvs"] in machine.USABLE:
        return "ipvs"
    if kernel["nftables"] in machine.USABLE and facts["nft"]:
        return "nftables"
    return None


def backend_check(facts: dict, services: list[dict]) -> Check:
    """The backend that serves new services, and how many stored services use each."""
    backend = default_backend(facts)
    counts: dict[str, int] = {}
    for service in services:
        name = service.get("backend", "ipvs")
        counts[name] = counts.get(name, 0) + 1
    stored = ", ".join(f"{n} {b}" for b, n in sorted(counts.items())) or "none"
    if backend is None:
        return Check("lb", False, bool(services), f"no backend: no IPVS, no nftables; "
                     f"services: {stored}", "see the lb ipvs and lb nftables rows",
                     KernelUnsupported.exit_code)
    why = "" if backend == "ipvs" else " (this kernel has no IPVS)"
    return Check("lb", True, bool(services),
                 f"new services use {backend}{why}; services: {stored}", "", 0)


def ipvs_check(kernel: dict, in_use: bool) -> Check:
    """IPVS in the kernel: a failure only when a stored service uses it; otherwise a kernel
    without it is a note (the nftables backend serves), never a broken load balancer."""
    check = kernel_check("lb ipvs", kernel, ["ipvs"], in_use)
    if check.ok or in_use:
        return check
    module, option = machine.KERNEL_FEATURES["ipvs"]
    return check._replace(detail=f"{check.detail}; no service needs it",
                          fix="only for --backend ipvs: " + KERNEL_FIX.format(
                              option=option, module=module))
