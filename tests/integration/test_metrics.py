"""circuit metrics against real traffic, read back with prometheus-client's parsers: iperf3's
bytes through a shaped HTB class (and the container's interface), HTTP requests through an
nftables LB VIP, and /metrics served with the content type the Accept header asks for. One
host netns for the module: a shaped network with an iperf3 server, three httpd backends."""

import json
import socket
import subprocess
import time

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as prometheus

from harness import (
    CIRCUIT,
    Host,
    answered_by,
    bridge_conf,
    ipv4_of,
    run_forked,
    terminate,
    wait_for,
    web_backends,
)

VIP = "10.100.99.1"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, leak_check):
    tmp = tmp_path_factory.mktemp("metrics")
    host = Host(tmp)
    try:
        host.circuit("network", "create", host.conf(bridge_conf("shaped", "cm-shaped",
                                                                "10.100.20.0/24")))
        server = host.container(("iperf3", "-s"))
        host.circuit("network", "connect", server.pid, "shaped")
        host.circuit("network", "qos", "set", "--rate", "5000", "--ceiling", "6000", "shaped")
        backends = ipv4_of(web_backends(host, tmp, ["alpha", "beta", "gamma"]))
        host.circuit("lb", "create", "web", f"{VIP}:80", "--backend", "nftables")
        host.circuit("lb", "add", "web", *(f"{ip}:80" for ip in backends.values()))
        yield host, server, backends
    finally:
        host.close()


def scrape(host: Host, *args) -> dict:
    """{(sample name, labels as sorted items): value} of one `circuit metrics`."""
    proc = host.circuit("metrics", *args)
    assert proc.stderr == ""
    parse = openmetrics if "--openmetrics" in args else prometheus
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parse(proc.stdout) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def iperf_bytes(host: Host, server, reverse: bool = False) -> tuple[int, int]:
    """Payload bytes of one 2-second TCP stream host → container (container → host with
    reverse): what iperf3's receiver got, and what its sender sent, retransmissions (at most
    an MSS each) included."""
    args = ["iperf3", "-c", server.addresses()[0], "-t", 2, "-J", *(["-R"] if reverse else [])]
    for _ in range(50):  # the server may still be starting
        proc = host.run(*args, check=False, timeout=30)
        if proc.returncode == 0:
            end = json.loads(proc.stdout)["end"]
            return (end["sum_received"]["bytes"],
                    end["sum_sent"]["bytes"] + end["sum_sent"].get("retransmits", 0) * 1448)
        time.sleep(0.1)
    raise AssertionError(f"iperf3 failed: {proc.stdout[-300:]}")


@pytest.mark.parametrize(("direction", "reverse"), [("in", False), ("out", True)])
def test_shaped_class_counts_iperf_bytes(lab, direction, reverse):
    host, server, _ = lab
    labels = {"network": "shaped", "container": str(server.pid), "ifname": "eth0",
              "direction": direction}
    before = scrape(host)
    received, sent_by_iperf = iperf_bytes(host, server, reverse)
    after = scrape(host, "--openmetrics")
    sent = value(after, "circuit_qos_bytes_total", **labels) - \
        value(before, "circuit_qos_bytes_total", **labels)
    # the class sends the payload with its headers (≈ 5 %), and the stream's handshake
    assert received <= sent <= sent_by_iperf * 1.1 + 100_000, (received, sent_by_iperf, sent)
    assert value(after, "circuit_qos_packets_total", **labels) > \
        value(before, "circuit_qos_packets_total", **labels) + received / 1500
    assert value(after, "circuit_qos_overlimits_total", **labels) > \
        value(before, "circuit_qos_overlimits_total", **labels)  # 5 Mbit/s held it back
    assert value(after, "circuit_qos_backlog_bytes", **labels) >= 0
    through = value(after, "circuit_container_bytes_total", **labels) - \
        value(before, "circuit_container_bytes_total", **labels)
    assert received <= through <= sent_by_iperf * 1.1 + 100_000, (received, sent_by_iperf,
                                                                 through)
    assert value(after, "circuit_network_attachments", network="shaped") == 1


def test_lb_targets_count_http_requests_through_the_vip(lab):
    host, _, backends = lab
    before = scrape(host)
    assert answered_by(host.netns, VIP, 30) == {"alpha": 10, "beta": 10, "gamma": 10}
    after = scrape(host, "--openmetrics")
    assert value(after, "circuit_lb_service_connections_total", service="web",
                 backend="nftables") - value(before, "circuit_lb_service_connections_total",
                                             service="web", backend="nftables") == 30
    for ip in backends.values():
        target = {"service": "web", "target": f"{ip}:80"}
        assert value(after, "circuit_lb_target_connections_total", **target) - value(
            before, "circuit_lb_target_connections_total", **target) == 10
        packets_in = value(after, "circuit_lb_target_packets_total", direction="in", **target)
        assert packets_in >= 40  # SYN, ACK, the GET, FIN… each connection
        bytes_in, bytes_out = (value(after, "circuit_lb_target_bytes_total", direction=d,
                                     **target) for d in ("in", "out"))
        assert bytes_out > bytes_in > 0  # answers outweigh the GETs
        assert value(after, "circuit_lb_target_weight", **target) == 1
        assert (("circuit_lb_target_health", tuple(sorted({**target, "state": "up"}.items())))
                not in after)  # no check: no health state

    host.circuit("lb", "check", "web", "tcp")  # no agent runs: every target unchecked
    checked = scrape(host)
    for ip in backends.values():
        states = {state: value(checked, "circuit_lb_target_health", service="web",
                               target=f"{ip}:80", state=state)
                  for state in ("up", "down", "unchecked")}
        assert states == {"up": 0, "down": 0, "unchecked": 1}
    host.circuit("lb", "check", "web", "none")


