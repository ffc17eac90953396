"""Traffic helpers: servers in containers, and the clients that measure what reaches them."""

import json
import socket
import sys
import time
from collections import Counter
from pathlib import Path

from harness.forked import run_forked
from harness.netns import Container, Host


def httpd(host: Host, www_root: Path, name: str, network: str = "sandbox",
          *connect_args: str) -> Container:
    """A busybox httpd container that serves its own name, connected to network (with
    connect_args, as --name NAME)."""
    www = www_root / name
    www.mkdir()
    (www / "index.html").write_text(f"{name}\n")
    c = host.container(("busybox", "httpd", "-f", "-p", "80", "-h", www))
    host.circuit("network", "connect", c.pid, network, *connect_args)
    return c


UDP_ANSWER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(100)
    s.sendto(sys.argv[1].encode(), peer)
"""


def udp_responder(host: Host, name: str, port: int = 5353, network: str = "sandbox"
                  ) -> Container:
    """A container that answers every UDP datagram on port with its name, connected to network
    (Debian's busybox-static nc has no UDP mode: Python stands in for it)."""
    c = host.container((sys.executable, "-c", UDP_ANSWER, name, port))
    host.circuit("network", "connect", c.pid, network)
    return c


def udp_answers(netns: str, address: str, count: int, port: int = 5353) -> list[str]:
    """Who answered count UDP questions to address:port from inside netns, each asked from a
    new socket (a new port: a new connection for a load balancer)."""

    def ask():
        for _ in range(count):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(b"who?", (address, port))
                print(s.recv(100).decode(), flush=True)

    proc = run_forked(netns, ask)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def web_backends(host: Host, www_root: Path, names, conf: dict | None = None
                 ) -> dict[str, Container]:
    """One busybox httpd per name, serving its own name, on the network conf describes (the
    seed's bridge network, sandbox, by default), which is created first."""
    from harness.netns import bridge_conf

    host.circuit("network", "create", host.conf(conf or bridge_conf()))
    return {name: httpd(host, www_root, name, (conf or {}).get("name", "sandbox"))
            for name in names}


def ipv4_of(containers: dict[str, Container]) -> dict[str, str]:
    """Each container's first IPv4 address, by name."""
    return {name: c.addresses()[0] for name, c in containers.items()}


def answered_by(netns: str, address: str, count: int) -> Counter:
    """Who answered count HTTP requests to address from inside netns, by body (a name)."""
    return Counter(http_get_bodies(netns, address, count))


def wait_for(predicate, timeout=5.0, interval=0.02):
    """Poll predicate until it holds or timeout seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def iperf_mbit(host: Host, server: Container, reverse: bool = False, seconds: int = 2,
               omit: int = 1) -> float:
    """Mbit/s of one TCP stream between the host netns and an iperf3 server in a container:
    host → container, or container → host with reverse; measured over seconds after the
    first omit seconds (TCP's slow start, a shaper's first burst) are left out."""
    ip = server.addresses()[0]
    args = ["iperf3", "-c", ip, "-t", seconds, "-O", omit, "-J", *(["-R"] if reverse else [])]
    for _ in range(50):  # the server may still be starting
        proc = host.run(*args, check=False, timeout=seconds + 20)
        if proc.returncode == 0:
            return json.loads(proc.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
        time.sleep(0.1)
    raise AssertionError(f"iperf3 to {ip} failed: {proc.stdout[-300:]}")


def min_rtt(container: Container, ip: str, count: int = 5) -> float:
    """The smallest ping RTT in ms from a container to ip."""
    out = container.run("busybox", "ping", "-c", count, "-i", "0.2", "-W", "2", ip).stdout
    return float(out.split("min/avg/max = ")[1].split("/")[0])


def port_open(netns: str, address: str, port: int) -> bool:
    """Whether a TCP connection from inside netns to address:port is accepted (2 s)."""

    def connect():
        with socket.create_connection((address, port), timeout=2):
            pass

    return run_forked(netns, connect).returncode == 0


def http_get_bodies(netns: str, url_host: str, count: int, port: int = 80) -> list[str]:
    """The bodies of count HTTP/1.0 GETs of / from inside netns (one fork for all)."""

    def fetch():
        for _ in range(count):
            with socket.create_connection((url_host, port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            print(data.split(b"\r\n\r\n", 1)[1].decode().strip(), flush=True)

    proc = run_forked(netns, fetch)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()
