"""A multi-host lab on this one machine, for circuit's etcd-based scale-out (issue 17).

Layout (every namespace is the lab's own and starts with `ctest-`, so the session's leak check
sees it; nothing touches the machine's interfaces, routes or firewall):

    switch netns ctest-sw-<tag>:  bridge underlay0 (up), ports u0-<tag>, u1-<tag>, …
    host i (a harness.netns.Host, netns ctest-<random>):  eth0 = 10.99.0.<i+1>/24, the other end
        of its veth is u<i>-<tag> in the switch (created there directly: no end ever sits in
        the machine's own namespace); lo up; etcd member m<i> on 10.99.0.<i+1>:2379 (clients,
        https only, with client-certificate auth) and :2380 (peers, plain http), its data dir
        and log under the lab's temp dir.

TLS: the lab's `Certificates` (trustme) are a CA, one server certificate for every member's
address and one client certificate without a CommonName (etcd's JSON gateway refuses a
CommonName once etcd's auth is enabled); their PEM files are in the lab's temp dir. The members
run with simple auth tokens that live AUTH_TOKEN_TTL seconds unused (auth itself is off unless
a test enables it).

Each host runs circuit as `harness.netns.Host` does, but with the global options
`--state etcds://<endpoints>/<prefix> --etcd-cafile … --etcd-certfile … --etcd-keyfile …
--local-state <its temp state dir>`; `start_agent()` runs `circuit cluster agent` in it as a
process of its own.

Scope: everything is function-scoped: `lab` (and `cluster`, the same object seen as the
cluster a test uses) builds the switch, the hosts and a fresh 3-member etcd per test and removes
them on every path. The members start one after another, each once the one before serves its
peers (started together, a member asking a peer that listened but did not serve yet waited
etcd's 1 s bootstrap timeout for it: most of a lab's 2.4 s). Their data dirs are on a tmpfs
(/dev/shm, removed with the lab; the logs stay in the lab's temp dir). Removing a lab takes
≈ 0.15 s; sharing one etcd between tests (and
hosts whose netns keep the previous test's bridges, VXLAN links and rules) would save little and
could leak one test's kernel state into the next. Each lab still has its own etcd key prefix
(`/ctest-<tag>`) and initial-cluster token.

Processes (etcd members, agents) are ended by their PID only: SIGTERM, then SIGKILL when they
hang (etcd sometimes does). An agent that needs the SIGKILL fails the test.

Without quorum etcd 3.4 holds a request for its request timeout (5 s + 2 election timeouts = 7 s
with these settings) before it answers 503; `ClusterHost.etcd(..., timeout=)` gives up first."""

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness.netns import CIRCUIT, PREFIX, Host, add_netns, sh

BRIDGE = "underlay0"
SUBNET = "10.99.0"
CLIENT_PORT, PEER_PORT = 2379, 2380
ETCD_STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL for an etcd member
AGENT_STOP_GRACE = 5.0  # the same for an agent; needing the SIGKILL fails the test
HEALTHY_WITHIN = 20.0  # seconds for a fresh or restarted etcd cluster to become healthy
AUTH_TOKEN_TTL = 2  # seconds an unused simple auth token lives (etcd's --auth-token-ttl)
SHM = Path("/dev/shm")  # where the members' data dirs live (a tmpfs), when the machine has it


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _end(popen: subprocess.Popen, grace: float) -> bool:
    """SIGTERM by PID, SIGKILL after grace seconds; True when SIGTERM was enough."""
    if popen.poll() is not None:
        return True
    os.kill(popen.pid, signal.SIGTERM)
    try:
        popen.wait(grace)
        return True
    except subprocess.TimeoutExpired:
        os.kill(popen.pid, signal.SIGKILL)
        popen.wait()
        return False


def _clean_env() -> dict[str, str]:
    """Our environment minus anything etcd, etcdctl or CNI would read from it."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("ETCD_", "ETCDCTL_")) and k != "CNI_PATH"}


class Certificates:
    """A CA (trustme) and what it signed for the lab, as PEM files in directory: ca.pem,
    server.pem/server.key (every address), client.pem/client.key (no CommonName)."""

    def __init__(self, directory: Path, addresses: list[str]):
        import trustme

        directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.cafile = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(self.cafile)
        self.server = self._issue(directory / "server", *addresses)
        self.client = self._issue(directory / "client", "circuit-client")

    def _issue(self, stem: Path, *identities: str) -> tuple[Path, Path]:
        """(certificate, key) files for identities, signed by the CA."""
        cert = self.ca.issue_cert(*identities)
        pem, key = stem.with_suffix(".pem"), stem.with_suffix(".key")
        cert.cert_chain_pems[0].write_to_path(pem)
        cert.private_key_pem.write_to_path(key)
        return pem, key

    def client_args(self) -> list:
        """circuit's global options for the client certificate."""
        return ["--etcd-cafile", self.cafile, "--etcd-certfile", self.client[0],
                "--etcd-keyfile", self.client[1]]

    def etcdctl_args(self) -> list:
        return ["--cacert", self.cafile, "--cert", self.client[0], "--key", self.client[1]]


