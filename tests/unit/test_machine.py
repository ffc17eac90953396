"""Kernel facts for `circuit version` and `doctor`, read from files only (a fake root here);
etcd members asked for their version (fake ones on loopback here)."""

import gzip
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from circuit_common.machine import etcd_members, kernel_features


def test_loaded_builtin_module_and_absent(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "modules").write_text("sch_htb 49152 0 - Live 0x0\n")
    modules = tmp_path / "lib" / "modules" / "6.1.0-x"
    modules.mkdir(parents=True)
    (modules / "modules.builtin").write_text("kernel/drivers/net/veth.ko\n"
                                             "kernel/net/bridge/bridge.ko\n")
    (modules / "modules.dep").write_text("kernel/net/netfilter/ipvs/ip_vs.ko: kernel/x.ko\n"
                                         "kernel/net/sched/sch_htb.ko:\n")
    features = kernel_features(f"{tmp_path}/", "6.1.0-x")
    assert features["htb"] == "loaded" and features["veth"] == features["bridge"] == "builtin"
    assert features["ipvs"] == "module" and features["netem"] == "no"


def test_a_kernel_without_modules_answers_from_its_config(tmp_path):
    (tmp_path / "proc").mkdir()
    with gzip.open(tmp_path / "proc" / "config.gz", "wt") as f:
        f.write("# CONFIG_MODULES is not set\nCONFIG_NF_TABLES=y\n# CONFIG_IP_VS is not set\n")
    features = kernel_features(f"{tmp_path}/", "6.18-x")
    assert features["nftables"] == "builtin" and features["ipvs"] == features["netem"] == "no"


def test_nothing_to_read_is_unknown(tmp_path):
    assert set(kernel_features(f"{tmp_path}/", "6.18-x").values()) == {"unknown"}


def serve(body: bytes, status: int = 200):
    """An HTTP server on loopback answering GET /version with body; its HOST:PORT, and the
    paths it was asked for."""
    asked = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}", asked


@pytest.fixture
def etcd():
    """A fake etcd member: its endpoint, and the paths it was asked for."""
    server, endpoint, asked = serve(json.dumps(
        {"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}).encode())
    yield endpoint, asked
    server.shutdown()
    server.server_close()


def closed_port() -> str:
    """HOST:PORT on loopback where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_each_etcd_endpoint_answers_its_version_or_why_not(etcd):
    endpoint, asked = etcd
    dead = closed_port()
    assert etcd_members([dead, endpoint]) == [
        {"endpoint": dead, "error": "connection refused"},
        {"endpoint": endpoint, "version": "3.4.23"}]
    assert asked == ["/version"]
    assert etcd_members([]) == []


def test_an_endpoint_that_never_answers_times_out():
    with socket.socket() as listening:  # connections queue, and nothing ever reads them
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        endpoint = f"127.0.0.1:{listening.getsockname()[1]}"
        assert etcd_members([endpoint], timeout=0.2) == [
            {"endpoint": endpoint, "error": "timed out"}]


@pytest.mark.parametrize(("body", "status", "error"), [
    (b"<html>hello</html>", 200, "answered, but not as etcd does (no etcdserver version)"),
    (b'{"version": "1"}', 200, "answered, but not as etcd does (no etcdserver version)"),
    (b"", 404, "HTTP 404 Not Found"),
])
def test_something_else_on_the_port_is_no_etcd(body, status, error):
    server, endpoint, _ = serve(body, status)
    try:
        assert etcd_members([endpoint]) == [{"endpoint": endpoint, "error": error}]
    finally:
        server.shutdown()
        server.server_close()
