"""circuit-qos with real traffic: iperf3 through HTB shaping in both directions."""

import json
import struct

import pytest

from harness import bridge_conf, host_veth, iperf_mbit, snapshot
from harness.qos import assert_delay_refused_without_netem, has_netem, ifbs, qdiscs

IPERF = ("iperf3", "-s")


def shaped(mbit: float, low: float = 4.5, high: float = 6.3) -> bool:
    return low <= mbit <= high


# How long each measurement runs (measured, 8 runs each, this machine under other helpers'
# load): 1 s after a 1 s omit gave 5.42-5.88 Mbit at rate 5/ceil 6 (2 s: 5.49-5.70) and
# 1.75-1.77 at 2 Mbit into the container (2 s: 1.73-1.82), inside the bounds with the same
# margin; 2 Mbit out of the container gave 1.76-2.19 over 1 s (2 s: 1.91-2.11), past 2.15,
# so that direction keeps 2 s. Unshaped, a 1 s stream with nothing omitted is over 10 Gbit/s.
def unshaped(host, server) -> bool:
    """Both directions well over any rate the tests set: > 100 Mbit/s."""
    return all(iperf_mbit(host, server, reverse=r, seconds=1, omit=0) > 100
               for r in (False, True))


def mbit(host, server, reverse: bool = False) -> float:
    """One shaped measurement: 1 s after a 1 s omit."""
    return iperf_mbit(host, server, reverse=reverse, seconds=1)


def test_rate_and_ceiling_shape_both_directions_and_reset_restores(host):
    host.circuit("network", "create", host.conf(bridge_conf()))
    server = host.container(IPERF)
    host.circuit("network", "connect", server.pid, "sandbox")
    assert unshaped(host, server)

    out = host.circuit("network", "qos", "set", "--rate", "5000", "--ceiling", "6000", "sandbox")
    assert out.stdout == "qos configured for sandbox\n"
    into, out_of = mbit(host, server), mbit(host, server, reverse=True)
    assert shaped(into) and shaped(out_of), (into, out_of)

    shown = json.loads(host.circuit("network", "qos", "show", "sandbox", "--format", "json").stdout)
    counters = shown["attachments"][0]["counters"]
    assert counters["in"]["bytes"] > 1_000_000 and counters["out"]["bytes"] > 1_000_000
    assert shown["policy"] == {"rate": 5_000_000, "ceil": 6_000_000}
    iperf_mbit(host, server, seconds=1, omit=0)
    again = json.loads(host.circuit("network", "qos", "show", "sandbox", "--format", "json")
                       .stdout)["attachments"][0]["counters"]
    assert again["in"]["bytes"] > counters["in"]["bytes"]
    assert again["in"]["packets"] > counters["in"]["packets"]
    table = host.circuit("network", "qos", "show", "sandbox").stdout
    assert "rate 5mbit ceil 6mbit" in table and host_veth(host, "sandbox", server.pid) in table
    policies = {line.split()[2]: " ".join(line.split()[3:7]) for line in table.splitlines()
                if line.split()[2:3] in (["in"], ["out"])}
    assert policies == {"in": "rate 5mbit ceil 6mbit", "out": "rate 5mbit ceil 6mbit"}
    host.circuit("network", "create", "other", "--subnet", "10.100.77.0/24")
    every = host.circuit("network", "qos", "show").stdout
    assert every.startswith("network other: unshaped\n") and \
        "\nnetwork sandbox: rate 5mbit ceil 6mbit\n" in every and table.strip() in every
    assert [s["network"] for s in json.loads(host.circuit(
        "network", "qos", "show", "--format", "json").stdout)] == ["other", "sandbox"]

    out = host.circuit("network", "qos", "reset", "sandbox")
    assert out.stdout == "qos reset for sandbox\n"
    assert unshaped(host, server)
    assert "htb" not in qdiscs(host) and "ingress" not in qdiscs(host) and ifbs(host) == []


def test_new_containers_are_shaped_and_one_container_can_differ(host):
    host.circuit("network", "create", host.conf(bridge_conf()))
    first = host.container(IPERF)
    host.circuit("network", "connect", first.pid, "sandbox")
    host.circuit("network", "qos", "set", "--rate", "5000", "--ceiling", "6000", "sandbox")
    later = host.container(IPERF)
    host.circuit("network", "connect", later.pid, "sandbox")
    assert shaped(mbit(host, later)) and shaped(mbit(host, later, reverse=True))

    host.circuit("network", "qos", "set", "--container", first.pid, "--rate", "2mbit", "sandbox")
    assert shaped(mbit(host, first), 1.6, 2.15)
    assert shaped(iperf_mbit(host, first, reverse=True), 1.6, 2.15)
    assert shaped(mbit(host, later))

    host.circuit("network", "qos", "reset", "--container", first.pid, "sandbox")
    assert shaped(mbit(host, first))
    host.circuit("network", "disconnect", later.pid, "sandbox")
    assert len(ifbs(host)) == 1  # the disconnected container's IFB went with it


