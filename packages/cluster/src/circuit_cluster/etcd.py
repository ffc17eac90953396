"""etcd v3 through etcd3gw (its JSON gateway): the members tried in turn, ranges by prefix,
compare-and-swap transactions, leases; every failure one line naming the members tried.
Over TLS (etcds://) with the CA and client certificate of the settings, and as a user of
etcd's auth: a token from /v3/auth/authenticate in each request's Authorization header, taken
again when etcd finds it invalid (expired, or the member restarted: simple tokens live in its
memory) or older than the users and roles.

Keys and values are bytes here; etcd3gw's transport does the HTTP and the gateway's errors."""

import base64
import threading

from circuit_common.errors import AccessDenied, InvalidInput, Unavailable

from .url import EtcdState

API_PATH = "/v3/"
STALE_TOKEN = ("etcdserver: invalid auth token", "etcdserver: revision of auth store is old")
AUTH_NOT_ENABLED = "etcdserver: authentication is not enabled"
REFUSALS = {  # etcd's answer → what to do about it
    "etcdserver: authentication failed, invalid user ID or password":
        "check --etcd-username and --etcd-password",
    "etcdserver: user name is empty": "etcd's auth is enabled: give --etcd-username and "
                                      "--etcd-password",
    "etcdserver: permission denied": "grant the user a role that may read and write the prefix",
    "CommonName of client sending a request against gateway will be ignored":
        "with etcd's auth enabled, its JSON gateway takes no client certificate with a "
        "CommonName: use one without (subjectAltName only)",
}
DOCS = 'docs/cluster.md, "TLS and authentication"'


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes a range cover every key starting with prefix."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


class KeyValue:
    """One key as a range returned it."""

    __slots__ = ("key", "lease", "value")

    def __init__(self, kv: dict):
        self.key = unb64(kv["key"])
        self.value = unb64(kv.get("value"))
        self.lease = int(kv.get("lease", 0))


def speaks_etcd(answer) -> bool:
    """Whether an answer has what every etcd answer has: a header with the store's revision
    (a lease keepalive's inside its "result")."""
    body = answer.get("result", answer) if isinstance(answer, dict) else None
    header = body.get("header") if isinstance(body, dict) else None
    return isinstance(header, dict) and str(header.get("revision", "")).isdigit()


def answered(method):
    """method, with an answer whose fields are not etcd's (a key that is not base64, a kv
    that is no object) one Unavailable line instead of a crash."""
    import functools

    @functools.wraps(method)
    def parsing(self, *args):
        try:
            return method(self, *args)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise Unavailable(f"etcd at {self.state.endpoints[self._first]} answered "
                              f"{method.__name__} with what etcd does not send ({e!r:.60}); "
                              "is it etcd? nothing was changed here") from None
    return parsing


class StaleToken(Exception):
    """etcd no longer takes the token a request carried."""


