"""Integration tier: every test runs inside the session-wide leak check; with
CIRCUIT_TEST_FORKSERVER=1 every circuit command of the tier goes through a fork server
(`just test-integration-served`)."""

import os

import pytest

from harness import ForkServer

# Why a fork server may decline a command of this tier: tests run some in a pid namespace of
# their own (hook pid values) or a mount namespace of their own (a read-only state),
# test_install runs an installation of its own, test_forkserver changes circuit's code on disk
# (that server then exits: a new one starts), and test_faults kills callers at random, some
# while a child reads their /proc entries.
EXPECTED_DECLINES = ("another pid namespace", "another mnt namespace", "another installation",
                     "stale: ", "cannot be read")


@pytest.fixture(scope="session", autouse=True)
def no_leaks(leak_check):
    """No namespace, runc container or root-namespace link outlives the tier."""


@pytest.fixture(scope="session")
def session_forkservers(tmp_path_factory):
    """The fork servers of the session (a new one when the last exited), stopped at its end;
    none may have declined a command for a reason not expected."""
    servers: list[ForkServer] = []
    yield servers
    os.environ.pop("CIRCUIT_FORKSERVER", None)
    logs = []
    for server in servers:
        logs.append(server.output())
        server.stop()
    unexpected = [line for log in logs for line in log.splitlines() if "died" in line or (
        "declined" in line and not any(reason in line for reason in EXPECTED_DECLINES))]
    assert not unexpected, unexpected


@pytest.fixture(autouse=True)
def served(session_forkservers, tmp_path_factory):
    """With CIRCUIT_TEST_FORKSERVER=1, the test's circuit commands go to a live fork server."""
    if os.environ.get("CIRCUIT_TEST_FORKSERVER") == "1" and (
            not session_forkservers or session_forkservers[-1].proc.poll() is not None):
        session_forkservers.append(ForkServer(tmp_path_factory.mktemp("forkserver")))
        os.environ["CIRCUIT_FORKSERVER"] = session_forkservers[-1].socket
