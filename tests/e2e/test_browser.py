"""The browser the end-to-end tests drive (tests/e2e/browser.py) leaves nothing behind."""

from pathlib import Path

import pytest

from tests.e2e.browser import REQUIRES_CHROMIUM

pytestmark = [pytest.mark.e2e, REQUIRES_CHROMIUM]


def test_a_closed_browser_leaves_nothing_in_tmp():
    """Each browser's profile and the directory of Chromium's one-instance socket: the socket's
    was left behind for every browser (about forty a run) once chromedriver made the profiles."""
    from tests.e2e.browser import Browser

    browser = Browser()
    try:
        browser.get("data:text/html,<title>x</title>")
        made = [browser.profile, str(browser.singleton)]
        assert all(Path(path).is_dir() for path in made), made
    finally:
        browser.close()
    assert not [path for path in made if Path(path).exists()]
