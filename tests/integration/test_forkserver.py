"""circuit's fork server: commands and runc hooks handed to a preloaded process, with the
caller's namespace, directory, stdio and environment; killed, interrupted and declined callers.

A command sent with `python -S circuit` and only the dispatcher on its path
(harness.DISPATCHER_ONLY) cannot import circuit in its own process: when it works, the fork
server ran it."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import CIRCUIT, DISPATCHER_ONLY, ForkServer, bridge_conf, documented_hooks, snapshot

PYTHON = str(Path(CIRCUIT).parent / "python")


def through(host, server, *args, no_site=True, **kw) -> subprocess.CompletedProcess:
    """circuit ARGS in host's netns, handed to server; with no_site it can run nowhere else."""
    env = {k: v for k, v in os.environ.items() if k != "CNI_PATH"} | {
        "CIRCUIT_CNI_CACHE_DIR": str(host.cni_cache), "CIRCUIT_FORKSERVER": server.socket,
        **(DISPATCHER_ONLY if no_site else {}), **kw.pop("env", {})}
    python = [PYTHON, "-S"] if no_site else []
    return host.run(*python, CIRCUIT, *host.state_args(), *args, check=False, env=env, **kw)


def test_a_hook_run_by_the_fork_server_attaches_and_detaches(host, runc, forkserver):
    env = {"CNI_CONF": host.conf(bridge_conf()), "CIRCUIT_STATE_DIR": host.state,
           "CIRCUIT_FORKSERVER": forkserver.socket, **DISPATCHER_ONLY}
    hooks = documented_hooks("createRuntime", env)
    for entries in hooks.values():
        for entry in entries:
            entry["path"], entry["args"] = PYTHON, ["python", "-S", CIRCUIT]
    cid = runc.run("web", hooks).stdout
    c = runc.container(cid)
    assert c.ping("10.100.10.1")
    assert host.reserved_ips("sandbox") == set(c.addresses())
    runc.delete(cid)
    assert host.reserved_ips("sandbox") == set()
    assert host.run("ip", "-o", "link", "show", "type", "veth").stdout == ""


