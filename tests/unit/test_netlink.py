"""circuit_netlink: the lean pyroute2 import and the Batch, against the running kernel
(reads and refused requests only: nothing is changed)."""

import errno
import socket
import subprocess
import sys

import pytest

import circuit_netlink
from circuit_netlink import (
    CHUNK,
    NETLINK_GENERIC,
    NETLINK_ROUTE,
    NLM_F_DUMP,
    Batch,
    NetlinkError,
    family_id,
)

circuit_netlink.lean_pyroute2()
REFUSED = (errno.ENODEV, errno.EPERM)  # deleting a link that does not exist (as root or not)


def delete_missing_link():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    msg["header"]["type"] = 17  # RTM_DELLINK
    msg["attrs"] = [("IFLA_IFNAME", "circuit-nosuch")]
    return msg


def test_pyroute2_modules_load_without_the_package_init_until_a_top_level_name_is_used():
    code = ("import sys, circuit_netlink\n"
            "print('pyroute2' in sys.modules)\n"  # importing the package changes nothing
            "circuit_netlink.lean_pyroute2()\n"
            "import pyroute2.netlink.rtnl.tcmsg\n"
            "print('pyroute2.ndb' in sys.modules)\n"
            "from pyroute2 import IPRoute\n"
            "print('pyroute2.ndb' in sys.modules, IPRoute.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False", "True", "IPRoute"]


def test_query_dumps_and_gets():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    with Batch(NETLINK_ROUTE) as batch:
        msg = ifinfmsg()
        msg["header"]["type"] = 18  # RTM_GETLINK
        names = [link.get_attr("IFLA_IFNAME") for link in batch.query(msg, NLM_F_DUMP)]
        assert "lo" in names
    with Batch(NETLINK_GENERIC) as batch:
        assert family_id(batch, "nlctrl") == 16
        with pytest.raises(NetlinkError) as refused:
            family_id(batch, "circuit-nosuch")
        assert refused.value.errno == errno.ENOENT


def test_send_reports_the_first_refusal_and_counts_ignored_ones_as_done():
    with Batch(NETLINK_ROUTE) as batch:
        batch.add(delete_missing_link())
        with pytest.raises(NetlinkError) as refused:
            batch.send()
        assert refused.value.errno in REFUSED and refused.value.strerror
        for _ in range(3 * CHUNK + 1):  # several chunks, every refusal read
            batch.add(delete_missing_link(), ignore=REFUSED)
        assert batch.send() == 3 * CHUNK + 1
        assert batch.send() == 0

        for position in range(2 * CHUNK):  # one refusal, in the second chunk
            batch.add(delete_missing_link(), ignore=() if position == CHUNK + 1 else REFUSED)
        batch.add(delete_missing_link())  # the third chunk: never sent, so not refused
        with pytest.raises(NetlinkError) as refused:
            batch.send()
        assert refused.value.done == [p for p in range(2 * CHUNK) if p != CHUNK + 1]


def test_template_copies_are_the_bytes_pyroute2_encodes():
    import random

    from circuit_lb import ipvs_netlink as ipvs

    rng = random.Random(7)

    def address(version: int) -> str:
        return (f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
                if version == 4 else f"fd00::{rng.randrange(65536):x}")

    def target(version: int) -> dict:
        return {"addr": address(version), "port": rng.randrange(1, 65536),
                "weight": rng.randrange(65536), "forward": rng.choice(("masq", "route"))}

    requests = ipvs.Requests.encoded()
    for command in ipvs.TARGET_COMMANDS:
        for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
            for _ in range(5):
                service = {"addr": address(version), "port": rng.randrange(1, 65536),
                           "protocol": rng.choice(("tcp", "udp")), "scheduler": "rr"}
                template = requests.target(command, service, family).retyped(30)
                for sequence in range(1, 10):
                    one = target(version)
                    expected = ipvs.message(30, command, service, one)
                    expected["header"]["flags"] = 0x1  # NLM_F_REQUEST
                    expected["header"]["sequence_number"] = sequence
                    expected.encode()
                    assert template.copy(sequence, ipvs.target_values(one)) \
                        == bytes(expected.data)


