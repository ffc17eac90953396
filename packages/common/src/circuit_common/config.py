"""Settings from /etc/circuit/circuit.toml, the environment and global options (rising order)."""

import contextlib
import os
import stat

from .errors import InvalidInput

DEFAULT_CONFIG = "/etc/circuit/circuit.toml"
DEFAULT_STATE_DIR = "/var/lib/circuit"
DEFAULT_CNI_PATH = ("/usr/lib/cni", "/opt/cni/bin")
DEFAULT_CNI_CACHE_DIR = "/var/lib/cni"  # libcni's: results/<net>-<cid>-<ifname> below it

ETCD_OPTIONS = ("cafile", "certfile", "keyfile", "username", "password", "password_file")
GLOBAL_VALUE_OPTIONS = ("--state", "--local-state", "--config", "--cni-path", "--lock-timeout",
                        "--runc-root", "--cni-cache-dir",
                        *(f"--etcd-{o.replace('_', '-')}" for o in ETCD_OPTIONS))
GLOBAL_HELP = """Global options (anywhere on the line):
  --state DIR         state directory, or a URL: file://DIR, etcd://HOST:PORT[,...][/PREFIX]
                      (etcds://...: etcd over TLS) [env CIRCUIT_STATE or CIRCUIT_STATE_DIR;
                      default /var/lib/circuit]
  --local-state DIR   this host's own records when --state is etcd:// [env
                      CIRCUIT_LOCAL_STATE_DIR; default /var/lib/circuit]
  --config FILE       config file [env CIRCUIT_CONFIG; default /etc/circuit/circuit.toml]
  --cni-path DIRS     colon-separated plugin directories [env CNI_PATH]
  --lock-timeout SEC  how long to wait for another circuit process [default 30]
  --runc-root DIR     runc's --root, where runc ids are looked up [env CIRCUIT_RUNC_ROOT]
  --cni-cache-dir D   libcni's cache dir [env CIRCUIT_CNI_CACHE_DIR; default /var/lib/cni]
  --etcd-cafile FILE  CA that signed the etcd members' certificates (etcds://) [env
                      CIRCUIT_ETCD_CAFILE; default the system's]
  --etcd-certfile F   client certificate for etcds:// [env CIRCUIT_ETCD_CERTFILE]
  --etcd-keyfile F    its private key [env CIRCUIT_ETCD_KEYFILE]
  --etcd-username U   etcd user (etcd's auth) [env CIRCUIT_ETCD_USERNAME]
  --etcd-password P   its password [env CIRCUIT_ETCD_PASSWORD]
  --etcd-password-file F  a file holding it (not in argv) [env CIRCUIT_ETCD_PASSWORD_FILE]
  --debug             show tracebacks"""


class Settings:
    """What every tool needs to know about its environment."""

    def __init__(self):
        self.state = DEFAULT_STATE_DIR  # as given: a directory or a state URL
        self.config_path = DEFAULT_CONFIG
        self.state_dir = DEFAULT_STATE_DIR  # this host's records (a mirror, with etcd)
        self.state_url: str | None = None  # a state backend's URL (circuit_common.backend)
        self.etcd: dict[str, str | None] = dict.fromkeys(ETCD_OPTIONS)  # --etcd-* (etcd://)
        self.cni_path = list(DEFAULT_CNI_PATH)
        self.lock_timeout = 30.0
        self.plugin_timeout = 10.0
        self.runc_root: str | None = None
        self.cni_cache_dir = DEFAULT_CNI_CACHE_DIR

    def as_environment(self) -> dict[str, str]:
        """The environment that gives another circuit process (a runc hook) these settings."""
        env = {"CIRCUIT_STATE": self.state_url or os.path.abspath(self.state_dir),
               "CNI_PATH": ":".join(self.cni_path),
               "CIRCUIT_CNI_CACHE_DIR": self.cni_cache_dir}
        if self.state_url:
            env["CIRCUIT_LOCAL_STATE_DIR"] = self.state_dir
        if self.config_path != DEFAULT_CONFIG:
            env["CIRCUIT_CONFIG"] = os.path.abspath(self.config_path)
        if self.runc_root:
            env["CIRCUIT_RUNC_ROOT"] = self.runc_root
        # the etcd files; a user only with a password file: a password is never written out
        given = {k: v for k, v in self.etcd.items() if v is not None and k != "password"}
        if self.etcd["password_file"] is None:
            given.pop("username", None)
        env |= {f"CIRCUIT_ETCD_{k.upper()}": v for k, v in given.items()}
        return env


