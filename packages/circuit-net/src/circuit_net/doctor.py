"""circuit-net's part in `circuit doctor` (entry point circuit.doctor: net): the plugins,
kernel features and iptables commands the stored networks need, and runc for runc ids."""

from circuit_common import machine
from circuit_common.doctor import Check, kernel_check, program_check
from circuit_common.errors import Conflict, NotFound

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
            iptables_check(networks), isolation_check([n["config"] for n in networks]),
            program_check("runc ids", "runc", facts["runc"], "apt-get install runc", False)]


def runs_iptables(plugin: dict) -> bool:
    """Whether a plugin runs iptables/ip6tables: portmap, firewall (its iptables backend, the
    default), a bridge or ptp that masquerades."""
    kind = plugin.get("type")
    return kind == "portmap" or (kind == "firewall" and plugin.get("backend") != "firewalld") \
        or (kind in ("bridge", "ptp") and bool(plugin.get("ipMasq")))


def iptables_check(networks: list[dict]) -> Check:
    """iptables and ip6tables on PATH, in use when a stored network's plugins run them."""
    in_use = any(runs_iptables(p) for n in networks
                 for p in n.get("config", {}).get("plugins", []) if isinstance(p, dict))
    found = {name: machine.tool_version(name, "--version") for name in ("iptables", "ip6tables")}
    missing = [name for name, version in found.items() if version is None]
    if missing:
        return Check("iptables", False, in_use, f"no {' or '.join(missing)} on PATH",
                     "apt-get install iptables (portmap, firewall and a masquerading bridge "
                     "run it)", NotFound.exit_code)
    return Check("iptables", True, in_use, ", ".join(
        f"{name} {version['version']}" for name, version in found.items()), "", 0)


def isolation_check(netconfs: list[dict]) -> Check:
    """Table inet circuit_isolation as the isolated networks need it (in use when one is)."""
    from circuit_common.errors import CircuitError

    from . import isolation

    used = any(isolation.isolated(n) for n in netconfs)
    if not used and machine.tool_version("nft", "--version") is None:
        return Check("isolation", True, False, "no isolated network", "", 0)
    try:
        problem = isolation.drift(netconfs)
    except CircuitError as e:
        return Check("isolation", False, used, str(e), "apt-get install nftables; run as root",
                     e.exit_code)
    if problem:
        return Check("isolation", False, used, problem, "circuit restore rebuilds it",
                     Conflict.exit_code)
    count = sum(isolation.isolated(n) for n in netconfs)
    return Check("isolation", True, used, f"table inet circuit_isolation matches {count} "
                 "isolated network(s)" if used else "no isolated network", "", 0)
