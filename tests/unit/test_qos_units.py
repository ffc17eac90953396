"""QoS values as users write them, and how a second `set` merges."""

import pytest

from circuit_common.errors import InvalidInput
from circuit_qos.policy import merge
from circuit_qos.units import format_delay, format_rate, parse_delay, parse_rate, parse_size


@pytest.mark.parametrize(("text", "bps"), [("5000", 5_000_000), ("5mbit", 5_000_000),
                                           ("800kbit", 800_000), ("1gbit", 10**9),
                                           ("1.5mbit", 1_500_000), ("100kbps", 800_000)])
def test_rates(text, bps):
    assert parse_rate(text) == bps


@pytest.mark.parametrize(("text", "us"), [("50ms", 50_000), ("1s", 10**6), ("500us", 500)])
def test_delays(text, us):
    assert parse_delay(text) == us


@pytest.mark.parametrize(("call", "text", "message"), [
    (parse_rate, "0", "greater than zero"), (parse_rate, "-1", "invalid rate"),
    (parse_rate, "5parsecs", "unknown unit"), (parse_delay, "50", "needs a unit"),
    (parse_delay, "fast", "invalid delay"), (parse_delay, "275s", "longer than netem can hold"),
    (parse_size, "1q", "unknown unit")])
def test_refused(call, text, message):
    with pytest.raises(InvalidInput, match=message):
        call(text)


def test_formats():
    assert (format_rate(5_000_000), format_rate(1_500_000)) == ("5mbit", "1500kbit")
    assert (format_delay(50_000), format_delay(2 * 10**6), format_delay(500)) == (
        "50ms", "2s", "500us")


MBIT = 1_000_000


def test_a_second_set_keeps_the_values_not_given():
    policy = merge(None, {"rate": 5 * MBIT, "ceil": 6 * MBIT})
    policy = merge(policy, {"delay": 50_000})
    assert policy == {"rate": 5 * MBIT, "ceil": 6 * MBIT, "delay": 50_000}
    assert merge(policy, {"ceil": 8 * MBIT}) == {"rate": 5 * MBIT, "ceil": 8 * MBIT,
                                                 "delay": 50_000}
    assert merge(policy, {"priority": 3})["ceil"] == 6 * MBIT


@pytest.mark.parametrize("old", [None, {"delay": 50_000}, {"rate": 5 * MBIT, "ceil": 5 * MBIT},
                                 {"rate": 5 * MBIT, "ceil": 6 * MBIT}])
def test_a_rate_without_a_ceiling_is_a_flat_rate(old):
    assert merge(old, {"rate": 2 * MBIT})["ceil"] == 2 * MBIT
    assert merge(old, {"rate": 8 * MBIT})["ceil"] == 8 * MBIT


def test_merge_refuses_a_ceiling_below_the_rate_or_without_one():
    policy = {"rate": 5 * MBIT, "ceil": 6 * MBIT}
    with pytest.raises(InvalidInput, match="below the rate"):
        merge(policy, {"ceil": 1 * MBIT})
    with pytest.raises(InvalidInput, match="below the rate"):
        merge(policy, {"rate": 8 * MBIT, "ceil": 7 * MBIT})
    with pytest.raises(InvalidInput, match="needs a --rate"):
        merge(None, {"ceil": 1 * MBIT})


@pytest.mark.parametrize("changes, option", [
    ({"priority": 7}, "--priority"), ({"buffer": 15_000}, "--buffer"),
    ({"cbuffer": 3_000}, "--cbuffer"), ({"ceil": MBIT}, "--ceiling")])
def test_a_value_that_shapes_nothing_without_a_rate_is_refused(changes, option):
    for old in (None, {"delay": 50_000}):
        with pytest.raises(InvalidInput, match=f"{option} needs a --rate"):
            merge(old, changes)


def test_a_new_rate_does_not_keep_a_burst_sized_for_another():
    network = merge(None, {"rate": 1000 * MBIT, "buffer": 100 << 20, "cbuffer": 100 << 20})
    container = merge(network, {"rate": 10_000})  # 10 kbit/s: the network's burst cannot hold
    assert container == {"rate": 10_000, "ceil": 10_000}
    assert merge(network, {"delay": 5_000})["buffer"] == 100 << 20
    assert merge(network, {"ceil": 2000 * MBIT})["buffer"] == 100 << 20
    assert "cbuffer" not in merge(network, {"ceil": 2000 * MBIT})


@pytest.mark.parametrize("parse", [parse_rate, parse_size,
                                   lambda text: parse_delay(f"{text}us")])
def test_a_number_beyond_a_float_is_refused_not_an_internal_error(parse):
    with pytest.raises(InvalidInput, match="far too large"):
        parse("9" * 400)
