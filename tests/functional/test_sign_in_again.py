"""Signing in again in a browser that holds a session, on real sockets and a committed database:
the old session's first read may write (its activity, in a transaction of its own), and the
callback must not make it wait behind the callback's own writes (SQLite has one write lock)."""

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from myapp.models import UserSession
from myapp.models.meta import utcnow
from tests.support.live import bff_in_thread, devstack_for, listener, sign_in

pytestmark = pytest.mark.slow


def test_signing_in_again_over_a_session_whose_activity_is_due(committed_database_url, committed):
    """helper-46: the callback wrote (the login transaction spent, the user updated) before it
    first read the browser's old session; recording that session's activity then waited for
    SQLite's write lock, which this very request held, until the lock's timeout: a 503 a minute
    later, the old session left as it was, and the same again at the next try."""
    sock, public_url = listener()
    with devstack_for(public_url) as idp, bff_in_thread(committed_database_url, sock, public_url, idp) as (url, _):
        browser = sign_in(url, "alice")
        committed.execute(update(UserSession).values(last_seen_at=utcnow() - timedelta(minutes=5)))
        committed.commit()
        sign_in(url, "alice", browser)  # a 303, not a 503
        reasons = committed.scalars(select(UserSession.end_reason).order_by(UserSession.id)).all()
        assert reasons == ["replaced", None]
