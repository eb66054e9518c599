"""Context factories and their ACLs: authorization lives next to the data.

Each factory loads the row its route names, raises ``HTTPNotFound`` when there is none (to a
stranger, what any protected page answers them), and
returns a resource whose ``__acl__`` states who may do what with it. Every resource's
``__parent__`` is the :class:`Root`, whose ACL is the one place admin rights are granted, so a
view only declares ``permission=`` and never compares owner ids.
"""

import functools
from enum import StrEnum

from pyramid.authorization import ALL_PERMISSIONS, Allow, Authenticated, Deny, Everyone
from pyramid.httpexceptions import HTTPException, HTTPForbidden, HTTPNotFound
from sqlalchemy import select

from myapp.models import Post, User
from myapp.security import group_principal, user_principal

# Ids are PostgreSQL integers: a bigger number names no row, and asking for one is a database error.
MAX_ID = 2**31 - 1


class Permission(StrEnum):
    VIEW = "view"
    CREATE = "create"
    EDIT = "edit"
    DELETE = "delete"
    USE_API = "use_api"
    MANAGE_OWN_SESSIONS = "manage_own_sessions"
    REVOKE = "revoke"
    ADMINISTER = "administer"
    # The default permission: a view that forgets to declare one is denied to everyone.
    UNDECLARED = "undeclared"


class Root:
    __name__ = ""
    __parent__ = None

    def __init__(self, request):
        self.request = request
        self.admin_group = request.services.settings.admin_group

    @property
    def __acl__(self):
        return _root_acl(self.admin_group)


@functools.lru_cache(maxsize=16)
def _root_acl(admin_group: str) -> tuple:
    """The root's ACL for an admin group: the same for every request of an app (every page checks
    it, for its header's admin links), so made once."""
    return (
        (Deny, Everyone, Permission.UNDECLARED),
        (Allow, group_principal(admin_group), ALL_PERMISSIONS),
        (Allow, Authenticated, (Permission.VIEW, Permission.USE_API, Permission.MANAGE_OWN_SESSIONS)),
    )


class PostCollection:
    __name__ = "posts"

    def __init__(self, request):
        self.request = request
        self.__parent__ = Root(request)

    __acl__ = [(Allow, Authenticated, (Permission.VIEW, Permission.CREATE))]


class PostResource:
    def __init__(self, post: Post, parent: Root):
        self.post = post
        self.__name__ = str(post.id)
        self.__parent__ = parent

    @property
    def __acl__(self):
        return [
            (Allow, Authenticated, Permission.VIEW),
            (Allow, user_principal(self.post.owner_id), (Permission.EDIT, Permission.DELETE)),
        ]


class SessionResource:
    """One of a user's sessions, named by its non-secret handle."""

    def __init__(self, session, parent: Root, *, ended: bool = False):
        self.session = session
        self.ended = ended
        self.__name__ = session.handle
        self.__parent__ = parent

    @property
    def __acl__(self):
        return [(Allow, user_principal(self.session.user_id), Permission.REVOKE)]


class UserResource:
    """A user as an admin sees them; only the root's admin entry grants anything here."""

    __acl__ = []

    def __init__(self, user: User, parent: Root):
        self.user = user
        self.__name__ = str(user.id)
        self.__parent__ = parent


def parse_id(value: str | None) -> int | None:
    """A row id as a request writes it (plain ASCII digits, 1 to MAX_ID), else None; every id read
    from a path or a query goes through here."""
    if not value or not value.isascii() or not value.isdigit() or len(value) > len(str(MAX_ID)):
        return None
    number = int(value)
    return number if 1 <= number <= MAX_ID else None


def _not_found(request) -> HTTPException:
    """No such row: 404 to someone signed in, and to anyone else what any protected page answers
    them (the sign-in, by way of the forbidden view), so that a stranger cannot tell which rows
    exist."""
    return HTTPNotFound() if request.identity is not None else HTTPForbidden()


def _int_id(request) -> int:
    number = parse_id(request.matchdict.get("id"))
    if number is None:
        raise _not_found(request)
    return number


def post_collection_factory(request):
    return PostCollection(request)


def post_factory(request):
    post = request.dbsession.get(Post, _int_id(request))
    if post is None:
        raise _not_found(request)
    return PostResource(post, Root(request))


def session_factory(request):
    row = request.session_store.find_by_handle(request.matchdict.get("handle", ""))
    if row is None:
        raise _not_found(request)
    if request.session_store.dead_reason(row) is not None:
        # One of the asker's own, ended already (a double click): a resource, so that revoking it
        # again says it is signed out. Anyone else's ended session is no one's business: 404.
        identity = request.identity
        if identity is None or identity.user_id != row.user_id:
            raise _not_found(request)
        return SessionResource(row, Root(request), ended=True)
    return SessionResource(row, Root(request))


def user_factory(request):
    user = request.dbsession.scalars(select(User).where(User.id == _int_id(request))).one_or_none()
    if user is None:
        raise _not_found(request)
    return UserResource(user, Root(request))


# The factories of a route naming one row: for a stranger, a request there is answered as for a
# row that does not exist (``_not_found``), a method the route does not take included.
ROW_FACTORIES = frozenset({post_factory, session_factory, user_factory})
