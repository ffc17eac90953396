"""`just install` into a temporary prefix (never /usr/local), from a copy of the clone that is
deleted before use: the installed circuit attaches and detaches a runc container on its own, and
every tool (circuit-cluster too) comes with its man page, completion and systemd units.

This machine runs no systemd: install and uninstall run where it seems to (a mount namespace of
their own with /run/systemd/system on a tmpfs), with a systemctl on PATH that writes down what
it is asked, and nothing else."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from harness import ROOT, bridge_conf, documented_hooks

TOOLS = ("circuit", "circuit-net", "circuit-qos", "circuit-lb", "circuit-hook", "circuit-cluster",
         "circuit-dns", "circuit-metrics")


def without_the_clone(env: dict) -> dict:
    """The environment with no PATH entry (the clone's .venv/bin) or venv inside the clone."""
    path = [p for p in env["PATH"].split(":") if p and not p.startswith(str(ROOT))]
    return {k: v for k, v in env.items() if k != "VIRTUAL_ENV"} | {"PATH": ":".join(path)}


def just(*args, cwd, env, systemd_runs=False) -> None:
    seeming = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs circuit-test /run && mkdir -p /run/systemd/system && exec "$@"',
               "sh"] if systemd_runs else []
    proc = subprocess.run([*seeming, "just", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def systemctl_on_path(tmp_path, env: dict) -> tuple[dict, Path]:
    """env with a systemctl that only writes its arguments down, one line a call."""
    stub, calls = tmp_path / "systemctl-stub", tmp_path / "systemctl-calls"
    stub.mkdir()
    (stub / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (stub / "systemctl").chmod(0o755)
    calls.touch()
    return env | {"PATH": f"{stub}:{env['PATH']}"}, calls


def test_installed_circuit_runs_a_hooked_container_after_the_clone_is_gone(host, runc, tmp_path):
    clone, prefix = tmp_path / "clone", tmp_path / "prefix"
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache"))
    env = without_the_clone(dict(os.environ))
    systemd_env, calls = systemctl_on_path(tmp_path, env)
    just("install", prefix, cwd=clone, env=systemd_env, systemd_runs=True)
    served_unit = prefix / "lib/systemd/system/circuit-forkserver.service"
    assert calls.read_text().splitlines() == ["daemon-reload",
                                              f"enable --now --quiet {served_unit}"]
    shutil.rmtree(clone)
    assert not [p for p in prefix.rglob("*") if p.is_file() and str(ROOT).encode()
                in p.read_bytes()]
    circuit = prefix / "bin" / "circuit"
    tools_env = env | {"PATH": f"{prefix / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"}
    for tool in TOOLS:
        assert (prefix / "bin" / tool).exists()
    version = subprocess.run([circuit, "version", "--format", "json"], capture_output=True,
                             text=True, env=tools_env)
    facts = json.loads(version.stdout)
    assert facts["pyroute2"] and facts["etcd3gw"], version.stderr
    for command in ([circuit, "cluster", "--help"], ["circuit-cluster", "--help"]):
        helped = subprocess.run(command, capture_output=True, text=True, env=tools_env)
        assert helped.returncode == 0 and "circuit-cluster join --address IP" in helped.stdout, (
            helped.stderr)
    unconfigured = subprocess.run([circuit, "--state", host.state, "cluster", "list"],
                                  capture_output=True, text=True, env=tools_env)
    assert unconfigured.returncode == 2  # the installed tool runs, and asks for etcd state
    assert "circuit cluster needs the state in etcd" in unconfigured.stderr

    hooks = documented_hooks("createRuntime", {"CNI_CONF": host.conf(bridge_conf()),
                                               "CIRCUIT_STATE_DIR": host.state})
    for entry in (e for entries in hooks.values() for e in entries):
        entry["path"] = str(circuit)
    cid = runc.run("installed", hooks).stdout
    container = runc.container(cid)
    assert container.ping("10.100.10.1")
    listed = host.run(circuit, "--state", host.state, "network", "list", "--format", "json",
                      env=tools_env)
    assert [p["container_id"] for r in json.loads(listed.stdout) for p in r["peers"]] == [cid]
    runc.delete(cid)
    assert host.reserved_ips("sandbox") == set()

    # the installed fork server runs hooks whose own python can import the dispatcher alone
    dispatcher_only = tmp_path / "dispatcher-only"
    dispatcher_only.mkdir()
    (dispatcher_only / "circuit_dispatch").symlink_to(
        next((prefix / "lib/circuit/lib").glob("python3*/site-packages/circuit_dispatch")))
    socket = tmp_path / "forkserver.sock"
    server = subprocess.Popen([circuit, "forkserver", "--socket", socket], env=tools_env,
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not socket.exists():
            assert server.poll() is None, server.stderr.read()
            time.sleep(0.05)
        for entry in (e for entries in hooks.values() for e in entries):
            entry["path"] = str(prefix / "lib/circuit/bin/python")
            entry["args"] = ["python", "-S", str(circuit.resolve())]
            entry["env"] += [f"CIRCUIT_FORKSERVER={socket}", f"PYTHONPATH={dispatcher_only}"]
        cid = runc.run("served", hooks).stdout
        assert runc.container(cid).ping("10.100.10.1")
        runc.delete(cid)
        assert host.reserved_ips("sandbox") == set()
    finally:
        server.terminate()
        assert server.wait(timeout=30) == 0

    man = subprocess.run(["man", "-w", "circuit", "circuit-lb", "circuit-cluster",
                          "circuit-network"], capture_output=True, text=True, env=tools_env)
    assert man.stdout.split() == [str(prefix / f"share/man/man1/{page}.1") for page in (
        "circuit", "circuit-lb", "circuit-cluster", "circuit-net")], man.stderr  # .so followed
    assert sorted(p.name for p in (prefix / "share/man/man1").iterdir()) == sorted(
        [*(f"{tool}.1" for tool in TOOLS), "circuit-network.1"])
    network_page = subprocess.run(["man", "circuit-network"], capture_output=True, text=True,
                                  env={**tools_env, "MANWIDTH": "100"})
    assert "circuit-net connect TARGET NETWORK" in network_page.stdout, network_page.stderr
    completions = prefix / "share/bash-completion/completions"
    for tool in ("circuit-net", "circuit-cluster"):
        registered = subprocess.run(["bash", "--norc", "-c", f"source {completions}/{tool}; "
                                     f"complete -p {tool}"], capture_output=True, text=True)
        assert registered.stdout == f"complete -F _circuit {tool}\n"
    units = prefix / "lib/systemd/system"
    assert sorted(p.name for p in units.iterdir()) == ["circuit-cluster-agent.service",
                                                       "circuit-dns.service",
                                                       "circuit-forkserver.service",
                                                       "circuit-lb-agent.service",
                                                       "circuit-restore.service"]
    served = (units / "circuit-forkserver.service").read_text()
    assert f"\nExecStart={circuit} forkserver\n" in served and "\nKillMode=mixed\n" in served
    assert f"ExecStart={circuit} restore\n" in (units / "circuit-restore.service").read_text()
    assert f"\nExecStart={circuit} dns serve\n" in (units / "circuit-dns.service").read_text()
    assert f"\nExecStart={circuit} lb agent\n" in (units / "circuit-lb-agent.service").read_text()
    agent = (units / "circuit-cluster-agent.service").read_text()
    for line in (f"ExecStart={circuit} cluster agent", "Type=simple", "Restart=on-failure",
                 "KillSignal=SIGTERM", "After=network-online.target etcd.service",
                 "Environment=CIRCUIT_CONFIG=/etc/circuit/circuit.toml"):
        assert f"\n{line}\n" in agent, line
    assert not list(prefix.rglob("*.wants"))  # enabling is systemctl's, under /etc
    if shutil.which("systemd-analyze"):
        for unit in units.iterdir():
            verify = subprocess.run(["systemd-analyze", "verify", "--man=no", unit],
                                    capture_output=True, text=True)
            assert verify.returncode == 0, verify.stderr

    calls.write_text("")
    just("install", prefix, cwd=ROOT, env=systemd_env | {"CIRCUIT_FORKSERVER_SERVICE": "off"},
         systemd_runs=True)  # an upgrade in place, with the documented opt-out
    just("install", prefix, cwd=ROOT, env=systemd_env)  # no systemd: no systemctl either
    assert calls.read_text() == ""
    just("uninstall", prefix, cwd=ROOT, env=systemd_env, systemd_runs=True)
    assert calls.read_text().splitlines() == [
        "disable --now --quiet circuit-forkserver.service", "daemon-reload"]
    assert list(prefix.rglob("*")) == [], "uninstall leaves files or the directories it made"
