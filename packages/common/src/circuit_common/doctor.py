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
kernel feature, 10 for a state directory circuit does not trust or cannot write, 11 when no
etcd endpoint answers.

Options:
  --format FMT   table or json [default: table]
"""

import platform
import sys
from collections import namedtuple

from . import VERSION, machine
from .cli import Context, parse, run
from .errors import CircuitError, EnvironmentFault, KernelUnsupported, NotFound
from .output import check_format, emit, emit_json, render_table

GROUP = "circuit.doctor"  # each tool's checks: name = "circuit_<tool>.doctor:checks"

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


def kernel_check(feature: str, kernel: dict, names: list[str], in_use: bool) -> Check:
    """Whether the kernel has the features names (machine.KERNEL_FEATURES) for feature."""
    missing = [n for n in names if kernel[n] not in machine.USABLE]
    detail = ", ".join(f"{n} {kernel[n]}" for n in names)
    if not missing:
        return Check(feature, True, in_use, detail, "", 0)
    module, option = machine.KERNEL_FEATURES[missing[0]]
    return Check(feature, False, in_use, detail,
                 KERNEL_FIX.format(option=option, module=module), KernelUnsupported.exit_code)


def program_check(feature: str, name: str, found: dict | None, fix: str, in_use: bool) -> Check:
    """Whether program (or library) name was found ({"version"}) for feature."""
    if found:
        return Check(feature, True, in_use, f"{name} {found['version']}", "", 0)
    return Check(feature, False, in_use, f"no {name}", fix, NotFound.exit_code)


def state_check(ctx: Context) -> Check:
    """Where the state really lives (a symbolic link resolved), whether circuit trusts it as
    its state directory (Store.check_root), and whether it can write there (unwritable)."""
    import os

    from .store import Store

    root = ctx.settings.state_dir
    real = os.path.realpath(root)
    where = root if real == os.path.abspath(root) else f"{root}, a link to {real}"
    if ctx.settings.state_url:
        where = f"{ctx.settings.state_url}; this host's records in {where}"
    try:
        Store(root).check_root()
    except CircuitError as e:
        return Check("state", False, True, where, str(e), e.exit_code)
    refused = unwritable(real)
    if refused:
        return Check("state", False, True, f"{where}: {refused}", "mount it read-write, or "
                     "point --state or CIRCUIT_STATE_DIR at a directory circuit can write",
                     EnvironmentFault.exit_code)
    return Check("state", True, False, where, "", 0)


def unwritable(directory: str) -> str | None:
    """Why circuit could not write in directory (or make it, in its nearest existing
    parent): a read-only file system or no permission; None when it can. Asked with access()
    and statvfs(), so doctor writes nothing."""
    import os

    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    made = "" if existing == directory else f" (where it would be made: {existing})"
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        return f"a read-only file system{made}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"not writable by uid {os.geteuid()}{made}"
    return None


def checks(ctx: Context, f: dict) -> list[Check]:
    """Per feature, from every installed tool's checks (entry-point group circuit.doctor: a
    function (ctx, facts) -> [Check]): does this machine have what it needs, and does the
    state use it. By feature, each tool's in its own order."""
    from importlib.metadata import entry_points


    state = state_check(ctx)
    found = [state]
    for point in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            found += point.load()(ctx, f)
        except CircuitError:
            if state.ok:
                raise
            found.append(Check(point.name, False, True, "not checked: its records are in the "
                               "state, which circuit does not use as it is (see state)", "", 0))
    return sorted(found, key=lambda c: c.feature)


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
    results = checks(ctx, f)
    if fmt == "json":
        emit_json([c._asdict() for c in results])
    else:
        print_checks(results)
    return max((c.exit_code for c in results if c.used and not c.ok), default=0)


def main(argv: list[str] | None = None) -> int:
    return run(handle, sys.argv[1:] if argv is None else argv)
