"""runc ids under a runc root of their own (--runc-root, CIRCUIT_RUNC_ROOT, runc_root in the
config file), and libcni's result cache kept beside circuit's records."""

import json
import secrets
import subprocess

from harness import PREFIX, bridge_conf, runc_config, sh


def test_runc_ids_resolve_under_another_runc_root_and_the_cache_is_libcnis(host, rootfs):
    root = host.tmp / "runc-root"
    cid = f"{PREFIX}{secrets.token_hex(3)}-rootful"
    bundle = host.tmp / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(runc_config(rootfs, ["sleep", "3600"])))
    subprocess.run(["nsenter", f"--net={host.netns}", "runc", "--root", root, "run", "-d",
                    "--bundle", bundle, cid], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    try:
        host.circuit("network", "create", host.conf(bridge_conf()))
        lost = host.circuit("network", "connect", cid, "sandbox", check=False)
        assert lost.returncode == 4 and "no running runc container" in lost.stderr
        assert "in runc root /run/runc" in lost.stderr and "--runc-root" in lost.stderr

        config = host.tmp / "circuit.toml"
        config.write_text(f'runc_root = "{root}"\n')
        cache = host.cni_cache / "results" / f"sandbox-{cid}-eth0"
        for how in (["--runc-root", root], [], ["--config", config]):
            env = {"CIRCUIT_RUNC_ROOT": str(root)} if not how else None
            host.circuit(*how, "network", "connect", cid, "sandbox", env=env)
            entry = json.loads(cache.read_text())
            assert (entry["kind"], entry["containerId"], entry["networkName"]) == (
                "cniCacheV1", cid, "sandbox")
            assert entry["result"]["ips"][0]["address"].startswith("10.100.10.")
            host.circuit(*how, "network", "disconnect", cid, "sandbox", env=env)
            assert not cache.exists()

        # one container under its runc id and its PID (issue 26)
        pid = str(json.loads(sh("runc", "--root", root, "state", cid).stdout)["pid"])
        host.circuit("--runc-root", root, "network", "connect", cid, "sandbox")
        again = host.circuit("network", "connect", pid, "sandbox", check=False)
        assert again.returncode == 5 and len(again.stderr.splitlines()) == 1
        assert f"as {cid} (eth0)" in again.stderr and "--ifname" in again.stderr
        peer = json.loads(host.circuit("network", "list", "--format", "json").stdout)[0]
        assert [p["name"] for p in peer["peers"]] == [cid]
        assert f"({cid})" in host.circuit("network", "list").stdout  # not the PID
        host.circuit("network", "disconnect", pid, "sandbox")
        assert json.loads(host.circuit("network", "inspect", "sandbox").stdout)[
            "attachments"] == []
    finally:
        sh("runc", "--root", root, "delete", "--force", cid, check=False)
