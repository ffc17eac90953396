"""circuit_common.netlink: the lean pyroute2 import and the Batch, against the running kernel
(reads and refused requests only: nothing is changed)."""

import errno
import subprocess
import sys

import pytest

from circuit_common.netlink import (
    CHUNK,
    NETLINK_GENERIC,
    NETLINK_ROUTE,
    NLM_F_DUMP,
    Batch,
    NetlinkError,
    family_id,
)

REFUSED = (errno.ENODEV, errno.EPERM)  # deleting a link that does not exist (as root or not)


def delete_missing_link():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    msg["header"]["type"] = 17  # RTM_DELLINK
    msg["attrs"] = [("IFLA_IFNAME", "circuit-nosuch")]
    return msg


def test_pyroute2_modules_load_without_the_package_init_until_a_top_level_name_is_used():
    code = ("import sys, circuit_common.netlink, pyroute2.netlink.rtnl.tcmsg\n"
            "print('pyroute2.ndb' in sys.modules)\n"
            "from pyroute2 import IPRoute\n"
            "print('pyroute2.ndb' in sys.modules, IPRoute.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "True", "IPRoute"]


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
        for _ in range(3 * CHUNK + 1):  # several chunks, every acknowledgement read
            batch.add(delete_missing_link(), ignore=REFUSED)
        assert batch.send() == 3 * CHUNK + 1
        assert batch.send() == 0
