"""circuit-lb without a kernel: ADDR:PORT as users write it, and drift from the kernel's table."""

import pytest

from circuit_common.errors import InvalidInput
from circuit_lb.address import Endpoint, parse_endpoint


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


def test_drift_names_each_target_that_differs(monkeypatch):
    from circuit_lb import ipvs
    from circuit_lb.services import Services

    record = {"name": "web", "addr": "10.100.99.1", "port": 80, "protocol": "tcp",
              "scheduler": "rr", "targets": [
                  {"addr": "10.0.0.1", "port": 80, "forward": "masq", "weight": 1},
                  {"addr": "10.0.0.2", "port": 80, "forward": "masq", "weight": 1},
                  {"addr": "fd00::3", "port": 80, "forward": "masq", "weight": 1}]}
    in_kernel = {("tcp", Endpoint("10.100.99.1", 80)): {"scheduler": "wlc", "targets": {
        Endpoint("10.0.0.1", 80): ("masq", 1), Endpoint("10.0.0.2", 80): ("route", 1),
        Endpoint("10.0.0.4", 80): ("masq", 1)}}}
    monkeypatch.setattr(ipvs, "read_proc", lambda: in_kernel)
    monkeypatch.setattr(ipvs, "ensure_ipvs", lambda: None)
    assert Services.drift([record, {**record, "name": "gone", "port": 81}]) == [
        "service web has scheduler wlc in the kernel",
        "service web: target [fd00::3]:80 is missing from the kernel",
        "service web: target 10.0.0.4:80 is in the kernel only",
        "service web: target 10.0.0.2:80 differs in the kernel",
        "service gone is missing from the kernel"]
