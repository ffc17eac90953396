"""Running CNI plugins as the spec and libcni do: chains, prevResult, capabilities, cache format.

Helpers are named for their contract, after libcni: load_netconf, find_plugin, exec_plugin,
add_chain / del_chain (symmetric), check_chain, gc_chain, cache_entry.
"""

import binascii
import contextlib
import json
import os
import signal
import subprocess
import time
from collections import namedtuple

from circuit_common.errors import InvalidInput, NotFound, PluginError
from circuit_common.proc import PR_SET_PDEATHSIG, libc, start_time
from circuit_common.validate import NAME_RE, check_name

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# One-plugin configs may be older; "" (no cniVersion) is what libcni passes on, read as 0.1.0.
LEGACY_VERSIONS = ("", "0.1.0", "0.2.0")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def version_tuple(version: str) -> tuple[int, ...]:
    """A spec version as numbers; "" (no cniVersion) is 0.1.0, as the plugins read it."""
    return tuple(int(p) for p in (version or "0.1.0").split("."))


def at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


def pick_version(conf: dict) -> str:
    """The cniVersion libcni runs a config list at: the highest of cniVersion and cniVersions
    (spec 1.1) that circuit implements; "" when there is neither."""
    version = conf.get("cniVersion", "")
    versions = conf.get("cniVersions")
    if versions is None:
        return version
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise ValueError("'cniVersions' must be a list of version strings")
    known = [v for v in [*versions, version] if v in SUPPORTED_VERSIONS + LEGACY_VERSIONS[1:]]
    return max(known, key=version_tuple) if known else version


def load_netconf(data: bytes, source: str, name: str | None = None) -> dict:
    """A validated network config list from .conf or .conflist bytes (a .conf becomes a list)."""
    what = "a CNI network configuration: one JSON object with cniVersion, name and plugins"
    if not data.strip():
        raise InvalidInput(f"{source} is empty: give it {what}")
    try:
        conf = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise InvalidInput(f"{source} is not valid JSON ({e}): make it {what}") from None
    if not isinstance(conf, dict):
        raise InvalidInput(f"{source} must hold a JSON object, not {type(conf).__name__}")
    if "plugins" in conf:
        netconf = dict(conf)
    else:
        netconf = {k: conf[k] for k in ("cniVersion", "name") if k in conf}
        netconf["plugins"] = [{k: v for k, v in conf.items() if k not in ("cniVersion", "name")}]
    if name is not None:
        netconf["name"] = name
    try:
        netconf["cniVersion"] = pick_version(conf)
    except ValueError as e:
        raise InvalidInput(f"{source}: {e}") from None
    if "name" not in netconf:
        raise InvalidInput(f"{source} has no 'name'; add one or pass --name")
    check_name(netconf["name"], "network name")
    try:
        check_netconf(netconf)
    except ValueError as e:
        raise InvalidInput(f"{source}: {e}") from None
    return netconf


def check_netconf(netconf: dict) -> None:
    """A config list circuit can run (ValueError: what is wrong): a supported version, and
    plugins whose type is a plain name, looked up in the CNI path and nowhere else."""
    if not isinstance(netconf.get("name"), str) or not NAME_RE.fullmatch(netconf["name"]):
        raise ValueError(f"network name {netconf.get('name')!r} is not a plain name")
    version = netconf.get("cniVersion")
    plugins = netconf.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise ValueError("'plugins' must be a non-empty list")
    if version not in SUPPORTED_VERSIONS and not (version in LEGACY_VERSIONS and len(plugins) == 1):
        raise ValueError(f"cniVersion {version!r} is not supported; use one of "
                         f"{', '.join(SUPPORTED_VERSIONS)} (a single plugin may also be 0.1.0, "
                         "0.2.0 or have none)")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or "type" not in plugin:
            raise ValueError(f"plugin {i + 1} has no 'type'")
        kind = plugin["type"]
        if not isinstance(kind, str) or not NAME_RE.fullmatch(kind):
            raise ValueError(f"plugin type {kind!r} must be a plain plugin name (no '/' or "
                             "'..'): the plugin is looked up in the CNI path")
        if not isinstance(plugin.get("capabilities") or {}, dict):
            raise ValueError(f"plugin {kind}: 'capabilities' must be an object")