def http_get(netns: str, port: int, path: str, accept: str | None) -> dict:
    """Status (0: refused), content type and body of GET path on 127.0.0.1:port in netns."""
    def fetch():
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                         headers={"Accept": accept} if accept else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                print(json.dumps({"status": answer.status,
                                  "type": answer.headers["Content-Type"],
                                  "body": answer.read().decode()}))
        except urllib.error.HTTPError as e:
            print(json.dumps({"status": e.code}))
        except urllib.error.URLError:  # not listening yet
            print(json.dumps({"status": 0}))

    proc = run_forked(netns, fetch)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def free_port(host: Host) -> int:
    def find():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            print(s.getsockname()[1])

    return int(run_forked(host.netns, find).stdout)


def test_listen_serves_both_formats_by_accept(lab):
    host, _, _ = lab
    port = free_port(host)
    served = subprocess.Popen(["nsenter", f"--net={host.netns}", CIRCUIT, "--state", host.state,
                               "metrics", "--listen", f"127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: http_get(host.netns, port, "/metrics", None)["status"] == 200,
                        timeout=10)
        plain = http_get(host.netns, port, "/metrics", None)
        assert plain["type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert not plain["body"].endswith("# EOF\n")
        assert any(f.name == "circuit_qos_bytes" for f in prometheus(plain["body"]))
        scraper = ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,"
                   "*/*;q=0.1")  # Prometheus' own Accept
        rich = http_get(host.netns, port, "/metrics", scraper)
        assert rich["type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
        assert rich["body"].endswith("\n# EOF\n")
        assert any(f.name == "circuit_lb_target_connections" for f in openmetrics(rich["body"]))
        assert http_get(host.netns, port, "/other", None)["status"] == 404

        taken = host.circuit("metrics", "--listen", f"127.0.0.1:{port}", check=False)
        assert taken.returncode == 5
        assert taken.stderr == f"circuit: 127.0.0.1:{port} is in use: another program " \
                               "listens there\n"
    finally:
        terminate(served)
    assert served.stderr.read() == f"serving metrics at http://127.0.0.1:{port}/metrics\n"


def test_top_once_measures_a_running_stream(lab):
    host, server, _ = lab
    labels = (("network", "shaped"), ("container", str(server.pid)), ("ifname", "eth0"),
              ("direction", "in"))
    start = scrape(host)[("circuit_container_bytes_total", tuple(sorted(labels)))]
    stream = subprocess.Popen(["nsenter", f"--net={host.netns}", "iperf3", "-c",
                               server.addresses()[0], "-t", "5"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # the stream runs once the interface has counted its first 100 kB
        assert wait_for(lambda: scrape(host)[("circuit_container_bytes_total",
                                              tuple(sorted(labels)))] > start + 100_000,
                        timeout=10)
        shown = json.loads(host.circuit("top", "--once", "--format", "json").stdout)
    finally:
        terminate(stream)
    row = next(c for c in shown["containers"] if c["network"] == "shaped")
    assert row["container"] == str(server.pid) and row["ifname"] == "eth0"
    assert 4e6 <= row["in_bits_per_second"] <= 7e6, row  # 5 Mbit/s, up to 6, with headers
    assert row["out_bits_per_second"] < 1e6  # the stream's ACKs
    assert 0.9 <= shown["interval"] <= 1.5
    assert {t["target"] for t in shown["targets"]} == {f"{ip}:80" for ip in lab[2].values()}
    table = host.circuit("top", "--once", "--interval", "0.2").stdout.splitlines()
    assert table[0].split() == ["CONTAINER", "NETWORK", "IFNAME", "IN", "OUT", "DROPS",
                                "DROPS/S"]


def test_top_in_a_terminal_refreshes_and_q_quits(lab, tmp_path):
    host, server, backends = lab
    tmux = ("tmux", "-S", tmp_path / "tmux.sock")
    done = tmp_path / "exit-code"
    host.run(*tmux, "new-session", "-d", "-x", "120", "-y", "40",
             f"{CIRCUIT} --state {host.state} top --interval 0.5; echo $? > {done}")
    try:
        def screen() -> list[list[str]]:
            shown = host.run(*tmux, "capture-pane", "-p", check=False).stdout
            return [line.split() for line in shown.splitlines() if line.strip()]

        def target_row(lines, ip):
            return next((line for line in lines if line[1:2] == [f"{ip}:80"]), None)

        ip = backends["alpha"]
        # the first frame has no rates yet (-); the next has them: it refreshed
        assert wait_for(lambda: (row := target_row(screen(), ip)) and row[2] != "-",
                        timeout=15), screen()
        lines = screen()
        assert lines[0][:2] == ["circuit", "top"] and "quits" in lines[0]
        assert lines[1] == ["CONTAINER", "NETWORK", "IFNAME", "IN", "OUT", "DROPS", "DROPS/S"]
        assert any(line[:3] == [str(server.pid), "shaped", "eth0"] for line in lines)
        assert target_row(lines, ip)[0] == "web"
        host.run(*tmux, "send-keys", "q")
        assert wait_for(done.exists, timeout=10) and done.read_text() == "0\n"
    finally:
        host.run(*tmux, "kill-server", check=False)
