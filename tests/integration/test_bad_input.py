"""Bad input, as a hostile or careless user types it, to every tool: each case is refused with
exactly one `circuit: ` line on stderr and its documented exit code, prints nothing on stdout,
and leaves the state directory (lock files aside) and the host netns's kernel objects (links,
nftables ruleset, qdiscs) exactly as they were."""

import json
import os

import pytest

from harness import CIRCUIT, Host, bridge_conf, sh, snapshot

NESTED_JSON = "[" * 100_000 + "]" * 100_000
NESTED_TOML = "a = " + "[" * 100_000 + "]" * 100_000
HUGE = 10 << 20
EVIL_PLUGIN = "#!/bin/sh\ntouch \"$0.ran\"\n"


def kernel_objects(host: Host) -> dict:
    """Links (name, kind, master, address, mtu), the nftables ruleset and the qdiscs."""
    links = json.loads(host.run("ip", "-j", "-d", "link").stdout)
    return {
        "links": sorted((link["ifname"], link.get("linkinfo", {}).get("info_kind"),
                         link.get("master"), link.get("address"), link.get("mtu"))
                        for link in links),
        "nft": host.run("nft", "list", "ruleset").stdout,
        "qdiscs": host.run("tc", "qdisc", "show").stdout,
    }


# -- what each group of cases starts from ----------------------------------------------------

def setup_network(host: Host) -> dict:
    host.circuit("network", "create", host.conf(bridge_conf()))
    return {}


def setup_attached(host: Host) -> dict:
    setup_network(host)
    c = host.container()
    host.circuit("network", "connect", c.pid, "sandbox")
    return {"pid": c.pid}


def setup_free_container(host: Host) -> dict:
    """A network and a running container not connected to it."""
    setup_network(host)
    return {"pid": host.container().pid}


def setup_shaped(host: Host) -> dict:
    found = setup_attached(host)
    host.circuit("network", "qos", "set", "--rate", "1mbit", "sandbox")
    return found


def setup_balanced(host: Host) -> dict:
    host.circuit("lb", "create", "web", "10.1.0.1:80", "--backend", "nftables")
    host.circuit("lb", "add", "web", "10.1.0.2:8080")
    return {}


def setup_planted_plugin(host: Host) -> dict:
    """A network record whose plugin type was changed to climb out of the plugin directory to a
    script that would leave a mark if it ever ran."""
    found = setup_free_container(host)
    script = host.tmp / "evil"
    script.write_text(EVIL_PLUGIN)
    script.chmod(0o755)
    record = host.state / "networks" / "sandbox.json"
    network = json.loads(record.read_text())
    network["config"]["plugins"][0]["type"] = "../../../../../../.." + str(script)
    record.write_text(json.dumps(network))
    return found


def setup_planted_attachment(host: Host) -> dict:
    """An attachment record whose pid was changed to `true` (a coerced PID 1)."""
    found = setup_attached(host)
    record = next((host.state / "attachments" / "sandbox").glob("*.json"))
    attachment = json.loads(record.read_text())
    attachment["circuit"]["pid"] = True
    record.write_text(json.dumps(attachment))
    return found


SETUPS = {"host": lambda host: {}, "network": setup_network, "attached": setup_attached,
          "container": setup_free_container, "shaped": setup_shaped,
          "balanced": setup_balanced, "planted-plugin": setup_planted_plugin,
          "planted-attachment": setup_planted_attachment}

# -- files a case may name as {tmp}/NAME ----------------------------------------------------

