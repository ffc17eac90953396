"""Integration tier: every test runs inside the session-wide leak check."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def no_leaks(leak_check):
    """No namespace, runc container or root-namespace link outlives the tier."""
