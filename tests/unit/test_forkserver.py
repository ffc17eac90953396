"""The fork server's protocol: requests parsed and refused, descriptors and credentials carried,
a command's output and exit code back through the dispatcher's client (the real commands
through a real server are in tests/integration/test_forkserver.py)."""

import os
import socket
import subprocess
import sys
import time

import circuit_dispatch
import pytest
from circuit_dispatch import forkserver, protocol

from harness import DISPATCHER_ONLY, ROOT

pytestmark = pytest.mark.unit


def payload(argv: list[bytes], environ: list[bytes], magic=protocol.MAGIC) -> bytes:
    return b"\0".join([magic, b"/x/bin/circuit", b"18", str(len(argv)).encode(), *argv,
                       *environ])


def test_a_request_is_parsed_into_argv_environment_and_descriptors():
    r = forkserver.Request(payload([b"network", b"list"], [b"A=1", b"B=x=y"]),
                           [10, 11, 12, 13], (1, 0, 0))
    assert (r.script, r.umask, r.argv) == ("/x/bin/circuit", 18, ["network", "list"])
    assert r.environ == {b"A": b"1", b"B": b"x=y"}
    assert (r.stdio, r.cwd, r.pid, r.uid) == ([10, 11, 12], 13, 1, 0)


@pytest.mark.parametrize("data, fds", [
    (payload([], [], magic=b"other"), [1, 2, 3, 4]),
    (payload([], []), [1, 2, 3]),
    (b"circuit-forkserver-1", [1, 2, 3, 4]),
])
def test_what_is_not_a_request_is_refused(data, fds):
    with pytest.raises(ValueError):
        forkserver.Request(data, fds, (1, 0, 0))


def test_receive_takes_a_long_request_its_descriptors_and_the_peer():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    big = b"X=" + b"y" * 200_000  # more than one read
    data = payload([b"hook"], [big])
    r, w = os.pipe()
    message = len(data).to_bytes(protocol.LENGTH_SIZE, sys.byteorder) + data
    sent = theirs.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       protocol.pack_descriptors([r, w, r, w]))])
    theirs.sendall(message[sent:])
    request = forkserver.receive(ours)
    try:
        assert request.argv == ["hook"] and request.environ[b"X"] == b"y" * 200_000
        assert (request.pid, request.uid) == (os.getpid(), os.geteuid())
        os.write(w, b"ping")
        assert os.read(request.stdio[0], 4) == b"ping"  # the same pipe, passed along
    finally:
        request.close()
        for fd in (r, w):
            os.close(fd)
        ours.close()
        theirs.close()


SERVER = """
import sys
import circuit_dispatch
from circuit_dispatch import forkserver, protocol

def run(argv):
    print("ran", *argv, flush=True)
    print("to stderr", file=sys.stderr)
    return int(argv[-1])

sys.argv[0] = {script!r}
listener = forkserver.listen({socket!r})
forkserver.ForkServer(listener, run, idle=2).serve()
"""