def test_ipvs_requests_are_kept_in_the_store_and_encoded_again_for_other_code(tmp_path,
                                                                            monkeypatch):
    from circuit_common.store import Store
    from circuit_lb import ipvs, ipvs_netlink

    store = Store(tmp_path / "state")
    monkeypatch.setattr(ipvs, "REQUESTS_STORE", store)
    assert ipvs_netlink.Requests.kept() is None
    made = ipvs_netlink.Requests.kept_or_encoded()
    kept = ipvs_netlink.Requests.kept()
    assert kept is not None and kept.family.data == made.family.data
    assert {k: t.data for k, t in kept.targets.items()} \
        == {k: t.data for k, t in made.targets.items()}
    monkeypatch.setattr(ipvs_netlink, "tag", lambda: {"pyroute2": "0.0.1", "format": "other"})
    assert ipvs_netlink.Requests.kept() is None  # made by other code: not used


def test_the_ipvs_numbers_circuit_lb_spells_are_pyroute2s():
    from circuit_lb import ipvs_netlink

    pyroute2_ipvs = ipvs_netlink.pyroute2_ipvs()
    for name in ("NEW_SERVICE", "SET_SERVICE", "DEL_SERVICE", "GET_SERVICE", "NEW_DEST",
                 "SET_DEST", "DEL_DEST", "GET_DEST"):
        assert getattr(ipvs_netlink, f"CMD_{name}") == getattr(pyroute2_ipvs, f"IPVS_CMD_{name}")
    import pyroute2.netlink as pn

    assert (circuit_netlink.GENL_ID_CTRL, circuit_netlink.CTRL_CMD_GETFAMILY) \
        == (pn.GENL_ID_CTRL, pn.CTRL_CMD_GETFAMILY)


def test_template_field_slots_and_wrong_sizes():
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    from circuit_netlink import Template

    def qdisc(index):
        msg = tcmsg()
        msg["header"]["type"] = 36  # RTM_NEWQDISC
        msg["index"], msg["handle"], msg["parent"] = index, 0x10000, 0xFFFFFFFF
        msg["attrs"] = [("TCA_KIND", "htb")]
        return msg

    template = Template(qdisc(1), 0, {"index": ("index",)},
                        {"index": (1).to_bytes(4, sys.byteorder)})
    expected = qdisc(4242)
    expected["header"]["flags"], expected["header"]["sequence_number"] = 0x1, 9
    expected.encode()
    assert template.copy(9, {"index": (4242).to_bytes(4, sys.byteorder)}) == bytes(expected.data)
    with pytest.raises(ValueError):
        template.copy(9, {"index": b"\x01"})


def test_a_template_whose_slot_does_not_hold_the_encoded_value_is_refused():
    """A pyroute2 that lays a request out differently fails loudly, not with corrupt copies."""
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    from circuit_netlink import Template, TemplateMismatch

    msg = tcmsg()
    msg["header"]["type"] = 36  # RTM_NEWQDISC
    msg["index"], msg["handle"] = 5, 0x10000
    with pytest.raises(TemplateMismatch, match="slot index"):
        Template(msg, 0, {"index": ("handle",)}, {"index": (5).to_bytes(4, sys.byteorder)})



def test_the_kernel_constants_circuit_netlink_spells_are_pyroute2s():
    """circuit_netlink must load without pyroute2 (the shaped hook's path), so it spells the
    netlink ABI's numbers itself: they must be the ones pyroute2 exports."""
    import pyroute2.netlink as pn

    for name in ("NETLINK_ROUTE", "NETLINK_GENERIC", "NLMSG_ERROR", "NLMSG_DONE",
                 "NLM_F_REQUEST", "NLM_F_ACK", "NLM_F_DUMP", "NLM_F_REPLACE", "NLM_F_EXCL",
                 "NLM_F_CREATE"):
        assert getattr(circuit_netlink, name) == getattr(pn, name), name
