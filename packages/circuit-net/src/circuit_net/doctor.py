"""circuit-net's part in `circuit doctor` (entry point circuit.doctor: net): the plugins and
kernel features the stored networks need, and runc for runc ids."""

from circuit_common.doctor import Check, kernel_check, program_check
from circuit_common.errors import NotFound

GET_PLUGINS = ("apt-get install containernetworking-plugins, or point cni_path / CNI_PATH / "
               "--cni-path at the plugins")


def checks(ctx, facts: dict) -> list[Check]:
    """Every stored network's plugin types in the CNI path, bridge and veth in the kernel."""
    store = ctx.store
    networks = store.read_all(store.path("networks")).records
    wanted = {n.get("name"): [p.get("type") for p in n.get("config", {}).get("plugins", [])]
              for n in networks}
    found = {p["name"] for p in facts["cni_plugins"] if "error" not in p}
    path = ":".join(facts["cni_path"])
    missing = {net: [t for t in types if t not in found] for net, types in wanted.items()}
    missing = {net: types for net, types in missing.items() if types}
    if missing:
        plugins = Check("networks", False, True, "; ".join(
            f"network {net} needs {', '.join(types)}, not in {path}"
            for net, types in missing.items()), GET_PLUGINS, NotFound.exit_code)
    else:
        plugins = Check("networks", bool(found), bool(wanted),
                        f"{len(found)} CNI plugins in {path}", "" if found else GET_PLUGINS,
                        0 if found else NotFound.exit_code)
    return [plugins,
            kernel_check("networks", facts["kernel"], ["bridge", "veth"], bool(wanted)),
            program_check("runc ids", "runc", facts["runc"], "apt-get install runc", False)]
