"""Signing in and out through the whole app, against the programmable provider on a real socket."""

import pytest

from tests.functional.conftest import Browser


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def browser(app):
    return Browser(app)
