"""docs/walkthrough.md, run verbatim: its ```sh blocks, top to bottom, as one script, in a sandbox
of the test's own (a host netns; circuit's state, libcni's cache and runc's root in the test's
temp dir: `runc` on the script's PATH is runc with --root there). Every command must succeed,
and what the doc says it prints must be printed."""

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from harness import CIRCUIT, sh

WALKTHROUGH = Path(__file__).parents[2] / "docs" / "walkthrough.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```$", WALKTHROUGH.read_text(), re.M | re.S)


def test_the_walkthrough_runs_as_written(host):
    sandbox = host.tmp
    runc_root, bin_dir, work = sandbox / "runc", sandbox / "bin", sandbox / "work"
    for directory in (bin_dir, work):
        directory.mkdir()
    (bin_dir / "runc").write_text(
        f'#!/bin/sh\nexec {shutil.which("runc")} --root {runc_root} "$@"\n')
    (bin_dir / "runc").chmod(0o755)
    env = {**{k: v for k, v in os.environ.items() if k != "CNI_PATH"},
           "PATH": f"{bin_dir}:{Path(CIRCUIT).parent}:{os.environ['PATH']}",
           "CIRCUIT_STATE_DIR": str(host.state), "CIRCUIT_CNI_CACHE_DIR": str(host.cni_cache),
           "CIRCUIT_RUNC_ROOT": str(runc_root)}
    script = "set -eux\n" + "\n".join(blocks("sh"))
    try:
        with open(sandbox / "out", "w+") as out:  # files, not pipes: runc run -d keeps them
            code = subprocess.call(["nsenter", f"--net={host.netns}", "bash", "-c", script],
                                   cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT)
            out.seek(0)
            printed = out.read()
        assert code == 0, printed
        for shown in blocks("text"):
            for line in shown.splitlines():
                if "…" not in line and not line.startswith("NAME "):
                    assert f"\n{line}\n" in f"\n{printed}", (line, printed)
        config = json.loads((work / "web" / "config.json").read_text())
        assert {"destination": "/etc/resolv.conf", "type": "bind", "options": ["rbind", "ro"],
                "source": str(host.state / "dns" / "sandbox" / "resolv.conf")} in config["mounts"]
        mounts = [m for m in config["mounts"] if m["destination"] != "/etc/resolv.conf"]
        host.circuit("hook", "uninstall", work / "web")
        config = json.loads((work / "web" / "config.json").read_text())
        assert config["mounts"] == mounts and "hooks" not in config  # runc spec's, as it was
    finally:
        listed = sh("runc", "--root", runc_root, "list", "-q", check=False).stdout.split()
        for cid in listed:
            host.run("runc", "--root", runc_root, "delete", "--force", cid, check=False)
        for pidfile in (host.state / "dns").glob("server-*.pid"):
            pid = json.loads(pidfile.read_text())["pid"]
            if f"circuit_dns.server --state {host.state}" in Path(
                    f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace") if Path(f"/proc/{pid}").exists() else False:
                os.kill(pid, signal.SIGTERM)