FILES = {
    "huge.conf": lambda: b" " * HUGE,
    "nested.conf": lambda: NESTED_JSON.encode(),
    "list.conf": lambda: b"[1, 2]",
    "no-type.conf": lambda: json.dumps({"cniVersion": "0.3.0", "name": "n"}).encode(),
    "climb.conf": lambda: json.dumps(bridge_conf("climb") | {"type": "../../bin/sh"}).encode(),
    "nul-name.conf": lambda: json.dumps(bridge_conf("a\0b")).encode(),
    "newline-name.conf": lambda: json.dumps(bridge_conf("a\nb")).encode(),
    "empty-chain.conflist": lambda: json.dumps({"cniVersion": "0.4.0", "name": "e",
                                                "plugins": []}).encode(),
    "types.conflist": lambda: json.dumps({"cniVersion": "0.4.0", "name": "t",
                                          "plugins": [{"type": 5}]}).encode(),
    "same-name.conf": lambda: json.dumps(bridge_conf(bridge="cni1")).encode(),
    "overlap.conf": lambda: json.dumps(bridge_conf("other", bridge="cni1",
                                                   subnet="10.100.0.0/16")).encode(),
    "loopback.conf": lambda: json.dumps(bridge_conf("lb", bridge="cni1",
                                                    subnet="127.0.0.0/8")).encode(),
    "long-bridge.conf": lambda: json.dumps(bridge_conf("lb", bridge="b" * 26,
                                                       subnet="10.7.0.0/24")).encode(),
    "mtu.conf": lambda: json.dumps({**bridge_conf("m", bridge="cni1", subnet="10.7.0.0/24"),
                                    "mtu": "9000"}).encode(),
    "latin1.conf": lambda: b"\xff\xfe{}",
    "huge.toml": lambda: b"#" * HUGE,
    "nested.toml": lambda: NESTED_TOML.encode(),
    "cni-path-int.toml": lambda: b"cni_path = 5\n",
    "state-dir-list.toml": lambda: b"state_dir = [1]\n",
    "timeout-text.toml": lambda: b'lock_timeout = "abc"\n',
    "timeout-bool.toml": lambda: b"lock_timeout = true\n",
    "plugin-timeout-long.toml": lambda: b"lock_timeout = 5\nplugin_timeout = 10\n",
    "unknown-key.toml": lambda: b"colour = 'red'\n",
    "broken.toml": lambda: b"state_dir = \n",
    "latin1.toml": lambda: b"state_dir = '\xff'\n",
}


def hook_state(pid="1", cid='"evil"', extra="") -> str:
    return f'{{"ociVersion": "1.0.2", "id": {cid}, "pid": {pid}, "status": "creating", ' \
           f'"annotations": {{"circuit.networks": "sandbox"}}{extra}}}'


def case(setup, args, code, fragment, stdin=None, env=None, pidns=False, name=None):
    """One refusal: args (a string split on spaces, or a list) after `circuit --state DIR`."""
    argv = args.split() if isinstance(args, str) else args
    return pytest.param(setup, argv, code, fragment, stdin, env, pidns,
                        id=name or " ".join(argv)[:60])


