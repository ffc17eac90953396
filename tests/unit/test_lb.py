"""circuit-lb without a kernel: ADDR:PORT as users write it, and drift from the kernel's table."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from circuit_common.errors import InvalidInput
from circuit_common.store import Store
from circuit_lb.address import Endpoint, parse_endpoint, unusable


@pytest.mark.parametrize("text, ip, port, shown", [
    ("10.0.0.1:80", "10.0.0.1", 80, "10.0.0.1:80"),
    ("[2001:DB8:0:0::1]:443", "2001:db8::1", 443, "[2001:db8::1]:443"),
    ("[fd10:0099:0000:0000:0000:0000:0000:0001]:80", "fd10:99::1", 80, "[fd10:99::1]:80"),
])
def test_endpoints_have_one_spelling(text, ip, port, shown):
    where = parse_endpoint(text)
    assert where == Endpoint(ip, port) and str(where) == shown
    assert where.version == (6 if ":" in ip else 4)


@pytest.mark.parametrize("text, message", [
    ("010.0.0.1:80", "use ADDR:PORT"), ("1.2.3:80", "use ADDR:PORT"),
    ("[::g]:80", "use ADDR:PORT"), ("2001:db8::1:80", "use ADDR:PORT"),
    ("10.0.0.1:http", "use ADDR:PORT"), ("10.0.0.1", "use ADDR:PORT"),
    ("10.0.0.1:0", "use 1-65535"), ("10.0.0.1:65536", "use 1-65535"),
])
def test_malformed_endpoints_are_refused_in_one_line(text, message):
    with pytest.raises(InvalidInput) as refused:
        parse_endpoint(text, "target")
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_drift_names_each_target_that_differs(monkeypatch, tmp_path):
    from circuit_lb import ipvs
    from circuit_lb.services import Services

    record = {"schema": 1, "name": "web", "addr": "10.100.99.1", "port": 80, "protocol": "tcp",
              "scheduler": "rr", "targets": [
                  {"addr": "10.0.0.1", "port": 80, "forward": "masq", "weight": 1},
                  {"addr": "10.0.0.2", "port": 80, "forward": "masq", "weight": 1},
                  {"addr": "fd00::3", "port": 80, "forward": "masq", "weight": 1}]}
    in_kernel = {("tcp", Endpoint("10.100.99.1", 80)): {"scheduler": "wlc", "targets": {
        Endpoint("10.0.0.1", 80): ("masq", 1), Endpoint("10.0.0.2", 80): ("route", 1),
        Endpoint("10.0.0.4", 80): ("masq", 1)}}}
    monkeypatch.setattr(ipvs, "read_proc", lambda: in_kernel)
    monkeypatch.setattr(ipvs, "ensure_ipvs", lambda: None)
    services = Services(SimpleNamespace(store=Store(tmp_path)))
    assert services.drift([record, {**record, "name": "gone", "port": 81}]) == [
        "service web has scheduler wlc in the kernel",
        "service web: target [fd00::3]:80 is missing from the kernel",
        "service web: target 10.0.0.4:80 is in the kernel only",
        "service web: target 10.0.0.2:80 differs in the kernel",
        "service gone is missing from the kernel"]


BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def circuit_lb(state, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BIN / "circuit"), "--state", str(state), "lb",
                           *argv], capture_output=True, text=True, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("vip, reason", [
    ("0.0.0.0", "unspecified"), ("255.255.255.255", "broadcast"), ("224.0.0.5", "multicast"),
    ("127.0.0.1", "loopback"), ("[::]", "unspecified"), ("[::1]", "loopback"),
    ("[ff02::1]", "multicast"), ("[fe80::1]", "link-local"),
    ("[::ffff:10.0.0.1]", "write it as 10.0.0.1")])
def test_a_vip_no_traffic_can_reach_is_refused_before_the_kernel(tmp_path, vip, reason):
    made = circuit_lb(tmp_path, "create", "x", f"{vip}:80", "--backend", "nftables")
    assert made.returncode == 3 and reason in made.stderr and made.stderr.count("\n") == 1, \
        made.stderr
    assert not (tmp_path / "services").exists()


def test_a_target_that_is_its_own_vip_or_unusable_is_refused(tmp_path):
    (tmp_path / "services").mkdir(mode=0o700, parents=True)
    record = {"schema": 1, "name": "web", "addr": "10.100.99.1", "port": 80, "protocol": "tcp",
              "scheduler": "rr", "persistent": None, "backend": "nftables", "targets": [],
              "vip_added": True, "created": "2026-12-02T00:00:00Z"}
    path = tmp_path / "services" / "web.json"
    path.write_text(json.dumps(record))
    path.chmod(0o600)
    for target, message in (("10.100.99.1:80", "is service web's own address"),
                            ("0.0.0.0:80", "unspecified"), ("239.1.1.1:80", "multicast")):
        added = circuit_lb(tmp_path, "add", "web", "10.0.0.2:80", target)
        assert added.returncode == 3 and message in added.stderr, added.stderr
    assert json.loads(path.read_text())["targets"] == []
    assert unusable("10.100.99.2") is None and unusable("fd00::1") is None


def test_strangers_in_the_table_are_named():
    from circuit_lb import table

    record = {"name": "web", "addr": "10.100.99.1", "port": 80, "protocol": "tcp",
              "scheduler": "rr", "backend": "nftables",
              "targets": [{"addr": "10.0.0.1", "port": 80, "forward": "masq", "weight": 1}]}
    wanted = table.build([record])
    ref = {"family": "inet", "table": "circuit_lb"}
    kernel = [{"chain": {**ref, "name": name, **(hook or {})}}
              for name, (hook, _) in wanted.chains.items()]
    kernel += [{"rule": {**ref, "chain": name, "expr": rule["expr"]}}
               for name, (_, rules) in wanted.chains.items() for rule in rules]
    kernel += [{"set": {**ref, "name": name}} for name in wanted.sets]
    assert table.strangers(kernel, wanted) == [] and table.strangers([], wanted) == []
    kernel[0]["chain"]["policy"] = "drop"
    kernel += [{"chain": {**ref, "name": "theirs"}}, {"set": {**ref, "name": "blocked"}},
               {"rule": {**ref, "chain": "services", "expr": []}}]
    assert table.strangers(kernel, wanted) == [
        "chain prerouting of table inet circuit_lb has policy drop (circuit's: accept)",
        "chain services of table inet circuit_lb has 2 rules, the services make 1 (a rule "
        "added or deleted by hand?)",
        "table inet circuit_lb has chain theirs, which no service makes",
        "table inet circuit_lb has set blocked, which no service makes"]