def check_result(result) -> None:
    """A CNI ADD result (spec 0.3.0 to 1.1.0) circuit can store and use (ValueError: what is
    wrong): interfaces, ips with valid CIDRs and gateways, routes, dns."""
    if not isinstance(result, dict):
        raise ValueError(f"the result is {type(result).__name__}, not an object")
    result = current_result(result)
    interfaces = _list_of_objects(result, "interfaces")
    for i, iface in enumerate(interfaces):
        if not isinstance(iface.get("name"), str) or not iface["name"]:
            raise ValueError(f"interfaces[{i}] has no name")
        for key in ("mac", "sandbox"):
            if not isinstance(iface.get(key, ""), str):
                raise ValueError(f"interfaces[{i}].{key} is not a string")
    for i, ip in enumerate(_list_of_objects(result, "ips")):
        _check_address(ip.get("address"), f"ips[{i}].address", cidr=True)
        if "gateway" in ip:
            _check_address(ip["gateway"], f"ips[{i}].gateway")
        index = ip.get("interface")
        if index is not None and not (type(index) is int and 0 <= index < len(interfaces)):
            raise ValueError(f"ips[{i}].interface {index!r} names no interface of the result")
    for i, route in enumerate(_list_of_objects(result, "routes")):
        _check_address(route.get("dst"), f"routes[{i}].dst", cidr=True)
        if route.get("gw") is not None:
            _check_address(route["gw"], f"routes[{i}].gw")
    if not isinstance(result.get("dns", {}), dict):
        raise ValueError("dns is not an object")


def check_placed(result: dict, netns: str) -> None:
    """ValueError when a result puts the container where it is not: an interface in another
    network namespace than the container's netns (the host's, /proc/1/ns/net; a sandbox path
    that is not the netns given and cannot be shown to be the same one), or a container
    address that is an address of circuit's own netns (the host's; unless the container is in
    that netns: connect --host-netns)."""
    result = current_result(result)
    try:
        container = os.stat(netns)
    except OSError:  # a netns that is gone: nothing ran in it to compare with
        return
    interfaces = result.get("interfaces", [])
    for i, iface in enumerate(interfaces):
        if iface.get("sandbox") in (None, "", netns):
            continue
        try:
            same = _same_file(os.stat(iface["sandbox"]), container)
        except OSError:  # one circuit cannot even look at (/proc/1/ns/net in a container)
            same = False
        if not same:
            raise ValueError(f"interfaces[{i}] ({iface['name']}) is in network namespace "
                             f"{iface['sandbox']}, not the container's ({netns})")
    if _same_file(container, os.stat("/proc/self/ns/net")):
        return
    for i, ip in enumerate(result.get("ips", [])):
        index = ip.get("interface")
        if index is not None and not interfaces[index].get("sandbox"):
            continue  # an address the result puts on a host-side interface
        if _is_local(ip["address"].partition("/")[0]):
            raise ValueError(f"ips[{i}].address {ip['address']} is an address of the host "
                             "(circuit's network namespace), not the container's")


def _same_file(one: os.stat_result, other: os.stat_result) -> bool:
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def _is_local(address: str) -> bool:
    """Whether address is one of this netns's own: the kernel routes a datagram to it from
    itself (the source it picks is the address), which bind() cannot tell where
    net.ipv4.ip_nonlocal_bind is set. No packet is sent."""
    import _socket as socket

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.connect((address, 9))
        return sock.getsockname()[0] == address
    except OSError:  # no route: not local either
        return False
    finally:
        sock.close()


