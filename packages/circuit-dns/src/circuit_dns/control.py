"""Talking to the DNS server of a state in this network namespace, and starting it on demand.

The server listens on an abstract unix socket named after the state's path: abstract names
belong to a network namespace, so there is one server per netns and state, found without a
file. `reload` makes it read the names again and answers {"errors": {network: why}} once
every network's sockets are bound and its names answerable.
"""

import _socket  # the C module: socket's enums cost ≈ 5 ms on the hook's path
import json
import os
import subprocess
import sys
import time

from circuit_common.errors import CircuitError, Conflict
from circuit_common.proc import process

START_TIMEOUT = 5.0  # seconds for a new server to listen
REPLY_TIMEOUT = 5.0


def socket_name(state_root: str) -> bytes:
    import hashlib

    digest = hashlib.sha256(os.path.realpath(state_root).encode()).hexdigest()[:20]
    return b"\0circuit-dns/" + digest.encode()


def netns_id() -> str:
    st = os.stat("/proc/self/ns/net")
    return f"{st.st_dev}-{st.st_ino}"


def pidfile(store) -> str:
    return store.path("dns", f"server-{netns_id()}.pid")


def request(store, command: str, timeout: float = REPLY_TIMEOUT) -> dict | None:
    """The server's answer to command; None when no server listens."""
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    conn.settimeout(timeout)
    try:
        try:
            conn.connect(socket_name(store.root))
            conn.sendall(command.encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except (ConnectionRefusedError, ConnectionResetError, FileNotFoundError):
            return None  # none listens, or it was just ending
        if not reply:
            return None
    except OSError as e:
        raise CircuitError(f"the DNS server of {store.root} did not answer {command!r}: "
                           f"{e.strerror or e}; see {store.path('dns', 'server.log')}") from None
    finally:
        conn.close()
    try:
        return json.loads(reply)
    except ValueError:
        raise CircuitError(f"the DNS server of {store.root} answered {command!r} with "
                           f"garbage; see {store.path('dns', 'server.log')}") from None


def reload(store, network: str | None = None, start: bool = True) -> None:
    """Have the server answer the names stored now (started first when none runs and start);
    Conflict in one line when it cannot serve network (its port 53 is taken)."""
    answer = request(store, "reload")
    if answer is None and start:
        with store.lock("dns", "server"):
            answer = request(store, "reload")
            if answer is None:
                spawn(store)
                answer = request(store, "reload")
    errors = (answer or {}).get("errors") or {}
    if network in errors:
        raise Conflict(f"network {network}: {errors[network]}")


def spawn(store) -> None:
    """Start the server detached (its own session, stdio to the state's dns/server.log) and
    wait until it listens."""
    log_path = store.path("dns", "server.log")
    store.write_bytes(log_path, b"", durable=False)
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "circuit_dns.server", "--state", store.root],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            cwd="/", close_fds=True)
    deadline = time.monotonic() + START_TIMEOUT
    while request(store, "ping") is None:
        if child.poll() is not None or time.monotonic() > deadline:
            with open(log_path, "rb") as log:
                last = (log.read().decode(errors="replace").strip().splitlines() or [""])[-1]
            raise CircuitError(f"the DNS server did not start: {last or 'no answer'}; see "
                               f"{log_path}")
        time.sleep(0.005)


def running(store):
    """The server's process (pid, start time) from its pidfile, None when none runs."""
    found = store.read(pidfile(store))
    if found is None:
        return None
    proc = process(found["pid"]) if type(found.get("pid")) is int else None
    if proc is None or proc.start_time != found.get("start_time"):
        return None
    return proc
