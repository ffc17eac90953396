"""Settings from /etc/circuit/circuit.toml, the environment and global options (rising order)."""

import os

from .errors import InvalidInput

DEFAULT_CONFIG = "/etc/circuit/circuit.toml"
DEFAULT_STATE_DIR = "/var/lib/circuit"
DEFAULT_CNI_PATH = ("/usr/lib/cni", "/opt/cni/bin")

GLOBAL_VALUE_OPTIONS = ("--state", "--config", "--cni-path", "--lock-timeout")
GLOBAL_HELP = """Global options (anywhere on the line):
  --state DIR         state directory [env CIRCUIT_STATE_DIR; default /var/lib/circuit]
  --config FILE       config file [env CIRCUIT_CONFIG; default /etc/circuit/circuit.toml]
  --cni-path DIRS     colon-separated plugin directories [env CNI_PATH]
  --lock-timeout SEC  how long to wait for another circuit process [default 30]
  --debug             show tracebacks"""


class Settings:
    """What every tool needs to know about its environment."""

    def __init__(self):
        self.state_dir = DEFAULT_STATE_DIR
        self.cni_path = list(DEFAULT_CNI_PATH)
        self.lock_timeout = 30.0
        self.plugin_timeout = 60.0
        self.runc_root: str | None = None
        self.debug = False


def split_global_options(argv: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    """Take the global options out of argv (they may stand anywhere before `--`)."""
    found: dict[str, str | bool] = {}
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            rest.append(arg)
            rest.extend(args)
            break
        if arg == "--debug":
            found["debug"] = True
            continue
        name, eq, value = arg.partition("=")
        if name in GLOBAL_VALUE_OPTIONS:
            if not eq:
                value = next(args, None)
                if value is None:
                    raise InvalidInput(f"option {name} needs a value")
            found[name[2:].replace("-", "_")] = value
            continue
        rest.append(arg)
    return found, rest


def _read_config_file(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    import toml

    try:
        with open(path) as f:
            return toml.load(f)
    except (OSError, toml.TomlDecodeError) as e:
        raise InvalidInput(f"cannot read config file {path}: {e}") from None


def _positive_seconds(value, what: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if seconds <= 0:
        raise InvalidInput(f"{what} must be a positive number of seconds, not {value!r}")
    return seconds


def load_settings(options: dict[str, str | bool], env=os.environ) -> Settings:
    """Merge config file, environment and global options into Settings."""
    path = str(options.get("config") or env.get("CIRCUIT_CONFIG") or DEFAULT_CONFIG)
    conf = _read_config_file(path)
    unknown = set(conf) - {"state_dir", "cni_path", "lock_timeout", "plugin_timeout", "runc_root"}
    if unknown:
        raise InvalidInput(f"unknown key {sorted(unknown)[0]!r} in config file {path}")
    s = Settings()
    s.state_dir = str(options.get("state") or env.get("CIRCUIT_STATE_DIR")
                      or conf.get("state_dir") or DEFAULT_STATE_DIR)
    cni_path = options.get("cni_path") or env.get("CNI_PATH")
    if cni_path:
        s.cni_path = [p for p in str(cni_path).split(":") if p]
    elif "cni_path" in conf:
        value = conf["cni_path"]
        s.cni_path = [value] if isinstance(value, str) else list(value)
    s.lock_timeout = _positive_seconds(
        options.get("lock_timeout") or conf.get("lock_timeout", 30), "lock timeout")
    s.plugin_timeout = _positive_seconds(conf.get("plugin_timeout", 60), "plugin_timeout")
    s.runc_root = conf.get("runc_root")
    s.debug = bool(options.get("debug"))
    return s