def test_answers_exit_codes_and_files_are_the_same_as_in_process(host, forkserver, tmp_path):
    conf = host.conf(bridge_conf(), "net.conf")
    created = through(host, forkserver, "network", "create", "./net.conf", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    c = host.container()
    cases = [("network", "list", "--format", "json"), ("network", "inspect", "nope"),
             ("network", "connect", "1.9", "sandbox"), ("lb", "create", "web", "nonsense"),
             ("network", "qos", "set", "sandbox", "--rate", "99999999tbit"), ("bogus",)]
    for args in cases:
        served = through(host, forkserver, *args)
        direct = host.circuit(*args, check=False, env={"CIRCUIT_FORKSERVER": "off"})
        assert (served.returncode, served.stdout, served.stderr) == (
            direct.returncode, direct.stdout, direct.stderr), args
    bad_pid = json.dumps({"ociVersion": "1.0.2", "id": "x", "pid": True, "status": "created"})
    served = through(host, forkserver, input=bad_pid, env={"CNI_CONF": str(conf)})
    assert served.returncode == 3 and served.stderr.count("\n") == 1, served.stderr
    connected = through(host, forkserver, "network", "connect", str(c.pid), "sandbox")
    assert connected.returncode == 0, connected.stderr
    assert c.ping("10.100.10.1")  # the worker entered the caller's netns, not the server's


def slow_network(host, tmp_path) -> tuple[Path, dict]:
    """A network whose plugin writes its PID and sleeps: a command caught mid-ADD."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    pidfile = tmp_path / "plugin.pid"
    (plugins / "slow").write_text(
        "#!/bin/sh\n"
        f'[ "$CNI_COMMAND" = ADD ] && echo $$ > {pidfile} && exec sleep 30\n'
        '[ "$CNI_COMMAND" = VERSION ] && echo \'{"cniVersion": "0.4.0", '
        '"supportedVersions": ["0.3.0", "0.3.1", "0.4.0"]}\'\n'
        "exit 0\n")
    (plugins / "slow").chmod(0o755)
    conf = host.conf({"cniVersion": "0.4.0", "name": "slow", "type": "slow"})
    env = {"CNI_PATH": str(plugins)}
    host.circuit("network", "create", conf, env=env)
    return pidfile, env


def started(pidfile: Path) -> int:
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the plugin never started"
        time.sleep(0.02)
    return int(pidfile.read_text())


def records(host) -> list[str]:
    return [p for p in snapshot(host.state) if p.startswith(("attachments", "intents"))]


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] in "ZX":
            return True
        time.sleep(0.02)
    return False


def background(host, server, *args, env) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if k != "CNI_PATH"} | {
        "CIRCUIT_CNI_CACHE_DIR": str(host.cni_cache), "CIRCUIT_FORKSERVER": server.socket,
        **DISPATCHER_ONLY} | env
    return subprocess.Popen([PYTHON, "-S", CIRCUIT, *map(str, host.state_args()), *args],
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_killed_caller_takes_its_command_and_plugins_with_it(host, forkserver, tmp_path):
    pidfile, env = slow_network(host, tmp_path)
    c = host.container()
    client = background(host, forkserver, "network", "connect", str(c.pid), "slow", env=env)
    plugin = started(pidfile)
    worker = parent(plugin)
    assert worker in forkserver.children()  # the command runs in the server's child
    client.kill()
    client.wait()
    assert gone(plugin), "the plugin outlived the command's caller"
    assert gone(worker)
    host.circuit("network", "gc", env=env)
    assert records(host) == []


def test_ctrl_c_reaches_the_command(host, forkserver, tmp_path):
    pidfile, env = slow_network(host, tmp_path)
    c = host.container()
    client = background(host, forkserver, "network", "connect", str(c.pid), "slow", env=env)
    plugin = started(pidfile)
    client.send_signal(signal.SIGINT)
    assert client.wait(timeout=15) == 130, client.stderr.read()
    assert gone(plugin)
    assert records(host) == []  # the interrupted connect rolled itself back


def test_twenty_callers_at_once_get_twenty_addresses(host, forkserver):
    host.circuit("network", "create", host.conf(bridge_conf()))
    containers = [host.container() for _ in range(20)]
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda c: through(host, forkserver, "network", "connect",
                                                  str(c.pid), "sandbox"), containers))
    assert [r.returncode for r in results] == [0] * 20, [r.stderr for r in results]
    addresses = {c.addresses()[0] for c in containers}
    assert len(addresses) == 20 and host.reserved_ips("sandbox") == addresses
    assert all(c.ping("10.100.10.1") for c in containers[:3])
    assert forkserver.proc.poll() is None and "died" not in forkserver.output()  # still serving


def test_a_caller_in_another_pid_namespace_is_declined(host, forkserver):
    """PIDs mean other things there: the caller runs the command itself (here it cannot, so
    it fails), and with site-packages it works."""
    command = ["unshare", "--pid", "--fork", "--mount-proc"]
    env = {**os.environ, "CIRCUIT_FORKSERVER": forkserver.socket}
    declined = host.run(*command, PYTHON, "-S", CIRCUIT, *host.state_args(), "network", "list",
                        check=False, env=env | DISPATCHER_ONLY)
    assert declined.returncode != 0 and "No module named" in declined.stderr
    direct = host.run(*command, CIRCUIT, *host.state_args(), "network", "list", check=False,
                      env=env)
    assert direct.returncode == 0, direct.stderr


def test_changed_code_is_declined_and_the_server_exits(host, forkserver):
    import circuit_common.errors as module

    path = module.__file__
    stamp = os.stat(path)
    try:
        os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1))
        result = through(host, forkserver, "network", "list", no_site=False)
        assert result.returncode == 0, result.stderr
        assert forkserver.proc.wait(timeout=15) == 0  # drained: its service manager restarts it
    finally:
        os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert not forkserver.children() and not os.path.exists(forkserver.socket)
    assert through(host, forkserver, "network", "list").returncode != 0  # none listens now


def test_a_server_gone_leaves_commands_working(host, tmp_path):
    stale = tmp_path / "forkserver.sock"
    stale.touch()  # a socket path left by a killed server: connect fails, run in-process
    result = host.circuit("network", "list", env={"CIRCUIT_FORKSERVER": str(stale)})
    assert result.returncode == 0 and result.stderr == ""


def test_a_circuit_program_from_path_runs_and_its_exit_code_comes_back(host, forkserver,
                                                                        tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "circuit-foo").write_text("#!/bin/sh\nsleep 0.2\necho \"foo $*\"\nexit 7\n")
    (bin_dir / "circuit-foo").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    served = through(host, forkserver, "foo", "a", env=env)
    assert served.returncode == 7, served.stderr
    assert served.stdout.startswith("foo --state ") and served.stdout.endswith(" a\n")


def test_sigterm_and_sighup_end_the_command_as_they_end_circuit(host, forkserver, tmp_path):
    pidfile, env = slow_network(host, tmp_path)
    c = host.container()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        pidfile.unlink(missing_ok=True)
        client = background(host, forkserver, "network", "connect", str(c.pid), "slow", env=env)
        plugin = started(pidfile)
        client.send_signal(sig)
        assert client.wait(timeout=15) == -sig, client.stderr.read()
        assert gone(plugin)
        host.circuit("network", "gc", env=env)
        assert records(host) == []


def test_a_caller_with_fewer_capabilities_is_declined(host, forkserver):
    """The child would run with the server's capabilities: such a caller runs it itself."""
    fewer = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--"]
    declined = host.run(*fewer, PYTHON, "-S", CIRCUIT, *host.state_args(), "network", "list",
                        check=False, env={**os.environ, **DISPATCHER_ONLY,
                                          "CIRCUIT_FORKSERVER": forkserver.socket})
    assert declined.returncode != 0 and "No module named" in declined.stderr
    assert "declined" in forkserver.output() and "Cap" in forkserver.output()


def test_the_server_takes_no_path_that_is_not_a_dead_socket(forkserver, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    for path, says in ((precious, "is not a socket"), (forkserver.socket, "listens on")):
        second = subprocess.run([CIRCUIT, "forkserver", "--socket", str(path)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 10 and says in second.stderr, second.stderr
    assert precious.read_text() == "keep me" and os.path.exists(forkserver.socket)


@pytest.mark.parametrize("changed, how", [("docopt/__init__.py", "touched"),
                                          ("pyroute2/netlink/__init__.py", "replaced"),
                                          ("etcd3gw/client.py", "replaced")])
def test_an_upgraded_dependency_is_declined_and_the_server_exits(host, tmp_path, changed, how):
    """The server runs pyroute2, docopt and etcd3gw from copies (PYTHONPATH); one of their
    files changed under it, as an upgrade changes them, drains it as circuit's own code does."""
    import importlib

    deps = tmp_path / "deps"
    deps.mkdir()
    for name in ("docopt", "pyroute2", "etcd3gw"):
        source = Path(importlib.import_module(name).__file__)
        if source.name == "__init__.py":
            shutil.copytree(source.parent, deps / name, ignore=shutil.ignore_patterns("*.pyc"))
        else:
            shutil.copy(source, deps / source.name)
    server = ForkServer(tmp_path, env={"PYTHONPATH": str(deps)})
    try:
        assert through(host, server, "network", "list").returncode == 0  # served: no site
        path = deps / changed
        if how == "touched":
            os.utime(path, ns=(0, path.stat().st_mtime_ns + 1))
        else:  # what an installer does: a new file renamed over the old, same time kept
            stamp = path.stat()
            shutil.copy(path, tmp_path / "new")
            os.utime(tmp_path / "new", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
            os.replace(tmp_path / "new", path)
        result = through(host, server, "network", "list", no_site=False)
        assert result.returncode == 0, result.stderr
        assert server.proc.wait(timeout=15) == 0
        assert f"stale: '{path}' changed" in server.output()
    finally:
        server.stop()
    assert not os.path.exists(server.socket)


def test_idle_connections_do_not_starve_callers(host, forkserver):
    """12 peers that connect and send nothing each hold a child for REQUEST_TIMEOUT, no more:
    other callers are served at once (before, each waited 5 s and then ran it itself)."""
    idle = []
    try:
        for _ in range(12):
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            peer.connect(forkserver.socket)
            idle.append(peer)
        start = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: through(host, forkserver, "network", "list"),
                                    range(4)))
        took = time.monotonic() - start
    finally:
        for peer in idle:
            peer.close()
    assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    assert took < 2, f"callers waited {took:.1f} s behind idle connections"


def test_log_lines_of_concurrent_children_stay_apart(forkserver):
    """40 malformed requests at once: each child's log line is written in one write(), at the
    log's end (O_APPEND), even while the log is read."""
    def bad_request(i: int) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
            peer.connect(forkserver.socket)
            peer.sendall((64).to_bytes(8, sys.byteorder) + b"junk %d " % i * 4)
            peer.shutdown(socket.SHUT_WR)
            peer.recv(1)
            forkserver.output()  # a reader moving the shared offset must not matter

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(bad_request, range(40)))
    deadline = time.monotonic() + 10
    while forkserver.output().count("bad request") < 40:
        assert time.monotonic() < deadline, forkserver.output()
        time.sleep(0.05)
    lines = forkserver.output().splitlines()
    assert lines[0].startswith("circuit forkserver: listening on ")
    assert all(line.startswith("circuit forkserver: bad request: ") for line in lines[1:]), lines
    assert len(lines) == 41