CASES = [
    # global options and the config file
    case("network", "--lock-timeout nan network list", 3, "lock timeout"),
    case("network", "--lock-timeout -1 network list", 3, "lock timeout"),
    case("network", "--lock-timeout inf network list", 3, "lock timeout"),
    case("network", "--lock-timeout 0 network list", 3, "lock timeout"),
    case("network", "--lock-timeout \uff11 network list", 3, "lock timeout"),
    case("network", "--lock-timeout 1e999 network list", 3, "lock timeout"),
    case("network", ["--lock-timeout", "", "network", "list"], 3, "--lock-timeout",
         name="--lock-timeout empty"),
    case("network", ["--state", "", "network", "list"], 3, "--state", name="--state empty"),
    case("network", "network list --lock-timeout", 3, "needs a value"),
    case("network", "--state /dev/null network list", 10, "/dev/null"),
    case("network", "--state /dev/null/sub network list", 10, "/dev/null/sub"),
    case("network", "--config /dev/zero network list", 3, "not a regular file"),
    case("network", "--config {tmp}/huge.toml network list", 3, "larger than 1 MiB"),
    case("network", "--config {tmp}/nested.toml network list", 3, "nested.toml"),
    case("network", "--config {tmp}/cni-path-int.toml network list", 3, "cni_path"),
    case("network", "--config {tmp}/state-dir-list.toml network list", 3, "state_dir"),
    case("network", "--config {tmp}/timeout-text.toml network list", 3, "lock timeout"),
    case("network", "--config {tmp}/timeout-bool.toml network list", 3, "lock timeout"),
    case("network", "--config {tmp}/plugin-timeout-long.toml network list", 3,
         "plugin_timeout"),
    case("network", "--config {tmp}/unknown-key.toml network list", 3, "unknown key"),
    case("network", "--config {tmp}/broken.toml network list", 3, "broken.toml"),
    case("network", "--config {tmp}/latin1.toml network list", 3, "latin1.toml"),
    case("network", "--config {tmp} network list", 3, "config file"),
    case("container", "network connect {pid} sandbox", 4, "bridge",
         env={"CNI_PATH": "/nonexistent"}, name="CNI_PATH missing dir"),
    case("container", "network connect {pid} sandbox", 4, "bridge",
         env={"CNI_PATH": ":::"}, name="CNI_PATH only colons"),
    case("container", "--cni-path {tmp} network connect {pid} sandbox", 4, "bridge"),
    # network create / inspect / delete
    case("network", "network create {tmp}/none.conf", 3, "none.conf"),
    case("network", "network create /dev/zero", 3, "/dev/zero"),
    case("network", "network create {tmp}/huge.conf", 3, "1 MiB"),
    case("network", "network create {tmp}/nested.conf", 3, "nested.conf"),
    case("network", "network create {tmp}/list.conf", 3, "list.conf"),
    case("network", "network create {tmp}/latin1.conf", 3, "latin1.conf"),
    case("network", "network create {tmp}/no-type.conf", 3, "type"),
    case("network", "network create {tmp}/types.conflist", 3, "type"),
    case("network", "network create {tmp}/climb.conf", 3, "../../bin/sh"),
    case("network", "network create {tmp}/empty-chain.conflist", 3, "plugins"),
    case("network", "network create {tmp}/nul-name.conf", 3, "invalid network name"),
    case("network", "network create {tmp}/newline-name.conf", 3, "invalid network name"),
    case("network", "network create {tmp}/same-name.conf", 5, "sandbox"),
    case("network", "network create {tmp}/same-name.conf --name ../x", 3, "'../x'"),
    case("network", ["network", "create", "{tmp}/same-name.conf", "--name", "n" * 65], 3,
         "invalid network name", name="create --name 65 chars"),
    case("network", "network create {tmp}/same-name.conf --name \uff53andbox", 3,
         "invalid network name"),
    # network create: refused at create what the first connect would fail on (issue 27 §4)
    case("network", "network create {tmp}/overlap.conf", 5, "overlaps 10.100.10.0/24"),
    case("host", "network create {tmp}/loopback.conf", 3, "loopback"),
    case("host", "network create {tmp}/long-bridge.conf", 3, "invalid interface name"),
    *(case("host", f"network create n --subnet {subnet}", 3, fragment)
      for subnet, fragment in (("127.0.0.0/8", "loopback"), ("10.1.0.1/32", "too small"),
                               ("10.1.0.0/31", "too small"), ("fd00::/127", "too small"),
                               ("fd00::1/128", "too small"), ("10.1.0.1", "bare address"),
                               ("224.0.0.0/24", "multicast"), ("ff02::/64", "multicast"),
                               ("0.0.0.0/8", "unspecified"))),
    case("host", "network create n --subnet 10.1.0.0/24 --subnet 10.1.0.0/24", 3,
         "of the same network"),
    case("host", "network create n --subnet 10.1.0.0/16 --subnet 10.1.2.0/24", 3,
         "of the same network"),
    case("host", "network create n --subnet 10.1.0.0/24 --gateway 10.1.0.255", 3,
         "broadcast address"),
    case("host", "network create n --subnet 10.1.0.0/24 --gateway 10.1.0.0", 3,
         "network address"),
    case("host", "network create n --subnet 10.1.0.0/24 --bridge lo", 3, "not a bridge"),
    case("host", "network create n --subnet 10.1.0.0/24 --driver macvlan --parent lo", 3,
         "the loopback"),
    case("host", "network create n --subnet 10.1.0.0/24 --driver ipvlan --parent eth9", 3,
         "not an interface here"),
    case("host", "network create n --subnet fe80::/64", 3, "link-local"),
    case("host", "network create n --subnet fd00:1::/64 --mtu 1000", 3, "which IPv6 needs"),
    case("host", "network create {tmp}/mtu.conf", 3, "is not a whole number from 68"),
    case("host", "network create n --subnet 10.1.0.0/24 --label k=v --label k=w", 3,
         "--label k is given twice"),
    case("network", "network inspect ../x", 3, "'../x'"),
    case("network", "network inspect nothere", 4, "nothere"),
    case("network", "network inspect sandbox --format xml", 3, "xml"),
    case("network", "network delete ../../etc", 3, "'../../etc'"),
    case("network", "network delete nothere", 4, "nothere"),
    case("attached", "network delete sandbox", 5, "sandbox"),
    case("network", "network gc now", 2, "usage"),
    # network connect / disconnect / check: TARGET values in a PID namespace of their own
    case("container", "network connect {pid} ../x", 3, "'../x'"),
    case("container", "network connect {pid} nothere", 4, "nothere"),
    case("network", "network connect ² sandbox", 3, "'²'", pidns=True),
    case("network", "network connect \u0661 sandbox", 3, "'\u0661'", pidns=True),
    case("network", "network connect 0 sandbox", 3, "'0'", pidns=True),
    case("network", "network connect 1 sandbox", 3, "own network namespace", pidns=True),
    case("network", "network connect 4194305 sandbox", 3, "4194305", pidns=True),
    case("network", "network connect 99999999999999999999 sandbox", 3, "99999999999999999999",
         pidns=True),
    case("network", "network connect ../1 sandbox", 3, "'../1'", pidns=True),
    case("network", "network connect 1.0 sandbox", 4, "'1.0'", pidns=True),
    case("container", "network connect {pid} sandbox --ifname ../x", 3, "interface name"),
    case("container", "network connect {pid} sandbox --ifname eth0123456789abc", 3,
         "interface name"),
    case("container", "network connect {pid} sandbox --ip 10.100.10.999", 3, "10.100.10.999"),
    case("container", "network connect {pid} sandbox --mac zz:00:00:00:00:00", 3, "zz:00"),
    case("container", "network connect {pid} sandbox --args IP", 3, "IP"),
    case("container", ["network", "connect", "{pid}", "sandbox", "--args", "A=1\nB=2"], 3,
         "args", name="connect --args newline"),
    case("attached", "network connect {pid} sandbox", 5, "already"),
    case("network", "network disconnect ² sandbox", 3, "'²'", pidns=True),
    case("network", "network disconnect 1 ../x", 3, "'../x'", pidns=True),
    case("attached", "network disconnect 999999 sandbox", 4, "999999"),
    case("network", "network check \u0661 sandbox", 3, "'\u0661'", pidns=True),
    case("attached", "network check 999999 sandbox", 4, "999999"),
    # records planted in the state directory are refused when read, never trusted
    case("planted-plugin", "network connect {pid} sandbox", 9, "sandbox.json"),
    case("planted-plugin", "network inspect sandbox", 9, "sandbox.json"),
    case("planted-attachment", "network disconnect {pid} sandbox", 9, ".json", pidns=True),
    case("planted-attachment", "network delete sandbox", 9, ".json"),
    # qos
    case("shaped", "network qos set --rate 99999999tbit sandbox", 3, "99999999tbit"),
    case("shaped", "network qos set --rate ² sandbox", 3, "'²'"),
    case("shaped", "network qos set --rate -5 sandbox", 3, "-5"),
    case("shaped", "network qos set --rate 0 sandbox", 3, "rate"),
    case("shaped", "network qos set --rate nan sandbox", 3, "nan"),
    case("shaped", "network qos set --rate 1e999 sandbox", 3, "1e999"),
    case("shaped", "network qos set --rate 5mbit --ceiling 1kbit sandbox", 3, "ceiling"),
    case("shaped", "network qos set --ceiling 99999999tbit sandbox", 3, "99999999tbit"),
    case("shaped", "network qos set --delay 99999999s sandbox", 3, "99999999s"),
    case("shaped", "network qos set --delay -1ms sandbox", 3, "-1ms"),
    case("shaped", "network qos set --buffer 99999999999999 sandbox", 3, "99999999999999"),
    case("shaped", "network qos set --buffer ¹⁵k sandbox", 3, "¹⁵k"),
    case("shaped", "network qos set --priority 8 sandbox", 3, "priority"),
    case("shaped", "network qos set --priority \u0663 sandbox", 3, "priority"),
    case("shaped", "network qos set --rate 1mbit --container ../x sandbox", 3, "'../x'"),
    case("shaped", "network qos set --rate 1mbit --container \u0661 sandbox", 3, "'\u0661'"),
    case("shaped", "network qos set --rate 1mbit --interface ../x sandbox", 3, "'../x'"),
    case("shaped", "network qos set --rate 1mbit --container 999999 sandbox", 4, "999999"),
    case("shaped", "network qos set --rate 1mbit ../x", 3, "'../x'"),
    case("shaped", "network qos set --rate 1mbit nothere", 4, "nothere"),
    case("shaped", "network qos reset ../x", 3, "'../x'"),
    case("shaped", "network qos show ../x", 3, "'../x'"),
    case("shaped", "network qos show nothere", 4, "nothere"),
    case("shaped", "network qos show sandbox --format xml", 3, "xml"),
    # lb
    case("balanced", "lb create ../x 10.1.0.9:80", 3, "'../x'"),
    case("balanced", "lb create web2 10.1.0.9", 3, "10.1.0.9"),
    case("balanced", "lb create web2 10.1.0.9:99999", 3, "99999"),
    case("balanced", "lb create web2 10.1.0.9:0", 3, "10.1.0.9:0"),
    case("balanced", "lb create web2 10.1.0.9:⁸⁰", 3, "⁸⁰"),
    case("balanced", "lb create web2 ::1:80", 3, "::1:80"),
    case("balanced", "lb create web2 [::1:80", 3, "[::1:80"),
    case("balanced", "lb create web2 [fe80::1%eth0]:80", 3, "fe80::1"),
    case("balanced", "lb create web2 999.0.0.1:80", 3, "999.0.0.1"),
    case("balanced", "lb create web2 10.1.0.9:80 --scheduler ../x", 3, "../x"),
    case("balanced", "lb create web2 10.1.0.9:80 --protocol sctp", 3, "sctp"),
    case("balanced", "lb create web2 10.1.0.9:80 --persistent -1", 3, "-1"),
    case("balanced", "lb create web2 10.1.0.9:80 --persistent nan", 3, "nan"),
    case("balanced", "lb create web2 10.1.0.9:80 --persistent ³", 3, "³"),
    case("balanced", "lb create web2 10.1.0.9:80 --backend bpf", 3, "bpf"),
    case("balanced", "lb create web2 10.1.0.9:80 --backend ipvs", 8, "IPVS"),
    case("balanced", "lb create web 10.1.0.9:80 --backend nftables", 5, "web"),
    case("balanced", "lb create web2 10.1.0.1:80 --backend nftables", 5, "10.1.0.1:80"),
    case("balanced", "lb add web 10.1.0.3:80 10.1.0.3:80", 3, "10.1.0.3:80"),
        case("balanced", "lb add web 10.1.0.3:80 --weight 65536", 3, "65536"),
    case("balanced", "lb add web 10.1.0.3:80 --weight -1", 3, "-1"),
    case("balanced", "lb add web 10.1.0.3:80 --weight ²", 3, "²"),
    case("balanced", "lb add web 10.1.0.3:80 --weight 1.5", 3, "1.5"),
    case("balanced", "lb add web 10.1.0.3:80 --forward ../x", 3, "../x"),
    case("balanced", "lb add web [::1]:80", 3, "IP version"),
    case("balanced", "lb add nothere 10.1.0.3:80", 4, "nothere"),
    case("balanced", "lb add ../x 10.1.0.3:80", 3, "'../x'"),
    case("balanced", "lb add web -", 3, "no targets", stdin=""),
    case("balanced", "lb add web -", 3, "²", stdin="10.1.0.3:80 ²\n"),
    case("balanced", "lb add web -", 3, "extra", stdin="10.1.0.3:80 1 extra\n"),
    case("balanced", "lb add web -", 3, "10.1.0.3", stdin="10.1.0.3\n"),
    case("balanced", "lb add web -", 3, "stdin", stdin="10.1.0.3:80\0\n"),
    case("balanced", "lb add web -", 3, "no targets", stdin="#" * HUGE),
    case("balanced", "lb add web - -", 3, "no targets", stdin=""),
    case("balanced", "lb remove web 10.1.0.9:80", 4, "10.1.0.9:80"),
    case("balanced", "lb remove web -", 3, "'x'", stdin="10.1.0.2:8080 x\n"),
    case("balanced", "lb delete nothere", 4, "nothere"),
    case("balanced", "lb delete ../x", 3, "'../x'"),
    case("balanced", "lb list --format xml", 3, "xml"),
    case("balanced", "lb clear now", 2, "usage"),
    # the hook: hostile OCI state on stdin, in a PID namespace of its own
    case("network", "hook", 3, "OCI state", stdin="", pidns=True, name="hook empty stdin"),
    case("network", "hook", 3, "OCI state", stdin="not json", pidns=True,
         name="hook not json"),
    case("network", "hook", 3, "OCI state", stdin=NESTED_JSON, pidns=True,
         name="hook deeply nested"),
    case("network", "hook", 3, "1 MiB", stdin=" " * (2 << 20), pidns=True, name="hook 2 MiB"),
    case("network", "hook", 3, "id", stdin="[]", pidns=True, name="hook list"),
    case("network", "hook", 3, "'../x'", stdin=hook_state(cid='"../x"'), pidns=True,
         name="hook id ../x"),
    case("network", "hook", 3, "container id", stdin=hook_state(cid="5"), pidns=True,
         name="hook id number"),
    *(case("network", "hook", 3, "invalid pid", stdin=hook_state(pid), pidns=True,
           name=f"hook pid {pid}")
      for pid in ("true", "1.9", '"abc"', "[1]", "-5", "10" * 40, '"²"', "1e3", '"2"', '"1"')),
    case("network", "hook", 3, "status", stdin=hook_state(extra=', "status": 5'), pidns=True,
         name="hook status number"),
    case("network", "hook", 3, "annotations", pidns=True, name="hook annotations number",
         stdin='{"id": "evil", "pid": 1, "annotations": {"circuit.networks": 5}}'),
    case("network", "hook", 3, "own network namespace", stdin=hook_state(), pidns=True,
         name="hook pid 1 is circuit's own netns"),
    case("network", "hook attach", 3, "/dev/zero", stdin=hook_state(), pidns=True,
         env={"CNI_CONF": "/dev/zero"}, name="hook CNI_CONF /dev/zero"),
]


