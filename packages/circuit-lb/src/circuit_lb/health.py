"""Health checks of a service's targets: the check (policy, in the service record) and this
host's view of each target (lb-health/<name>.json, never shared).

Check  {"kind": "tcp"|"http", "path", "status", "interval", "timeout", "rise", "fall"}
Health {"targets": {"ADDR:PORT": {"up": bool, "last_check": epoch seconds, "failures": N,
                                  "passes": N, "reason": str}}}
A target is up until `fall` consecutive checks fail, then down (weight 0 in the kernel) until
`rise` consecutive checks pass. When every target with a weight is down, none is taken out:
the service is left as it is.
"""

import re

from circuit_common.errors import InvalidInput

from .address import Endpoint

DEFAULTS = {"interval": 2.0, "timeout": 1.0, "rise": 2, "fall": 3}
SECONDS_RE = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,3})?")
PATH_RE = re.compile(r"/[!-~]{0,1000}")  # printable ASCII, no space
HTTP_RE = re.compile(r"http:([^=]*)(?:=(.*))?")
KINDS = "tcp, http:PATH or http:PATH=STATUS"


def parse_check(spec: str, interval: str | None, timeout: str | None, rise: str | None,
                fall: str | None) -> dict | None:
    """The check `--check spec` and its options describe (None for `none`)."""
    if spec == "none":
        if any(v is not None for v in (interval, timeout, rise, fall)):
            raise InvalidInput("--check none takes no --interval, --timeout, --rise or --fall")
        return None
    if spec == "tcp":
        check = {"kind": "tcp"}
    elif match := HTTP_RE.fullmatch(spec):
        path, status = match.groups()
        if not PATH_RE.fullmatch(path):
            raise InvalidInput(f"invalid check path {path!r}: give an absolute path without "
                               "spaces, e.g. http:/healthz")
        code = 200 if status is None else (int(status) if status.isascii()
                                           and status.isdigit() and len(status) == 3 else 0)
        if not 100 <= code <= 599:
            raise InvalidInput(f"invalid check status {status!r}: give an HTTP status "
                               "100..599, e.g. http:/healthz=204")
        check = {"kind": "http", "path": path, "status": code}
    else:
        raise InvalidInput(f"invalid --check {spec!r}: use {KINDS}, or none")
    check["interval"] = _seconds("--interval", interval, DEFAULTS["interval"])
    check["timeout"] = _seconds("--timeout", timeout, DEFAULTS["timeout"])
    if check["timeout"] > check["interval"]:
        raise InvalidInput(f"--timeout {check['timeout']:g} is longer than --interval "
                           f"{check['interval']:g}: give a timeout no longer than the interval")
    for option, value in (("rise", rise), ("fall", fall)):
        count = DEFAULTS[option] if value is None else _count(value)
        if count is None or not 1 <= count <= 100:
            raise InvalidInput(f"invalid --{option} {value!r}: give a count 1..100")
        check[option] = count
    return check


def _count(value: str) -> int | None:
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 3 else None


def _seconds(option: str, value: str | None, default: float) -> float:
    if value is None:
        return default
    seconds = float(value) if SECONDS_RE.fullmatch(value) else 0.0
    if not 0.1 <= seconds <= 3600:
        raise InvalidInput(f"invalid {option} {value!r}: give seconds 0.1..3600 (e.g. 0.5)")
    return seconds


def check_check(check) -> None:
    """A stored check as parse_check makes it (ValueError: what is wrong)."""
    if check is None:
        return
    if not isinstance(check, dict) or check.get("kind") not in ("tcp", "http"):
        raise ValueError("its check is not one circuit knows")
    numbers = [check.get(k) for k in ("interval", "timeout", "rise", "fall")]
    if not all(type(n) in (int, float) and n > 0 for n in numbers) or (
            check["kind"] == "http" and not (isinstance(check.get("path"), str)
                                             and type(check.get("status")) is int)):
        raise ValueError("its check lacks an interval, timeout, rise, fall, path or status")


def down_targets(record: dict, health: dict | None) -> set[str]:
    """The ADDR:PORT of the targets this host takes out of rotation: those its checks found
    down, unless every target with a weight is (then none)."""
    if not health or not record.get("check"):
        return set()
    states = health.get("targets", {})
    weighted = [str(Endpoint(t["addr"], t["port"])) for t in record["targets"] if t["weight"]]
    down = {w for w in weighted if not states.get(w, {}).get("up", True)}
    return down if len(down) < len(weighted) else set()


def live(record: dict | None, health: dict | None) -> dict | None:
    """The record as this host programs the kernel: down targets with weight 0 (the record
    itself when none is down)."""
    down = down_targets(record, health) if record else set()
    if not down:
        return record
    return {**record, "targets": [
        {**t, "weight": 0} if str(Endpoint(t["addr"], t["port"])) in down else t
        for t in record["targets"]]}


def check_health(record: dict, path: str) -> None:
    """A health record as the agent writes it (ValueError: what is wrong)."""
    targets = record.get("targets")
    if not isinstance(targets, dict) or not all(
            isinstance(s, dict) and type(s.get("up")) is bool for s in targets.values()):
        raise ValueError("its targets must map ADDR:PORT to {up, last_check, failures}")


def target_health(record: dict, state: dict | None) -> dict[str, dict]:
    """{ADDR:PORT: {"state": up|down|unchecked, "last_check", "failures"}} of a service with a
    check, as this host's agent last saw them."""
    seen = (state or {}).get("targets", {})
    result = {}
    for target in record["targets"]:
        where = str(Endpoint(target["addr"], target["port"]))
        one = seen.get(where)
        result[where] = {"state": "unchecked", "last_check": None, "failures": 0} \
            if one is None else {"state": "up" if one["up"] else "down",
                                 "last_check": one.get("last_check"),
                                 "failures": one.get("failures", 0)}
    return result
