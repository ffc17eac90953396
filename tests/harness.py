"""Network test harness shared by the integration and kernel tiers: a throwaway "host" netns per
test, containers as processes (or runc containers) in netns of their own, circuit run inside the
host netns with a temporary state dir; everything removed on every path."""

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CIRCUIT = str(ROOT / ".venv" / "bin" / "circuit")
PREFIX = "ctest-"


def sh(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=check, **kw)


def root_links() -> set[str]:
    lines = sh("ip", "-o", "link").stdout.splitlines()
    return {line.split(": ")[1].split("@")[0] for line in lines}


def netns_names() -> set[str]:
    return {line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line}


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file below directory but the lock files, with its content."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and "locks" not in p.parts}


@pytest.fixture(scope="session", autouse=True)
def leak_check():
    """Fail the run if the tests leave namespaces or root-namespace links behind."""
    if os.geteuid() != 0:
        pytest.skip("integration tests need root")
    links_before, ns_before = root_links(), netns_names()
    yield
    leaked_runc = [c for c in sh("runc", "list", "-q").stdout.split() if c.startswith(PREFIX)]
    assert not leaked_runc, f"tests left runc containers {leaked_runc}"
    leaked_ns = {n for n in netns_names() - ns_before if n.startswith(PREFIX)}
    leaked_links = root_links() - links_before
    assert not leaked_ns and not leaked_links, \
        f"tests left namespaces {leaked_ns} and root links {leaked_links}"


