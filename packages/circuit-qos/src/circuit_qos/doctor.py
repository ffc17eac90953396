"""circuit-qos's part in `circuit doctor` (entry point circuit.doctor: qos): pyroute2, HTB and
IFB for any policy, netem for a delay."""

from circuit_common.doctor import Check, kernel_check, program_check


def checks(ctx, facts: dict) -> list[Check]:
    store = ctx.store
    policies = []
    for record in store.read_all(store.path("qos")).records:
        policies += [record.get("network"), *record.get("attachments", {}).values()]
    shaped = any(policies)
    pyroute2 = facts["pyroute2"] and {"version": facts["pyroute2"]}
    return [program_check("qos", "pyroute2", pyroute2, "reinstall circuit (just install)",
                          shaped),
            kernel_check("qos", facts["kernel"], ["htb", "ifb"], shaped),
            kernel_check("qos delay", facts["kernel"], ["netem"],
                         any(p and p.get("delay") for p in policies))]