class Etcd:
    """A client of one etcd cluster: each request goes to the member that answered last, then
    to the others; Unavailable when none does (no quorum, or all down), AccessDenied when one
    refuses this client (TLS, user, password). Safe to share between threads."""

    def __init__(self, state: EtcdState, deadline: float):
        import etcd3gw  # ≈ 130 ms: only commands that talk to etcd pay it
        import requests

        self._etcd3gw = etcd3gw
        self._requests = requests
        self.state = state
        for what, path in (("CA file", state.cafile), ("certificate file", state.certfile),
                           ("key file", state.keyfile)):
            if path is not None:
                try:
                    open(path, "rb").close()
                except OSError as e:
                    raise InvalidInput(f"cannot read the etcd {what} {path}: "
                                       f"{e.strerror}") from None
        # given with each request: a session's own verify gives way to REQUESTS_CA_BUNDLE
        self._tls = {"verify": state.cafile or True,
                     "cert": (state.certfile, state.keyfile) if state.certfile else None}
        per_member = max(0.5, min(3.0, deadline / max(1, len(state.endpoints))))
        self._clients = []
        for endpoint in state.endpoints:
            host, _, port = endpoint.rpartition(":")
            self._clients.append(etcd3gw.Etcd3Client(
                host=host.strip("[]"), port=int(port), protocol=state.scheme,
                timeout=per_member, api_path=API_PATH))
        self._first = 0
        self._token: str | None = None  # None: not authenticated yet; "": etcd has no auth
        self._authenticating = threading.Lock()

    def key(self, *parts: str) -> bytes:
        return "/".join((self.state.prefix, *parts)).encode()

    def _post(self, path: str, body: dict) -> dict:
        """The answer of the first member that gives one, as this client's user."""
        token = self._current_token()
        try:
            return self._send(path, body, token)
        except StaleToken:
            pass
        try:
            return self._send(path, body, self._current_token(stale=token))
        except StaleToken as e:
            raise AccessDenied(f"etcd refused the token it had just given this client ({e}); "
                               "nothing was changed here; run the command again") from None

    def _current_token(self, stale: str | None = None) -> str:
        """The token to send ("" without a user), authenticating when there is none yet or
        etcd found the one a request carried (stale) no longer valid."""
        if self.state.username is None:
            return ""
        with self._authenticating:
            if self._token is None or self._token == stale:
                self._token = self._authenticate()
            return self._token

    def _authenticate(self) -> str:
        body = {"name": self.state.username, "password": self.state.read_password()}
        return self._send("auth/authenticate", body, "")["token"]

    def _send(self, path: str, body: dict, token: str) -> dict:
        exceptions = self._etcd3gw.exceptions
        headers = {"Authorization": token} if token else {}
        reasons, refused = [], False
        for i in range(len(self._clients)):
            index = (self._first + i) % len(self._clients)
            client, endpoint = self._clients[index], self.state.endpoints[index]
            try:
                answer = client.post(client.get_url(path), json=body, headers=headers,
                                     **self._tls)
            except (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError,
                    exceptions.InternalServerError, self._requests.RequestException,
                    ValueError) as e:  # ValueError: an answer that is not JSON
                tls = _tls_failure(e, self._requests, self.state.cafile)
                refused = refused or tls is not None
                reasons.append(f"{endpoint}: {tls or _reason(e)}")
                continue
            except exceptions.Etcd3Exception as e:
                reason = _reason(e)
                if token and reason in STALE_TOKEN:
                    raise StaleToken(reason) from None
                if reason == AUTH_NOT_ENABLED and path == "auth/authenticate":
                    return {"token": ""}  # a user for an etcd without auth: as etcd's client
                fix = next((fix for refusal, fix in REFUSALS.items()
                            if reason.startswith(refusal)), None)
                if fix is not None:
                    raise AccessDenied(f"etcd at {endpoint} refused this client: {reason}; "
                                       f"nothing was changed here; {fix} ({DOCS})") from None
                raise Unavailable(f"etcd at {endpoint} refused {path}: {reason}") from None
            if not speaks_etcd(answer):  # JSON, but not etcd's: a member that is no etcd
                reasons.append(f"{endpoint}: answered, but not as etcd does")
                continue
            self._first = index
            return answer
        if refused:
            raise AccessDenied(f"etcd refused this client: {_tried(reasons)}; nothing was "
                               "changed here; check the state URL's scheme, --etcd-cafile, "
                               f"--etcd-certfile and --etcd-keyfile ({DOCS})")
        raise Unavailable(f"etcd has no quorum or is down: tried {'; '.join(reasons)}; nothing "
                          "was changed here; check the members (etcdctl endpoint health) and "
                          "run the command again")

    # -- keys ------------------------------------------------------------------------------

    @answered
    def range(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        """The store's revision and every key below prefix, in key order."""
        answer = self._post("kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        return int(answer["header"]["revision"]), [KeyValue(kv) for kv in answer.get("kvs", [])]

    @answered
    def get(self, key: bytes) -> KeyValue | None:
        answer = self._post("kv/range", {"key": b64(key)})
        kvs = answer.get("kvs", [])
        return KeyValue(kvs[0]) if kvs else None

    @answered
    def fingerprint(self, prefixes: list[bytes]) -> tuple:
        """For each prefix, how many keys it holds and the newest one's revision, in one
        transaction: it changes when a key below any prefix is created, changed or deleted,
        and not for keys elsewhere."""
        ranges = [{"request_range": {"key": b64(p), "range_end": b64(prefix_end(p)),
                                     "sort_target": "MOD", "sort_order": "DESCEND",
                                     "limit": 1, "keys_only": True}} for p in prefixes]
        _, answer = self.txn([], ranges)
        found = []
        for response in answer.get("responses", []):
            listed = response.get("response_range", {})
            kvs = listed.get("kvs") or [{}]
            found.append((int(listed.get("count", 0)), int(kvs[0].get("mod_revision", 0))))
        return tuple(found)

    def txn(self, compare: list[dict], success: list[dict],
            failure: list[dict] = ()) -> tuple[bool, dict]:
        """One transaction: (whether compare held, the answer)."""
        answer = self._post("kv/txn", {"compare": compare, "success": success,
                                       "failure": list(failure)})
        return bool(answer.get("succeeded")), answer

    def swap(self, key: bytes, expected: bytes | None, value: bytes | None) -> bool:
        """Put value (None: delete the key) if the key holds expected (None: is absent);
        False when another writer got there first."""
        if expected is None:
            compare = {"key": b64(key), "target": "CREATE", "result": "EQUAL",
                       "create_revision": "0"}
        else:
            compare = {"key": b64(key), "target": "VALUE", "result": "EQUAL",
                       "value": b64(expected)}
        action = put(key, value) if value is not None else delete(key)
        if self.txn([compare], [action])[0]:
            return True
        # a timed-out request retried on the next member may have been carried out already
        found = self.get(key)
        return (found.value if found else None) == value and value != expected

    def create(self, key: bytes, value: bytes, lease: int = 0) -> bool:
        """Put value if the key does not exist; False when it does."""
        compare = {"key": b64(key), "target": "CREATE", "result": "EQUAL",
                   "create_revision": "0"}
        return self.txn([compare], [put(key, value, lease)])[0]

    def put(self, key: bytes, value: bytes, lease: int = 0) -> None:
        self._post("kv/put", put(key, value, lease)["request_put"])

    def delete(self, key: bytes, prefix: bool = False) -> None:
        self._post("kv/deleterange", delete(key, prefix)["request_delete_range"])

    # -- leases ----------------------------------------------------------------------------

    @answered
    def grant(self, ttl: int) -> int:
        return int(self._post("lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    @answered
    def keepalive(self, lease: int) -> int:
        """Renew a lease; its remaining TTL, 0 when it has expired."""
        answer = self._post("lease/keepalive", {"ID": lease})
        return int(answer.get("result", answer).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self._post("kv/lease/revoke", {"ID": lease})


def put(key: bytes, value: bytes, lease: int = 0) -> dict:
    request = {"key": b64(key), "value": b64(value)}
    if lease:
        request["lease"] = lease
    return {"request_put": request}


def delete(key: bytes, prefix: bool = False) -> dict:
    request = {"key": b64(key)}
    if prefix:
        request["range_end"] = b64(prefix_end(key))
    return {"request_delete_range": request}


def _reason(e: Exception) -> str:
    """The short cause of an etcd3gw error (its text can be a whole HTTP body)."""
    text = " ".join(str(a) for a in (getattr(e, "detail_text", None), *e.args) if a) \
        or type(e).__name__
    for marker in ('"error":"', '"message":"'):
        if marker in text:
            return text.split(marker, 1)[1].split('"', 1)[0]
    if "timed out" in text.lower() or "timeout" in type(e).__name__.lower():
        return "timed out"
    if "refused" in text.lower():
        return "connection refused"
    if "Remote end closed connection without response" in text:
        return "closed the connection without an answer (a member that speaks TLS: etcds://?)"
    return text.splitlines()[0][:120]


def _tls_failure(e: Exception, requests, cafile: str | None) -> str | None:
    """What went wrong in a TLS handshake that e (or the error etcd3gw raised it from) reports,
    None when e is not one."""
    cause = e.__context__ if isinstance(e.__context__, requests.RequestException) else e
    if not isinstance(cause, requests.exceptions.SSLError):
        return None
    text = str(cause)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        why = text.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0].strip()
        trusted = "--etcd-cafile" if cafile else "the system's CAs (give --etcd-cafile)"
        return f"its certificate is not one {trusted} vouches for ({why})"
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return "it does not speak TLS (plain etcd:// there?)"
    if "EOF occurred" in text or "alert" in text.lower():
        return ("it ended the TLS handshake: it wants a client certificate its CA signed "
                "(--etcd-certfile, --etcd-keyfile)")
    return f"TLS failed: {text.rsplit('(', 1)[-1].rstrip(')')[:120]}"


def _tried(reasons: list[str]) -> str:
    """Each member's reason, or one reason for all when they agree."""
    members = [r.split(": ", 1)[0] for r in reasons]
    whys = {r.split(": ", 1)[1] for r in reasons}
    if len(whys) == 1:
        return f"{', '.join(members)}: {whys.pop()}"
    return "; ".join(reasons)
