"""etcd v3 through etcd3gw (its JSON gateway): the members tried in turn, ranges by prefix,
compare-and-swap transactions, leases; every failure one line naming the members tried.

Keys and values are bytes here; etcd3gw's transport does the HTTP and the gateway's errors."""

import base64

from circuit_common.errors import Unavailable

from .url import EtcdState

API_PATH = "/v3/"


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


class Etcd:
    """A client of one etcd cluster: each request goes to the member that answered last, then
    to the others; Unavailable when none does (no quorum, or all down)."""

    def __init__(self, state: EtcdState, deadline: float):
        import etcd3gw  # ≈ 130 ms: only commands that talk to etcd pay it
        import requests

        self._etcd3gw = etcd3gw
        self._requests = requests
        self.state = state
        per_member = max(0.5, min(3.0, deadline / max(1, len(state.endpoints))))
        self._clients = []
        for endpoint in state.endpoints:
            host, _, port = endpoint.rpartition(":")
            self._clients.append(etcd3gw.Etcd3Client(
                host=host.strip("[]"), port=int(port), timeout=per_member, api_path=API_PATH))
        self._first = 0

    def key(self, *parts: str) -> bytes:
        return "/".join((self.state.prefix, *parts)).encode()

    def _post(self, path: str, body: dict) -> dict:
        exceptions = self._etcd3gw.exceptions
        reasons = []
        for i in range(len(self._clients)):
            index = (self._first + i) % len(self._clients)
            client = self._clients[index]
            try:
                answer = client.post(client.get_url(path), json=body)
            except (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError,
                    exceptions.InternalServerError, self._requests.RequestException,
                    ValueError) as e:  # ValueError: an answer that is not JSON
                reasons.append(f"{self.state.endpoints[index]}: {_reason(e)}")
                continue
            except exceptions.Etcd3Exception as e:
                raise Unavailable(f"etcd at {self.state.endpoints[index]} refused {path}: "
                                  f"{_reason(e)}") from None
            if not speaks_etcd(answer):  # JSON, but not etcd's: a member that is no etcd
                reasons.append(f"{self.state.endpoints[index]}: answered, but not as etcd does")
                continue
            self._first = index
            return answer
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
    return text.splitlines()[0][:120]
