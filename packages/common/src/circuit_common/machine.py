"""What this machine offers circuit: kernel features, runc, nft, the CNI plugins, pyroute2,
etcd3gw, and the etcd members of the state.

Cheap to ask: the kernel is read from /proc/modules, modules.builtin / modules.dep of the
running release and the kernel config (/proc/config.gz or /boot/config-RELEASE); pyroute2's and
etcd3gw's versions come from their metadata, without importing them; plugins answer VERSION and
etcd members GET /version in parallel.
"""

import json
import os
import re
import subprocess

# feature: (module, kernel config option)
KERNEL_FEATURES = {
    "bridge": ("bridge", "CONFIG_BRIDGE"),
    "veth": ("veth", "CONFIG_VETH"),
    "htb": ("sch_htb", "CONFIG_NET_SCH_HTB"),
    "ifb": ("ifb", "CONFIG_IFB"),
    "netem": ("sch_netem", "CONFIG_NET_SCH_NETEM"),
    "ipvs": ("ip_vs", "CONFIG_IP_VS"),
    "nftables": ("nf_tables", "CONFIG_NF_TABLES"),
}
# A feature's state: the first three mean it can be used.
LOADED, BUILTIN, MODULE, ABSENT, UNKNOWN = "loaded", "builtin", "module", "no", "unknown"
USABLE = (LOADED, BUILTIN, MODULE)


def _module_names(path: str, sep: str = ":") -> set[str] | None:
    """Module names that start the lines of a file (kernel/net/sched/sch_htb.ko: ..., or
    /proc/modules' sch_htb 49152 0 ...); None when it cannot be read."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    words = (line.split(sep, 1)[0] for line in lines if line)
    return {os.path.basename(w).split(".ko", 1)[0].replace("-", "_") for w in words}


def _kernel_config(root: str, release: str) -> dict[str, str] | None:
    """CONFIG_X → y/m of the running kernel, or None when its config cannot be found."""
    import gzip

    for path, opener in ((f"{root}proc/config.gz", gzip.open),
                         (f"{root}boot/config-{release}", open)):
        try:
            with opener(path, "rt") as f:
                return dict(line.strip().split("=", 1) for line in f
                            if line.startswith("CONFIG_") and "=" in line)
        except OSError:
            continue
    return None


def kernel_features(root: str = "/", release: str | None = None) -> dict[str, str]:
    """Each of KERNEL_FEATURES: loaded, builtin, module (loads on use), no, or unknown."""
    release = release or os.uname().release
    modules = f"{root}lib/modules/{release}/"
    loaded = _module_names(f"{root}proc/modules", sep=" ") or set()
    builtin = _module_names(modules + "modules.builtin") or set()
    available = _module_names(modules + "modules.dep")
    config: dict[str, str] | None = None
    states = {}
    for feature, (module, option) in KERNEL_FEATURES.items():
        if module in loaded:
            states[feature] = LOADED
        elif module in builtin:
            states[feature] = BUILTIN
        elif available and module in available:
            states[feature] = MODULE
        else:
            if config is None:
                config = _kernel_config(root, release) or {}
            value = config.get(option)
            if value == "y":
                states[feature] = BUILTIN
            elif config or available is not None:
                states[feature] = ABSENT  # not configured, or a module that is not installed
            else:
                states[feature] = UNKNOWN
    return states


def tool_version(name: str, *args: str) -> dict | None:
    """{"path", "version"} of an executable on PATH (the first line of its version answer)."""
    from shutil import which

    path = which(name)
    if path is None:
        return None
    try:
        out = subprocess.run([path, *args], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    found = re.search(r"\bv?(\d+\.\d+\S*)", out.split("\n", 1)[0])
    return {"path": path, "version": found[1] if found else "?"}


def runc() -> dict | None:
    return tool_version("runc", "--version")


def nft() -> dict | None:
    return tool_version("nft", "--version")


def python_package_version(name: str) -> str | None:
    """An installed distribution's version, from its metadata (the package is not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cni_plugins(cni_path: list[str], timeout: float = 5.0) -> list[dict]:
    """Every plugin in the CNI path (the first of a name wins) with its VERSION answer:
    {"name", "path", "cniVersion", "supportedVersions"}, or {"name", "path", "error"}."""
    found: dict[str, str] = {}
    for directory in cni_path:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if name not in found and os.path.isfile(path) and os.access(path, os.X_OK):
                found[name] = path
    env = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    running = {}
    for name, path in found.items():
        try:
            running[name] = subprocess.Popen([path], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                             env=env)
        except OSError as e:
            running[name] = e
    return [_version_answer(name, found[name], proc, timeout) for name, proc in running.items()]


