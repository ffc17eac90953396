"""circuit_netlink: the lean pyroute2 import and the Batch, against the running kernel
(reads and refused requests only: nothing is changed)."""

import errno
import json
import os
import socket
import struct
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
    from circuit_lb import ipvs_netlink

    store = Store(tmp_path / "state")
    assert ipvs_netlink.Requests.kept(store) is None
    made = ipvs_netlink.Requests.kept_or_encoded(store)
    kept = ipvs_netlink.Requests.kept(store)
    assert kept is not None and kept.family.data == made.family.data
    assert {k: t.data for k, t in kept.targets.items()} \
        == {k: t.data for k, t in made.targets.items()}
    kept_file = tmp_path / "state" / "cache" / "ipvs-requests.json"
    record = json.loads(kept_file.read_text())
    kept_file.write_text(json.dumps({**record, "tag": {**record["tag"], "pyroute2": "0.0.1"}}))
    assert ipvs_netlink.Requests.kept(store) is None  # made by another pyroute2: not used


def test_kept_requests_are_used_only_while_the_code_that_laid_them_out_is_unchanged(tmp_path):
    """circuit_netlink.kept, the one scheme for qos plans and IPVS requests: what is kept is
    this host's cache, used while pyroute2 and the layout code (size and mtime) are those that
    made it; a cache that cannot be read is no error, only nothing kept."""
    from circuit_common.store import Store
    from circuit_netlink.kept import Kept

    layout = tmp_path / "layout.py"
    layout.write_text("A = 1\n")
    kept = Kept(Store(tmp_path / "state"), "test.json", (str(layout),))
    assert kept.load() is None
    kept.keep({"requests": [1, 2]})
    assert kept.load()["requests"] == [1, 2]
    assert kept.path == str(tmp_path / "state" / "cache" / "test.json")
    layout.write_text("A = 22\n")  # another size
    assert kept.load() is None
    kept.keep({"requests": [3]})
    os.utime(layout, ns=(0, 0))  # the same size, another time
    assert kept.load() is None
    kept.keep({"requests": [4]})
    assert kept.load()["requests"] == [4]
    layout.unlink()  # code that cannot be read matches nothing
    assert kept.load() is None
    layout.write_text("A = 22\n")
    kept.keep({"requests": [5]})
    assert kept.load()["requests"] == [5]
    os.chmod(kept.path, 0o666)  # anyone could have written it: not used, and no error
    assert kept.load() is None
    kept.drop()
    assert not os.path.exists(kept.path)
    kept.drop()  # nothing kept counts as removed


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
                 "NLM_F_CREATE", "NLM_F_DUMP_INTR"):
        assert getattr(circuit_netlink, name) == getattr(pn, name), name
    from pyroute2.netlink import rtnl as pyroute2_rtnl
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    from circuit_netlink import rtnl

    for name in ("RTM_NEWLINK", "RTM_DELLINK", "RTM_GETLINK", "RTM_GETADDR"):
        assert getattr(rtnl, name) == getattr(pyroute2_rtnl, name), name
    for name in ("IFLA_IFNAME", "IFLA_MTU", "IFLA_MASTER", "IFLA_LINKINFO"):
        assert ifinfmsg.nla_map[getattr(rtnl, name)][0] == name
    assert ifaddrmsg.nla_map[rtnl.IFA_ADDRESS][0] == "IFA_ADDRESS"


class FakeKernel:
    """The far end of a socketpair standing in for the kernel: it answers each request with
    the messages answer(sequence, attempt) gives, and keeps the requests it read."""

    def __init__(self, answer):
        import threading

        self.near, self.far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.answer, self.requests = answer, []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while request := self.far.recv(1 << 16):
            self.requests.append(request)
            sequence = circuit_netlink.HEADER.unpack_from(request)[3]
            for message in self.answer(sequence, len(self.requests)):
                self.far.send(message)

    def close(self):
        """After the Batch closed its end: the server reads the end of the stream and stops."""
        self.thread.join()
        self.far.close()


def message(kind: int, sequence: int, payload: bytes, flags: int = 0) -> bytes:
    return circuit_netlink.HEADER.pack(circuit_netlink.HEADER.size + len(payload), kind,
                                       flags | 0x2, sequence, 0) + payload  # NLM_F_MULTI


