"""circuit metrics without a kernel: both text formats read back by prometheus-client's own
parsers, the Accept negotiation, --listen and --textfile refusals, a collector that fails."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as prometheus

from circuit_common.errors import InvalidInput
from circuit_common.metrics import COUNTER, GAUGE, INFO, Family
from circuit_metrics import cli, exposition
from circuit_netlink import attribute
from circuit_qos import tc

BIN = Path(sys.executable).parent


def families() -> list[Family]:
    sent = Family("circuit_qos_bytes", COUNTER, 'bytes "sent"\\ by a class', ("network",
                                                                             "container"),
                  "bytes")
    sent.add(("blue", 'we"ird\\na\nme'), 12345678901234)
    sent.add(("blue", "web-00"), 0)
    backlog = Family("circuit_qos_backlog_bytes", GAUGE, "queued now", ("network",), "bytes")
    backlog.add(("blue",), 1.5)
    build = Family("circuit_build", INFO, "the circuit that answers", ("version",))
    build.add(("0.1.0",), 1)
    empty = Family("circuit_lb_target_weight", GAUGE, "weights", ("service", "target"))
    return [sent, backlog, build, empty]


def samples(parsed) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parsed for s in family.samples}


@pytest.mark.parametrize("openmetrics_format", [False, True])
def test_both_formats_parse_back_with_every_value(openmetrics_format):
    text = exposition.render(families(), openmetrics_format)
    parse = openmetrics if openmetrics_format else prometheus
    parsed = list(parse(text))
    by_name = {f.name: f for f in parsed}
    assert by_name["circuit_qos_bytes"].type == "counter"
    if openmetrics_format:
        assert by_name["circuit_build"].type == "info"
    else:
        assert by_name["circuit_build_info"].type == "gauge"
    if openmetrics_format:
        assert by_name["circuit_qos_bytes"].unit == "bytes"
        assert text.endswith("\n# EOF\n")
    else:
        assert "# EOF" not in text
    got = samples(parsed)
    assert got[("circuit_qos_bytes_total", (("container", 'we"ird\\na\nme'),
                                            ("network", "blue")))] == 12345678901234
    assert got[("circuit_qos_bytes_total", (("container", "web-00"), ("network", "blue")))] == 0
    assert got[("circuit_qos_backlog_bytes", (("network", "blue"),))] == 1.5
    assert got[("circuit_build_info", (("version", "0.1.0"),))] == 1
    assert by_name["circuit_qos_bytes"].documentation == 'bytes "sent"\\ by a class'


@pytest.mark.parametrize(("accept", "wanted"), [
    ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
     "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", True),  # Prometheus' own
    ("text/plain;version=0.0.4", False),
    ("", False),
    ("*/*", False),
    ("application/openmetrics-text; q=0", False),
])
def test_openmetrics_only_when_asked(accept, wanted):
    assert cli.wants_openmetrics(accept) is wanted


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:9464", ("::1", 9464)),
    (":9464", ("", 9464))])
def test_listen_addresses(value, expected):
    assert cli.parse_listen(value) == expected


@pytest.mark.parametrize("value", ["9464", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
                                   "127.0.0.1:09464", "localhost:9464", "::1:9464",
                                   "[127.0.0.1]:9464", "1.2.3:80"])
def test_bad_listen_addresses(value):
    with pytest.raises(InvalidInput, match="invalid --listen"):
        cli.parse_listen(value)


def test_class_stats_read_from_the_payload():
    basic = attribute(tc.TCA_STATS_BASIC, tc.BASIC.pack(2**40 + 5, 77))
    queue = attribute(tc.TCA_STATS_QUEUE, tc.QUEUE.pack(3, 4500, 9, 0, 12))
    payload = (tc.TCMSG.pack(0, 7, tc.CLASS, tc.PARENT, 0) + attribute(1, b"htb\0")
               + attribute(tc.TCA_STATS2, basic + queue))
    assert tc.class_stats(payload) == {"bytes": 2**40 + 5, "packets": 77, "drops": 9,
                                       "overlimits": 12, "backlog_bytes": 4500,
                                       "backlog_packets": 3}
    wide = attribute(tc.TCA_STATS_PKT64, (2**33).to_bytes(8, sys.byteorder))
    payload = tc.TCMSG.pack(0, 7, tc.CLASS, tc.PARENT, 0) + attribute(tc.TCA_STATS2,
                                                                      basic + wide)
    assert tc.class_stats(payload)["packets"] == 2**33
    assert tc.class_stats(tc.TCMSG.pack(0, 7, tc.CLASS, tc.PARENT, 0))["bytes"] == 0


@pytest.fixture
def state(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    return directory


def circuit(state: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "circuit", "--state", state, "metrics", *args],
                          capture_output=True, text=True)


def test_an_empty_state_gives_build_info_and_collectors(state):
    proc = circuit(state, "--openmetrics")
    assert proc.returncode == 0 and proc.stderr == ""
    got = samples(openmetrics(proc.stdout))
    assert {labels for name, labels in got if name == "circuit_scrape_collector_success"} == {
        (("collector", "lb"),), (("collector", "net"),), (("collector", "qos"),)}
    assert all(v == 1 for (name, _), v in got.items()
               if name == "circuit_scrape_collector_success")


def test_a_broken_record_fails_its_collector_only(state):
    (state / "qos").mkdir(mode=0o700)
    (state / "qos" / "blue.json").write_text("{not json")
    os.chmod(state / "qos" / "blue.json", 0o600)
    proc = circuit(state)
    assert proc.returncode == 9
    assert proc.stderr.startswith("circuit: metrics of qos: ") and proc.stderr.count("\n") == 1
    got = samples(prometheus(proc.stdout))
    assert got[("circuit_scrape_collector_success", (("collector", "qos"),))] == 0
    assert got[("circuit_scrape_collector_success", (("collector", "net"),))] == 1


def test_textfile_is_written_whole_and_refusals_are_one_line(state, tmp_path):
    out = tmp_path / "textfile"
    out.mkdir()
    proc = circuit(state, "--textfile", out)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert [p.name for p in out.iterdir()] == ["circuit.prom"]
    written = samples(prometheus((out / "circuit.prom").read_text()))
    assert any(name == "circuit_build_info" for name, _ in written)
    proc = circuit(state, "--textfile", tmp_path / "missing")
    assert proc.returncode == 4 and proc.stdout == ""
    assert proc.stderr == f"circuit: textfile directory {tmp_path / 'missing'} does not exist " \
                          "(node_exporter's --collector.textfile.directory)\n"
    proc = circuit(state, "--listen", "localhost:80")
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1
    proc = circuit(state, "--bogus")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def top_sample(when: float, sent: int, drops: int, connections: int, state: str) -> tuple:
    """A sample as top.sample gives it: one container, one checked LB target."""
    container = (("network", "blue"), ("container", "web-00"), ("ifname", "eth0"))
    target = (("service", "web"), ("target", "10.0.0.2:80"))
    return when, {
        "circuit_container_bytes": {(*container, ("direction", "in")): sent,
                                    (*container, ("direction", "out")): sent // 2},
        "circuit_container_drops": {(*container, ("direction", "in")): 0,
                                    (*container, ("direction", "out")): 0},
        "circuit_qos_drops": {(*container, ("direction", "in")): drops},
        "circuit_lb_target_connections": {target: connections},
        "circuit_lb_target_health": {(*target, ("state", s)): int(s == state)
                                     for s in ("up", "down", "unchecked")}}, []


def test_top_rates_from_two_samples():
    from circuit_metrics import top

    first = top.view(None, top_sample(10.0, 1000, 1, 5, "unchecked"))
    assert first["containers"][0]["in_bits_per_second"] is None
    assert top.render(first).splitlines()[1].split() == ["web-00", "blue", "eth0", "-", "-",
                                                         "1", "-"]
    shown = top.view(top_sample(10.0, 1000, 1, 5, "unchecked"),
                     top_sample(12.0, 251_000, 5, 25, "down"))
    row = shown["containers"][0]
    assert (row["in_bits_per_second"], row["out_bits_per_second"]) == (1_000_000, 500_000)
    assert (row["drops"], row["drops_per_second"]) == (5, 2)
    assert shown["targets"] == [{"service": "web", "target": "10.0.0.2:80", "connections": 25,
                                 "connections_per_second": 10, "health": "down"}]
    lines = top.render(shown).splitlines()
    assert lines[1].split() == ["web-00", "blue", "eth0", "1.0", "Mbit/s", "500.0", "kbit/s",
                                "5", "2.0"]
    assert lines[-1].split() == ["web", "10.0.0.2:80", "10.0", "25", "down"]
    again = top.view(top_sample(12.0, 251_000, 5, 25, "up"), top_sample(13.0, 100, 5, 25, "up"))
    assert again["containers"][0]["in_bits_per_second"] == 800  # made again: counted from 0


@pytest.mark.parametrize("value", ["0", "0.05", "3601", "abc", "1e3", "-1", "٣", "nan"])
def test_bad_intervals(value):
    from circuit_metrics import top

    with pytest.raises(InvalidInput, match="invalid --interval"):
        top.parse_interval(value)
