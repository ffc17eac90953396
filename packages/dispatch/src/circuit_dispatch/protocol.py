"""The fork server's protocol, the one both its client (the dispatcher, circuit_dispatch) and the
server (circuit_dispatch.forkserver) speak; where the socket is: circuit_dispatch.socket_path.
It uses only os and sys (loaded by the interpreter's start): the dispatcher imports it once a
socket is there.

One connection per command. Client → child: an 8-byte length, then NUL-separated fields
[MAGIC, dispatcher script, umask, argc, *argv, *environ] with stdin, stdout, stderr and the
working directory as SCM_RIGHTS. Child → client: DECLINED and a reason (run it yourself), or
ACCEPTED; then client → child GO (from now on only the child runs it) and single bytes, each a
signal number for the child; child → client RESULT and the exit code as a signed 4-byte integer.
"""

import os
import sys

MAGIC = b"circuit-forkserver-1"
ACCEPTED, DECLINED, GO, RESULT = b"A", b"F", b"G", b"R"
LENGTH_SIZE = 8  # the request's length, in the machine's byte order
CODE_SIZE = 4  # the exit code, signed
RESULT_SIZE = len(RESULT) + CODE_SIZE
STDIO_AND_CWD = 4  # descriptors every request carries
MAX_REQUEST = 4 << 20
HANDOFF_TIMEOUT = 5.0  # seconds a client waits for ACCEPTED before it runs the command itself


def request(script: str, umask: int, argv: list[str], environ: dict[bytes, bytes]) -> bytes:
    """A request as it is sent: its length, then its fields."""
    fields = [MAGIC, os.fsencode(script), str(umask).encode(), str(len(argv)).encode(),
              *map(os.fsencode, argv), *(key + b"=" + value for key, value in environ.items())]
    payload = b"\0".join(fields)
    return len(payload).to_bytes(LENGTH_SIZE, sys.byteorder) + payload


def request_length(header: bytes) -> int:
    """The payload's length from a request's first bytes; ValueError when it cannot be one."""
    if len(header) < LENGTH_SIZE:
        raise ValueError("short request")
    length = int.from_bytes(header[:LENGTH_SIZE], sys.byteorder)
    if length > MAX_REQUEST:
        raise ValueError("request too large")
    return length


def parse_request(payload: bytes) -> tuple[str, int, list[str], dict[bytes, bytes]]:
    """The dispatcher script, umask, argv and environment of a request's payload; ValueError
    when it is not a request."""
    fields = payload.split(b"\0")
    if len(fields) < 4 or fields[0] != MAGIC:
        raise ValueError("not a circuit fork server request")
    argc = int(fields[3])
    argv = [os.fsdecode(arg) for arg in fields[4:4 + argc]]
    environ = dict(item.split(b"=", 1) for item in fields[4 + argc:]
                   if b"=" in item[1:])  # a name, "=", a value
    return os.fsdecode(fields[1]), int(fields[2]), argv, environ


def pack_descriptors(fds: list[int]) -> bytes:
    """Descriptors as SCM_RIGHTS data."""
    return b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)


def unpack_descriptors(data: bytes) -> list[int]:
    return [int.from_bytes(data[i:i + 4], sys.byteorder, signed=True)
            for i in range(0, len(data) // 4 * 4, 4)]


def result(code: int) -> bytes:
    """RESULT and a command's exit code, as the child sends them."""
    return RESULT + code.to_bytes(CODE_SIZE, sys.byteorder, signed=True)


def exit_code(reply: bytes) -> int:
    """The exit code of a RESULT_SIZE reply."""
    return int.from_bytes(reply[len(RESULT):RESULT_SIZE], sys.byteorder, signed=True)
