"""The extension interface: circuit-net knows its extensions only through entry points and the
markers they leave on networks."""

import json
import subprocess
import sys

import pytest
from test_cli import circuit

from circuit_common import extensions
from circuit_common.store import Store

NETWORK = {"schema": 1, "name": "sandbox", "source": "test", "created": "now",
           "config": {"cniVersion": "1.0.0", "name": "sandbox",
                      "plugins": [{"type": "bridge"}]}}


def test_circuit_net_imports_no_extension_and_no_pyroute2():
    code = ("import sys, circuit_net.networks, circuit_hook.cli\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('circuit_qos', 'circuit_lb', 'pyroute2', 'circuit_netlink')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_circuit_net_depends_on_the_netlink_core_without_pyroute2():
    """circuit-net needs circuit-netlink's low layer only; pyroute2 is the extra that qos, lb
    and cluster ask for."""
    tree = subprocess.run(["uv", "tree", "--package", "circuit-net", "--frozen"],
                          capture_output=True, text=True, check=True).stdout
    assert "circuit-net" in tree and "circuit-netlink" in tree
    assert "pyroute2" not in tree and "circuit-qos" not in tree
    qos = subprocess.run(["uv", "tree", "--package", "circuit-qos", "--frozen"],
                         capture_output=True, text=True, check=True).stdout
    assert "circuit-netlink[pyroute2]" in qos and "pyroute2 v0.9" in qos


def test_the_netlink_core_low_layer_loads_no_pyroute2():
    code = ("import sys, circuit_net.link, circuit_netlink.rtnl\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_qos_lb_and_dns_register_and_load_with_their_parts_of_the_lifecycle():
    """Each entry point loads (registered() imports its module) and is the tool's module with
    the hooks circuit-net, restore and the cluster's resync call: if qos, lb or dns vanished,
    or its module no longer loaded, this fails."""
    modules = dict(extensions.registered())
    assert sorted(modules) == ["dns", "isolation", "lb", "qos"]
    assert {name: m.__name__ for name, m in modules.items()} == {
        name: "circuit_net.isolation" if name == "isolation" else f"circuit_{name}.extension"
        for name in modules}
    hooks = {"qos": ("attached", "detached", "network_deleted", "restore", "resync"),
             "isolation": ("restore",),
             "lb": ("restore", "resync"),
             "dns": ("attached", "detached", "network_created", "network_deleted",
                     "bundle_mounts", "restore")}
    for name, wanted in hooks.items():
        assert [h for h in wanted if not callable(getattr(modules[name], h, None))] == [], name


def test_every_tool_declares_its_doctor_checks_and_etcd_its_state_backend():
    from importlib.metadata import entry_points

    from circuit_cluster.replica import ReplicatedStore
    from circuit_common import backend, doctor

    checks = {e.name: e.load() for e in entry_points(group=doctor.GROUP)}
    assert sorted(checks) == ["cluster", "lb", "net", "qos"]
    assert all(callable(c) for c in checks.values())
    assert backend.registered() == [ReplicatedStore]


def test_markers_are_made_listed_and_dropped(tmp_path):
    store = Store(tmp_path)
    assert extensions.markers(store, "sandbox") == []
    extensions.mark(store, "sandbox", "qos", "circuit_qos.extension")
    extensions.mark(store, "sandbox", "qos", "circuit_qos.extension")
    assert extensions.markers(store, "sandbox") == ["qos"]
    extensions.unmark(store, "sandbox", "qos")
    assert extensions.markers(store, "sandbox") == []
    assert not (tmp_path / "extensions" / "sandbox").exists()


@pytest.mark.parametrize("marker", [{"extension": "nosuch"},
                                    {"extension": "nosuch", "module": "circuit_nosuch.extension"}],
                         ids=["entry-point", "module"])
def test_a_missing_extension_is_one_line_and_changes_nothing(tmp_path, marker):
    (tmp_path / "networks").mkdir(mode=0o700)
    (tmp_path / "networks" / "sandbox.json").write_text(json.dumps(NETWORK))
    Store(tmp_path).write(str(tmp_path / "extensions" / "sandbox" / "nosuch.json"), marker)
    proc = circuit("--state", tmp_path, "network", "delete", "sandbox")
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "extension 'nosuch', which no installed tool provides" in proc.stderr
    assert "nosuch.json" in proc.stderr
    assert (tmp_path / "networks" / "sandbox.json").exists()


def test_a_marker_names_only_a_circuit_extension_module(tmp_path):
    """A marker's module is imported on the hook's path without an entry-point scan: one that
    is not circuit_<tool>.extension is never imported."""
    import pytest

    from circuit_common.errors import NotFound

    planted = tmp_path / "code"
    planted.mkdir()
    (planted / "this_test_would_run.py").write_text("")  # importable, and not circuit's
    sys.path.insert(0, str(planted))
    store = Store(tmp_path / "state")
    store.write(store.path("extensions", "sandbox", "evil.json"),
                {"extension": "evil", "module": "this_test_would_run"})
    try:
        with pytest.raises(NotFound, match="no installed tool provides"):
            extensions.load(store, "sandbox", "evil")
        assert "this_test_would_run" not in sys.modules
    finally:
        sys.path.remove(str(planted))
    extensions.mark(store, "sandbox", "qos", "circuit_qos.extension")
    assert extensions.load(store, "sandbox", "qos").__name__ == "circuit_qos.extension"


def test_a_malformed_qos_record_is_state_corrupt_not_a_crash(tmp_path):
    import pytest

    from circuit_common.errors import StateCorrupt
    from circuit_qos import policy

    store = Store(tmp_path)
    store.write(policy.policy_path(store, "sandbox"), {"network": {"rate": "fast"},
                                                      "attachments": {}})
    with pytest.raises(StateCorrupt, match=r"sandbox\.json is malformed"):
        policy.load(store, "sandbox")