def test_second_set_changes_values_in_place_and_restore_reapplies(host):
    host.circuit("network", "create", host.conf(bridge_conf()))
    server = host.container(IPERF)
    host.circuit("network", "connect", server.pid, "sandbox")
    host.circuit("network", "qos", "set", "--rate", "5000", "sandbox")
    host.circuit("network", "qos", "set", "--rate", "2000", "sandbox")
    veth = host_veth(host, "sandbox", server.pid)
    assert "rate 2Mbit" in host.run("tc", "class", "show", "dev", veth).stdout
    assert shaped(mbit(host, server), 1.6, 2.15)

    host.run("tc", "qdisc", "del", "dev", veth, "root")  # as if the host had rebooted
    host.run("tc", "qdisc", "del", "dev", veth, "ingress")
    out = host.circuit("restore").stdout
    assert "qos restored for sandbox" in out
    assert shaped(mbit(host, server), 1.6, 2.15)
    assert shaped(iperf_mbit(host, server, reverse=True), 1.6, 2.15)


def test_bad_input_changes_neither_kernel_nor_state(host):
    host.circuit("network", "create", host.conf(bridge_conf()))
    c = host.container()
    host.circuit("network", "connect", c.pid, "sandbox")
    host.circuit("network", "qos", "set", "--rate", "3000", "sandbox")
    cases = [
        (["--rate", "6000", "--ceiling", "5000"], "below the rate"),
        (["--rate", "0"], "greater than zero"),
        (["--rate", "-5"], "invalid rate"),
        (["--rate", "5furlongs"], "unknown unit 'furlongs'"),
        (["--delay", "50"], "needs a unit"),
        (["--rate", "1mbit", "--container", "4000000"], "not connected"),
        (["--rate", "1mbit", "--container", "999999999"], "invalid pid"),
        (["--rate", "1mbit", "--container", c.pid, "--interface", "veth0"], "not both"),
        (["--rate", "1mbit", "--interface", "nosuch0"], "no attachment"),
        (["--priority", "9"], "0..7"),
        ([], "nothing to set"),
    ]
    before, kernel = snapshot(host.state), qdiscs(host)
    for args, message in cases:
        proc = host.circuit("network", "qos", "set", *args, "sandbox", check=False)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1 and proc.stdout == ""
        assert snapshot(host.state) == before and qdiscs(host) == kernel, args
    proc = host.circuit("network", "qos", "set", "--rate", "1mbit", "nosuch", check=False)
    assert proc.returncode == 4 and "no network named 'nosuch'" in proc.stderr


def test_delay_without_netem_is_refused_with_nothing_half_applied(host):
    """This machine's kernel has no netem; on one that has it, tests/kernel/test_qos.py
    refuses the delay with sch_netem unloaded (in the kernel tier's VM)."""
    if has_netem(host):
        pytest.skip("this kernel has netem: the kernel tier refuses a delay without it")
    assert_delay_refused_without_netem(host)


def test_the_hook_shapes_a_runc_container_by_its_network_policy(host, runc):
    from harness import documented_hooks

    host.circuit("network", "create", host.conf(bridge_conf()))
    host.circuit("network", "qos", "set", "--rate", "5000", "--ceiling", "6000", "sandbox")
    env = {"CNI_CONF": "", "CIRCUIT_NETWORK": "sandbox", "CIRCUIT_STATE_DIR": host.state}
    cid = runc.run("shaped", documented_hooks("createRuntime", env)).stdout
    veth = host_veth(host, "sandbox", runc.pid(cid))
    assert "rate 5Mbit ceil 6Mbit" in host.run("tc", "class", "show", "dev", veth).stdout
    assert len(ifbs(host)) == 1
    runc.delete(cid)
    assert ifbs(host) == []