def _list_of_objects(result: dict, key: str) -> list[dict]:
    items = result.get(key, [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError(f"{key} is not a list of objects")
    return items


def _check_address(value, where: str, cidr: bool = False) -> None:
    """value an IPv4 or IPv6 address, with cidr an ADDRESS/LENGTH: checked with inet_pton,
    as `network list` reads thousands (ipaddress costs some 20 times as much)."""
    # on the ADD path only (a poststop hook does without it); the C module itself: socket's
    # enums cost ≈ 5 ms to build on every start, and inet_pton needs none of them
    import _socket as socket

    if not isinstance(value, str):
        raise ValueError(f"{where} is missing or not a string")
    address, slash, length = value.partition("/")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        socket.inet_pton(family, address)
    except (OSError, ValueError):
        raise ValueError(f"{where} {value!r} is not a valid address") from None
    bits = 128 if family == socket.AF_INET6 else 32
    if cidr and not (slash and length.isascii() and length.isdigit() and int(length) <= bits):
        raise ValueError(f"{where} {value!r} is not ADDRESS/LENGTH")
    if slash and not cidr:
        raise ValueError(f"{where} {value!r} is an address with a prefix length")


def find_plugin(kind: str, cni_path: list[str]) -> str:
    """The executable for plugin type kind in the CNI path (kind re-checked: a record read
    from the state directory may have been edited by hand)."""
    if not isinstance(kind, str) or not NAME_RE.fullmatch(kind):
        raise InvalidInput(f"plugin type {kind!r} must be a plain plugin name (no '/' or '..')")
    for directory in cni_path:
        candidate = os.path.join(directory, kind)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise NotFound(f"CNI plugin {kind!r} not found in {':'.join(cni_path)}; install it "
                   "(Debian: containernetworking-plugins) or point --cni-path / CNI_PATH at it")


# What running a plugin gave: its exit code and output (None: it ran past the timeout).
Outcome = namedtuple("Outcome", "returncode stdout stderr")
MAX_PLUGIN_OUTPUT = 1 << 20  # a result beyond it is no result (it would be stored twice)
MAX_MESSAGE = 500  # the most of a plugin's message an error line shows


def die_with(parent: int):
    """A preexec_fn: the child gets SIGKILL when parent dies (prctl PR_SET_PDEATHSIG), and
    exits at once if parent is gone already."""
    prctl = libc().prctl  # looked up here: the child only calls it

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return arm


def group_members(group: int, started: int, within: float) -> list[int]:
    """The processes still running in the process group (and session) a plugin started as
    PID group at start time started (clock ticks), that started within `within` seconds of
    it: a later group that reuses the number is never taken for the plugin's."""
    latest = started + int(within * os.sysconf("SC_CLK_TCK")) + 1
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        # state ppid pgrp session ... starttime, after comm (which may hold spaces and ")")
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) == int(fields[3]) == group \
                and started <= int(fields[19]) <= latest:
            members.append(int(name))
    return members


def end_group(group: int, started: int, within: float, timeout: float) -> bool:
    """SIGKILL what runs of a plugin's process group (its own children, e.g. bridge's iptables
    or host-local, outlive the plugin) until none of it runs; False if some still does after
    timeout seconds."""
    deadline = time.monotonic() + timeout
    while members := group_members(group, started, within):
        if time.monotonic() > deadline:
            return False
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    return True


class ProcessExec:
    """How plugins run (libcni's invoke.Exec): find one in the CNI path, run it with stdin and
    an environment. Tests pass another executor to Plugins to run chains without processes."""

    find_plugin = staticmethod(find_plugin)

    @staticmethod
    def run(path: str, stdin: bytes, env: dict[str, str], timeout: float,
            started=None) -> Outcome:
        """Run path in a session and process group of its own, killed if circuit dies first
        (SIGKILL, OOM, runc's hook timeout: an orphaned ADD finishing after the repair's DEL
        would leak its address); started(pid, start_time) is called before the plugin gets
        its stdin, so before it can start anything of its own. Past timeout its whole process
        group is killed (and waited for) and returncode is None."""
        proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True,
                                preexec_fn=die_with(os.getpid()))
        began = start_time(proc.pid)  # None: it failed already, before reading its stdin
        try:
            if started is not None and began is not None:
                started(proc.pid, began)
            stdout, stderr = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            if began is not None:
                end_group(proc.pid, began, timeout, timeout)
            return Outcome(None, b"", b"")
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        return Outcome(proc.returncode, stdout, stderr)


