"""Hostile input to the commands that name containers and their addresses (issues 26, 27)."""
import os

import pytest

from circuit_common.errors import InvalidInput
from circuit_common.proc import start_time
from circuit_lb.health import parse_check
from circuit_net.networks import in_use

pytestmark = pytest.mark.unit


def record(cid: str, pid: int, started: int, target: str | None = None,
           aliases: tuple = ()) -> dict:
    """An attachment record as connect writes it, for in_use()."""
    return {"networkName": "n1", "containerId": cid, "ifName": "eth0", "result": {},
            "circuit": {"pid": pid, "start_time": started, "target": target,
                        "aliases": list(aliases)}}


def test_network_in_use_names_containers_not_internal_ids():
    me = os.getpid()
    records = [record(f"pid{me}-1", me, start_time(me), aliases=("web",)),
               record("c7", me, start_time(me), target="c7"),
               record("pid1-2", 1, -1, aliases=("gone",))]
    line = in_use("n1", records)
    assert line.startswith("network n1 is in use by 2 container(s): web, c7 (and 1 exited")
    assert "pid" not in line.replace("--", "")


def test_only_exited_containers_are_named_by_name():
    line = in_use("n1", [record("pid1-2", 1, -1, aliases=("gone",))])
    assert "exited container(s): gone;" in line


@pytest.mark.parametrize("spec", ["http://x/", "http://x/healthz=204", "http:////"])
def test_a_check_url_is_refused_saying_give_the_path_alone(spec):
    with pytest.raises(InvalidInput, match="give the path alone"):
        parse_check(spec, None, None, None, None)


def test_a_check_path_is_still_taken():
    assert parse_check("http:/x//y", None, None, None, None)["path"] == "/x//y"
