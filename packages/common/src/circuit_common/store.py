"""The state directory: JSON records written atomically, and fcntl locks between processes.

Layout below the root (see docs/architecture.md):
    locks/store.lock            store-wide lock (shared by object locks, exclusive for lock_all)
    locks/<kind>.<name>.lock    one lock per object (network, service)
    <tool's own records>        e.g. networks/<name>.json, attachments/<network>/<cid>@<if>.json
"""

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from collections import namedtuple
from collections.abc import Callable, Iterator

from .errors import EnvironmentFault, LockTimeout, StateCorrupt
from .validate import check_name

SCHEMA_VERSION = 1
SETTLED_NS = 2_000_000_000  # a directory unchanged this long: its stamp is trusted
MAX_RECORD = 64 << 20  # bytes: far above the largest record circuit writes (5,000 LB targets)

# Records that could be read, and one message per record that could not.
Listing = namedtuple("Listing", "records errors")


class Store:
    """Records and locks under one root directory."""

    cluster = None  # with etcd state: this host as a cluster member (circuit_cluster.member)

    def __init__(self, root: str, lock_timeout: float = 30.0):
        self.root = os.fspath(root)
        self.lock_timeout = lock_timeout
        self._trusted = False
        self._trusted_dirs: set[str] = set()

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def check_root(self) -> None:
        """Refuse a state directory that others could write into (as ssh refuses such keys):
        it must be a directory of this user, not writable by group or others, reached only
        through directories that nobody else can change (check_path); through a symbolic
        link, it must be a directory circuit made (0700), never just any (/etc)."""
        if self._trusted:
            return
        check_path(self.root)
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            return  # made 0700 on the first write
        except OSError as e:
            raise EnvironmentFault(f"cannot use state directory {self.root}: {e.strerror}") \
                from None
        if not stat.S_ISDIR(st.st_mode):
            raise EnvironmentFault(f"state directory {self.root} is not a directory; "
                                   "point --state or CIRCUIT_STATE_DIR elsewhere")
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise EnvironmentFault(
                f"state directory {self.root} is owned by uid {st.st_uid} with mode "
                f"{stat.S_IMODE(st.st_mode):o}: others could plant records there; run "
                f"`chown {os.geteuid()} {self.root} && chmod 700 {self.root}`")
        real = os.path.realpath(self.root)
        if real != os.path.abspath(self.root) and st.st_mode & 0o077:
            raise EnvironmentFault(
                f"state directory {self.root} is a symbolic link to {real}, mode "
                f"{stat.S_IMODE(st.st_mode):o}, which is no state directory (circuit makes "
                "them 0700); give --state a directory of circuit's own")
        self._trusted = True

    def _check_trusted(self, st: os.stat_result, path: str, what: str, mode: str) -> None:
        """StateCorrupt unless path (st) belongs to this user and nobody else can write it:
        a record anyone could have planted is never acted on (a stored QoS plan is sent to the
        kernel as it is)."""
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise StateCorrupt(f"{what} {path} is owned by uid {st.st_uid} with mode "
                               f"{stat.S_IMODE(st.st_mode):o}: others could have planted it; "
                               f"remove it, or `chown {os.geteuid()} {path} && chmod {mode} "
                               f"{path}` if you trust it")

    def _check_dir(self, directory: str) -> None:
        """The directories between the root and a record: real directories (not symbolic
        links) that only this user can write."""
        while directory not in self._trusted_dirs and directory.startswith(self.root + os.sep):
            try:
                st = os.lstat(directory)
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(st.st_mode):
                raise StateCorrupt(f"state directory {directory} is not a directory (a "
                                   "symbolic link?); remove it")
            self._check_trusted(st, directory, "state directory", "700")
            self._trusted_dirs.add(directory)
            directory = os.path.dirname(directory)

    def _ensure_dir(self, directory: str) -> None:
        """Create directory and any missing parent up to the root, each 0700."""
        if os.path.isdir(directory):
            return
        parent = os.path.dirname(directory)
        try:
            if directory != self.root and directory.startswith(self.root + os.sep):
                self._ensure_dir(parent)
            elif parent:  # a relative root in the working directory ('rel') has none
                os.makedirs(parent, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
        except OSError as e:
            raise environment_fault(e, directory) from None

    # -- records ---------------------------------------------------------------------------

    def read(self, path: str, check: Callable[[dict, str], None] | None = None) -> dict | None:
        """The record at path, None when it does not exist; StateCorrupt when it cannot be
        read, is not circuit's JSON, or check(record, path) (which raises ValueError) finds it
        malformed or out of place."""
        self.check_root()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise StateCorrupt(f"state record {path} is not a regular file; remove it")
                self._check_trusted(st, path, "state record", "600")
                self._check_dir(os.path.dirname(os.fspath(path)))
                # sized by fstat: read(MAX_RECORD + 1) would allocate 64 MiB for every record
                data = f.read(min(st.st_size, MAX_RECORD) + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateCorrupt(f"cannot read state record {path}: {e.strerror}; remove or "
                               "repair it") from None
        return decode(data, os.fspath(path), check)

    def write(self, path: str, record: dict) -> None:
        """Replace the record at path atomically: temp file, fsync, rename, fsync of the dir."""
        self.write_bytes(path, encode(record))

    def write_bytes(self, path: str, body: bytes, durable: bool = True) -> None:
        """Replace the file at path with body atomically (a record encoded by encode); durable:
        on disk before this returns (not for a cache, which a crash may lose)."""
        self.check_root()
        self._ensure_dir(os.path.dirname(os.fspath(path)))
        try:
            replace_file(path, body, durable=durable)
        except OSError as e:
            raise environment_fault(e, path) from None

    def read_cache(self, path: str) -> dict | None:
        """The record of a cache file (this host's, rebuilt when lost); None when there is none
        or it cannot be used: a cache is never an error."""
        try:
            return self.read(path)
        except StateCorrupt:
            return None

    def write_cache(self, path: str, record: dict) -> None:
        """Replace a cache file's record, not durably (a crash may lose it); nothing fails
        when it cannot be written."""
        with contextlib.suppress(EnvironmentFault):
            self.write_bytes(path, encode(record), durable=False)

    def remove(self, path: str) -> bool:
        """Delete the record at path; False when it was already gone."""
        try:
            os.unlink(path)
            self._fsync_dir(os.path.dirname(os.fspath(path)))
        except FileNotFoundError:
            return False
        except OSError as e:
            raise environment_fault(e, path) from None
        return True

    def records(self, directory: str, prefix: str = "") -> Iterator[str]:
        """Paths of the records in directory whose names start with prefix, sorted; temp files
        are never listed."""
        self.check_root()
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return
        except OSError as e:
            raise EnvironmentFault(f"cannot list state directory {directory}: {e.strerror}; "
                                   "point --state or CIRCUIT_STATE_DIR elsewhere") from None
        for name in names:
            if name.endswith(".json") and name.startswith(prefix) and not name.startswith("."):
                yield os.path.join(directory, name)

    def read_all(self, directory: str, skip: str | None = None,
                 check: Callable[[dict, str], None] | None = None) -> "Listing":
        """Every record in directory (but the one at path skip) that check accepts; an
        unreadable or malformed one is reported in errors, not fatal, and one that another
        process removed after the listing is simply not there."""
        listing = Listing([], [])
        for path in self.records(directory):
            if path == skip:
                continue
            try:
                record = self.read(path, check)
            except StateCorrupt as e:
                listing.errors.append(str(e))
                continue
            if record is not None:
                listing.records.append(record)
        return listing

    def read_all_cached(self, directory: str, cache: str, check: Callable[[dict, str], None],
                        keep: Callable[[dict], dict]) -> "Listing":
        """read_all as keep(record) gives each record, with what check accepted kept in the
        file cache under its file's stamp (inode, mtime, size, owner, mode): a record whose
        file is unchanged since is not opened, parsed or checked again. Records are replaced
        by rename (a new inode), so a changed record is always read. And as git trusts its
        index: when the directory itself is unchanged (nothing created, renamed or removed in
        it) since a listing that found every record good, and it was last changed well before
        that listing (timestamps are coarse: a change in the same tick would look like none),
        not even the files are looked at. The cache is rewritten when anything changed (if it
        can be: a read-only state dir only loses the speed)."""
        try:
            st = os.stat(directory)
            here = [st.st_ino, st.st_mtime_ns]
        except FileNotFoundError:
            here = None
        try:
            cached = self.read(cache) or {}
        except StateCorrupt:
            cached = {}
        kept = cached.get("entries") if isinstance(cached.get("entries"), dict) else {}
        if here is not None and cached.get("directory") == here and cached.get("settled"):
            return Listing([kept[name]["record"] for name in sorted(kept)], [])
        stamps = {}
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(".json") and not entry.name.startswith("."):
                    st = entry.stat(follow_symlinks=False)
                    stamps[entry.name] = [st.st_ino, st.st_mtime_ns, st.st_size, st.st_uid,
                                          st.st_mode]
        listing, fresh = Listing([], []), {}
        for name in sorted(stamps):
            hit = kept.get(name)
            if isinstance(hit, dict) and hit.get("stamp") == stamps[name]:
                fresh[name] = hit
                listing.records.append(hit["record"])
                continue
            try:
                record = self.read(os.path.join(directory, name), check)
            except StateCorrupt as e:
                listing.errors.append(str(e))
                continue
            if record is not None:
                fresh[name] = {"stamp": stamps[name], "record": keep(record)}
                listing.records.append(fresh[name]["record"])
        settled = here is not None and not listing.errors \
            and time.time_ns() - here[1] > SETTLED_NS
        wanted = {"directory": here, "settled": settled, "entries": fresh}
        if {k: cached.get(k) for k in wanted} != wanted:
            with contextlib.suppress(EnvironmentFault):
                self.write_bytes(cache, encode(wanted), durable=False)
        return listing

    def sweep(self, *under: str) -> list[str]:
        """Remove the temp files of writers that were killed before their rename (in the
        subdirectory under, or everywhere)."""
        swept = []
        for directory, _, names in os.walk(self.path(*under)):
            for name in names:
                parts = name.split(".")
                if name.startswith(".") and name.endswith(".tmp") and len(parts) >= 5 \
                        and parts[-3].isdigit() and not os.path.exists(f"/proc/{parts[-3]}"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(directory, name))
                    swept.append(os.path.join(directory, name))
        return swept

    @staticmethod
    def _fsync_dir(directory: str) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- locks -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, kind: str, name: str) -> Iterator[None]:
        """Hold the exclusive lock of one object (and the store lock shared)."""
        check_name(name, f"{kind} name")
        with self._flock("store.lock", fcntl.LOCK_SH, "the state store"), \
                self._flock(f"{kind}.{name}.lock", fcntl.LOCK_EX, f"{kind} {name}"):
            yield

    @contextlib.contextmanager
    def lock_all(self) -> Iterator[None]:
        """Hold the whole store exclusively, for operations that span objects."""
        with self._flock("store.lock", fcntl.LOCK_EX, "the state store"):
            yield

    def drop_lock(self, kind: str, name: str) -> None:
        """Remove an object's lock file once the object is gone, under the store lock held
        exclusively: no process has it open then (lock takes the store lock first)."""
        check_name(name, f"{kind} name")
        with self._flock("store.lock", fcntl.LOCK_EX, "the state store"), \
                contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.path("locks"), f"{kind}.{name}.lock"))

    @contextlib.contextmanager
    def _flock(self, filename: str, mode: int, what: str) -> Iterator[None]:
        locks = self.path("locks")
        self.check_root()
        self._ensure_dir(locks)
        path = os.path.join(locks, filename)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise environment_fault(e, path) from None
        try:
            self._acquire(fd, mode, what, path)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _acquire(self, fd: int, mode: int, what: str, path: str) -> None:
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"timed out after {self.lock_timeout:g}s waiting for the lock on {what} "
                    f"({path}); another circuit process holds it")
            time.sleep(pause)
            pause = min(pause * 2, 0.02)


