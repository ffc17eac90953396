"""circuit-lb keeps the store and the kernel in agreement when a step fails: nft refusing, the
state write failing, IPVS services made by other tools, a VIP shared by two services. The kernel
is replaced by recording fakes (no root), each bound to the signature of what it stands in for:
a method the real IPVS connection lacks, or arguments it would refuse, fail the test."""

import functools
import inspect
import json
import subprocess
from types import SimpleNamespace

import pytest

from circuit_common import nft
from circuit_common.errors import InvalidInput, KernelUnsupported
from circuit_common.store import Store
from circuit_lb import ipvs, ipvs_netlink, table, vip
from circuit_lb.address import Endpoint
from circuit_lb.services import Services


class Kernel:
    """What circuit-lb asked of the kernel: nft transactions, addresses on lo, IPVS requests."""

    def __init__(self, monkeypatch):
        self.transactions: list[list[dict]] = []
        self.local: set[str] = set()
        self.ipvs: list[tuple] = []
        self.refuse_nft = False
        self.monkeypatch = monkeypatch
        self.stand_in(nft, "_nft", self.nft)
        self.stand_in(vip, "is_local", lambda ip: ip in self.local)
        self.stand_in(vip, "add", self.local.add)
        self.stand_in(vip, "remove", self.local.discard)
        self.stand_in(ipvs, "ensure_ipvs", lambda: None)
        self.stand_in(ipvs, "track_connections", lambda: None)
        self.stand_in(ipvs, "read_proc", dict)
        self.stand_in(ipvs_netlink, "connection", lambda store: self)

    def stand_in(self, module, name: str, fake) -> None:
        """module.name replaced by fake, called only with arguments the real one takes."""
        self.monkeypatch.setattr(module, name, bound(getattr(module, name), fake))

    def nft(self, args, stdin=None):
        if self.refuse_nft:
            return subprocess.CompletedProcess(args, 1, "", "internal:0:0-0: Error: Could not "
                                               "process rule: Operation not permitted\n")
        self.transactions.append(json.loads(stdin)["nftables"])
        return subprocess.CompletedProcess(args, 0, "", "")

    # the IPVS connection (ipvs_netlink.connection(store) yields it)
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, request):  # add_service, del_service, set_target, commit, …
        """A method of the real connection (ipvs_netlink.Ipvs), recorded when called as
        that method may be: a name it lacks, or arguments it would refuse, fail the test."""
        real = getattr(ipvs_netlink.Ipvs, request, None)
        if request.startswith("_") or not inspect.isfunction(real):
            raise AttributeError(f"ipvs_netlink.Ipvs has no method {request!r}")
        return bound(functools.partial(real, self),
                     lambda *args, **kw: self.ipvs.append((request, *args)))


def bound(real, fake):
    """fake, refusing (TypeError) what real's signature does not accept."""
    signature = inspect.signature(real)

    @functools.wraps(real)  # a fake standing in again keeps real's signature
    def call(*args, **kw):
        signature.bind(*args, **kw)
        return fake(*args, **kw)
    return call


@pytest.fixture
def kernel(monkeypatch):
    return Kernel(monkeypatch)


@pytest.fixture
def services(tmp_path):
    return Services(SimpleNamespace(store=Store(tmp_path)))


def records(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "services").glob("*.json"))


def test_a_refused_nft_transaction_leaves_no_record_and_no_vip(kernel, services, tmp_path):
    kernel.refuse_nft = True
    with pytest.raises(KernelUnsupported, match="Operation not permitted"):
        services.create("web", Endpoint("10.100.99.1", 80), "rr", "tcp", None, "nftables")
    assert records(tmp_path) == [] and kernel.local == set()

    kernel.refuse_nft = False  # a retry is not told "exists already"
    services.create("web", Endpoint("10.100.99.1", 80), "rr", "tcp", None, "nftables")
    assert records(tmp_path) == ["web.json"] and kernel.local == {"10.100.99.1"}

    kernel.refuse_nft = True
    with pytest.raises(KernelUnsupported):
        services.add("web", [(Endpoint("10.0.0.1", 80), None)], 1, "masq")
    assert services.get("web")["targets"] == []


