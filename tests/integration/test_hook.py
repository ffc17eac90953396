"""circuit as a runc hook, with real runc containers on a busybox rootfs."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

from harness import bridge_conf, documented_hooks, snapshot


def hooks(start_phase: str, env: dict) -> dict:
    """docs/runc-hooks.md's section; networks by name need CNI_CONF unset ("")."""
    return documented_hooks(start_phase, {"CNI_CONF": "", **env})


def attachments(host) -> list[dict]:
    rows = json.loads(host.circuit("network", "list", "--format", "json").stdout)
    return [p for r in rows for p in r["peers"]]


def veths(host) -> str:
    return host.run("ip", "-o", "link", "show", "type", "veth").stdout


def test_create_runtime_and_poststop_attach_and_detach(host, runc):
    env = {"CNI_CONF": host.conf(bridge_conf()), "CIRCUIT_STATE_DIR": host.state}
    web = runc.run("web", hooks("createRuntime", env))
    db = runc.run("db", hooks("createRuntime", env))
    a, b = runc.container(web.stdout), runc.container(db.stdout)
    ip_a, ip_b = a.addresses()[0], b.addresses()[0]
    assert a.ping("10.100.10.1") and a.ping(ip_b) and b.ping(ip_a)
    assert {p["container_id"] for p in attachments(host)} == {web.stdout, db.stdout}
    assert host.reserved_ips("sandbox") == {ip_a, ip_b}

    runc.delete(web.stdout)
    runc.delete(db.stdout)
    assert attachments(host) == [] and host.reserved_ips("sandbox") == set()
    assert veths(host) == ""
    assert host.circuit("network", "list", "-q").stdout == "sandbox\n"  # network survives


def test_prestart_works_too_and_a_restart_replaces(host, runc):
    env = {"CNI_CONF": host.conf(bridge_conf()), "CIRCUIT_STATE_DIR": host.state}
    cid = runc.run("old", hooks("prestart", env)).stdout
    c = runc.container(cid)
    assert c.ping("10.100.10.1")
    state = json.dumps({"ociVersion": "1.0.2", "id": cid, "pid": c.pid, "status": "created"})
    host.circuit("hook", "attach", input=state, env={"CNI_CONF": str(env["CNI_CONF"])})
    assert len(attachments(host)) == 1 and len(host.reserved_ips("sandbox")) == 1
    assert c.ping("10.100.10.1")
    runc.delete(cid)
    assert attachments(host) == [] and host.reserved_ips("sandbox") == set()