def test_shaping_by_another_tool_is_refused_and_left_as_it_was(host):
    """circuit never takes over nor removes qdiscs it did not make: a network whose chain has
    the CNI bandwidth plugin is refused as a whole, and a veth someone shaped by hand (a tbf
    root) is refused before anything changes, in one line each."""
    shaping = {"type": "bandwidth", "ingressRate": 8_000_000, "ingressBurst": 80_000,
               "egressRate": 8_000_000, "egressBurst": 80_000}
    conf = bridge_conf(name="shaped", bridge="cni1", subnet="10.100.20.0/24", version="0.4.0")
    chain = {"cniVersion": "0.4.0", "name": "shaped",
             "plugins": [{k: v for k, v in conf.items() if k not in ("cniVersion", "name")},
                         shaping]}
    host.circuit("network", "create", host.conf(chain, "shaped.conflist"))
    host.circuit("network", "create", host.conf(bridge_conf()))
    plugin_shaped, hand_shaped = host.container(IPERF), host.container(IPERF)
    host.circuit("network", "connect", plugin_shaped.pid, "shaped")
    host.circuit("network", "connect", hand_shaped.pid, "sandbox")
    host.run("tc", "qdisc", "add", "dev", host_veth(host, "sandbox", hand_shaped.pid), "root",
             "tbf", "rate", "8mbit", "burst", "10k", "latency", "25ms")
    before, state = qdiscs(host), snapshot(host.state)
    assert before.count(" tbf ") == 3  # bandwidth's on its veth and IFB, and the hand-made one
    for network, message in (("shaped", "chain has the CNI bandwidth plugin"),
                             ("sandbox", "shaped by another tool (a tbf root qdisc")):
        proc = host.circuit("network", "qos", "set", "--rate", "5000", network, check=False)
        assert proc.returncode == 5 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert message in proc.stderr
        assert qdiscs(host) == before and snapshot(host.state) == state and ifbs(host) == []
    host.circuit("network", "disconnect", plugin_shaped.pid, "shaped")
    host.circuit("network", "disconnect", hand_shaped.pid, "sandbox")


def test_request_bytes_planted_in_the_shared_record_are_never_sent(host):
    """qos/<network>.json (in a cluster, etcd's) holds the policy only. Request bytes planted
    in it as an older circuit's "plan", tagged as this code tags its own, with classes at
    1 Mbit/s where the policy says 5 and the redirect of traffic out of the container aimed at
    the bridge, are never sent: the attachments are shaped by the policy, from this host's
    own plan, and `circuit restore` drops them, naming the record in one line."""
    from circuit_common.store import Store
    from circuit_qos import devices, plan

    host.circuit("network", "create", host.conf(bridge_conf()))
    first = host.container()
    host.circuit("network", "connect", first.pid, "sandbox")  # makes the bridge
    host.circuit("network", "qos", "set", "--rate", "5000", "--ceiling", "6000", "sandbox")
    path = host.state / "qos" / "sandbox.json"
    record = json.loads(path.read_text())
    assert set(record) == {"schema", "network", "attachments"}  # no request bytes shared
    kept = host.state / "cache" / "qos-plans" / "sandbox.json"
    assert kept.exists()

    bridge_index = int(host.run("ip", "-o", "link", "show", "cni0").stdout.split(":")[0])
    planted = plan.build({"rate": 1_000_000, "ceil": 1_000_000})
    for request in planted["requests"]:
        if request["values"].pop("redirect", None):  # the mirred action's target: the bridge
            data = bytearray.fromhex(request["template"]["data"])
            struct.pack_into("=I", data, request["template"]["slots"].pop("redirect")[0],
                             bridge_index)
            request["template"]["data"] = data.hex()
    planted |= {"policy": record["network"],
                "tag": plan.kept_at(Store(host.state), "sandbox").tag()}
    path.write_text(json.dumps({**record, "plan": planted}))
    kept.unlink()  # this host's own plan: lost

    def shaped_by_the_policy(container) -> None:
        veth = host_veth(host, "sandbox", container.pid)
        ifb = devices.ifb_name(veth)
        for device in (veth, ifb):
            classes = host.run("tc", "class", "show", "dev", device).stdout
            assert "rate 5Mbit ceil 6Mbit" in classes and "1Mbit" not in classes, classes
        redirect = host.run("tc", "filter", "show", "dev", veth, "ingress").stdout
        assert f"to device {ifb}" in redirect and "cni0" not in redirect, redirect

    shaped_by_the_policy(first)
    second = host.container()
    host.circuit("network", "connect", second.pid, "sandbox")  # through pyroute2
    shaped_by_the_policy(second)
    assert kept.exists()  # kept again by that attach

    proc = host.circuit("restore")
    named = [line for line in proc.stderr.splitlines() if str(path) in line]
    assert len(named) == 1 and "never sends" in named[0], proc.stderr
    assert set(json.loads(path.read_text())) == {"schema", "network", "attachments"}
    shaped_by_the_policy(second)

    later = host.container()
    host.circuit("network", "connect", later.pid, "sandbox")  # from this host's plan
    shaped_by_the_policy(later)