class Runtime:
    """One attachment's runtime parameters (libcni's RuntimeConf); started(type, pid,
    start_time), when given, is told of each plugin process as it starts."""

    def __init__(self, container_id: str, netns: str, ifname: str,
                 args: list[tuple[str, str]] | None = None, capability_args: dict | None = None,
                 started=None):
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = list(args or [])
        self.capability_args = dict(capability_args or {})
        self.started = started


class Plugins:
    """How to execute plugins: where they are, how long they may take, and the executor."""

    def __init__(self, cni_path: list[str], timeout: float = 10.0, executor=ProcessExec):
        self.cni_path = cni_path
        self.timeout = timeout
        self.executor = executor

    def environ(self, command: str, rt: Runtime | None, path: str | None = None) -> dict[str, str]:
        env = {"CNI_COMMAND": command, "CNI_PATH": ":".join(self.cni_path),
               "PATH": path or os.environ.get("PATH", DEFAULT_PATH)}
        if rt is not None:
            env.update(CNI_CONTAINERID=rt.container_id, CNI_NETNS=rt.netns, CNI_IFNAME=rt.ifname,
                       CNI_ARGS=";".join(f"{k}={v}" for k, v in rt.args))
        return env

    def exec_plugin(self, kind: str, command: str, conf: dict, rt: Runtime | None,
                    path: str | None = None) -> dict | None:
        """Run one plugin command (path: its PATH, when not circuit's); its parsed stdout, or
        PluginError with the plugin's message."""
        executable = self.executor.find_plugin(kind, self.cni_path)
        started = {} if rt is None or rt.started is None else {
            "started": lambda pid, began: rt.started(kind, pid, began)}
        done = self.executor.run(executable, json.dumps(conf).encode(),
                                 self.environ(command, rt, path), self.timeout, **started)
        if done.returncode is None:
            raise PluginError(f"plugin {kind} timed out after {self.timeout:g}s during {command}"
                              "; it was killed with its children")
        out = done.stdout.strip()
        if done.returncode != 0:
            raise PluginError(f"plugin {kind} failed during {command}: "
                              f"{_error_message(out, done.stderr)}")
        if not out:
            return None
        if len(out) > MAX_PLUGIN_OUTPUT:
            raise PluginError(f"plugin {kind} returned {len(out)} bytes during {command}, more "
                              "than a result can be (1 MiB); is it the right plugin?")
        try:
            reply = json.loads(out)
        except (ValueError, RecursionError):
            text = out[:200].decode(errors="replace")
            raise PluginError(f"plugin {kind} returned something that is not JSON during "
                              f"{command}: {text!r}") from None
        if isinstance(reply, dict) and "code" in reply and "msg" in reply:  # a CNI error
            raise PluginError(f"plugin {kind} failed during {command} (though it exited 0): "
                              f"{_error_message(out, b'')}")
        return reply

    def supported_versions(self, kind: str) -> list[str]:
        """The spec versions a plugin says it supports (CNI VERSION command)."""
        reply = self.exec_plugin(kind, "VERSION", {"cniVersion": "0.3.0"}, None) or {}
        versions = reply.get("supportedVersions", []) if isinstance(reply, dict) else []
        return [v for v in versions if isinstance(v, str)] if isinstance(versions, list) else []


def _error_message(stdout: bytes, stderr: bytes) -> str:
    try:
        err = json.loads(stdout)
        msg = str(err.get("msg") or "no message")
        if err.get("details"):
            msg += f": {err['details']}"
        return f"{cut(msg)} (CNI error code {cut(str(err.get('code', '?')))})"
    except (ValueError, AttributeError):
        lines = (stdout or stderr).decode(errors="replace").strip().splitlines()
        panics = [line for line in lines if line.startswith("panic:")]
        if panics:
            return f"the plugin crashed: {cut(panics[0])}"
        return cut(lines[-1]) if lines else "exited with no message"


def cut(text: str) -> str:
    """text, its middle cut out beyond MAX_MESSAGE characters (a plugin's 50 MB "line")."""
    if len(text) <= MAX_MESSAGE:
        return text
    return f"{text[:MAX_MESSAGE - 100]} … ({len(text) - MAX_MESSAGE + 50} characters cut) … " \
           f"{text[-50:]}"