@pytest.mark.parametrize("setup, args, code, fragment, stdin, env, pidns", CASES)
def test_refused_with_one_line_and_nothing_changed(tmp_path, setup, args, code, fragment,
                                                   stdin, env, pidns):
    host = Host(tmp_path)
    try:
        found = SETUPS[setup](host)
        for name, content in FILES.items():
            if any(f"{{tmp}}/{name}" in a for a in args):
                (tmp_path / name).write_bytes(content())
        argv = [a.format(tmp=tmp_path, **found) for a in args]
        state, kernel = snapshot(host.state), kernel_objects(host)
        proc = run_circuit(host, argv, stdin, env, pidns)
        assert proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("circuit: "), proc.stderr
        assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
        assert proc.returncode == code, proc.stderr
        assert fragment in proc.stderr
        assert snapshot(host.state) == state
        assert kernel_objects(host) == kernel
        assert not list(tmp_path.glob("*.ran")), "a planted plugin ran"
    finally:
        host.close()


def run_circuit(host: Host, argv: list[str], stdin: str | None, env: dict | None, pidns: bool):
    """circuit argv in the host netns; with pidns in a PID namespace of its own, whose PID 1
    is this very circuit (never the machine's init)."""
    if not pidns:
        return host.circuit(*argv, check=False, input=stdin, env=env)
    full_env = {k: v for k, v in os.environ.items() if k != "CNI_PATH"} | (env or {})
    return host.run("unshare", "--pid", "--fork", "--mount-proc", CIRCUIT, "--state", host.state,
                    *argv, check=False, input=stdin, env=full_env)



