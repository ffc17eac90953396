"""docs/hooks.d/circuit.json with real podman (Debian's 4.3): a container carrying the
annotation circuit.networks is attached at createRuntime and detached at poststop.

Podman runs here as design.md found it works: --runtime runc, a containers.conf with
`default_ulimits = []`, --rootfs (no image), --network none, temp --root/--runroot/--tmpdir,
every command under `nsenter --net` of the test's host netns, so hooks run there."""

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness import CIRCUIT, PREFIX, ROOT, bridge_conf

pytestmark = pytest.mark.skipif(not shutil.which("podman"), reason="podman is not installed "
                                "(just setup installs it)")


class Podman:
    """podman with its storage in a temp dir, inside the host netns; removes what it ran."""

    def __init__(self, host, tmp, hooks: dict):
        self.tmp = tmp
        (tmp / "hooks").mkdir(parents=True)
        (tmp / "hooks" / "circuit.json").write_text(json.dumps(hooks))
        (tmp / "containers.conf").write_text("[containers]\ndefault_ulimits = []\n")
        self.env = {**os.environ, "CONTAINERS_CONF": str(tmp / "containers.conf")}
        self.storage = Path(tempfile.mkdtemp(prefix=PREFIX))  # podman: a runroot of <= 50 chars
        # vfs: overlay mounts its home on itself, and a mount left behind fails the rmtree
        self.base = ["nsenter", f"--net={host.netns}", "podman", "--root", self.storage / "root",
                     "--runroot", self.storage / "run", "--tmpdir", self.storage / "tmp",
                     "--runtime", "runc", "--storage-driver", "vfs",
                     "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                     "--hooks-dir", tmp / "hooks"]
        self.names: list[str] = []

    def __call__(self, *args) -> subprocess.CompletedProcess:
        """A podman command, stdio to files (a detached container must not hold our pipes)."""
        out, err = self.tmp / "stdout", self.tmp / "stderr"
        with open(out, "w") as o, open(err, "w") as e:
            code = subprocess.call([*map(str, self.base), *map(str, args)], env=self.env,
                                   stdin=subprocess.DEVNULL, stdout=o, stderr=e, timeout=120)
        return subprocess.CompletedProcess(args, code, out.read_text(), err.read_text())

    def run(self, rootfs, annotations: dict) -> tuple[str, int]:
        """A detached `sleep` container: (its podman id, its PID)."""
        name = f"{PREFIX}{secrets.token_hex(3)}"
        self.names.append(name)
        flags = [f for k, v in annotations.items() for f in ("--annotation", f"{k}={v}")]
        proc = self("run", "-d", "--name", name, "--network", "none", *flags,
                    "--rootfs", rootfs, "sleep", "3600")
        assert proc.returncode == 0, proc.stderr
        inspect = self("inspect", "--format", "{{.State.Pid}}", name)
        return proc.stdout.strip(), int(inspect.stdout)

    def close(self) -> None:
        for name in self.names:
            self("rm", "--force", "--time", "0", name)
        shutil.rmtree(self.storage)


@pytest.fixture
def podman(host, tmp_path):
    hooks = json.loads((ROOT / "docs" / "hooks.d" / "circuit.json").read_text())
    hooks["hook"]["path"] = CIRCUIT
    hooks["hook"]["env"] += [f"CIRCUIT_STATE_DIR={host.state}",
                             f"CIRCUIT_CNI_CACHE_DIR={host.cni_cache}"]
    p = Podman(host, tmp_path / "podman", hooks)
    try:
        yield p
    finally:
        p.close()


def peers(host) -> list[str]:
    rows = json.loads(host.circuit("network", "list", "--format", "json").stdout)
    return [p["container_id"] for r in rows for p in r["peers"]]


def netns_of(pid: int, *cmd) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", *cmd], capture_output=True,
                          text=True)


def test_the_annotation_attaches_at_start_and_detaches_at_stop(host, podman, rootfs):
    host.circuit("network", "create", host.conf(bridge_conf()))
    cid, pid = podman.run(rootfs, {"circuit.networks": "sandbox"})
    assert peers(host) == [cid]
    assert netns_of(pid, "busybox", "ping", "-c", "1", "-W", "2", "10.100.10.1").returncode == 0
    assert len(host.reserved_ips("sandbox")) == 1

    removed = podman("rm", "--force", "--time", "0", cid)
    assert removed.returncode == 0, removed.stderr
    assert peers(host) == [] and host.reserved_ips("sandbox") == set()
    assert host.run("ip", "-o", "link", "show", "type", "veth").stdout == ""


def test_without_the_annotation_the_hook_does_not_run(host, podman, rootfs):
    host.circuit("network", "create", host.conf(bridge_conf()))
    _, pid = podman.run(rootfs, {"other": "x"})
    assert peers(host) == []
    links = netns_of(pid, "ip", "-o", "link").stdout.splitlines()
    assert [line.split(": ")[1] for line in links] == ["lo"]