class Member:
    """One etcd member, running in its host's netns."""

    def __init__(self, lab: "Lab", host: "ClusterHost"):
        self.lab = lab
        self.host = host
        self.name = f"m{host.index}"
        self.data_dir = lab.etcd_data / self.name
        self.log = lab.tmp / "etcd" / f"{self.name}.log"
        self.popen: subprocess.Popen | None = None
        self.stopped_by_sigkill = 0  # times stop() needed the SIGKILL

    @property
    def client_url(self) -> str:
        return f"https://{self.host.address}:{CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host.address}:{PEER_PORT}"

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.running else None

    def start(self, state: str = "existing") -> None:
        """Start etcd (again) on the same data dir; state is --initial-cluster-state."""
        if self.running:
            return
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = ["nsenter", f"--net={self.host.netns}", "etcd",
                "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.client_url,
                "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.lab.initial_cluster,
                "--initial-cluster-state", state,
                "--initial-cluster-token", self.lab.token,
                "--heartbeat-interval", "100", "--election-timeout", "1000",
                "--cert-file", self.lab.tls.server[0], "--key-file", self.lab.tls.server[1],
                "--client-cert-auth", "--trusted-ca-file", self.lab.tls.cafile,
                "--auth-token", "simple", "--auth-token-ttl", AUTH_TOKEN_TTL,
                "--logger", "zap", "--log-outputs", "stderr"]
        with open(self.log, "ab") as log:
            # nsenter with only --net execs etcd: the PID is etcd's
            self.popen = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=log, env=_clean_env())

    def wait_serving_peers(self) -> None:
        """Wait until this member serves its peer URL (its log says so). A fresh member first
        asks every peer whether it was bootstrapped already; a peer that listens but does not
        serve yet holds that question for etcd's bootstrap timeout (1 s): members started
        together waited 1 s for each peer (2.4 s a lab), started in turn none does."""
        deadline = time.monotonic() + HEALTHY_WITHIN
        while b'"msg":"serving peer traffic"' not in self.log.read_bytes():
            if not self.running:
                raise AssertionError(f"etcd member {self.name} exited:\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"etcd member {self.name} serves no peers within "
                                     f"{HEALTHY_WITHIN:.0f} s:\n{_tail(self.log)}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after 3 s if etcd hangs."""
        if self.popen is not None and not _end(self.popen, ETCD_STOP_GRACE):
            self.stopped_by_sigkill += 1


class ClusterHost(Host):
    """A harness Host on the lab's underlay, whose circuit keeps its shared state in the lab's
    etcd (under the lab's prefix) and its local state in its own temp dir."""

    def __init__(self, tmp: Path, lab: "Lab", index: int):
        tmp.mkdir(parents=True, exist_ok=True)
        super().__init__(tmp)  # the netns, lo up
        self.lab = lab
        self.index = index
        self.address = f"{SUBNET}.{index + 1}"
        self.port = f"u{index}-{lab.tag}"  # its end in the switch
        self.agent: subprocess.Popen | None = None
        self.agent_log = tmp / "agent.log"
        try:
            # the switch's end is made in the switch's netns directly
            self.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", self.port,
                     "netns", lab.switch)
            sh("ip", "-n", lab.switch, "link", "set", self.port, "master", BRIDGE, "up")
            self.run("ip", "addr", "add", f"{self.address}/24", "dev", "eth0")
            self.run("ip", "link", "set", "eth0", "up")
        except BaseException:
            super().close()
            raise

    def state_args(self) -> list:
        return ["--state", self.lab.url(), *self.lab.tls.client_args(),
                "--local-state", self.state]

    def _env(self, env: dict | None = None) -> dict[str, str]:
        # as Host.circuit's
        return _clean_env() | {"CIRCUIT_CNI_CACHE_DIR": str(self.cni_cache)} | (env or {})

    def ping(self, ip: str, count: int = 1) -> bool:
        return self.run("busybox", "ping", "-c", count, "-W", "2", ip, check=False
                        ).returncode == 0

    def etcd(self, method: str, body: dict, endpoint: str | None = None,
             timeout: float = 3.0) -> dict:
        """POST body to etcd's JSON gateway (/v3/<method>, e.g. "kv/put") from inside this
        host's netns, at endpoint (host:port; this host's member by default), with the lab's
        client certificate. Raises AssertionError when the request fails or times out."""
        url = f"https://{endpoint or f'{self.address}:{CLIENT_PORT}'}/v3/{method}"
        tls = self.lab.tls
        code = ("import ssl,sys,urllib.request as u,urllib.error as e\n"
                "c=ssl.create_default_context(cafile=sys.argv[4])\n"
                "c.load_cert_chain(sys.argv[5],sys.argv[6])\n"
                "try: r=u.urlopen(u.Request(sys.argv[1],data=sys.argv[2].encode(),"
                "headers={'Content-Type':'application/json'}),timeout=float(sys.argv[3]),"
                "context=c)\n"
                "except e.HTTPError as x: sys.exit(f'HTTP {x.code}: {x.read().decode()}')\n"
                "except Exception as x: sys.exit(f'{type(x).__name__}: {x}')\n"
                "sys.stdout.write(r.read().decode())")
        try:
            proc = self.run(sys.executable, "-c", code, url, json.dumps(body), timeout,
                            tls.cafile, *tls.client, check=False, timeout=timeout + 5)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"etcd {method} at {url}: no answer") from e
        if proc.returncode != 0:
            raise AssertionError(f"etcd {method} at {url} failed: {proc.stderr.strip()[-500:]}")
        return json.loads(proc.stdout)

    def put(self, key: str, value: str, endpoint: str | None = None,
            timeout: float = 3.0) -> dict:
        return self.etcd("kv/put", {"key": _b64(key), "value": _b64(value)}, endpoint, timeout)

    def get(self, key: str, endpoint: str | None = None, timeout: float = 3.0) -> str | None:
        kvs = self.etcd("kv/range", {"key": _b64(key)}, endpoint, timeout).get("kvs", [])
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None

    def start_agent(self, *args, env=None) -> subprocess.Popen:
        """`circuit <state options> cluster agent *args` in this host's netns, kept running
        (output in self.agent_log) until stop_agent()."""
        assert self.agent is None or self.agent.poll() is not None, "agent already running"
        argv = [str(a) for a in (*self.state_args(), "cluster", "agent", *args)]
        with open(self.agent_log, "ab") as log:
            self.agent = subprocess.Popen(["nsenter", f"--net={self.netns}", CIRCUIT, *argv],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          env=self._env(env))
        return self.agent

    def stop_agent(self) -> int | None:
        """SIGTERM the agent by PID and wait; its exit code (None when none was started).
        Raises AssertionError when it needed the SIGKILL after 5 s."""
        agent, self.agent = self.agent, None
        if agent is None:
            return None
        if not _end(agent, AGENT_STOP_GRACE):
            raise AssertionError(f"circuit cluster agent on host {self.index} ignored SIGTERM "
                                 f"for {AGENT_STOP_GRACE:.0f} s (killed):\n"
                                 f"{_tail(self.agent_log)}")
        return agent.returncode

    def close(self) -> None:
        try:
            self.stop_agent()
        finally:
            super().close()


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Lab:
    """The switch, n ClusterHosts on it and one etcd member per host (healthy on return)."""

    def __init__(self, tmp: Path, n: int = 3):
        self.tmp = tmp
        self.tag = secrets.token_hex(4)
        self.switch = f"{PREFIX}sw-{self.tag}"
        self.token = f"{PREFIX}{self.tag}"
        self.prefix = f"/{PREFIX}{self.tag}"  # the etcd key prefix circuit's state lives under
        self.hosts: list[ClusterHost] = []
        self.members: list[Member] = []
        self._switch_made = False
        self.tls = Certificates(tmp / "tls", [f"{SUBNET}.{i + 1}" for i in range(n)])
        self.root: str | None = None  # NAME:PASSWORD for etcdctl, once a test enabled auth
        # the members' data dirs on a tmpfs: on the shared disk a fresh member spent 1-2 s
        # syncing its new WAL and db before it even started raft (most of a lab's 2.4 s)
        self.etcd_data = Path(tempfile.mkdtemp(prefix=f"{PREFIX}etcd-{self.tag}-",
                                               dir=SHM if SHM.is_dir() else tmp))
        try:
            add_netns(self.switch)
            self._switch_made = True
            sh("ip", "-n", self.switch, "link", "set", "lo", "up")
            sh("ip", "-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
            sh("ip", "-n", self.switch, "link", "set", BRIDGE, "up")
            for i in range(n):
                self.hosts.append(ClusterHost(tmp / f"h{i}", self, i))
            self.members = [Member(self, h) for h in self.hosts]
            self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
            for m in self.members:  # one after another: see Member.wait_serving_peers
                m.start("new")
                m.wait_serving_peers()
            self.wait_healthy()
        except BaseException:
            self.close()
            raise

    @property
    def lab(self) -> "Lab":
        """The lab itself: the `cluster` fixture is the same object (cluster.lab.members)."""
        return self

    @property
    def endpoints(self) -> str:
        return ",".join(f"{h.address}:{CLIENT_PORT}" for h in self.hosts)

    def url(self, prefix: str | None = None) -> str:
        """circuit's --state for prefix (the lab's own by default): etcd over TLS."""
        return f"etcds://{self.endpoints}/{(prefix or self.prefix).lstrip('/')}"

    def etcdctl(self, *args, host: int = 0, check: bool = True,
                timeout: float = 10) -> subprocess.CompletedProcess:
        """etcdctl (v3) from inside host's netns against every member, with the lab's client
        certificate (as the root user once auth is enabled)."""
        argv = ["etcdctl", "--endpoints", ",".join(m.client_url for m in self.members),
                *self.tls.etcdctl_args(), *(["--user", self.root] if self.root else []), *args]
        return self.hosts[host].run(*argv, check=check, env=_clean_env() | {"ETCDCTL_API": "3"},
                                    timeout=timeout)

    def enable_auth(self, password: str) -> None:
        """etcd's auth on, with a root user of password (etcdctl then acts as root)."""
        for args in (("user", "add", f"root:{password}"), ("user", "grant-role", "root", "root"),
                     ("auth", "enable")):
            self.etcdctl(*args)
        self.root = f"root:{password}"

    def healthy(self, members: list[Member] | None = None) -> bool:
        """All of members (every member by default) answer etcd's health check, asked from
        inside host 0's netns."""
        members = self.members if members is None else members
        proc = self.hosts[0].run(
            "etcdctl", "--endpoints", ",".join(m.client_url for m in members),
            *self.tls.etcdctl_args(), *(["--user", self.root] if self.root else []),
            "--dial-timeout", "1s", "--command-timeout", "1s",
            "endpoint", "health", check=False, env=_clean_env() | {"ETCDCTL_API": "3"},
            timeout=10)
        return proc.returncode == 0

    def wait_healthy(self, timeout: float | None = None) -> float:
        """Wait until every running member is healthy; the seconds it took."""
        timeout = HEALTHY_WITHIN if timeout is None else timeout
        start = time.monotonic()
        while True:
            running = [m for m in self.members if m.running]
            dead = [m for m in self.members if m.popen is not None and not m.running]
            if dead and not running:
                raise AssertionError("every etcd member exited:\n" + self._logs())
            if running and self.healthy(running):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"etcd not healthy within {timeout:.0f} s:\n"
                                     + self._logs())
            time.sleep(0.1)

    def restore(self) -> None:
        """Every member running again (a test may have stopped some), and healthy."""
        stopped = [m for m in self.members if not m.running]
        for m in stopped:
            m.start()
        if stopped:
            self.wait_healthy()

    def _logs(self) -> str:
        return "\n".join(f"--- {m.name} ({'running' if m.running else 'exited'}):\n"
                         f"{_tail(m.log)}" for m in self.members)

    def close(self) -> None:
        """Agents, etcd members, hosts, switch: each removed even when an earlier step
        fails; the first failure is raised at the end."""
        errors: list[BaseException] = []
        for h in self.hosts:
            try:
                h.stop_agent()
            except BaseException as e:
                errors.append(e)
        for m in self.members:
            try:
                m.stop()
            except BaseException as e:
                errors.append(e)
        for h in self.hosts:
            try:
                h.close()
            except BaseException as e:
                errors.append(e)
        if self._switch_made:
            sh("ip", "netns", "del", self.switch, check=False)
            self._switch_made = False
        shutil.rmtree(self.etcd_data, ignore_errors=True)
        if errors:
            raise errors[0]


@pytest.fixture
def lab(tmp_path):
    """A fresh lab per test: 3 hosts on a switch, a healthy 3-member etcd, a fresh prefix."""
    if os.geteuid() != 0:
        pytest.skip("network tests need root")
    the_lab = Lab(tmp_path)
    try:
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture
def cluster(lab):
    """The lab seen as the test's cluster: .hosts (ClusterHosts), .lab (members, endpoints)."""
    return lab