def link_dump(names, interrupted: bool, on_done: bool = False):
    """An RTM_GETLINK dump's answer: one RTM_NEWLINK per name, then NLMSG_DONE; the
    NLM_F_DUMP_INTR flag on its first link (or, on_done, on NLMSG_DONE only)."""
    from circuit_netlink import NLM_F_DUMP_INTR, NLMSG_DONE, attribute, rtnl

    def answer(sequence, _):
        flag = NLM_F_DUMP_INTR if interrupted and not on_done else 0
        for index, name in enumerate(names, 1):
            body = rtnl.IFINFOMSG.pack(0, 1, index, 0, 0) \
                + attribute(rtnl.IFLA_IFNAME, name.encode() + b"\0")
            yield message(rtnl.RTM_NEWLINK, sequence, body, flag if index == 1 else 0)
        yield message(NLMSG_DONE, sequence, b"\0" * 4,
                      NLM_F_DUMP_INTR if interrupted and on_done else 0)
    return answer


def read_links_decoded(batch):
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    msg["header"]["type"] = 18  # RTM_GETLINK
    return [link.get_attr("IFLA_IFNAME") for link in batch.query(msg, NLM_F_DUMP)]


def read_links_bytes(batch):
    from circuit_netlink import rtnl

    return [link.name for link in rtnl.links(batch)]


READERS = {"pyroute2 decoded (qos, lb, overlay)": read_links_decoded,
           "rtnl (circuit-net)": read_links_bytes}


@pytest.mark.parametrize("read", READERS.values(), ids=READERS.keys())
@pytest.mark.parametrize("on_done", [False, True], ids=["on a link", "on NLMSG_DONE"])
def test_an_interrupted_dump_is_asked_again_and_only_a_whole_one_is_read(read, on_done):
    """The kernel sets NLM_F_DUMP_INTR on a dump whose objects changed while it was read: what
    it gave may miss some or hold stale ones, so the dump is asked again (a new sequence
    number), and only an uninterrupted one is the answer."""
    def answer(sequence, attempt):
        if attempt <= 3:  # interrupted three times, and incomplete each time
            return link_dump(["lo"], interrupted=True, on_done=on_done)(sequence, attempt)
        return link_dump(["lo", "eth0"], interrupted=False)(sequence, attempt)

    kernel = FakeKernel(answer)
    with Batch(NETLINK_ROUTE, sock=kernel.near) as batch:
        assert read(batch) == ["lo", "eth0"]
    kernel.close()
    sequences = [circuit_netlink.HEADER.unpack_from(r)[3] for r in kernel.requests]
    assert len(sequences) == 4 and len(set(sequences)) == 4
    assert {r[4:6] + r[12:] for r in kernel.requests} == {kernel.requests[0][4:6]
                                                          + kernel.requests[0][12:]}


@pytest.mark.parametrize("read", READERS.values(), ids=READERS.keys())
def test_a_dump_interrupted_every_time_is_an_error_not_an_answer(read):
    from circuit_netlink import DUMP_ATTEMPTS

    kernel = FakeKernel(link_dump(["lo"], interrupted=True))
    with Batch(NETLINK_ROUTE, sock=kernel.near) as batch, \
            pytest.raises(NetlinkError, match=f"interrupted {DUMP_ATTEMPTS} times") as failed:
        read(batch)
    kernel.close()
    assert failed.value.errno == errno.EINTR and len(kernel.requests) == DUMP_ATTEMPTS


def test_a_get_and_a_refusal_through_the_fake_kernel():
    """The same reader for a get (one answer, no NLMSG_DONE) and an error acknowledgement."""
    from circuit_netlink import NLMSG_ERROR, rtnl

    def answer(sequence, attempt):
        if attempt == 1:
            yield from list(link_dump(["lo"], interrupted=False)(sequence, attempt))[:1]
        else:
            yield message(NLMSG_ERROR, sequence, struct.pack("=i", -errno.ENODEV) + b"\0" * 16)

    kernel = FakeKernel(answer)
    with Batch(NETLINK_ROUTE, sock=kernel.near) as batch:
        assert rtnl.link(batch, "lo").name == "lo"
        assert rtnl.link(batch, "nosuch") is None
    kernel.close()
