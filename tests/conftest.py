"""Test-wide policy: markers by tier, and in CI a skipped test fails the run. The network
harness's fixtures (host, runc, rootfs, leak_check) are plugins, available to every tier."""

import os

import pytest

pytest.register_assert_rewrite("harness")  # its helpers' asserts explain themselves too
pytest_plugins = ("harness.netns", "harness.bundles", "harness.cluster", "harness.forkserver")

TIERS = ("unit", "integration", "kernel")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


def pytest_sessionfinish(session, exitstatus):
    """In CI (CI=true) a skipped test means a tier tested nothing: fail the run."""
    if os.environ.get("CI") != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; a skipped test fails CI",
                            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
