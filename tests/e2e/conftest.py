"""The whole product on real sockets, and real Chromium windows looking at it.

``product``: the development provider (with back-channel logout to the BFF) and the BFF in a
thread over a committed database, with the demo notes card on the dashboard. ``open_browser()``
starts one person's Chromium (its own profile: a separate browser context); a failed test leaves
a screenshot of every open window in test-artifacts/screenshots/failed/.
"""

import os
import re

import pytest

from tests.e2e.browser import MISSING
from tests.e2e.product import running_product

E2E = os.path.dirname(__file__)


def pytest_collection_modifyitems(config, items):
    """The browser tests run on one database: PostgreSQL, the production store, when
    MYAPP_TEST_DATABASE_URL is set, else SQLite. What a browser sees does not depend on the store,
    and what the server does is tested on both (tests/functional); run on both, the browser tests
    took half of CI's time."""
    one = "postgresql" if os.environ.get("MYAPP_TEST_DATABASE_URL") else "sqlite"
    skip = pytest.mark.skip(reason=f"the browser tests run on one database ({one})")
    for item in items:
        database = getattr(item, "callspec", None) and item.callspec.params.get("committed_database_url")
        if database and database != one and str(item.path).startswith(E2E):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def product(committed_database_url, committed_engine):
    if MISSING:
        pytest.skip(MISSING)
    with running_product(committed_database_url, committed_engine) as running:
        yield running


@pytest.fixture(autouse=True)
def _empty_tables_after_each_test(committed):
    """Every test starts with no users, sessions, posts or audit records (the `committed` fixture)."""
    yield


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.e2e_failed = report.failed
    return report


@pytest.fixture
def open_browser(request):
    """``open_browser(size=...)``: a new Chromium with a fresh profile; all are closed after the test."""
    from tests.e2e.browser import Browser

    opened = []

    def open_one(**options):
        browser = Browser(**options)
        opened.append(browser)
        return browser

    yield open_one
    failed = getattr(request.node, "e2e_failed", False)
    for index, browser in enumerate(opened):
        try:
            if failed:
                name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
                browser.screenshot(f"failed/{name}-browser{index + 1}", full_page=False)
        finally:
            browser.close()
