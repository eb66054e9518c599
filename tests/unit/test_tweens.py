"""The outage tween: the database or Redis gone mid-request, or at commit, above the exception views."""

import logging

from pyramid.request import Request
from sqlalchemy.exc import OperationalError

from myapp.tweens import outage_tween_factory


def test_an_outage_at_commit_is_a_503_whose_line_says_what_failed_and_no_password(caplog):
    """As the 503 exception view and the revoker say it (describe_outage): the driver's first line,
    credentials masked, not the error's type alone."""

    def commit_fails(request):
        raise OperationalError("COMMIT", {}, Exception(
            "could not connect to postgresql://app:hunter2@db.internal/app: server closed the connection\nmore"
        ))

    tween = outage_tween_factory(commit_fails, registry=None)
    with caplog.at_level(logging.WARNING, logger="myapp.tweens"):
        response = tween(Request.blank("/posts", method="POST"))
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert caplog.messages == [
        "service unavailable on POST /posts: OperationalError: could not connect to "
        "postgresql://***@db.internal/app: server closed the connection"
    ]
