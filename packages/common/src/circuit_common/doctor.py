"""circuit version / circuit doctor: what circuit runs against here, and what is missing.

Usage:
  circuit version [--format FMT]
  circuit doctor [--format FMT]

`version` prints circuit's version and what it runs against: Python, pyroute2, etcd3gw, runc,
nft, the kernel's IPVS, netem and nftables, and every CNI plugin in the CNI path with the spec
versions it answers to VERSION. `doctor` tells, per feature, what is missing on this machine and
how to get it; with the state in etcd (--state etcd://...) it asks each endpoint for etcd's
version and names those that answered. It exits non-zero when something in the state cannot
work (a network's plugin is not in the CNI path, a QoS delay without netem, an IPVS service
without IPVS, no etcd endpoint answering): 4 for a missing plugin or program, 8 for a missing
kernel feature, 11 when no etcd endpoint answers.

Options:
  --format FMT   table or json [default: table]
"""

import platform
import sys
from collections import namedtuple

from . import VERSION, machine
from .cli import Context, parse, run
from .errors import KernelUnsupported, NotFound, Unavailable
from .output import check_format, emit, emit_json, render_table

# One feature's verdict: ok, whether the state uses it, what was found or is missing, the fix.
Check = namedtuple("Check", "feature ok used detail fix exit_code")

KERNEL_FIX = ("this kernel lacks it: boot one built with {option} (Debian's linux-image-amd64 "
              "has it as module {module})")


def facts(ctx: Context) -> dict:
    """Everything `version` reports."""
    return {"circuit": VERSION, "python": platform.python_version(),
            "pyroute2": machine.python_package_version("pyroute2"),
            "etcd3gw": machine.python_package_version("etcd3gw"),
            "runc": machine.runc(), "nft": machine.nft(),
            "kernel": {"release": platform.release(), **machine.kernel_features()},
            "cni_path": ctx.settings.cni_path,
            "cni_plugins": machine.cni_plugins(ctx.settings.cni_path)}


def print_version(f: dict) -> None:
    def tool(name):
        return f"{name} {f[name]['version']} ({f[name]['path']})" if f[name] else f"{name}: none"

    kernel = f["kernel"]
    lines = [f"circuit {f['circuit']}", f"python {f['python']}",
             f"pyroute2 {f['pyroute2'] or 'not installed'}",
             f"etcd3gw {f['etcd3gw'] or 'not installed'}", tool("runc"), tool("nft"),
             f"kernel {kernel['release']}: " + ", ".join(
                 f"{k} {kernel[k]}" for k in ("ipvs", "netem", "nftables")),
             f"CNI plugins in {':'.join(f['cni_path'])}:"]
    emit("\n".join(lines) + "\n")
    if f["cni_plugins"]:
        emit(render_table(["plugin", "path", "versions"], [
            (p["name"], p["path"], " ".join(p.get("supportedVersions", [])) or p.get("error"))
            for p in f["cni_plugins"]]))
    else:
        emit("  none\n")


def used(ctx: Context) -> dict:
    """What the state asks of the machine: plugin types by network, QoS and LB needs."""
    store = ctx.store
    networks = store.read_all(store.path("networks")).records
    policies = []
    for record in store.read_all(store.path("qos")).records:
        policies += [record.get("network"), *record.get("attachments", {}).values()]
    services = store.read_all(store.path("services")).records
    return {"plugins": {n.get("name"): [p.get("type") for p in n.get("config", {}).get(
                            "plugins", [])] for n in networks},
            "qos": any(policies), "delay": any(p and p.get("delay") for p in policies),
            "ipvs": any(s.get("backend", "ipvs") == "ipvs" for s in services),
            "masq": any(s.get("backend") == "nftables" or t.get("forward") == "masq"
                        for s in services for t in s.get("targets", [{}]))}


def kernel_check(feature: str, kernel: dict, names: list[str], in_use: bool) -> Check:
    missing = [n for n in names if kernel[n] not in machine.USABLE]
    detail = ", ".join(f"{n} {kernel[n]}" for n in names)
    if not missing:
        return Check(feature, True, in_use, detail, "", 0)
    module, option = machine.KERNEL_FEATURES[missing[0]]
    return Check(feature, False, in_use, detail,
                 KERNEL_FIX.format(option=option, module=module), KernelUnsupported.exit_code)


