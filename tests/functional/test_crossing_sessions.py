"""Two of a person's sessions, each ending the other at the same moment, on a committed database
(real transactions, two threads): one of them stays (helper-141, helper-145)."""

import threading

import pytest
from sqlalchemy import select

from myapp.models import UserSession
from myapp.services.sessions import SessionStore
from tests.conftest import TEST_PUBLIC_URL
from tests.functional.auth.flows import csrf_of


@pytest.mark.parametrize("crossing", ["both sign out everywhere else", "one everywhere, one the other", "each the other"])
def test_two_sessions_ending_each_other_at_once_leave_one(signed_in, committed, monkeypatch, crossing):
    first, second, _third = (signed_in(refresh_token=f"rt-{n}") for n in range(3))
    ids = committed.scalars(select(UserSession.id).order_by(UserSession.id)).all()
    handles = dict(zip(ids, committed.scalars(select(UserSession.handle).order_by(UserSession.id)).all()))
    hold, both_there = SessionStore.hold_sessions_of, threading.Barrier(2)

    def at_once(store, session):
        both_there.wait(timeout=10)  # each has read its own session, live, and ends others now
        return hold(store, session)

    monkeypatch.setattr(SessionStore, "hold_sessions_of", at_once)
    urls = {
        "both sign out everywhere else": ["/account/sessions/revoke-others"] * 2,
        "one everywhere, one the other": ["/account/sessions/revoke-others", f"/account/sessions/{handles[ids[0]]}/revoke"],
        "each the other": [f"/account/sessions/{handles[ids[1]]}/revoke", f"/account/sessions/{handles[ids[0]]}/revoke"],
    }[crossing]
    forms = [{"csrf_token": csrf_of(first)}, {"csrf_token": csrf_of(second)}]
    answers = [None, None]

    def press(i, browser):
        answers[i] = browser.post(urls[i], forms[i], headers={"Origin": TEST_PUBLIC_URL}, status=303)

    presses = [threading.Thread(target=press, args=(i, browser)) for i, browser in enumerate((first, second))]
    for thread in presses:
        thread.start()
    for thread in presses:
        thread.join(30)
    committed.expire_all()
    live = committed.scalars(select(UserSession.id).where(UserSession.ended_at.is_(None))).all()
    survivors = [session_id for session_id in ids[:2] if session_id in live]
    assert len(survivors) == 1, (crossing, live)  # both had ended, before
    winner = 0 if survivors[0] == ids[0] else 1
    assert "/signed-out?reason=" in answers[1 - winner].location  # told it was signed out
    # The winner's action went through whole: its "everywhere else" ended the third too.
    assert (ids[2] in live) == (not urls[winner].endswith("revoke-others"))