def test_a_failed_state_write_rolls_the_kernel_back(kernel, services, tmp_path, monkeypatch):
    services.create("web", Endpoint("10.100.99.1", 80), "wrr", "tcp", None, "nftables")
    services.add("web", [(Endpoint("10.0.0.1", 80), 3)], 1, "masq")
    stored = services.get("web")
    kernel.transactions.clear()

    def full_disk(path, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(services.store, "write", full_disk)
    with pytest.raises(OSError):
        services.add("web", [(Endpoint("10.0.0.2", 80), 1)], 1, "masq")
    forward, back = kernel.transactions
    assert back == json.loads(json.dumps(table.changes(table.build([{**stored, "targets": [
        *stored["targets"], {"addr": "10.0.0.2", "port": 80, "forward": "masq", "weight": 1}]}]),
        table.build([stored]))))  # as nft reads it
    added = {"concat": ["tcp", "10.0.0.2", 80]}
    assert {"add": {"element": {**table.TABLE, "name": "out4", "elem": [added]}}} in forward
    assert {"delete": {"element": {**table.TABLE, "name": "out4", "elem": [added]}}} in back
    assert services.get("web") == stored


def test_a_failed_state_write_deletes_the_new_ipvs_service(kernel, services, tmp_path,
                                                            monkeypatch):
    monkeypatch.setattr(services.store, "write", lambda path, record: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        services.create("web", Endpoint("10.100.99.1", 80), "rr", "tcp", None, "ipvs")
    assert [request for request, *_ in kernel.ipvs] == ["add_service", "del_service"]
    assert kernel.transactions == [[{"add": {"table": {"family": "inet", "name": "circuit_lb"}}},
                                    *kernel.transactions[0][1:]],
                                   [{"delete": {"table": {"family": "inet",
                                                          "name": "circuit_lb"}}}]]
    assert records(tmp_path) == [] and kernel.local == set()


def test_a_vip_shared_by_two_services_goes_with_the_last_one(kernel, services):
    for name, port in (("web", 80), ("tls", 443)):
        services.create(name, Endpoint("10.100.99.1", port), "rr", "tcp", None, "nftables")
    assert services.get("tls")["vip_added"]  # added by web, owned by both
    services.delete("web")
    assert kernel.local == {"10.100.99.1"}
    services.delete("tls")
    assert kernel.local == set()
    assert kernel.transactions[-1] == [{"delete": {"table": {"family": "inet",
                                                            "name": "circuit_lb"}}}]


PROC_NET_IP_VS = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
SCTP 0A646301:0050 rr
  -> 0A000063:0050      Masq    1      0          0
TCP  0A646301:0050 wrr
  -> 0A000001:0050      Masq    3      0          0
  -> 0A000002:0050      Route   1      0          0
FWM  00000001 rr
  -> 0A000064:0000      Masq    1      0          0
  -> 0A000065:0000      Local   1      0          0
UDP  [fd10:0099:0000:0000:0000:0000:0000:0001]:0035 sh persistent 60
  -> [fd00:0000:0000:0000:0000:0000:0000:0003]:0035      Tunnel  2      0          0
"""


def test_read_proc_skips_sctp_and_fwmark_services(tmp_path, monkeypatch, services):
    proc = tmp_path / "ip_vs"
    proc.write_text(PROC_NET_IP_VS)
    monkeypatch.setattr(ipvs, "PROC", str(proc))
    assert ipvs.read_proc() == {
        ("tcp", Endpoint("10.100.99.1", 80)): {"scheduler": "wrr", "targets": {
            ("10.0.0.1", 80): ("masq", 3), ("10.0.0.2", 80): ("route", 1)}},
        ("udp", Endpoint("fd10:99::1", 53)): {"scheduler": "sh", "targets": {
            ("fd00::3", 53): ("tunnel", 2)}}}

    record = {"name": "web", "addr": "10.100.99.1", "port": 80, "protocol": "tcp",
              "scheduler": "wrr", "backend": "ipvs", "targets": [
                  {"addr": "10.0.0.1", "port": 80, "forward": "masq", "weight": 3},
                  {"addr": "10.0.0.2", "port": 80, "forward": "route", "weight": 1}]}
    monkeypatch.setattr(ipvs, "ensure_ipvs", lambda: None)
    assert services.drift([record]) == []  # no target of the SCTP or FWM service credited


def test_nftables_refuses_what_it_cannot_express(services):
    nftables = services.backends.nftables
    record = {"scheduler": "wlc", "targets": []}
    with pytest.raises(InvalidInput, match="use rr, wrr, sh"):
        nftables.check(record)
    with pytest.raises(InvalidInput, match="needs the ipvs backend"):
        nftables.check({"scheduler": "rr", "targets": [{"forward": "tunnel"}]})


def test_weights_become_ranges_of_one_numgen_map():
    record = {"name": "web", "addr": "10.100.99.1", "port": 80, "protocol": "tcp",
              "scheduler": "wrr", "backend": "nftables", "targets": [
                  {"addr": f"10.0.0.{i}", "port": 80, "forward": "masq", "weight": w}
                  for i, w in ((1, 3), (2, 1), (3, 0), (4, 1))]}
    rules = table.build([record]).chains["svc/web"][1]
    assert rules[0]["comment"] == "wrr"
    assert rules[1]["expr"][1]["dnat"] == {"family": "ip", "addr": {"map": {
        "key": {"numgen": {"mode": "inc", "mod": 5, "offset": 0}},
        "data": {"set": [[{"range": [0, 2]}, {"concat": ["10.0.0.1", 80]}],
                         [3, {"concat": ["10.0.0.2", 80]}],
                         [4, {"concat": ["10.0.0.4", 80]}]]}}}}
    sticky = table.build([{**record, "persistent": 60}]).chains["svc/web"][1][1]
    assert sticky["expr"][1]["dnat"]["addr"]["map"]["key"]["jhash"]["expr"] == {
        "payload": {"protocol": "ip", "field": "saddr"}}


def test_an_ipvs_add_whose_table_change_is_refused_puts_the_targets_back(kernel, services):
    """The table changes alongside the IPVS requests (nft runs while circuit encodes them):
    nft refusing undoes the targets the kernel took, and nothing is stored."""
    services.create("web", Endpoint("10.100.99.1", 80), "rr", "tcp", None, "ipvs")
    kernel.ipvs.clear()
    kernel.refuse_nft = True
    kernel.stand_in(ipvs, "read_proc", lambda: {("tcp", Endpoint("10.100.99.1", 80)): {
        "scheduler": "rr", "targets": {("10.0.0.1", 80): ("masq", 1)}}})  # IPVS took it
    with pytest.raises(KernelUnsupported, match="Operation not permitted"):
        services.add("web", [(Endpoint("10.0.0.1", 80), None)], 1, "masq")
    queued = [request for request, *_ in kernel.ipvs if request != "commit"]
    assert queued == ["queue_targets", "queue_targets", "queue_targets", "del_target"]
    assert services.get("web")["targets"] == []


def test_an_ipvs_add_the_kernel_refuses_leaves_table_circuit_lb_as_it_was(kernel, services,
                                                                          monkeypatch):
    from circuit_netlink import NetlinkError

    services.create("web", Endpoint("10.100.99.1", 80), "rr", "tcp", None, "ipvs")
    kernel.transactions.clear()

    refusals = [NetlinkError(17)]  # EEXIST: someone else's target; the put back is taken

    def refuse():
        if refusals:
            raise refusals.pop()

    monkeypatch.setattr(kernel, "commit", refuse, raising=False)
    with pytest.raises(Exception, match="differ from circuit's"):
        services.add("web", [(Endpoint("10.0.0.1", 80), None)], 1, "masq")
    forward, back = kernel.transactions  # the masquerade rule added alongside, then removed
    assert any("rule" in command.get("add", {}) for command in forward)
    assert back == json.loads(json.dumps(table.changes(
        table.build([{**services.get("web"), "targets": [
            {"addr": "10.0.0.1", "port": 80, "forward": "masq", "weight": 1}]}]),
        table.build([services.get("web")]))))
    assert services.get("web")["targets"] == []