def _version_answer(name: str, path: str, proc, timeout: float) -> dict:
    plugin = {"name": name, "path": path}
    if isinstance(proc, OSError):
        return plugin | {"error": proc.strerror or str(proc)}
    try:
        out, _ = proc.communicate(b'{"cniVersion": "0.3.0"}', timeout=timeout)
        answer = json.loads(out)
        return plugin | {"cniVersion": answer["cniVersion"],
                         "supportedVersions": list(answer.get("supportedVersions", []))}
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return plugin | {"error": f"no answer to VERSION within {timeout:g}s"}
    except (ValueError, KeyError, TypeError):
        return plugin | {"error": "no CNI VERSION answer (not a CNI plugin?)"}



ETCD_TIMEOUT = 2.0


def etcd_members(endpoints: list[str], timeout: float = ETCD_TIMEOUT, tls=None) -> list[dict]:
    """Each etcd endpoint (HOST:PORT) asked GET http://HOST:PORT/version, all at once:
    {"endpoint", "version"} (etcd's server version) or {"endpoint", "error"}, in the given order.
    With tls (an etcds:// EtcdState): https, with its CA and client certificate. urllib, not
    circuit's etcd client (etcd3gw, slow to import)."""
    import urllib.request  # here, and before the threads: the common case never asks etcd
    from concurrent.futures import ThreadPoolExecutor

    if not endpoints:
        return []
    context = None
    if tls is not None:
        import ssl

        try:
            context = ssl.create_default_context(cafile=tls.cafile)
            if tls.certfile:
                context.load_cert_chain(tls.certfile, tls.keyfile)
        except (OSError, ssl.SSLError) as e:
            return [{"endpoint": endpoint, "error": f"cannot load the TLS files: {_reason(e)}"}
                    for endpoint in endpoints]
    scheme = "https" if tls is not None else "http"
    with ThreadPoolExecutor(max_workers=len(endpoints)) as pool:
        return list(pool.map(lambda e: _etcd_version(urllib.request, f"{scheme}://{e}", e,
                                                     timeout, context), endpoints))


def _etcd_version(request, url: str, endpoint: str, timeout: float, context=None) -> dict:
    from http.client import HTTPException
    from urllib.error import HTTPError, URLError

    member = {"endpoint": endpoint}
    try:
        with request.urlopen(f"{url}/version", timeout=timeout, context=context) as answer:
            body = answer.read(4096)
    except HTTPError as e:
        return member | {"error": f"HTTP {e.code} {e.reason}".strip()}
    except URLError as e:
        return member | {"error": _reason(e.reason)}
    except (OSError, ValueError, HTTPException) as e:  # a timeout while reading, not HTTP
        return member | {"error": _reason(e)}
    try:
        version = json.loads(body)["etcdserver"]
    except (ValueError, KeyError, TypeError):
        return member | {"error": "answered, but not as etcd does (no etcdserver version)"}
    return member | {"version": str(version)}


def _reason(reason) -> str:
    """urllib's reason, short: `connection refused`, `timed out`, a resolver's message."""
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[0].lower() + reason.strerror[1:]
    return str(reason) or type(reason).__name__