def plugin_conf(netconf: dict, plugin: dict, prev_result: dict | None, rt: Runtime) -> dict:
    """The stdin of one plugin in a chain: name, version, prevResult, declared runtimeConfig."""
    conf = dict(plugin)
    conf["name"] = netconf["name"]
    conf["cniVersion"] = netconf["cniVersion"]
    if prev_result is not None:
        conf["prevResult"] = prev_result
    declared = plugin.get("capabilities") or {}
    runtime = {k: v for k, v in rt.capability_args.items() if declared.get(k)}
    if runtime:
        conf["runtimeConfig"] = runtime
    return conf


def declared_capabilities(netconf: dict) -> set[str]:
    return {k for p in netconf["plugins"] for k, v in (p.get("capabilities") or {}).items() if v}


def add_chain(plugins: Plugins, netconf: dict, rt: Runtime) -> dict:
    """ADD through the whole chain; on any failure DEL the chain, then raise the plugin's error."""
    result = None
    try:
        for plugin in netconf["plugins"]:
            result = plugins.exec_plugin(plugin["type"], "ADD",
                                         plugin_conf(netconf, plugin, result, rt), rt)
            try:
                check_result(result)
                check_placed(result, rt.netns)
            except ValueError as e:
                raise PluginError(f"plugin {plugin['type']} returned an invalid result during "
                                  f"ADD: {e}") from None
    except BaseException:
        del_chain(plugins, netconf, rt, result, best_effort=True)
        raise
    return result


def del_chain(plugins: Plugins, netconf: dict, rt: Runtime, cached: dict | None,
              best_effort: bool = False) -> None:
    """DEL through the chain in reverse with the cached result (prevResult from 0.4.0 on)."""
    prev = cached if at_least(netconf["cniVersion"], "0.4.0") else None
    first_error = None
    for plugin in reversed(netconf["plugins"]):
        try:
            plugins.exec_plugin(plugin["type"], "DEL", plugin_conf(netconf, plugin, prev, rt), rt)
        except PluginError as e:
            first_error = first_error or e
    if first_error is not None and not best_effort:
        raise first_error


def check_chain(plugins: Plugins, netconf: dict, rt: Runtime, cached: dict) -> None:
    """CHECK through the chain with the cached result (portmap's: check_portmap)."""
    for plugin in netconf["plugins"]:
        if plugin["type"] == "portmap":
            check_portmap(plugins, netconf, plugin, cached, rt)
        else:
            plugins.exec_plugin(plugin["type"], "CHECK",
                                plugin_conf(netconf, plugin, cached, rt), rt)


IPTABLES_COMMANDS = {4: "iptables", 6: "ip6tables"}


def check_portmap(plugins: Plugins, netconf: dict, plugin: dict, cached: dict,
                  rt: Runtime) -> None:
    """portmap's CHECK, once per address family of the result. portmap (1.1.1, upstream
    containernetworking/plugins#819) checks the rules of each container address in both
    iptables and ip6tables, where only one family's can be, so no attachment with published
    ports passes while both commands work. Each pass gets the result with one family's
    addresses and a PATH that finds only that family's command: every rule is still checked,
    in its own table."""
    import shutil
    import tempfile

    ips = _list_of_objects(cached, "ips")
    families = sorted({6 if ":" in str(ip.get("address")) else 4 for ip in ips})
    if not families:
        plugins.exec_plugin("portmap", "CHECK", plugin_conf(netconf, plugin, cached, rt), rt)
        return
    search = os.environ.get("PATH", DEFAULT_PATH)
    for family in families:
        one_family = dict(cached, ips=[ip for ip in ips
                                       if (":" in str(ip.get("address"))) == (family == 6)])
        command = IPTABLES_COMMANDS[family]
        with tempfile.TemporaryDirectory(prefix="circuit-portmap-") as only:
            found = shutil.which(command, path=search)
            if found:  # none: portmap says that family's table cannot be checked
                os.symlink(found, os.path.join(only, command))
            plugins.exec_plugin("portmap", "CHECK",
                                plugin_conf(netconf, plugin, one_family, rt), rt, path=only)


