"""State backends by URL scheme: the file backend is common's own, etcd:// is circuit-cluster's
entry point, found once and then through the cache; an unknown scheme is one line."""

import subprocess
import sys

import pytest
from test_cli import circuit

from circuit_cluster.replica import ReplicatedStore
from circuit_common.backend import StateBackend, open_backend
from circuit_common.config import load_settings
from circuit_common.errors import InvalidInput
from circuit_common.store import Store


def settings(tmp_path, state):
    return load_settings({"state": state, "local_state": str(tmp_path)},
                         env={"CIRCUIT_CONFIG": str(tmp_path / "none.toml")})


def cache(tmp_path):
    return Store(tmp_path).read(str(tmp_path / "cache" / "state-backends.json"))


def test_a_directory_is_the_file_backend_with_single_host_answers(tmp_path):
    store = open_backend(settings(tmp_path, str(tmp_path)))
    assert type(store) is StateBackend and not store.shared
    assert (store.fetch(store.path("networks", "x.json")), store.host_name(),
            store.hosts_using("x"), store.peer_attachments("x")) == (None, None, [], [])
    network = {"name": "x", "source": "flags", "config": {}}
    assert store.network_here(network, "/srv/ipam") is network
    with pytest.raises(InvalidInput, match="network x is a cluster network"):
        store.network_here({**network, "overlay": {"vni": 1}}, None)
    with pytest.raises(InvalidInput, match="--overlay makes a cluster network"):
        store.place_overlay({"vni": None}, [])
    assert cache(tmp_path) is None  # nothing to look up


def test_etcd_is_found_by_its_entry_point_once_then_by_the_cache(tmp_path):
    assert isinstance(open_backend(settings(tmp_path, "etcd://h:1")), ReplicatedStore)
    assert cache(tmp_path) == {"schema": 1, "etcd": "circuit_cluster.replica:ReplicatedStore"}
    code = ("import sys; from circuit_common.backend import open_backend;"
            "from circuit_common.config import load_settings;"
            f"s = load_settings({{'state': 'etcd://h:1', 'local_state': {str(tmp_path)!r}}});"
            "open_backend(s); print('importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_no_cache_is_written_where_the_state_directory_does_not_exist(tmp_path):
    open_backend(settings(tmp_path / "absent", "etcd://h:1"))
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("entry", ["this_test_would_run:Backend",
                                   "circuit_common.store:Store",
                                   "circuit_nosuch.backend:Backend"])
def test_a_cache_that_names_no_backend_of_the_scheme_is_looked_up_again(tmp_path, entry):
    """Never a module outside circuit's own, and never a class that does not serve the
    scheme: the entry points decide, and the cache is mended."""
    planted = tmp_path / "code"
    planted.mkdir()
    (planted / "this_test_would_run.py").write_text("class Backend: schemes = ('etcd',)\n")
    sys.path.insert(0, str(planted))
    Store(tmp_path).write(str(tmp_path / "cache" / "state-backends.json"), {"etcd": entry})
    try:
        assert isinstance(open_backend(settings(tmp_path, "etcd://h:1")), ReplicatedStore)
        assert "this_test_would_run" not in sys.modules
    finally:
        sys.path.remove(str(planted))
    assert cache(tmp_path)["etcd"] == "circuit_cluster.replica:ReplicatedStore"


@pytest.mark.parametrize("command", [("network", "list"), ("version",)])
def test_an_unknown_scheme_is_one_line_exit_3(tmp_path, command):
    proc = circuit("--state", "consul://h:1", "--local-state", tmp_path, *command)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr == ("circuit: unknown state URL 'consul://h:1': no installed tool serves "
                           "consul://; use a directory, file://DIR or "
                           "etcd://HOST:PORT[,HOST:PORT...][/PREFIX] or etcds://... (TLS)\n")
    assert proc.stdout == ""