# -- the host's own namespace: a target in PID 1's netns, circuit in another ---------------------

WATCHED_PLUGIN = "#!/bin/sh\n[ \"$CNI_COMMAND\" = VERSION ] || touch \"$0.ran\"\n" \
                 "exec /usr/lib/cni/$(basename \"$0\") \"$@\"\n"


def watched_plugins(tmp_path) -> str:
    """A CNI path whose bridge and host-local leave a mark when they run anything but VERSION
    (then do the real work)."""
    directory = tmp_path / "plugins"
    directory.mkdir()
    for kind in ("bridge", "host-local"):
        (directory / kind).write_text(WATCHED_PLUGIN)
        (directory / kind).chmod(0o755)
    return str(directory)


@pytest.mark.parametrize(("command", "fragment"), [
    ('network connect "$pid" sandbox', "host's network namespace (PID 1's or the kernel's)"),
    ('network connect "0$pid" sandbox', "without leading zeros"),
    ('network connect "+$pid" sandbox', "not a PID as the kernel writes it"),
    ('network connect " $pid" sandbox', "not a PID as the kernel writes it"),
    ("network connect 1 sandbox", "host's network namespace (PID 1's or the kernel's)"),
    ("hook", "host's network namespace (PID 1's or the kernel's)"),
], ids=["pid", "leading zero", "plus", "space", "pid 1", "hook"])
def test_a_target_in_pid_1s_netns_is_refused_before_any_plugin_runs(tmp_path, command,
                                                                    fragment):
    """In a PID namespace of its own whose PID 1 (a shell) is in the test's host netns, circuit
    runs in a fresh netns of its own, and is asked to connect a process in PID 1's netns (what
    `ip netns exec NS circuit network connect 12 NET` did to the machine's root namespace).
    Refused with one line before any plugin ran; PID 1's netns, circuit's state unchanged."""
    host = Host(tmp_path)
    try:
        plugins = watched_plugins(tmp_path)
        host.circuit("--cni-path", plugins, "network", "create", host.conf(bridge_conf()))
        state, kernel = snapshot(host.state), kernel_objects(host)
        stdin = '{"id": "evil", "status": "creating", "pid": %s}' if command == "hook" else ""
        (tmp_path / "inner.sh").write_text(
            f'printf \'{stdin}\' "$pid" | {CIRCUIT} --state {host.state} --cni-path {plugins} '
            f"{command}\n")
        script = f"busybox sleep 60 & pid=$!; export pid; unshare --net sh {tmp_path}/inner.sh; " \
                 "rc=$?; kill $pid; exit $rc"
        proc = host.run("unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script,
                        check=False, env={**os.environ, "CIRCUIT_NETWORK": "sandbox",
                                          "CIRCUIT_CNI_CACHE_DIR": str(host.cni_cache)})
        assert proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("circuit: "), proc.stderr
        assert proc.returncode == 3, proc.stderr
        assert fragment in proc.stderr
        assert not list((tmp_path / "plugins").glob("*.ran")), "a plugin ran"
        assert snapshot(host.state) == state
        assert kernel_objects(host) == kernel
    finally:
        host.close()


def test_doctor_fails_on_a_state_directory_circuit_cannot_write(tmp_path):
    """A read-only mount of the state (in a mount namespace of the test's own) is the state row
    failing, exit 10, not ok; doctor itself writes nothing."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    script = (f'mount --bind "{state}" "{state}" && mount -o remount,bind,ro "{state}" && '
              f'"{CIRCUIT}" --state "{state}" doctor --format json')
    proc = sh("unshare", "--mount", "sh", "-c", script, check=False)
    row = next(c for c in json.loads(proc.stdout) if c["feature"] == "state")
    assert proc.returncode == 10 and row["detail"] == f"{state}: a read-only file system"
    assert not row["ok"] and row["used"] and "read-write" in row["fix"]
    nested = sh("unshare", "--mount", "sh", "-c", script.replace(
        f'--state "{state}"', f'--state "{state}/sub"'), check=False)
    assert nested.returncode == 10 and "(where it would be made: " in nested.stdout
    assert list(state.iterdir()) == []
