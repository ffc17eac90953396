"""The state store: atomic writes, locks between processes, clear errors on bad records."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from circuit_common.errors import LockTimeout, StateCorrupt
from circuit_common.store import Store

INCREMENT = """
import sys
from pathlib import Path
from circuit_common.store import Store
store = Store(Path(sys.argv[1]), lock_timeout=60)
path = store.path("networks", "counter.json")
for _ in range(int(sys.argv[2])):
    with store.lock("network", "counter"):
        record = store.read(path)
        store.write(path, {"count": record["count"] + 1})
"""


def test_write_is_private_and_readable(tmp_path):
    store = Store(tmp_path / "state")
    path = Path(store.path("networks", "a.json"))
    store.write(path, {"name": "a"})
    assert store.read(path) == {"schema": 1, "name": "a"}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    assert store.read(store.path("networks", "missing.json")) is None
    assert [Path(p).name for p in store.records(path.parent)] == ["a.json"]


def test_a_relative_root_in_the_working_directory_is_made(tmp_path, monkeypatch):
    """--state rel (relative: the working directory's) failed 'cannot write state rel: No
    such file or directory' (exit 10): its parent is '', which makedirs refuses."""
    monkeypatch.chdir(tmp_path)
    store = Store("rel")
    store.write(store.path("networks", "a.json"), {"name": "a"})
    assert stat.S_IMODE(os.stat(tmp_path / "rel").st_mode) == 0o700


def test_twenty_processes_updating_one_record_lose_no_update(tmp_path):
    store = Store(tmp_path)
    path = Path(store.path("networks", "counter.json"))
    store.write(path, {"count": 0})
    procs = [subprocess.Popen([sys.executable, "-c", INCREMENT, str(tmp_path), "10"])
             for _ in range(20)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 20
    assert store.read(path)["count"] == 200
    assert [p.name for p in path.parent.iterdir()] == ["counter.json"]


def test_a_process_killed_mid_write_leaves_the_old_record(tmp_path):
    store = Store(tmp_path)
    path = Path(store.path("networks", "a.json"))
    store.write(path, {"version": "old"})
    killer = f"""
import os, signal
from pathlib import Path
from circuit_common import store as s
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
s.os.replace = die   # killed after the temp file is written, before it takes the record's place
s.Store(Path({str(tmp_path)!r})).write(Path({str(path)!r}), {{"version": "new" * 10000}})
"""
    proc = subprocess.run([sys.executable, "-c", killer])
    assert proc.returncode == -signal.SIGKILL
    assert store.read(path)["version"] == "old"
    assert [Path(p).name for p in store.records(path.parent)] == ["a.json"]
    leftover = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(leftover) == 1
    other = Path(store.path("elsewhere"))
    other.mkdir()
    (other / leftover[0]).write_text("")
    assert store.sweep("networks") == [str(path.parent / leftover[0])]  # only under networks/
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]
    assert (other / leftover[0]).exists()


def test_a_corrupt_record_names_the_file(tmp_path):
    store = Store(tmp_path)
    path = Path(store.path("networks", "bad.json"))
    store.write(path, {})
    path.write_text('{"schema": 1, "name": ')
    with pytest.raises(StateCorrupt, match=r"networks/bad.json is not valid JSON"):
        store.read(path)
    path.write_text('{"name": "x"}')
    with pytest.raises(StateCorrupt, match=r"bad.json has no schema 1"):
        store.read(path)


def test_lock_timeout_names_what_was_locked(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from pathlib import Path
from circuit_common.store import Store
with Store(Path({str(tmp_path)!r})).lock("network", "busy"):
    print("locked", flush=True)
    time.sleep(30)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        store = Store(tmp_path, lock_timeout=0.3)
        start = time.monotonic()
        with pytest.raises(LockTimeout, match=r"0\.3s waiting for the lock on network busy"), \
                store.lock("network", "busy"):
            pass
        assert 0.3 <= time.monotonic() - start < 2
        with store.lock("network", "other"):  # other objects are not blocked
            pass
        with pytest.raises(LockTimeout, match="the state store"), store.lock_all():
            pass
    finally:
        holder.kill()
        holder.wait()
    with Store(tmp_path, lock_timeout=0.3).lock("network", "busy"):
        pass  # released when its holder died


def test_read_all_reports_unreadable_records_and_leaves_out_the_skipped_one(tmp_path):
    store = Store(tmp_path)
    for name in ("a", "b", "c"):
        store.write(store.path("services", f"{name}.json"), {"name": name})
    Path(store.path("services", "b.json")).write_text("{")
    listing = store.read_all(store.path("services"))
    assert [r["name"] for r in listing.records] == ["a", "c"]
    assert len(listing.errors) == 1 and "b.json" in listing.errors[0]
    skipped = store.read_all(store.path("services"), skip=store.path("services", "a.json"))
    assert [r["name"] for r in skipped.records] == ["c"]


def test_records_and_directories_others_could_write_are_not_trusted(tmp_path):
    """A record (or a directory above it) that anyone could have planted is never read: a
    stored QoS plan goes to the kernel as it is."""
    from circuit_common.errors import StateCorrupt

    root = tmp_path / "state"
    store = Store(str(root))
    store.write(store.path("qos", "n.json"), {"network": None})
    assert store.read(store.path("qos", "n.json")) is not None
    os.chmod(root / "qos" / "n.json", 0o666)
    with pytest.raises(StateCorrupt, match="others could have planted it"):
        Store(str(root)).read(store.path("qos", "n.json"))
    os.chmod(root / "qos" / "n.json", 0o600)
    os.chmod(root / "qos", 0o777)
    with pytest.raises(StateCorrupt, match=r"state directory .*qos is owned"):
        Store(str(root)).read(store.path("qos", "n.json"))
    os.chmod(root / "qos", 0o700)
    os.rename(root / "qos", root / "elsewhere")
    os.symlink(root / "elsewhere", root / "qos")
    with pytest.raises(StateCorrupt, match="not a directory"):
        Store(str(root)).read(store.path("qos", "n.json"))


def test_a_cached_listing_reads_only_what_changed_and_trusts_nothing_it_did_not_check(tmp_path):
    store = Store(tmp_path)
    directory, cache = store.path("attachments", "n"), store.path("cache", "n.json")
    for name in ("a", "b"):
        store.write(os.path.join(directory, f"{name}.json"), {"v": name})
    read = []

    def check(record, path):
        read.append(os.path.basename(path))
        if record["v"] == "bad":
            raise ValueError("bad v")

    def keep(record):
        return {"v": record["v"]}

    assert store.read_all_cached(directory, cache, check, keep).records == [{"v": "a"},
                                                                           {"v": "b"}]
    assert read == ["a.json", "b.json"]
    read.clear()
    assert store.read_all_cached(directory, cache, check, keep).records == [{"v": "a"},
                                                                           {"v": "b"}]
    assert read == []  # both from the cache
    store.write(os.path.join(directory, "b.json"), {"v": "bad"})  # replaced: a new inode
    os.unlink(os.path.join(directory, "a.json"))
    listing = store.read_all_cached(directory, cache, check, keep)
    assert listing.records == [] and "bad v" in listing.errors[0] and read == ["b.json"]
    store.write(os.path.join(directory, "b.json"), {"v": "b"})
    store.read_all_cached(directory, cache, check, keep)
    os.chmod(os.path.join(directory, "b.json"), 0o666)  # the mode is in the stamp
    listing = store.read_all_cached(directory, cache, check, keep)
    assert listing.records == [] and "others could have planted it" in listing.errors[0]


def test_a_settled_directory_is_listed_from_the_cache_alone(tmp_path, monkeypatch):
    from circuit_common import store as module

    store = Store(tmp_path)
    directory, cache = store.path("attachments", "n"), store.path("cache", "n.json")
    store.write(os.path.join(directory, "a.json"), {"v": "a"})

    def listing():
        return store.read_all_cached(directory, cache, lambda r, p: None, dict).records

    assert len(listing()) == 1
    assert not store.read(cache)["settled"]  # changed just now: the files are looked at
    monkeypatch.setattr(module, "SETTLED_NS", 0)
    listing()
    assert store.read(cache)["settled"]
    monkeypatch.setattr(os, "scandir", None)  # from the cache alone
    assert listing() == [{"schema": 1, "v": "a"}]
    monkeypatch.undo()
    monkeypatch.setattr(module, "SETTLED_NS", 0)
    store.write(os.path.join(directory, "b.json"), {"v": "b"})  # the directory changed
    assert [r["v"] for r in listing()] == ["a", "b"]


def test_a_state_root_is_trusted_only_as_far_as_what_leads_to_it(tmp_path):
    """--state L, L -> /etc: a link is followed only to a directory circuit made (0700), only
    through directories nobody else can change; doctor says where the state really lives."""
    from circuit_common.errors import EnvironmentFault

    real = tmp_path / "real"
    Store(str(real)).write(str(real / "networks" / "a.json"), {"name": "a"})
    (tmp_path / "link").symlink_to(real)
    assert Store(str(tmp_path / "link")).read(str(tmp_path / "link" / "networks" / "a.json"))
    (tmp_path / "etc").mkdir(mode=0o755)
    (tmp_path / "to-etc").symlink_to(tmp_path / "etc")
    with pytest.raises(EnvironmentFault, match=r"is a symbolic link to .*/etc, mode 755, which "
                                               "is no state directory"):
        Store(str(tmp_path / "to-etc")).read(str(tmp_path / "to-etc" / "networks" / "a.json"))
    assert not (tmp_path / "etc" / "networks").exists()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could replace what is below: an entry, a link, the state
    for root in (shared / "state", shared / "state" / "deeper"):
        with pytest.raises(EnvironmentFault, match=r"is reached through .*/shared, owned by "
                                                   r"uid \d+ with mode 777: others could"):
            Store(str(root)).write(str(root / "networks" / "a.json"), {"name": "a"})
    assert list(shared.iterdir()) == []
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(EnvironmentFault, match="too many symbolic links"):
        Store(str(tmp_path / "loop")).check_root()


def test_doctor_says_where_the_state_really_lives(tmp_path):
    from test_cli import circuit

    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "etc").mkdir(mode=0o755)
    (tmp_path / "to-etc").symlink_to(tmp_path / "etc")
    rows = json.loads(circuit("--state", tmp_path / "link", "doctor", "--format", "json").stdout)
    assert {"feature": "state", "ok": True, "used": False, "fix": "", "exit_code": 0,
            "detail": f"{tmp_path / 'link'}, a link to {tmp_path / 'real'}"} in rows
    refused = circuit("--state", tmp_path / "to-etc", "doctor", "--format", "json")
    state = next(r for r in json.loads(refused.stdout) if r["feature"] == "state")
    assert refused.returncode == 10 and not state["ok"] and "no state directory" in state["fix"]
