"""The programmable provider the tests share (one per test process): what one test asks of it stays
in that test."""

import threading
import time

import requests

from tests.support.fake_provider import CLIENT_ID, CLIENT_SECRET


def post_in_background(provider, path: str, form: dict) -> tuple[threading.Thread, list]:
    """POST ``form`` to the provider from another thread, once it has the request in hand: the
    thread, and a list that will hold the answer."""
    answers = []
    thread = threading.Thread(
        target=lambda: answers.append(
            requests.post(provider.issuer + path, data=form, auth=(CLIENT_ID, CLIENT_SECRET), timeout=5)
        )
    )
    thread.start()
    while not any(seen == path for seen, _, _ in provider.requests):
        time.sleep(0.01)
    return thread, answers


def test_a_delayed_revocation_is_recorded_for_the_test_that_asked(provider):
    provider.revocation_delay = 0.3
    post_in_background(provider, "/revoke", {"token": "rt-asked"})[0].join()
    assert provider.revoked == ["rt-asked"]


def test_a_delayed_revocation_that_outlives_its_test_is_not_heard_by_the_next(provider):
    """A test that set a delay and ended before the answer (its caller gave up: a timeout) must not
    leave that revocation in the next test's record: it once showed up there as a second revoked
    token, failing a sign-out test that ran after it on the same worker."""
    provider.revocation_delay = 0.5
    thread, _ = post_in_background(provider, "/revoke", {"token": "rt-of-the-test-before"})
    provider.reset()  # the next test begins while the answer is held back
    thread.join()
    assert provider.revoked == []


def test_a_delayed_token_answer_that_outlives_its_test_issues_nothing_to_the_next(provider):
    provider.token_delay = 0.5
    thread, answers = post_in_background(
        provider, "/token", {"grant_type": "refresh_token", "refresh_token": "rt-unknown"}
    )
    provider.reset()
    thread.join()
    assert answers[0].status_code == 503
    assert provider.refresh_tokens == {} and provider.access_tokens == {} and provider.refresh_uses == []
