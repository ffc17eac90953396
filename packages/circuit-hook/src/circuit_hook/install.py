"""`circuit hook install|uninstall BUNDLE`: circuit's runc hooks written into a bundle's
config.json, with the settings of the command that wrote them."""

import json
import os
import sys

from circuit_common import extensions
from circuit_common.config import read_small_file
from circuit_common.errors import EnvironmentFault, InvalidInput
from circuit_common.store import replace_file
from circuit_common.validate import check_dns_name, check_name, check_once
from circuit_net.networks import Networks
from circuit_net.runtime import check_declared, check_published, parse_publish

START_PHASE = "createRuntime"
STOP_PHASE = "poststop"
PHASES = ("prestart", START_PHASE, STOP_PHASE)  # prestart: a hand-written hook of old
ANNOTATIONS = ("circuit.networks", "circuit.publish", "circuit.aliases")
HOOK_NAMES = ("circuit", "circuit-hook")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def hook_program() -> str:
    """The absolute path of the circuit that runs this command (the hooks run the same one)."""
    return os.path.abspath(sys.argv[0])


def is_circuit_hook(entry) -> bool:
    """A hook entry that runs circuit (this installation or another)."""
    return isinstance(entry, dict) and isinstance(entry.get("path"), str) \
        and os.path.basename(entry["path"]) in HOOK_NAMES


def read_config(bundle: str) -> tuple[str, dict]:
    """The bundle's config.json and its path; refused unless it is a runc spec with a network
    namespace of its own."""
    path = os.path.join(bundle, "config.json")
    if not os.path.isdir(bundle):
        raise InvalidInput(f"bundle {bundle} is not a directory; make one with `runc spec` in it")
    if not os.path.exists(path):
        raise InvalidInput(f"bundle {bundle} has no config.json; make one with "
                           f"`runc spec --bundle {bundle}`")
    try:
        config = json.loads(read_small_file(path, "runc config"))
    except (ValueError, RecursionError):
        raise InvalidInput(f"{path} is not JSON; is it a runc config.json?") from None
    if not isinstance(config, dict) or not isinstance(config.get("ociVersion"), str):
        raise InvalidInput(f"{path} has no ociVersion: it is not a runc config.json")
    for key in ("hooks", "annotations"):
        if not isinstance(config.get(key, {}), dict):
            raise InvalidInput(f"{key} in {path} is not an object; repair it first")
    for phase in PHASES:
        if not isinstance(config.get("hooks", {}).get(phase, []), list):
            raise InvalidInput(f"hooks.{phase} in {path} is not a list; repair it first")
    return path, config


def is_circuit_mount(entry) -> bool:
    """A mount circuit's install added (an extension's bundle_mounts): /etc/resolv.conf from
    a state directory's dns/NETWORK/resolv.conf (this state's or another's)."""
    source = entry.get("source") if isinstance(entry, dict) else None
    return isinstance(source, str) and entry.get("destination") == "/etc/resolv.conf" \
        and os.path.basename(source) == "resolv.conf" \
        and os.path.basename(os.path.dirname(os.path.dirname(source))) == "dns"


def without_circuit(config: dict) -> dict:
    """config without circuit's hooks, annotations and mounts (an emptied section goes
    too)."""
    hooks = {phase: [e for e in entries if not is_circuit_hook(e)]
             for phase, entries in config.get("hooks", {}).items()}
    hooks = {phase: entries for phase, entries in hooks.items() if entries}
    annotations = {k: v for k, v in config.get("annotations", {}).items()
                   if k not in ANNOTATIONS}
    rest = {k: v for k, v in config.items() if k not in ("hooks", "annotations")}
    if isinstance(rest.get("mounts"), list):
        rest["mounts"] = [m for m in rest["mounts"] if not is_circuit_mount(m)]
    return rest | ({"hooks": hooks} if hooks else {}) \
        | ({"annotations": annotations} if annotations else {})


def bundle_mounts(nets: Networks, names: list[str]) -> list[dict]:
    """The mounts the extensions of the first network that has any ask for (circuit-dns: its
    resolv.conf and hosts), so the container asks that network's DNS server by name."""
    for name in names:
        mounts = []
        for extension in extensions.markers(nets.store, name):
            module = extensions.load(nets.store, name, extension)
            if hasattr(module, "bundle_mounts"):
                mounts += module.bundle_mounts(nets.ctx, name)
        if mounts:
            return mounts
    return []


def has_network_namespace(config: dict) -> bool:
    namespaces = (config.get("linux") or {}).get("namespaces") or []
    return any(isinstance(n, dict) and n.get("type") == "network" and not n.get("path")
               for n in namespaces)


def write_config(path: str, config: dict) -> None:
    """Replace config.json atomically, keeping its mode."""
    try:
        mode = os.stat(path).st_mode & 0o7777
        replace_file(path, (json.dumps(config, indent=2) + "\n").encode(), mode=mode)
    except OSError as e:
        raise EnvironmentFault(f"cannot write {path}: {e.strerror}") from None


def install(nets: Networks, bundle: str, networks: list[str], publish: list[str],
            aliases: list[str]) -> str:
    """Write circuit's createRuntime and poststop hooks and its annotations into the bundle
    (replacing circuit's earlier ones: installing twice is installing once); the message."""
    path, config = read_config(bundle)
    if not has_network_namespace(config):
        raise InvalidInput(f"{path} gives the container no network namespace of its own: add "
                           '{"type": "network"} to linux.namespaces (runc spec has it)')
    names = check_once([check_name(n, "network name") for n in networks], "--network")
    if not names:
        kept = config.get("annotations", {}).get("circuit.networks", "")
        names = [n.strip() for n in kept.split(",") if n.strip()]
    if not names:
        raise InvalidInput("give the networks to attach the container to: --network NAME")
    configs = [nets.get(name)["config"] for name in names]  # each must exist
    mappings = check_published([parse_publish(spec) for spec in publish])
    if mappings:
        check_declared(configs, {"portMappings": mappings})
    for network in names:  # NAME.NETWORK too: names is never empty here
        for alias in aliases:
            check_dns_name(alias, "alias", network)
    env = nets.ctx.settings.as_environment() | {"PATH": os.environ.get("PATH") or DEFAULT_PATH}
    entry = {"path": hook_program(), "env": [f"{k}={v}" for k, v in sorted(env.items())]}
    mounts = bundle_mounts(nets, names)
    config = without_circuit(config)
    if mounts:
        taken = {m.get("destination") for m in config.get("mounts", []) if isinstance(m, dict)}
        config["mounts"] = [*config.get("mounts", []),
                            *(m for m in mounts if m["destination"] not in taken)]
    hooks = config.setdefault("hooks", {})
    for phase in (START_PHASE, STOP_PHASE):
        hooks[phase] = [*hooks.get(phase, []), entry]
    annotations = config.setdefault("annotations", {})
    annotations["circuit.networks"] = ",".join(names)
    if publish:
        annotations["circuit.publish"] = ",".join(p.strip() for p in publish)
    if aliases:
        annotations["circuit.aliases"] = ",".join(aliases)
    write_config(path, config)
    return f"hooks installed in {path} (networks {', '.join(names)})"


def uninstall(bundle: str) -> str:
    """Remove circuit's hooks and annotations from the bundle; the message."""
    path, config = read_config(bundle)
    stripped = without_circuit(config)
    if stripped == config:
        return f"no circuit hooks in {path}"
    write_config(path, stripped)
    return f"hooks removed from {path}"
