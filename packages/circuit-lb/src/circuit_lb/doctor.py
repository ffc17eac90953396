"""circuit-lb's part in `circuit doctor` (entry point circuit.doctor: lb): pyroute2 and IPVS for
IPVS services, nftables and nft for the nftables backend and masq targets."""

from circuit_common.doctor import Check, kernel_check, program_check


def checks(ctx, facts: dict) -> list[Check]:
    store = ctx.store
    services = store.read_all(store.path("services")).records
    ipvs = any(s.get("backend", "ipvs") == "ipvs" for s in services)
    masq = any(s.get("backend") == "nftables" or t.get("forward") == "masq"
               for s in services for t in s.get("targets", [{}]))
    pyroute2 = facts["pyroute2"] and {"version": facts["pyroute2"]}
    return [program_check("lb", "pyroute2", pyroute2, "reinstall circuit (just install)", ipvs),
            kernel_check("lb", facts["kernel"], ["ipvs"], ipvs),
            kernel_check("lb nftables", facts["kernel"], ["nftables"], masq),
            program_check("lb nftables", "nft", facts["nft"], "apt-get install nftables", masq)]
