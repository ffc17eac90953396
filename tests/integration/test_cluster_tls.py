"""etcd over TLS with client certificates (the lab's etcd always is) and with etcd's auth:
a client etcd refuses says so in one line (exit 12) and changes nothing; a user with a password
works, through tokens that expire and that a restart of the members invalidates
(docs/cluster.md, "TLS and authentication")."""

import json

from test_cluster import SUBNET, create_overlay

from harness import snapshot, wait_for
from harness.cluster import AUTH_TOKEN_TTL, CIRCUIT, Certificates

SECRET = "s3cret-Pw"  # the circuit user's password: never in any output


def circuit(host, *args, tls: list, env: dict | None = None):
    """circuit on host with the lab's state URL, tls's options instead of the lab's."""
    return host.run(CIRCUIT, "--state", host.lab.url(), *map(str, tls), "--local-state",
                    host.state, *args, check=False, env=host._env(env))


def etcd_contents(lab) -> str:
    """Every key and value below the lab's prefix, as a trusted client reads them."""
    return lab.etcdctl("get", "--prefix", lab.prefix).stdout


def state_of(host) -> dict:
    """The host's local state, but the backend registry's cache (any command may fill it)."""
    return {k: v for k, v in snapshot(host.state).items() if k != "cache/state-backends.json"}


