"""The ACLs next to the data: every resource with owner, other user, admin and anonymous."""

from types import SimpleNamespace

import pytest
from pyramid.authorization import ACLHelper, Authenticated, Everyone
from pyramid.httpexceptions import HTTPForbidden, HTTPNotFound
from pyramid.testing import DummyRequest

from myapp.resources import (
    Permission,
    PostCollection,
    PostResource,
    Root,
    SessionResource,
    UserResource,
    parse_id,
    post_factory,
    session_factory,
    user_factory,
)

OWNER, OTHER = 1, 2
PRINCIPALS = {
    "owner": [Everyone, Authenticated, f"user:{OWNER}", "group:staff"],
    "other": [Everyone, Authenticated, f"user:{OTHER}", "group:staff"],
    "admin": [Everyone, Authenticated, "user:3", "group:admins"],
    "anonymous": [Everyone],
}


def request(kind=DummyRequest, /, **matchdict):
    request = kind()
    request.services = SimpleNamespace(settings=SimpleNamespace(admin_group="admins"))
    request.matchdict = matchdict
    return request


def allowed(context, permission) -> set[str]:
    return {who for who, principals in PRINCIPALS.items() if ACLHelper().permits(context, principals, permission)}


def post():
    return PostResource(SimpleNamespace(id=10, owner_id=OWNER), Root(request()))


@pytest.mark.parametrize(
    "permission, who",
    [
        (Permission.VIEW, {"owner", "other", "admin"}),
        (Permission.EDIT, {"owner", "admin"}),
        (Permission.DELETE, {"owner", "admin"}),
        (Permission.CREATE, {"admin"}),
        (Permission.ADMINISTER, {"admin"}),
    ],
)
def test_a_post(permission, who):
    assert allowed(post(), permission) == who


@pytest.mark.parametrize(
    "permission, who",
    [(Permission.VIEW, {"owner", "other", "admin"}), (Permission.CREATE, {"owner", "other", "admin"})],
)
def test_the_posts(permission, who):
    assert allowed(PostCollection(request()), permission) == who


def test_a_session_is_revoked_by_its_owner_or_an_admin():
    session = SessionResource(SimpleNamespace(handle="h", user_id=OWNER), Root(request()))
    assert allowed(session, Permission.REVOKE) == {"owner", "admin"}
    assert allowed(session, Permission.EDIT) == {"admin"}


def test_a_user_grants_nothing_of_its_own_even_to_that_user():
    user = UserResource(SimpleNamespace(id=OWNER), Root(request()))
    for permission in (Permission.ADMINISTER, Permission.EDIT, Permission.DELETE, Permission.REVOKE):
        assert allowed(user, permission) == {"admin"}


@pytest.mark.parametrize(
    "permission, who",
    [
        (Permission.VIEW, {"owner", "other", "admin"}),
        (Permission.USE_API, {"owner", "other", "admin"}),
        (Permission.MANAGE_OWN_SESSIONS, {"owner", "other", "admin"}),
        (Permission.ADMINISTER, {"admin"}),
        (Permission.UNDECLARED, set()),
    ],
)
def test_the_root(permission, who):
    assert allowed(Root(request()), permission) == who


def test_the_roots_acl_is_made_once_per_admin_group():
    other = request()
    other.services.settings.admin_group = "operators"
    assert Root(request()).__acl__ is Root(request()).__acl__
    # Shared by every request: nothing in it can be changed.
    assert all(type(entry) is tuple for entry in Root(request()).__acl__) and type(Root(request()).__acl__) is tuple
    assert Root(other).__acl__ is not Root(request()).__acl__
    assert allowed(Root(other), Permission.ADMINISTER) == set(), "group:admins is not the admin group there"
    assert allowed(Root(request()), Permission.ADMINISTER) == {"admin"}


class SignedInRequest(DummyRequest):
    identity = SimpleNamespace(user_id=OWNER)


class StrangersRequest(DummyRequest):
    identity = None


# Someone signed in is told there is no such row; a stranger gets what any protected page
# answers them (the forbidden view sends them to sign in), whether the row exists or not.
WHO = [(SignedInRequest, HTTPNotFound), (StrangersRequest, HTTPForbidden)]


@pytest.mark.parametrize("value", ["", "abc", "-1", "0", "1.5", "١٢", "9" * 19, "0x10", "2147483648", "99999999999999999999"])
@pytest.mark.parametrize("kind, refusal", WHO)
def test_ids_that_are_not_plain_numbers_are_not_found_without_a_query(value, kind, refusal):
    def no_query(*args):
        raise AssertionError("queried the database")

    req = request(kind, id=value)
    req.dbsession = SimpleNamespace(get=no_query, scalars=no_query)
    for factory in (post_factory, user_factory):
        with pytest.raises(refusal):
            factory(req)


@pytest.mark.parametrize("kind, refusal", WHO)
def test_a_missing_row_is_not_found(dbsession, kind, refusal):
    req = request(kind, id="123456", handle="no-such-handle")
    req.dbsession = dbsession
    req.session_store = SimpleNamespace(find_by_handle=lambda handle: None)
    for factory in (post_factory, user_factory, session_factory):
        with pytest.raises(refusal):
            factory(req)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1", 1), ("2147483647", 2**31 - 1), ("007", 7),
        (None, None), ("", None), ("0", None), ("-1", None), ("+1", None), (" 1", None), ("1.0", None), ("١", None),
        ("2147483648", None), ("9" * 19, None), ("9" * 400, None),
    ],
)
def test_an_id_from_a_request_is_a_positive_postgresql_integer(value, expected):
    assert parse_id(value) == expected