def test_hook_honours_cni_path(host, runc, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy("/usr/lib/cni/bridge", plugins / "my-bridge")
    shutil.copy("/usr/lib/cni/host-local", plugins / "host-local")
    conf = host.conf({**bridge_conf(), "type": "my-bridge"})
    env = {"CNI_CONF": conf, "CNI_PATH": plugins, "CIRCUIT_STATE_DIR": host.state}
    cid = runc.run("path", hooks("createRuntime", env)).stdout
    assert runc.container(cid).ping("10.100.10.1")
    runc.delete(cid)
    assert host.reserved_ips("sandbox") == set()


def test_networks_by_name_and_by_annotation(host, runc):
    host.circuit("network", "create", host.conf(bridge_conf()))
    host.circuit("network", "create", host.conf(bridge_conf("back", "cni7", "10.100.70.0/24")))
    env = {"CIRCUIT_NETWORK": "sandbox,back", "CIRCUIT_STATE_DIR": host.state}
    two = runc.run("two", hooks("createRuntime", env)).stdout
    c = runc.container(two)
    assert c.addresses("eth0")[0].startswith("10.100.10.")
    assert c.addresses("eth1")[0].startswith("10.100.70.")
    env = {"CIRCUIT_STATE_DIR": host.state}
    ann = runc.run("ann", hooks("createRuntime", env),
                   annotations={"circuit.networks": "back"}).stdout
    assert runc.container(ann).addresses("eth0")[0].startswith("10.100.70.")
    runc.delete(two)
    runc.delete(ann)
    assert attachments(host) == [] and veths(host) == ""


def test_a_failing_hook_aborts_the_start_and_leaves_nothing(host, runc, tmp_path):
    host.circuit("network", "create", host.conf(bridge_conf()))
    before = snapshot(host.state)
    bad = tmp_path / "bad.conf"
    bad.write_text('{"cniVersion": "0.3.0", "name": "x", "type": "nosuchplugin"}')
    env = {"CNI_CONF": bad, "CIRCUIT_STATE_DIR": host.state}
    proc = runc.run("bad", hooks("createRuntime", env), check=False)
    assert proc.returncode != 0 and "circuit: CNI plugin 'nosuchplugin' not found" in proc.stderr
    # a second network that fails after the first attached: both are undone
    env = {"CIRCUIT_NETWORK": "sandbox,missing", "CIRCUIT_STATE_DIR": host.state}
    proc = runc.run("half", hooks("createRuntime", env), check=False)
    assert proc.returncode != 0 and "no network named 'missing'" in proc.stderr
    assert snapshot(host.state) == before
    assert host.reserved_ips("sandbox") == set() and veths(host) == ""
    assert not [c for c in runc.ids if host.run("runc", "state", c, check=False).returncode == 0]


def test_detach_of_an_unknown_container_is_quiet(host):
    state = json.dumps({"ociVersion": "1.0.2", "id": "never-started", "status": "stopped"})
    proc = host.circuit(input=state)
    assert proc.returncode == 0 and proc.stdout == proc.stderr == ""


def test_a_hundred_containers_started_and_deleted_25_at_a_time(host, runc):
    """Zero hook errors, distinct IPs, and after the deletes zero leaks: no record, intent,
    reservation, veth or ipMasq nat chain (bridge 1.1.1 leaves it when DEL has no netns)."""
    count = 100
    env = {"CNI_CONF": host.conf(bridge_conf(subnet="10.100.0.0/23")),
           "CIRCUIT_STATE_DIR": host.state}
    with ThreadPoolExecutor(25) as pool:
        started = list(pool.map(lambda i: runc.run(f"p{i}", hooks("createRuntime", env),
                                                   check=False), range(count)))
    assert [p.returncode for p in started] == [0] * count, [p.stderr for p in started]
    containers = [runc.container(p.stdout) for p in started]
    ips = {c.addresses()[0] for c in containers}
    assert len(ips) == count and host.reserved_ips("sandbox") == ips
    assert containers[0].ping(containers[-1].addresses()[0])
    with ThreadPoolExecutor(25) as pool:
        deleted = list(pool.map(lambda p: runc.delete(p.stdout), started))
    assert [d.returncode for d in deleted] == [0] * count
    # runc only warns when a poststop hook fails: its stderr must be clean
    assert [d.stderr for d in deleted if d.stderr] == []
    assert attachments(host) == [] and host.reserved_ips("sandbox") == set()
    assert not (host.state / "intents" / "sandbox").exists() \
        or list((host.state / "intents" / "sandbox").iterdir()) == []
    assert veths(host) == ""
    assert "CNI-" not in host.run("nft", "list", "table", "ip", "nat", check=False).stdout


def test_hook_install_networks_a_runc_spec_bundle(host, runc):
    """`runc spec` bundle → `circuit hook install` → `runc run -d`: it pings a peer with nothing
    written by hand, and poststop releases it; installing twice is installing once."""
    host.circuit("network", "create", "sandbox", "--subnet", "10.100.10.0/24")
    peer = host.container()
    host.circuit("network", "connect", peer.pid, "sandbox")
    bundle = runc.bundle("installed")
    for _ in range(2):
        out = host.circuit("hook", "install", bundle, "--network", "sandbox", "-p", "8080:80",
                           "--alias", "web").stdout
        assert out == f"hooks installed in {bundle}/config.json (networks sandbox)\n"
    config = json.loads((bundle / "config.json").read_text())
    assert [len(config["hooks"][p]) for p in ("createRuntime", "poststop")] == [1, 1]
    assert config["annotations"] == {"circuit.networks": "sandbox", "circuit.publish": "8080:80",
                                     "circuit.aliases": "web"}
    env = dict(e.split("=", 1) for e in config["hooks"]["createRuntime"][0]["env"])
    assert env["CIRCUIT_STATE"] == str(host.state)
    assert env["CIRCUIT_CNI_CACHE_DIR"] == str(host.cni_cache)

    cid = runc.run("installed", bundle=bundle).stdout
    c = runc.container(cid)
    assert c.ping(peer.addresses()[0])
    assert cid in {p["container_id"] for p in attachments(host)}
    runc.delete(cid)
    assert cid not in {p["container_id"] for p in attachments(host)}
    assert len(host.reserved_ips("sandbox")) == 1  # the peer's only

    assert host.circuit("hook", "uninstall", bundle).stdout == \
        f"hooks removed from {bundle}/config.json\n"
    config = json.loads((bundle / "config.json").read_text())
    assert "hooks" not in config and "annotations" not in config
    assert host.circuit("hook", "uninstall", bundle).stdout == \
        f"no circuit hooks in {bundle}/config.json\n"


def test_hook_install_refuses_bad_input_and_changes_nothing(host, runc, tmp_path):
    host.circuit("network", "create", "sandbox", "--subnet", "10.100.10.0/24")
    bundle = runc.bundle("bad")
    before = (bundle / "config.json").read_bytes()
    cases = [
        (["hook", "install", tmp_path / "nowhere", "--network", "sandbox"], 3, "not a directory"),
        (["hook", "install", tmp_path, "--network", "sandbox"], 3, "has no config.json"),
        (["hook", "install", bundle], 3, "--network NAME"),
        (["hook", "install", bundle, "--network", "nosuch"], 4, "nosuch"),
        (["hook", "install", bundle, "--network", "sandbox", "-p", "80"], 3, "--publish"),
        (["hook", "install", bundle, "--network", "sandbox", "--alias", "-x-"], 3, "alias"),
    ]
    for argv, code, words in cases:
        proc = host.circuit(*argv, check=False)
        assert proc.returncode == code and words in proc.stderr, (argv, proc)
        assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert (bundle / "config.json").read_bytes() == before
    (bundle / "config.json").write_text('{"ociVersion": "1.0.2", "linux": {}}')
    proc = host.circuit("hook", "install", bundle, "--network", "sandbox", check=False)
    assert proc.returncode == 3 and "network namespace" in proc.stderr
