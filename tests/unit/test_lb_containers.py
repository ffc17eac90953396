"""LB targets by container (issue 26): CONTAINER:PORT lines on stdin, and the targets a
killed circuit left behind after their container's attachment went."""
from types import SimpleNamespace

import pytest
from test_identity_input import attach, store  # noqa: F401 (store: the fixture)

from circuit_common.config import Settings
from circuit_common.errors import InvalidInput
from circuit_lb.address import Endpoint, Named


def test_stdin_takes_container_targets_as_the_argument_form_does():
    from circuit_lb.cli import read_stdin_targets

    assert read_stdin_targets("c1:80 5\n10.1.0.3:80\n# web\n7553:8080\n") == [
        (Named("c1", 80), 5), (Endpoint("10.1.0.3", 80), None), (Named("7553", 8080), None)]
    with pytest.raises(InvalidInput, match=r"invalid port '0' in target on stdin line 2 'c2:0'"):
        read_stdin_targets("c1:80\nc2:0\n")


def test_targets_gone_with_their_container_are_those_of_this_host_without_attachment(store):  # noqa: F811
    """What lb restore and the next change of a service drop: a kill between the detach and
    extension.released left them (issue 26)."""
    from circuit_lb.services import Services

    attach(store, "n1", "c1", "eth0", ["10.1.0.2/24"], target="c1")
    ctx = SimpleNamespace(store=store, settings=Settings())
    origin = {"name": "c1", "id": "c1", "network": "n1", "ifname": "eth0"}
    kept = [{"addr": "10.1.0.2", "port": 80, "container": origin},
            {"addr": "10.1.0.9", "port": 80},
            {"addr": "10.1.0.3", "port": 80, "container": {**origin, "id": "c3", "host": "b"}},
            {"addr": "10.1.0.4", "port": 80, "container": {**origin, "id": "../x"}}]
    gone = {"addr": "10.1.0.5", "port": 80, "container": {**origin, "id": "c5"}}
    assert Services(ctx).gone([*kept, gone]) == [gone]
    assert Services(ctx).gone(kept[1:2]) == []
