"""A server at --state etcd://… that is not etcd (HTML, JSON of another shape, fields etcd
always sends missing or of the wrong type) is one line, exit 11, nothing written: a real HTTP
server in a thread of this test, on loopback, answering every request with the same body."""

import http.server
import os
import threading

import pytest
from test_cli import circuit

from circuit_common.errors import Unavailable

JUNK = {
    "html": b"<html><body>It works!</body></html>",
    "a list": b"[]",
    "no header": b"{}",
    "a header without revision": b'{"header": {"cluster_id": "1"}}',
    "a key that is no base64 text": b'{"header": {"revision": "5"}, "kvs": [{"key": 5}]}',
    "kvs that are no list": b'{"header": {"revision": "5"}, "kvs": "abc"}',
    "no lease ID": b'{"header": {"revision": "5"}, "kvs": []}',
}
COMMANDS = {"range": ("cluster", "list"), "get": ("network", "inspect", "blue"),
            "lease": ("lb", "create", "web", "10.9.0.1:80")}


@pytest.fixture
def server():
    """An HTTP server answering every POST with its body (set by the test)."""
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", str(len(httpd.body)))
            self.end_headers()
            self.wfile.write(httpd.body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    httpd.body = b""
    # polled every 50 ms: shutdown() waits for the next poll (0.5 s by default, per test)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def written(root) -> list[str]:
    """The records under root (the backend's cache aside)."""
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root)
                  for n in names if n.endswith(".json") and n != "state-backends.json")


CASES = [(junk, command) for junk in JUNK for command in COMMANDS
         if junk != "no lease ID" or command == "lease"]  # an empty range is an empty etcd's


@pytest.mark.parametrize(("junk", "command"), CASES)
def test_a_server_that_is_not_etcd_is_one_line_exit_11(server, tmp_path, junk, command):
    server.body = JUNK[junk]
    proc = circuit("--state", f"etcd://127.0.0.1:{server.server_address[1]}/x",
                   "--local-state", tmp_path, *COMMANDS[command])
    assert proc.returncode == Unavailable.exit_code, proc.stderr
    assert proc.stderr.startswith("circuit: etcd") and proc.stderr.count("\n") == 1, proc.stderr
    assert "internal error" not in proc.stderr and proc.stdout == ""
    assert written(tmp_path) == []
