"""Fixtures for tests that need the development stack over real loopback HTTP.

Other suites can reuse them (import them into their conftest.py) or call
``tests.devstack.server.running_devstack`` directly.
"""

import threading
from urllib.parse import parse_qs

import pytest
import requests

from tests.devstack.flows import DISCOVERY
from tests.devstack.server import running_devstack
from tests.support.servers import running_wsgi


class BackchannelReceiver:
    """A client's back-channel logout endpoint that records what it receives."""

    def __init__(self):
        self.url = None
        self.status = "200 OK"
        self._received = []
        self._condition = threading.Condition()

    def __call__(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        form = parse_qs(environ["wsgi.input"].read(length).decode())
        with self._condition:
            self._received.append({"content_type": environ.get("CONTENT_TYPE"), "form": form})
            self._condition.notify_all()
        start_response(self.status, [("Content-Type", "text/plain"), ("Cache-Control", "no-store")])
        return [b""]

    def received(self) -> list[dict]:
        with self._condition:
            return list(self._received)

    def clear(self) -> None:
        with self._condition:
            self._received.clear()


@pytest.fixture(scope="session")
def backchannel():
    receiver = BackchannelReceiver()
    with running_wsgi(lambda base_url: receiver) as base_url:
        receiver.url = base_url + "/auth/backchannel-logout"
        yield receiver


@pytest.fixture(scope="session")
def devstack(backchannel):
    """Base URL of a standalone development stack whose client has a back-channel logout URI."""
    with running_devstack(**{"devstack.idp.backchannel_logout_uri": backchannel.url}) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def metadata(devstack):
    return requests.get(devstack + DISCOVERY, timeout=5).json()


@pytest.fixture
def browser():
    with requests.Session() as session:
        yield session


@pytest.fixture
def stats(devstack):
    """Reads the provider's counters: ``stats()`` now, to compare before and after."""
    return lambda: requests.get(devstack + "/_dev/idp/stats", timeout=5).json()
