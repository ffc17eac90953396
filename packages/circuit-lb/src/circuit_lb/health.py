"""Health checks of a service's targets: the check (policy, in the service record) and this
host's view of each target (lb-health/<name>.json, never shared).

Check  {"kind": "tcp"|"http"|"exec", "path", "status", "command": [ARGV], "interval",
        "timeout", "rise", "fall", "slow_start"?: seconds, "sorry"?: {"addr", "port"}}
Health {"targets": {"ADDR:PORT": {"up": bool, "last_check": epoch seconds, "failures": N,
                                  "passes": N, "reason": str, "ramp"?: 0..1}}}
A target is up until `fall` consecutive checks fail, then down (weight 0 in the kernel) until
`rise` consecutive checks pass; while it ramps (slow start) its weight is its stored weight
times ramp, at least 1. When every target with a weight is down, the sorry target takes the
traffic (the others weight 0), or without one none is taken out: the service is left as it is.
"""

import os
import re
import shlex
import shutil

from circuit_common.errors import InvalidInput

from .address import Endpoint, parse_endpoint

DEFAULTS = {"interval": 2.0, "timeout": 1.0, "rise": 2, "fall": 3}
SECONDS_RE = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,3})?")
PATH_RE = re.compile(r"/[!-~]{0,1000}")  # printable ASCII, no space
HTTP_RE = re.compile(r"http:([^=]*)(?:=(.*))?")
KINDS = "tcp, http:PATH, http:PATH=STATUS or exec:CMD"
MAX_COMMAND = 4096


def parse_check(spec: str, interval: str | None, timeout: str | None, rise: str | None,
                fall: str | None, slow_start: str | None = None,
                sorry: str | None = None) -> dict | None:
    """The check `--check spec` and its options describe (None for `none`)."""
    if spec == "none":
        if any(v is not None for v in (interval, timeout, rise, fall, slow_start, sorry)):
            raise InvalidInput("--check none takes no --interval, --timeout, --rise, --fall, "
                               "--slow-start or --sorry")
        return None
    if spec == "tcp":
        check = {"kind": "tcp"}
    elif spec.startswith("exec:"):
        check = {"kind": "exec", "command": parse_command(spec[5:])}
    elif match := HTTP_RE.fullmatch(spec):
        path, status = match.groups()
        if path.startswith("//"):  # http://host/x: a URL, whose host the check cannot take
            raise InvalidInput(f"invalid check path {path!r}: give the path alone, e.g. "
                               "http:/healthz (the check asks each target itself)")
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
    if slow_start is not None:
        check["slow_start"] = _seconds("--slow-start", slow_start, 0)
    if sorry is not None:
        where = parse_endpoint(sorry, "sorry target")
        check["sorry"] = {"addr": where.ip, "port": where.port}
    return check


def parse_command(text: str) -> list[str]:
    """exec:CMD's argv, split as a shell splits words (no shell runs it), its program
    resolved on PATH here and now."""
    if len(text) > MAX_COMMAND:
        raise InvalidInput(f"check command is longer than {MAX_COMMAND} characters")
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise InvalidInput(f"invalid check command {text!r}: {e}; quote as a shell "
                           "would") from None
    if not argv:
        raise InvalidInput("exec: needs a command, e.g. exec:/usr/local/bin/check-web (run "
                           "with the target's address and port as its last two arguments)")
    program = shutil.which(argv[0])
    if program is None:
        where = "" if "/" in argv[0] else " on PATH"
        raise InvalidInput(f"check command {argv[0]!r} is not an executable file{where}: give "
                           "a program, e.g. exec:/usr/local/bin/check-web")
    return [os.path.abspath(program), *argv[1:]]


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
    if not isinstance(check, dict) or check.get("kind") not in ("tcp", "http", "exec"):
        raise ValueError("its check is not one circuit knows")
    numbers = [check.get(k) for k in ("interval", "timeout", "rise", "fall")]
    command = check.get("command")
    if not all(type(n) in (int, float) and n > 0 for n in numbers) or (
            check["kind"] == "http" and not (isinstance(check.get("path"), str)
                                             and type(check.get("status")) is int)) or (
            check["kind"] == "exec" and not (isinstance(command, list) and command and all(
                isinstance(word, str) for word in command))):
        raise ValueError("its check lacks an interval, timeout, rise, fall, path, status or "
                         "command")
    sorry = check.get("sorry", {"addr": "", "port": 1})
    if type(check.get("slow_start", 1)) not in (int, float) or not isinstance(sorry, dict) \
            or not isinstance(sorry.get("addr"), str) or type(sorry.get("port")) is not int:
        raise ValueError("its check's slow start or sorry target is not one circuit writes")


def live(record: dict | None, health: dict | None) -> dict | None:
    """The record as this host programs the kernel: down targets with weight 0, ramping ones
    with their part of their weight (at least 1), the sorry target alone when every target
    with a weight is down (the record itself when nothing of this applies)."""
    check = record.get("check") if record else None
    if not check or not health:
        return record
    states = health.get("targets", {})
    weighted = [str(Endpoint(t["addr"], t["port"])) for t in record["targets"] if t["weight"]]
    down = {w for w in weighted if not states.get(w, {}).get("up", True)}
    ramps = {w: s["ramp"] for w, s in states.items() if s.get("ramp") is not None}
    if down and len(down) == len(weighted):
        sorry = check.get("sorry")
        if sorry is None:
            return record
        forward = record["targets"][0]["forward"]
        return {**record, "targets": [{**t, "weight": 0} for t in record["targets"]]
                + [{**sorry, "weight": 1, "forward": forward}]}
    if not down and not ramps:
        return record
    targets = []
    for t in record["targets"]:
        where = str(Endpoint(t["addr"], t["port"]))
        if where in down:
            t = {**t, "weight": 0}
        elif where in ramps and t["weight"]:
            t = {**t, "weight": max(1, int(t["weight"] * ramps[where]))}
        targets.append(t)
    return {**record, "targets": targets}


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
        if one is not None and one.get("ramp") is not None:
            result[where]["slow_start"] = one["ramp"]
    return result
