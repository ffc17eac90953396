"""circuit's fork server for tests and benchmarks: started on a socket of the caller's own,
stopped (and drained) at the end; CIRCUIT_FORKSERVER=<socket> hands a command to it.

`python -S circuit` with DISPATCHER_ONLY in its environment can import the dispatcher but not
circuit itself: a command run so that works was run by the fork server."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.netns import CIRCUIT, ROOT

DISPATCHER_ONLY = {"PYTHONPATH": str(ROOT / "packages" / "dispatch" / "src")}


class ForkServer:
    """`circuit forkserver` on a socket of the test's own, stopped (and drained) at the end."""

    def __init__(self, tmp: Path, timeout: float = 60, env: dict | None = None):
        self.socket = str(tmp / "forkserver.sock")
        self.log = open(tmp / "forkserver.log", "a+")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen([CIRCUIT, "forkserver", "--socket", self.socket],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     env=None if env is None else os.environ | env)
        deadline = time.monotonic() + timeout  # the preload: seconds under QEMU's emulation
        while not os.path.exists(self.socket):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.05)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def forkserver(tmp_path):
    s = ForkServer(tmp_path)
    try:
        yield s
    finally:
        s.stop()
    assert not os.path.exists(s.socket)