COMMAND_WORDS = ("network", "lb", "cluster", "dns", "doctor", "restore", "hook", "version",
                 "help", "forkserver", "completion", "qos")


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
                if value in COMMAND_WORDS:  # `--state network list`: the value left out
                    raise InvalidInput(f"option {name} needs a value (not the command word "
                                       f"{value!r}; for a file of that name give ./{value})")
            if not value:
                raise InvalidInput(f"option {name} needs a value")
            found[name[2:].replace("-", "_")] = value
            continue
        rest.append(arg)
    return found, rest


MAX_CONFIG = 1 << 20
MAX_SECONDS = 24 * 3600.0
CONFIG_KEYS = ("state", "state_dir", "local_state_dir", "cni_path", "lock_timeout",
               "plugin_timeout", "runc_root", "cni_cache_dir",
               *(f"etcd_{o}" for o in ETCD_OPTIONS))


def read_small_file(path: str, what: str) -> bytes:
    """The bytes of a regular file of at most 1 MiB (never /dev/zero or a FIFO), else
    InvalidInput naming what the file is."""
    try:  # O_NONBLOCK: opening a FIFO waits for a writer otherwise (forever)
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise InvalidInput(f"{what} {path} is not a regular file")
            data = f.read(min(st.st_size, MAX_CONFIG) + 1)
    except OSError as e:
        raise InvalidInput(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > MAX_CONFIG:
        raise InvalidInput(f"{what} {path} is larger than 1 MiB; is it the right file?")
    return data


def _read_config_file(path: str, explicit: bool) -> dict:
    """The config file's table ({} when there is none; one named by --config must exist)."""
    if not os.path.lexists(path):
        if explicit:
            raise InvalidInput(f"no config file {path}; give an existing file to --config, "
                               "or leave it out")
        return {}
    import tomllib

    data = read_small_file(path, "config file")
    try:
        return tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as e:
        raise InvalidInput(f"cannot read config file {path}: {e}") from None


MIN_SECONDS = 0.1  # below it every plugin would time out before it could start


def seconds(value, what: str) -> float:
    """A finite number of seconds (ASCII digits only), from 0.1 to a day."""
    text = value if isinstance(value, str) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = repr(value)
    number = -1.0
    if text is not None and text.isascii():
        with contextlib.suppress(ValueError):
            number = float(text)
    if not (MIN_SECONDS <= number <= MAX_SECONDS):  # also refuses nan
        raise InvalidInput(f"{what} must be a number of seconds from {MIN_SECONDS:g} to "
                           f"{MAX_SECONDS:g}, not {value!r}")
    return number


def _string(conf: dict, key: str, path: str, secret: bool = False) -> str | None:
    value = conf.get(key)
    if value is not None and (not isinstance(value, str) or not value or "\0" in value):
        shown = "something else" if secret else repr(value)  # a secret is never printed
        raise InvalidInput(f"{key} in config file {path} must be a non-empty string, "
                           f"not {shown}")
    return value


def _path(value, what: str) -> str | None:
    """A directory path from an option, the environment or the config file: absolute."""
    if value is not None and (not os.path.isabs(str(value)) or "\0" in str(value)):
        raise InvalidInput(f"the {what} must be an absolute path, not {value!r}")
    return None if value is None else str(value)


def _etcd_access(options: dict, env, conf: dict, path: str) -> dict[str, str | None]:
    """etcd's TLS files and credentials (the --etcd-* options), each from the option, the
    environment or the config file, in that order; the password and its file are one setting,
    given by the first of those that holds either. The state backend checks that they go
    together (circuit_cluster.url)."""
    levels = [{name: options.get(f"etcd_{name}") for name in ETCD_OPTIONS},
              {name: env.get(f"CIRCUIT_ETCD_{name.upper()}") for name in ETCD_OPTIONS},
              {name: _string(conf, f"etcd_{name}", path, secret=name == "password")
               for name in ETCD_OPTIONS}]
    given = {name: next((str(level[name]) for level in levels if level[name]), None)
             for name in ETCD_OPTIONS}
    for level in levels:
        if level["password"] and level["password_file"]:
            raise InvalidInput("give the etcd password or a file holding it, not both")
        if level["password"] or level["password_file"]:
            given["password"] = str(level["password"]) if level["password"] else None
            given["password_file"] = str(level["password_file"]) if level["password_file"] \
                else None
            break
    for name in ("cafile", "certfile", "keyfile", "password_file"):
        given[name] = _path(given[name], f"etcd {name.replace('_', ' ')}")
    return given


def load_settings(options: dict[str, str | bool], env=os.environ) -> Settings:
    """Merge config file, environment and global options into Settings."""
    path = str(options.get("config") or env.get("CIRCUIT_CONFIG") or DEFAULT_CONFIG)
    conf = _read_config_file(path, explicit=bool(options.get("config")))
    unknown = set(conf) - set(CONFIG_KEYS)
    if unknown:
        raise InvalidInput(f"unknown key {sorted(unknown)[0]!r} in config file {path}; "
                           f"known keys: {', '.join(CONFIG_KEYS)}")
    s = Settings()
    s.config_path = path
    configured = _string(conf, "state", path) or _string(conf, "state_dir", path)
    state = str(options.get("state") or env.get("CIRCUIT_STATE")
                or env.get("CIRCUIT_STATE_DIR") or configured or DEFAULT_STATE_DIR)
    if "\0" in state:
        raise InvalidInput("the state directory's path holds a NUL byte")
    s.state = state
    if "://" in state and not state.startswith("file://"):
        s.state_url = state  # its backend checks it (circuit_common.backend)
        s.etcd = _etcd_access(options, env, conf, path)
        s.state_dir = _path(options.get("local_state") or env.get("CIRCUIT_LOCAL_STATE_DIR")
                            or _string(conf, "local_state_dir", path) or DEFAULT_STATE_DIR,
                            "local state directory")
    else:
        s.state_dir = state.removeprefix("file://")
        if not s.state_dir:
            raise InvalidInput("file:// needs a directory, as file:///var/lib/circuit")
        if not os.path.isabs(s.state_dir) and (state.startswith("file://")
                                               or state == configured):
            where = "in a file:// URL" if state.startswith("file://") else \
                f"in config file {path}"
            raise InvalidInput(f"the state directory {where} must be an absolute path, not "
                               f"{s.state_dir!r} (relative to what?)")
    cni_path = options.get("cni_path") or env.get("CNI_PATH")
    if cni_path:
        s.cni_path = [p for p in str(cni_path).split(":") if p]
    elif "cni_path" in conf:
        value = conf["cni_path"]
        if isinstance(value, str):
            value = [p for p in value.split(":") if p]
        if not isinstance(value, list) or not value \
                or not all(isinstance(p, str) and p for p in value):
            raise InvalidInput(f"cni_path in config file {path} must be a string or a list of "
                               f"directories, not {value!r}")
        s.cni_path = value
    s.lock_timeout = seconds(options.get("lock_timeout") or conf.get("lock_timeout", 30),
                             "the lock timeout")
    if "plugin_timeout" in conf:
        s.plugin_timeout = seconds(conf["plugin_timeout"], "plugin_timeout")
        if s.plugin_timeout >= s.lock_timeout:
            raise InvalidInput(f"plugin_timeout ({s.plugin_timeout:g}s) must be shorter than the "
                               f"lock timeout ({s.lock_timeout:g}s), or commands waiting for "
                               "a lock give up while one plugin hangs")
    else:
        s.plugin_timeout = min(s.plugin_timeout, s.lock_timeout / 2)
    s.runc_root = _path(options.get("runc_root") or env.get("CIRCUIT_RUNC_ROOT")
                        or _string(conf, "runc_root", path), "runc root")
    s.cni_cache_dir = _path(options.get("cni_cache_dir") or env.get("CIRCUIT_CNI_CACHE_DIR")
                            or _string(conf, "cni_cache_dir", path) or DEFAULT_CNI_CACHE_DIR,
                            "CNI cache dir")
    return s
