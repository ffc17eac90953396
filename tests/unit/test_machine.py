"""Kernel facts for `circuit version` and `doctor`, read from files only (a fake root here)."""

import gzip

from circuit_common.machine import kernel_features


def test_loaded_builtin_module_and_absent(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "modules").write_text("sch_htb 49152 0 - Live 0x0\n")
    modules = tmp_path / "lib" / "modules" / "6.1.0-x"
    modules.mkdir(parents=True)
    (modules / "modules.builtin").write_text("kernel/drivers/net/veth.ko\n"
                                             "kernel/net/bridge/bridge.ko\n")
    (modules / "modules.dep").write_text("kernel/net/netfilter/ipvs/ip_vs.ko: kernel/x.ko\n"
                                         "kernel/net/sched/sch_htb.ko:\n")
    features = kernel_features(f"{tmp_path}/", "6.1.0-x")
    assert features["htb"] == "loaded" and features["veth"] == features["bridge"] == "builtin"
    assert features["ipvs"] == "module" and features["netem"] == "no"


def test_a_kernel_without_modules_answers_from_its_config(tmp_path):
    (tmp_path / "proc").mkdir()
    with gzip.open(tmp_path / "proc" / "config.gz", "wt") as f:
        f.write("# CONFIG_MODULES is not set\nCONFIG_NF_TABLES=y\n# CONFIG_IP_VS is not set\n")
    features = kernel_features(f"{tmp_path}/", "6.18-x")
    assert features["nftables"] == "builtin" and features["ipvs"] == features["netem"] == "no"


def test_nothing_to_read_is_unknown(tmp_path):
    assert set(kernel_features(f"{tmp_path}/", "6.18-x").values()) == {"unknown"}
