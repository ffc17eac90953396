"""runc bundles: a busybox-static rootfs, `runc spec` made non-interactive, the hooks of
docs/runc-hooks.md, and runc containers started inside a test's host netns."""

import json
import os
import secrets
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.netns import CIRCUIT, PREFIX, ROOT, Container, Host, sh

BUSYBOX_APPLETS = ("sh", "sleep", "ping", "ip", "httpd", "nc", "wget", "cat", "ifconfig",
                   "nslookup")


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory) -> Path:
    """A read-only busybox-static root filesystem shared by every test container."""
    return make_rootfs(tmp_path_factory.mktemp("rootfs"))


def make_rootfs(root: Path) -> Path:
    """A busybox-static root filesystem in root."""
    root.mkdir(exist_ok=True)
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc", "www"):
        (root / d).mkdir()
    busybox = root / "bin" / "busybox"
    busybox.write_bytes(Path("/bin/busybox").read_bytes())
    busybox.chmod(0o755)
    for applet in BUSYBOX_APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    return root


def runc_config(rootfs: Path, args: list[str], hooks: dict | None = None,
                annotations: dict | None = None, binds: dict | None = None) -> dict:
    """`runc spec`, made non-interactive, with the given process and hooks; binds: {path in
    the container: file on the host}, bind-mounted read-only."""
    config = _spec()
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["process"]["capabilities"] = {k: [*v, "CAP_NET_RAW"]
                                         for k, v in config["process"]["capabilities"].items()}
    config["root"] = {"path": str(rootfs), "readonly": True}
    if hooks:
        config["hooks"] = hooks
    if annotations:
        config["annotations"] = annotations
    for destination, source in (binds or {}).items():
        config["mounts"].append({"destination": destination, "type": "bind",
                                 "source": str(source), "options": ["rbind", "ro"]})
    return config


def _spec() -> dict:
    with tempfile.TemporaryDirectory() as d:
        sh("runc", "spec", "--bundle", d)
        return json.loads((Path(d) / "config.json").read_text())


def documented_hooks(start_phase: str, env: dict) -> dict:
    """The hooks section of docs/runc-hooks.md, with this checkout's circuit and env overrides."""
    if env.get("CIRCUIT_STATE_DIR"):  # libcni's cache beside the state, never /var/lib/cni
        env = {"CIRCUIT_CNI_CACHE_DIR": Path(env["CIRCUIT_STATE_DIR"]).parent / "cni", **env}
    # the fork server of `just test-integration-served` runs the hooks too
    env = {"CIRCUIT_FORKSERVER": os.environ.get("CIRCUIT_FORKSERVER"), **env}
    text = (ROOT / "docs" / "runc-hooks.md").read_text()
    hooks = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])["hooks"]
    hooks[start_phase] = hooks.pop("createRuntime")
    for entries in hooks.values():
        for entry in entries:
            entry["path"] = CIRCUIT
            merged = dict(e.split("=", 1) for e in entry["env"]) | {
                k: str(v) for k, v in env.items()}
            entry["env"] = [f"{k}={v}" for k, v in merged.items() if v]
    return hooks


class Runc:
    """runc containers started in a host netns, so their hooks run there; deleted by id."""

    def __init__(self, host: Host, rootfs: Path):
        self.host = host
        self.rootfs = rootfs
        self.ids: list[str] = []

    def bundle(self, name: str, hooks: dict | None = None, args=("sleep", "3600"),
               annotations: dict | None = None, binds: dict | None = None) -> Path:
        """A bundle directory for container name (its id), with its config.json."""
        bundle = self.host.tmp / "bundles" / f"{PREFIX}{secrets.token_hex(3)}-{name}"
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(
            runc_config(self.rootfs, list(args), hooks, annotations, binds)))
        return bundle

    def run(self, name: str, hooks: dict | None = None, args=("sleep", "3600"),
            annotations: dict | None = None, check=True, bundle: Path | None = None,
            binds: dict | None = None) -> subprocess.CompletedProcess:
        """`runc run -d` of a new bundle (or of bundle, made by `bundle`), stdio to files
        (never pipes: runc hands them to the container)."""
        bundle = bundle or self.bundle(name, hooks, args, annotations, binds)
        cid = bundle.name
        self.ids.append(cid)
        with open(bundle / "stderr", "w+") as err:
            code = subprocess.call(
                ["nsenter", f"--net={self.host.netns}", "runc", "run", "-d",
                 "--bundle", str(bundle), cid],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            err.seek(0)
            proc = subprocess.CompletedProcess([cid], code, cid, err.read())
        if check and code != 0:
            raise AssertionError(f"runc run {cid} failed: {proc.stderr}")
        return proc

    def pid(self, cid: str) -> int:
        return json.loads(sh("runc", "state", cid).stdout)["pid"]

    def container(self, cid: str) -> Container:
        """The running container as a Container (its netns entered through its PID)."""
        return Container(self.pid(cid))

    def delete(self, cid: str) -> subprocess.CompletedProcess:
        return self.host.run("runc", "delete", "--force", cid, check=False)

    def close(self) -> None:
        for cid in self.ids:
            if sh("runc", "state", cid, check=False).returncode == 0:
                self.delete(cid)


@pytest.fixture
def runc(host, rootfs):
    r = Runc(host, rootfs)
    try:
        yield r
    finally:
        r.close()