def checks(f: dict, use: dict, etcd: list[dict] | None = None) -> list[Check]:
    """Per feature: does this machine have what it needs, and does the state use it.
    etcd: each endpoint's answer (machine.etcd_members) when the state is in etcd, else None."""
    found = {p["name"] for p in f["cni_plugins"] if "error" not in p}
    path = ":".join(f["cni_path"])
    missing = {net: [t for t in types if t not in found] for net, types in use["plugins"].items()}
    missing = {net: types for net, types in missing.items() if types}
    get_plugins = ("apt-get install containernetworking-plugins, or point cni_path / CNI_PATH / "
                   "--cni-path at the plugins")
    if missing:
        plugins = Check("networks", False, True, "; ".join(
            f"network {net} needs {', '.join(types)}, not in {path}"
            for net, types in missing.items()), get_plugins, NotFound.exit_code)
    else:
        plugins = Check("networks", bool(found), bool(use["plugins"]),
                        f"{len(found)} CNI plugins in {path}", "" if found else get_plugins,
                        0 if found else NotFound.exit_code)
    kernel = f["kernel"]
    return [plugins,
            kernel_check("networks", kernel, ["bridge", "veth"], bool(use["plugins"])),
            program_check("runc ids", "runc", f["runc"], "apt-get install runc", False),
            program_check("qos, lb", "pyroute2", f["pyroute2"] and {"version": f["pyroute2"]},
                          "reinstall circuit (just install)", use["qos"] or use["ipvs"]),
            kernel_check("qos", kernel, ["htb", "ifb"], use["qos"]),
            kernel_check("qos delay", kernel, ["netem"], use["delay"]),
            kernel_check("lb", kernel, ["ipvs"], use["ipvs"]),
            kernel_check("lb nftables", kernel, ["nftables"], use["masq"]),
            program_check("lb nftables", "nft", f["nft"], "apt-get install nftables", use["masq"]),
            cluster_check(f["etcd3gw"], etcd)]


def program_check(feature: str, name: str, found: dict | None, fix: str, in_use: bool) -> Check:
    if found:
        return Check(feature, True, in_use, f"{name} {found['version']}", "", 0)
    return Check(feature, False, in_use, f"no {name}", fix, NotFound.exit_code)


NOT_CONFIGURED = "not configured (--state etcd://...)"
ETCD_FIX = ("start etcd on its hosts (Debian's etcd-server), or name the members that run it in "
            "--state / CIRCUIT_STATE / state in the config file")


def cluster_check(etcd3gw: str | None, etcd: list[dict] | None) -> Check:
    """The cluster feature: etcd3gw installed and, when the state is in etcd, an endpoint that
    answers. etcd itself need not run on this host."""
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


def print_checks(results: list[Check]) -> None:
    def verdict(c: Check) -> str:
        return "ok" if c.ok else ("FAILS" if c.used else "missing")

    emit(render_table(["feature", "state", "found"], [
        (c.feature, verdict(c) + (" (in use)" if c.used else ""), c.detail) for c in results],
        details={i: [f"    fix: {c.fix}"] for i, c in enumerate(results) if c.fix},
        min_width=12))


def handle(argv: list[str], ctx: Context) -> int:
    args = parse(__doc__, argv)
    fmt = check_format(args["--format"])
    f = facts(ctx)
    if args["version"]:
        if fmt == "json":
            emit_json(f)
        else:
            print_version(f)
        return 0
    etcd = getattr(ctx.store, "etcd_state", None)
    results = checks(f, used(ctx), machine.etcd_members(etcd.endpoints) if etcd else None)
    if fmt == "json":
        emit_json([c._asdict() for c in results])
    else:
        print_checks(results)
    return max((c.exit_code for c in results if c.used and not c.ok), default=0)


def main(argv: list[str] | None = None) -> int:
    return run(handle, sys.argv[1:] if argv is None else argv)