def replace_file(path: str, body: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Replace the file at path with body atomically: a temp file `.<name>.<pid>.<rand>.tmp`
    beside it (never followed if a link), renamed over it; durable: fsync of the file and of
    its directory before this returns. Raises OSError, leaving no temp file."""
    directory, name = os.path.split(os.fspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        Store._fsync_dir(directory or ".")


def decode(data: bytes, path: str, check: Callable[[dict, str], None] | None = None,
           where: str | None = None) -> dict:
    """The record data holds, for path, as read() checks it: StateCorrupt naming where (the
    place it came from: path unless another, as an etcd key) when it is too large, not JSON,
    not of this schema, or check(record, path) (which raises ValueError) finds it malformed."""
    where = where or path
    if len(data) > MAX_RECORD:
        raise StateCorrupt(f"state record {where} is larger than circuit writes; remove it")
    try:
        record = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise StateCorrupt(f"state record {where} is not valid JSON ({e}); "
                           "remove or repair it") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA_VERSION:
        raise StateCorrupt(f"state record {where} has no schema {SCHEMA_VERSION}; "
                           "it was not written by this version of circuit")
    if check is not None:
        try:
            check(record, path)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise StateCorrupt(f"state record {where} is malformed: {e}; remove or "
                               "repair it") from None
    return record


def encode(record: dict) -> bytes:
    """A record's bytes on disk (and in etcd): compact, sorted, with the schema version."""
    # compact: the C encoder (indent makes json fall back to Python, 4x slower)
    return (json.dumps({"schema": SCHEMA_VERSION, **record}, separators=(",", ":"),
                       sort_keys=True, check_circular=False) + "\n").encode()


MAX_LINKS = 40  # as the kernel's path walk: more is a loop


def check_path(root: str) -> None:
    """EnvironmentFault unless only this user and root can change where root leads: walked
    as the kernel walks it, every directory passed through is theirs and writable by no one
    else (a sticky one, as /tmp, when the entry taken in it is theirs), so a symbolic link
    on the way (`--state L`, L -> /etc) is followed only when nobody else could have made or
    re-pointed it, and what it leads to is checked as the root itself is."""
    me = os.geteuid()
    parts = os.path.abspath(root).split("/")[1:]
    current, links = "/", 0
    while parts:
        name = parts.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        entry_path = os.path.join(current, name)
        try:
            directory = os.stat(current)
            try:
                entry = os.lstat(entry_path)
            except FileNotFoundError:
                entry = None  # the rest is made (0700) on the first write
        except OSError as e:
            raise EnvironmentFault(f"cannot use state directory {root}: {entry_path}: "
                                   f"{e.strerror}") from None
        sticky_and_ours = directory.st_mode & stat.S_ISVTX and (entry is None
                                                                or entry.st_uid in (me, 0))
        if directory.st_uid not in (me, 0) or (directory.st_mode & 0o022
                                               and not sticky_and_ours):
            raise EnvironmentFault(
                f"state directory {root} is reached through {current}, owned by uid "
                f"{directory.st_uid} with mode {stat.S_IMODE(directory.st_mode):o}: others "
                "could re-point it; use a state directory whose parents only you or root "
                "can change")
        if entry is None:
            return
        if stat.S_ISLNK(entry.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise EnvironmentFault(f"state directory {root}: too many symbolic links "
                                       "(a loop?)")
            target = os.readlink(entry_path)
            parts = target.split("/") + parts
            if target.startswith("/"):
                current = "/"
            continue
        current = entry_path


def environment_fault(e: OSError, path: str) -> Exception:
    """The one-line error for a state write the machine refused."""
    hints = {errno.EROFS: "the file system is read-only",
             errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
             errno.EACCES: "permission denied (run as root?)",
             errno.EPERM: "permission denied (run as root?)",
             errno.ENOTDIR: "a part of the path is a file, not a directory",
             errno.ELOOP: "it is a symbolic link, which circuit does not follow"}
    hint = hints.get(e.errno, e.strerror)
    return EnvironmentFault(f"cannot write state {path}: {hint}; fix it or point --state "
                            "elsewhere")