def test_the_dispatcher_hands_a_command_over_and_gets_its_output_and_code(tmp_path):
    path = str(tmp_path / "fs.sock")
    script = str(ROOT / "bin" / "circuit")
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(script=script, socket=path)])
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        env = {**os.environ, "CIRCUIT_FORKSERVER": path}
        done = subprocess.run([sys.executable, "-S", script, "network", "7"],
                              env=env | DISPATCHER_ONLY,
                              capture_output=True, text=True, cwd=tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (7, "ran network 7\n",
                                                                "to stderr\n")
        off = subprocess.run([sys.executable, script, "help"], capture_output=True, text=True,
                             env={**env, "CIRCUIT_FORKSERVER": "off"})
        assert off.returncode == 0 and off.stdout.startswith("circuit:")  # ran here
    finally:
        server.terminate()
        assert server.wait(timeout=10) == 0


def test_a_request_the_client_builds_is_the_one_the_server_reads():
    message = protocol.request("/x/bin/circuit", 0o27, ["network", "list", "é"],
                               {b"A": b"1", b"B": b"x=y"})
    length = protocol.request_length(message)
    assert length == len(message) - protocol.LENGTH_SIZE
    r = forkserver.Request(message[protocol.LENGTH_SIZE:], [3, 4, 5, 6], (1, 0, 0))
    assert (r.script, r.umask, r.argv) == ("/x/bin/circuit", 0o27, ["network", "list", "é"])
    assert r.environ == {b"A": b"1", b"B": b"x=y"}
    assert protocol.exit_code(protocol.result(-7)) == -7
    with pytest.raises(ValueError):
        protocol.request_length((protocol.MAX_REQUEST + 1).to_bytes(8, sys.byteorder))


@pytest.mark.parametrize("value, path", [(None, circuit_dispatch.DEFAULT_SOCKET),
                                         ("off", None), ("", None), ("/tmp/s", "/tmp/s")])
def test_circuit_forkserver_names_the_socket_or_turns_it_off(value, path):
    environ = {} if value is None else {"CIRCUIT_FORKSERVER": value}
    assert circuit_dispatch.socket_path(environ) == path


def test_with_no_socket_the_dispatcher_loads_nothing_but_itself():
    """The client's path costs one stat where no server listens: not even the protocol."""
    code = "import sys; before = set(sys.modules); import circuit_dispatch; " \
           "circuit_dispatch.through_forkserver(['list']); print(sorted(set(sys.modules) - before))"
    env = os.environ | DISPATCHER_ONLY | {"CIRCUIT_FORKSERVER": "/nonexistent"}
    done = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['circuit_dispatch']"


PRELOADED = """
import sys
from circuit_dispatch import GROUPS, forkserver
forkserver.preload()
print(" ".join(sorted(sys.modules)))
"""


def test_the_preload_takes_every_group_and_the_circuit_packages_they_import():
    loaded = subprocess.run([sys.executable, "-c", PRELOADED], capture_output=True, text=True,
                            check=True).stdout.split()
    from circuit_dispatch import GROUPS

    for module in GROUPS.values():
        assert module in loaded
    for module in ("circuit_common.completion", "circuit_common.manpage", "circuit_netlink",
                   "circuit_qos.tc", "circuit_lb.ipvs", "circuit_cluster.etcd", "docopt"):
        assert module in loaded


FAILING_SERVER = """
import os, sys
from circuit_dispatch import forkserver

def run(argv):
    print("ran", *argv, flush=True)
    return int(argv[-1])

real_context = forkserver.context

def context(pid):
    if pid == "self" and os.path.exists({flag!r}):
        if {once!r}:
            os.unlink({flag!r})
        raise OSError("planted: cannot read its own context")
    return real_context(pid)

forkserver.context = context
sys.argv[0] = {script!r}
sys.exit(forkserver.main(["--socket", {socket!r}], run))
"""


def started(server: subprocess.Popen, path: str) -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        assert server.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)


def test_a_child_that_fails_before_its_connection_ends_there_and_the_server_serves_on(tmp_path):
    """Before, it unwound into the server's loop and main()'s cleanup removed the live socket."""
    path, flag, log = str(tmp_path / "fs.sock"), tmp_path / "fail", tmp_path / "log"
    script = str(ROOT / "bin" / "circuit")
    flag.touch()
    code = FAILING_SERVER.format(script=script, socket=path, flag=str(flag), once=True)
    with open(log, "a") as stderr:
        server = subprocess.Popen([sys.executable, "-c", code], stderr=stderr)
    try:
        started(server, path)
        deadline = time.monotonic() + 10
        while "failed before it took a connection" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        env = os.environ | DISPATCHER_ONLY | {"CIRCUIT_FORKSERVER": path}
        for _ in range(6):  # more than the idle children: replacements serve too
            done = subprocess.run([sys.executable, "-S", script, "x", "7"], env=env,
                                  capture_output=True, text=True)
            assert (done.returncode, done.stdout) == (7, "ran x 7\n"), done.stderr
        assert server.poll() is None and os.path.exists(path)
        assert "planted: cannot read its own context" in log.read_text()
    finally:
        server.terminate()
        assert server.wait(timeout=10) == 0
    assert not os.path.exists(path)


def test_children_that_fail_one_after_another_stop_the_server_rather_than_fork_in_a_loop(
        tmp_path):
    path, flag = str(tmp_path / "fs.sock"), tmp_path / "fail"
    flag.touch()
    code = FAILING_SERVER.format(script=str(ROOT / "bin" / "circuit"), socket=path,
                                 flag=str(flag), once=False)
    server = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert server.returncode == 0 and not os.path.exists(path)
    lines = server.stderr.splitlines()
    died = [line for line in lines if "idle child" in line]
    assert len(died) == forkserver.IDLE_DEATHS and died[-1].endswith("one after another did")
    assert sum("failed before it took a connection" in line for line in lines) >= len(died)


@pytest.mark.parametrize("value", ["off", ""])
def test_a_fork_server_turned_off_refuses_to_start(value, tmp_path):
    """Not a socket named `off` in the working directory."""
    done = subprocess.run([sys.executable, str(ROOT / "bin" / "circuit"), "forkserver"],
                          env=os.environ | {"CIRCUIT_FORKSERVER": value}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "turns the fork server off" in done.stderr and list(tmp_path.iterdir()) == []