def gc_chain(plugins: Plugins, netconf: dict, valid: list[dict]) -> None:
    """GC (spec 1.1.0) through the chain, naming the attachments that must be kept."""
    for plugin in netconf["plugins"]:
        conf = dict(plugin, name=netconf["name"], cniVersion=netconf["cniVersion"])
        conf["cni.dev/valid-attachments"] = valid
        plugins.exec_plugin(plugin["type"], "GC", conf, None)


def masquerade_chain(network: str, container_id: str) -> str:
    """The nat chain the bridge plugin's ipMasq makes for one attachment (the plugins'
    utils.FormatChainName)."""
    import hashlib

    return "CNI-" + hashlib.sha512((network + container_id).encode()).hexdigest()[:24]


def release_masquerade(netconf: dict, rt: Runtime, cached: dict | None) -> None:
    """Remove the ipMasq chain of one attachment and every POSTROUTING rule that jumps to it,
    when they are there (after every DEL: the bridge plugin (1.1.1) leaves them when DEL runs
    after the container's netns is gone, or after a killed DEL removed the container's
    interface, and a plugin's child killed with circuit can leave a chain half made). In both
    families when the result is unknown."""
    if not any(p.get("type") == "bridge" and p.get("ipMasq") for p in netconf["plugins"]):
        return
    from circuit_common import nft

    chain = masquerade_chain(netconf["name"], rt.container_id)
    families = {"ip6" if ":" in address else "ip" for address in result_ips(cached or {})}
    commands = []
    for family in sorted(families or {"ip", "ip6"}):
        table = nft.objects("table", family, "nat")
        jumps = [o["rule"]["handle"] for o in table
                 if o.get("rule", {}).get("chain") == "POSTROUTING"
                 and any(e.get("jump", {}).get("target") == chain for e in o["rule"]["expr"])]
        if not jumps and not any(o.get("chain", {}).get("name") == chain for o in table):
            continue
        commands += [{"delete": {"rule": {"family": family, "table": "nat",
                                          "chain": "POSTROUTING", "handle": handle}}}
                     for handle in jumps]
        commands += [{"flush": {"chain": {"family": family, "table": "nat", "name": chain}}},
                     {"delete": {"chain": {"family": family, "table": "nat", "name": chain}}}]
    nft.transaction(commands)


def cache_entry(netconf: dict, rt: Runtime, result: dict) -> dict:
    """libcni's cached result (kind cniCacheV1) for one attachment."""
    return {
        "kind": "cniCacheV1",
        "containerId": rt.container_id,
        "config": binascii.b2a_base64(json.dumps(netconf).encode(), newline=False).decode(),
        "ifName": rt.ifname,
        "networkName": netconf["name"],
        "netns": rt.netns,
        "cniArgs": [list(kv) for kv in rt.args],
        "capabilityArgs": rt.capability_args,
        "result": result,
    }


def current_result(result: dict) -> dict:
    """A result in the 0.3.0+ shape: a 0.1.0/0.2.0 result's ip4/ip6 become ips and routes."""
    legacy = [result[k] for k in ("ip4", "ip6") if isinstance(result.get(k), dict)]
    if not legacy:
        return result
    ips = [{"address": ip.get("ip"), **({"gateway": ip["gateway"]} if "gateway" in ip else {})}
           for ip in legacy]
    routes = [r for ip in legacy for r in ip.get("routes") or []]
    return {"ips": ips, "routes": routes, **({"dns": result["dns"]} if "dns" in result else {})}


def result_ips(result: dict) -> list[str]:
    """The addresses (CIDR) of a result, any spec version."""
    return [ip["address"] for ip in current_result(result).get("ips", []) if "address" in ip]


def result_mac(result: dict, ifname: str) -> str | None:
    """The MAC of the container-side interface ifname in a result."""
    for iface in result.get("interfaces", []):
        if iface.get("name") == ifname and iface.get("sandbox"):
            return iface.get("mac")
    return None