class Container:
    """A process in a netns of its own, as runc would give a container."""

    def __init__(self, pid: int, popen: subprocess.Popen | None = None):
        self.pid = pid
        self.popen = popen  # set when the test started the process and must end it

    @classmethod
    def spawn(cls, args=("busybox", "sleep", "3600")) -> "Container":
        """args in a new netns, started by the test (killed by its PID at the end)."""
        popen = subprocess.Popen(["unshare", "--net", "--", *map(str, args)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{popen.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare did not make a netns"
            time.sleep(0.01)
        return cls(popen.pid, popen)

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def run(self, *cmd, check=True, **kw) -> subprocess.CompletedProcess:
        return sh("nsenter", f"--net={self.netns}", *cmd, check=check, **kw)

    def ping(self, ip: str, count: int = 1) -> bool:
        return self.run("busybox", "ping", "-c", count, "-W", "2", ip, check=False).returncode == 0

    def links(self) -> set[str]:
        return {line.split(": ")[1].split("@")[0]
                for line in self.run("ip", "-o", "link").stdout.splitlines()}

    def addresses(self, ifname: str = "eth0", version: int = 4) -> list[str]:
        out = self.run("ip", "-j", f"-{version}", "addr", "show", "dev", ifname, "scope",
                       "global").stdout
        return [a["local"] for link in json.loads(out) for a in link["addr_info"] if "local" in a]

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


class Host:
    """A throwaway netns standing in for the machine, with circuit's state in a temp dir."""

    def __init__(self, tmp: Path):
        self.name = PREFIX + secrets.token_hex(4)
        self.tmp = tmp
        self.state = tmp / "state"
        self.ipam = tmp / "ipam"
        self.containers: list[Container] = []
        sh("ip", "netns", "add", self.name)
        sh("ip", "-n", self.name, "link", "set", "lo", "up")

    @property
    def netns(self) -> str:
        return f"/run/netns/{self.name}"

    def run(self, *cmd, check=True, **kw) -> subprocess.CompletedProcess:
        return sh("nsenter", f"--net=/run/netns/{self.name}", *cmd, check=check, **kw)

    fork_circuit = False  # the kernel tier sets it: see run_forked

    def circuit(self, *args, check=True, env=None, **kw) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if k != "CNI_PATH"} | (env or {})
        argv = [str(a) for a in ("--state", self.state, *args)]
        if self.fork_circuit:
            proc = run_forked(f"/run/netns/{self.name}", lambda: dispatcher().main(argv),
                              full_env, kw.get("input"))
        else:
            proc = self.run(CIRCUIT, *argv, check=False, env=full_env, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"circuit {' '.join(map(str, args))} failed "
                                 f"({proc.returncode}): {proc.stderr}")
        return proc

    def container(self, args=("busybox", "sleep", "3600")) -> Container:
        c = Container.spawn(args)
        self.containers.append(c)
        return c

    def conf(self, conf: dict, filename: str | None = None) -> Path:
        """Write a network config, keeping host-local's reservations in this test's temp dir."""
        conf = json.loads(json.dumps(conf))
        for plugin in conf.get("plugins", [conf]):
            if plugin.get("ipam", {}).get("type") == "host-local":
                plugin["ipam"]["dataDir"] = str(self.ipam)
        path = self.tmp / (filename or f"{conf['name']}.conf")
        path.write_text(json.dumps(conf))
        return path

    def reserved_ips(self, network: str) -> set[str]:
        directory = self.ipam / network
        if not directory.exists():
            return set()
        return {p.name for p in directory.iterdir() if p.name[0].isdigit()}

    def close(self) -> None:
        for c in self.containers:
            c.kill()
        sh("ip", "netns", "del", self.name, check=False)


@pytest.fixture
def host(tmp_path):
    h = Host(tmp_path)
    try:
        yield h
    finally:
        h.close()


def bridge_conf(name="sandbox", bridge="cni0", subnet="10.100.10.0/24", version="0.3.0"):
    """The seed README's bridge network."""
    return {"cniVersion": version, "name": name, "type": "bridge", "bridge": bridge,
            "ipMasq": True, "isGateway": True,
            "ipam": {"type": "host-local", "subnet": subnet, "routes": [{"dst": "0.0.0.0/0"}]}}


def httpd(host: Host, www_root: Path, name: str, network: str = "sandbox") -> Container:
    """A busybox httpd container that serves its own name, connected to network."""
    www = www_root / name
    www.mkdir()
    (www / "index.html").write_text(f"{name}\n")
    c = host.container(("busybox", "httpd", "-f", "-p", "80", "-h", www))
    host.circuit("network", "connect", c.pid, network)
    return c


def wait_for(predicate, timeout=5.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()




BUSYBOX_APPLETS = ("sh", "sleep", "ping", "ip", "httpd", "nc", "wget", "cat", "ifconfig")


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
                annotations: dict | None = None) -> dict:
    """`runc spec`, made non-interactive, with the given process and hooks."""
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
    return config


def _spec() -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        sh("runc", "spec", "--bundle", d)
        return json.loads((Path(d) / "config.json").read_text())


def documented_hooks(start_phase: str, env: dict) -> dict:
    """The hooks section of docs/runc-hooks.md, with this checkout's circuit and env overrides."""
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

    def run(self, name: str, hooks: dict | None = None, args=("sleep", "3600"),
            annotations: dict | None = None, check=True) -> subprocess.CompletedProcess:
        """`runc run -d`, stdio to files (never pipes: runc hands them to the container)."""
        cid = f"{PREFIX}{secrets.token_hex(3)}-{name}"
        bundle = self.host.tmp / "bundles" / cid
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(
            runc_config(self.rootfs, list(args), hooks, annotations)))
        self.ids.append(cid)
        with open(bundle / "stderr", "w+") as err:
            code = subprocess.call(
                ["nsenter", f"--net=/run/netns/{self.host.name}", "runc", "run", "-d",
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


def iperf_mbit(host: Host, server: Container, reverse: bool = False, seconds: int = 2) -> float:
    """Mbit/s of one TCP stream between the host netns and an iperf3 server in a container:
    host → container, or container → host with reverse."""
    ip = server.addresses()[0]
    args = ["iperf3", "-c", ip, "-t", seconds, "-O", 1, "-J", *(["-R"] if reverse else [])]
    for _ in range(50):  # the server may still be starting
        proc = host.run(*args, check=False, timeout=seconds + 20)
        if proc.returncode == 0:
            return json.loads(proc.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
        time.sleep(0.1)
    raise AssertionError(f"iperf3 to {ip} failed: {proc.stdout[-300:]}")


def host_veth(host: Host, network: str, pid: int) -> str:
    """The host-side veth of a container's attachment, from circuit's inspect."""
    attachment = next(a for a in json.loads(host.circuit("network", "inspect", network).stdout)
                      ["attachments"] if a["pid"] == pid)
    return next(i["name"] for i in attachment["result"]["interfaces"]
                if not i.get("sandbox") and i["name"].startswith("veth"))


def min_rtt(container: Container, ip: str, count: int = 5) -> float:
    """The smallest ping RTT in ms from a container to ip."""
    out = container.run("busybox", "ping", "-c", count, "-i", "0.2", "-W", "2", ip).stdout
    return float(out.split("min/avg/max = ")[1].split("/")[0])


def run_forked(netns: str, main, env: dict | None = None, stdin: str | None = None
               ) -> subprocess.CompletedProcess:
    """main() in a fork of this (warm) process that entered netns, with its own stdio and
    environment; its return value is the exit code. The kernel tier runs `circuit` so (the real
    dispatcher's main, without a new interpreter) because under QEMU's emulation each
    interpreter start costs seconds; every other tier runs .venv/bin/circuit as a process."""
    import ctypes
    import io
    import threading

    pipes = [os.pipe() for _ in range(3)]  # stdin, stdout, stderr
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 99
        try:
            fd = os.open(netns, os.O_RDONLY)
            if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), "setns")
            for target, (read_end, write_end) in enumerate(pipes):
                os.dup2(read_end if target == 0 else write_end, target)
            for fd in {fd for pair in pipes for fd in pair}:
                os.close(fd)
            sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False))
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False))
            if env is not None:
                os.environ.clear()
                os.environ.update(env)
            code = main() or 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    for i, (read_end, write_end) in enumerate(pipes):
        os.close(write_end if i else read_end)
    out: dict[int, bytes] = {}

    def drain(i: int, fd: int) -> None:
        with os.fdopen(fd, "rb") as f:
            out[i] = f.read()

    readers = [threading.Thread(target=drain, args=(i, pipes[i][0])) for i in (1, 2)]
    for t in readers:
        t.start()
    with os.fdopen(pipes[0][1], "wb") as f:
        f.write((stdin or "").encode())
    for t in readers:
        t.join()
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(netns, os.waitstatus_to_exitcode(status),
                                      out[1].decode(), out[2].decode())


def http_get_bodies(netns: str, url_host: str, count: int, port: int = 80) -> list[str]:
    """The bodies of count HTTP/1.0 GETs of / from inside netns (one fork for all)."""
    import socket

    def fetch():
        for _ in range(count):
            with socket.create_connection((url_host, port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            print(data.split(b"\r\n\r\n", 1)[1].decode().strip(), flush=True)

    proc = run_forked(netns, fetch)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def dispatcher():
    """bin/circuit loaded as a module (once)."""
    global _DISPATCHER
    if _DISPATCHER is None:
        from importlib.machinery import SourceFileLoader
        from importlib.util import module_from_spec, spec_from_loader

        loader = SourceFileLoader("circuit_dispatcher", str(ROOT / "bin" / "circuit"))
        _DISPATCHER = module_from_spec(spec_from_loader(loader.name, loader))
        loader.exec_module(_DISPATCHER)
    return _DISPATCHER


_DISPATCHER = None
