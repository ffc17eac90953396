"""Test-wide policy: markers by tier, in CI a skipped test fails the run, and no tier may change
the machine's own network namespace (checked after each module and at the end: harness.hostguard).
The network harness's fixtures (host, runc, rootfs, leak_check) are plugins, available to every
tier."""

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


@pytest.fixture(scope="session", autouse=True)
def machine_netns_session():
    """Root only (nothing else can change it): the machine's netns at the end is as it was at the
    start, whatever a session fixture's teardown did."""
    if os.geteuid() != 0:
        yield
        return
    from harness import hostguard  # after register_assert_rewrite

    before = hostguard.take()
    yield
    problem = hostguard.verdict("the session", before, hostguard.take())
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="module", autouse=True)
def machine_netns(request, machine_netns_session):
    """The machine's netns after each test module is as it was before it; the module is named."""
    if os.geteuid() != 0:
        yield
        return
    from harness import hostguard

    before = hostguard.take()
    yield
    problem = hostguard.verdict(request.node.nodeid, before, hostguard.take())
    if problem:
        pytest.fail(problem, pytrace=False)