def assert_refused(proc, code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("circuit: "), proc.stderr
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr + proc.stdout
    for word in words:
        assert word in proc.stderr, proc.stderr


def test_a_client_etcd_does_not_trust_or_that_does_not_trust_etcd_is_refused(cluster, tmp_path):
    lab = cluster.lab
    h0, h1 = cluster.hosts[:2]
    h0.circuit("cluster", "join", "--address", h0.address, "--name", "h0")
    create_overlay(h0)
    stranger = Certificates(tmp_path / "stranger", [h0.address])  # another CA and its client
    tls = lab.tls
    cases = {
        "no client certificate": (["--etcd-cafile", tls.cafile], 12,
                                  "ended the TLS handshake: it wants a client certificate"),
        "another CA's client certificate": (
            ["--etcd-cafile", tls.cafile, "--etcd-certfile", stranger.client[0],
             "--etcd-keyfile", stranger.client[1]], 12, "ended the TLS handshake"),
        "trusting another CA": (
            ["--etcd-cafile", stranger.cafile, "--etcd-certfile", tls.client[0],
             "--etcd-keyfile", tls.client[1]], 12, "not one --etcd-cafile vouches for"),
        "trusting the system's CAs": (
            ["--etcd-certfile", tls.client[0], "--etcd-keyfile", tls.client[1]], 12,
            "not one the system's CAs (give --etcd-cafile) vouches for"),
    }
    commands = {h0: [("network", "create", "red", "--subnet", "10.230.0.0/16", "--overlay",
                      "vxlan"), ("cluster", "sync"), ("network", "delete", "blue")],
                h1: [("cluster", "join", "--address", h1.address, "--name", "h1")]}
    before = etcd_contents(lab), state_of(h0), state_of(h1)
    for case, (options, code, why) in cases.items():
        for host, argvs in commands.items():
            for argv in argvs:
                proc = circuit(host, *argv, tls=options)
                try:
                    assert_refused(proc, code, "etcd refused this client", why,
                                   "nothing was changed here", *lab.endpoints.split(","))
                except AssertionError as e:
                    raise AssertionError(f"{case}: {' '.join(argv)}: {e}") from None
    # plain http to a member that speaks only TLS: not an answer (exit 11), with the hint
    plain = h0.run(CIRCUIT, "--state", lab.url().replace("etcds://", "etcd://"),
                   "--local-state", h0.state, "cluster", "sync", check=False, env=h0._env())
    assert_refused(plain, 11, "closed the connection without an answer", "etcds://")
    # TLS files for a plain etcd:// URL, a certificate without its key, a missing file: exit 3
    for options, why in (
            ([f"--state={lab.url().replace('etcds://', 'etcd://')}", "--etcd-cafile",
              tls.cafile], "use an etcds:// state URL"),
            (["--etcd-certfile", tls.client[0]], "go together"),
            (["--etcd-cafile", tmp_path / "none.pem"], "cannot read the etcd CA file")):
        assert_refused(circuit(h0, "cluster", "sync", tls=options), 3, why)
    assert (etcd_contents(lab), state_of(h0), state_of(h1)) == before
    assert "red" not in h0.circuit("network", "list").stdout

    # doctor asks the members over https with the same files, and names the refusal
    def cluster_line(*tls) -> dict:
        proc = circuit(h0, "doctor", "--format", "json", tls=tls)
        return next(c for c in json.loads(proc.stdout) if c["feature"] == "cluster")
    assert cluster_line(*tls.client_args())["ok"]
    refused = cluster_line("--etcd-cafile", tls.cafile)
    assert not refused["ok"] and "10.99.0.1:2379" in refused["detail"], refused


def test_a_user_with_a_password_works_and_stale_tokens_are_taken_again(cluster, tmp_path):
    """Credentials from each source (option, environment, config file); the agent on h1
    beats every TTL/3 = 3.3 s from a client of its own, longer than a token lives unused, so
    each beat finds its token expired; and it goes on after every member restarted (their
    simple tokens are gone)."""
    lab = cluster.lab
    h0, h1, h2 = cluster.hosts
    lab.enable_auth("root-pw")
    lab.etcdctl("role", "add", "circuit")
    lab.etcdctl("role", "grant-permission", "circuit", "readwrite", "--prefix=true",
                lab.prefix)
    lab.etcdctl("user", "add", f"circuit:{SECRET}")
    lab.etcdctl("user", "grant-role", "circuit", "circuit")
    lab.etcdctl("user", "add", "nobody:nobody-pw")  # no role: no key is its to read
    password_file = tmp_path / "password"
    password_file.write_text(SECRET + "\n")
    password_file.chmod(0o600)
    config = tmp_path / "circuit.toml"
    config.write_text(f'etcd_username = "circuit"\netcd_password_file = "{password_file}"\n')
    credentials = {  # host → (extra argv, extra environment)
        h0: (["--etcd-username", "circuit", "--etcd-password", SECRET], {}),
        h1: ([], {"CIRCUIT_ETCD_USERNAME": "circuit",
                  "CIRCUIT_ETCD_PASSWORD_FILE": str(password_file)}),
        h2: ([], {"CIRCUIT_CONFIG": str(config)}),
    }

    def as_user(host, *args, check=True):
        argv, env = credentials[host]
        proc = host.circuit(*argv, *args, check=check, env=env)
        assert SECRET not in proc.stdout + proc.stderr
        return proc

    before = etcd_contents(lab), state_of(h2)
    for options, env, why in (
            (["--etcd-username", "circuit", "--etcd-password", "wrong"], None,
             "invalid user ID or password"),
            ([], None, "give --etcd-username and --etcd-password"),
            (["--etcd-username", "nobody", "--etcd-password", "nobody-pw"], None,
             "permission denied")):
        proc = circuit(h2, "cluster", "join", "--address", h2.address, "--name", "h2",
                       tls=[*lab.tls.client_args(), *options], env=env)
        assert_refused(proc, 12, "refused this client", why, "nothing was changed here")
    assert (etcd_contents(lab), state_of(h2)) == before

    for host in cluster.hosts:
        as_user(host, "cluster", "join", "--address", host.address, "--name", f"h{host.index}")
    as_user(h0, "network", "create", "blue", "--subnet", SUBNET, "--overlay", "vxlan")
    argv, env = credentials[h1]
    h1.start_agent(*argv, env=env)
    mirrored = h1.state / "networks"
    assert wait_for(lambda: (mirrored / "blue.json").exists(), timeout=15), h1.agent_log.read_text()

    def last_seen() -> float | None:
        """When h1 last beat: the lastSeen of its hosts/ record."""
        value = lab.etcdctl("get", f"{lab.prefix}/hosts/h1", "--print-value-only").stdout
        return json.loads(value).get("lastSeen")

    def two_beats_more() -> bool:
        if (at := last_seen()) not in (first, *beats):
            beats.append(at)
        return len(beats) >= 2

    # two beats more of the agent (one every TTL/3 = 3.3 s), the second later than a token
    # lives unused: polled instead of sleeping 4 token lives
    first, beats = last_seen(), []
    assert wait_for(two_beats_more, timeout=15, interval=0.2), h1.agent_log.read_text()
    assert beats[1] - beats[0] > AUTH_TOKEN_TTL, beats
    as_user(h0, "network", "create", "green", "--subnet", "10.231.0.0/16")
    assert wait_for(lambda: (mirrored / "green.json").exists(), timeout=15)

    for m in lab.members:
        m.stop()
    for m in lab.members:
        m.start()
    lab.wait_healthy()
    as_user(h2, "network", "create", "pink", "--subnet", "10.232.0.0/16")
    assert wait_for(lambda: (mirrored / "pink.json").exists(), timeout=30)
    listed = as_user(h2, "cluster", "list").stdout
    assert all(f"h{i} " in listed for i in range(3)) and "lapsed" not in listed, listed
    assert h1.stop_agent() == 0
    log = h1.agent_log.read_text()
    # only "no quorum" lines while the members restarted: no refusal, no stale token
    assert "refused this client" not in log and "refused the token" not in log, log
    assert "invalid auth token" not in log and SECRET not in log, log

