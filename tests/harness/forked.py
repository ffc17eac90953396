"""The forked runner: code run in a fork of this warm process that entered a netns, and the
dispatcher bin/circuit runs, so the kernel tier pays no interpreter start per command under
QEMU."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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


def dispatcher():
    """The dispatcher bin/circuit runs (circuit_dispatch)."""
    import circuit_dispatch

    return circuit_dispatch


