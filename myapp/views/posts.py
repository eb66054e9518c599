import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from pyramid.httpexceptions import HTTPNotFound, HTTPSeeOther
from pyramid.view import view_config
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError

from myapp.models import Post, User
from myapp.models.meta import utcnow
from myapp.models.user import display_name
from myapp.resources import Permission
from myapp.services.audit import AuditEventType
from myapp.text import CONTROLS, blank

PAGE_SIZE = 20
LIMITS = {"title": 200, "body": 20000}
# The new-post form's one-time token (secrets.token_urlsafe(32)): a second submit of the same form
# lands on the post the first one made instead of making another.
_FORM_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")
# A title may hold no control (text.CONTROLS); a text keeps its tabs and line breaks.
_CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_POSTS, _USERS = Post.__table__.c, User.__table__.c
# Built once: a page asks with its offset and one more row than it shows (is there a next page?).
_PAGE_OF_POSTS = (
    select(
        _POSTS.id, _POSTS.title, _POSTS.body, _POSTS.created_at, _POSTS.updated_at, _POSTS.owner_id,
        _USERS.name, _USERS.email, _USERS.subject,
    )
    .select_from(Post.__table__.join(User.__table__, _USERS.id == _POSTS.owner_id))
    .order_by(_POSTS.created_at.desc(), _POSTS.id.desc())
    .offset(bindparam("offset")).limit(bindparam("limit"))
)
# The dashboard's five most recently changed posts of one person.
_RECENT_POSTS_OF = (
    select(_POSTS.id, _POSTS.title, _POSTS.updated_at)
    .where(_POSTS.owner_id == bindparam("owner_id")).order_by(_POSTS.updated_at.desc()).limit(5)
)


@dataclass(frozen=True)
class PostSummary:
    """A post as a list shows it: plain values, read with its author's name in one query."""

    id: int
    title: str
    body: str
    created_at: datetime
    updated_at: datetime
    owner_id: int
    owner_name: str


def page_of_posts(request, page: int) -> list[PostSummary]:
    """Newest first, one more than a page. Pages that list posts write nothing, so this reads
    outside the request's transaction (Database.read_all): no ORM session, nothing to commit."""
    rows = request.services.database.read_all(_PAGE_OF_POSTS, {"offset": (page - 1) * PAGE_SIZE, "limit": PAGE_SIZE + 1})
    return [
        PostSummary(
            id=r.id, title=r.title, body=r.body, created_at=r.created_at, updated_at=r.updated_at,
            owner_id=r.owner_id, owner_name=display_name(r.name, r.email, r.subject),
        )
        for r in rows
    ]


def recent_posts_of(request, user_id: int) -> list:
    """The person's five most recently changed posts (id, title, updated_at), read like page_of_posts."""
    return request.services.database.read_all(_RECENT_POSTS_OF, {"owner_id": user_id})


def _read_form(request) -> tuple[dict, dict]:
    form = {
        "title": request.POST.get("title", "").strip(),
        "body": request.POST.get("body", "").replace("\r\n", "\n").strip(),
    }
    errors = {}
    if blank(form["title"]):
        errors["title"] = "Give your post a title." if not form["title"] else (
            "The title shows nothing (it holds only spaces or invisible characters): give your post a title."
        )
    elif len(form["title"]) > LIMITS["title"]:
        errors["title"] = f"Keep the title to {LIMITS['title']} characters or fewer."
    if len(form["body"]) > LIMITS["body"]:
        errors["body"] = f"Keep the text to {LIMITS['body']} characters or fewer."
    if CONTROLS.search(form["title"]):
        errors["title"] = "The title contains characters that cannot be saved: keep it to one line of text."
    if _CONTROL_IN_TEXT.search(form["body"]):
        errors["body"] = "This field contains characters that cannot be saved (control characters)."
    return form, errors


def _form_page(request, *, form, errors, action, post=None, form_token=None, version=None, status=400):
    if errors:
        request.response.status_int = status
    return {
        "form": form, "errors": errors, "limits": LIMITS, "action": action, "post": post, "form_token": form_token,
        "version": version,
    }


@view_config(
    route_name="posts", request_method="GET", permission=Permission.VIEW, renderer="myapp:templates/posts_list.jinja2"
)
def list_posts(request):
    page = request.GET.get("page", "1")
    page = int(page) if page.isascii() and page.isdigit() and 0 < len(page) < 7 and int(page) > 0 else 1
    posts = page_of_posts(request, page)
    return {
        "posts": posts[:PAGE_SIZE],
        "page": page,
        "has_more": len(posts) > PAGE_SIZE,
        "can_create": bool(request.has_permission(Permission.CREATE)),
    }


@view_config(
    route_name="post_new", request_method="GET", permission=Permission.CREATE, renderer="myapp:templates/post_form.jinja2"
)
def new_post_form(request):
    return _form_page(
        request, form={"title": "", "body": ""}, errors={}, action=request.route_path("posts"),
        form_token=secrets.token_urlsafe(32),
    )


@view_config(
    route_name="posts", request_method="POST", permission=Permission.CREATE, renderer="myapp:templates/post_form.jinja2"
)
def create_post(request):
    form, errors = _read_form(request)
    token = request.POST.get("form_token")
    if token is not None and not _FORM_TOKEN.match(token):
        errors["form"] = "This form could not be read. Please check your post and publish it again."
    if errors:
        keep = token if token is not None and _FORM_TOKEN.match(token) else secrets.token_urlsafe(32)
        return _form_page(request, form=form, errors=errors, action=request.route_path("posts"), form_token=keep)
    owner_id = request.identity.user_id
    earlier = _made_by_form(request, token, owner_id)
    post = earlier or _insert(request, form, owner_id, token)
    if post is None:
        # The same form, submitted twice at once: the other submit made it. Or a token that is not
        # this person's (copied from someone else's form): a post of their own, without it.
        earlier = _made_by_form(request, token, owner_id)
        post = earlier or _insert(request, form, owner_id, None)
    if earlier is not None and (earlier.title, earlier.body) != (form["title"], form["body"]):
        # Sent again with other words (Back, changed, Publish): they were not published, and the
        # page says so rather than "published" (helper-142); the tab's draft keeps them.
        return HTTPSeeOther(request.route_path("post", id=post.id, _query={"notice": "post_sent_before"}))
    return HTTPSeeOther(request.route_path("post", id=post.id, _query={"notice": "post_created"}))


def _insert(request, form: dict, owner_id: int, token: str | None) -> Post | None:
    """A new post, or None when its form token is taken already."""
    post = Post(owner_id=owner_id, title=form["title"], body=form["body"], form_token=token)
    try:
        with request.dbsession.begin_nested():
            request.dbsession.add(post)
            request.dbsession.flush()
    except IntegrityError:
        if token is None:
            raise
        return None
    return post


def _audit_someone_elses(request, post: Post, event: AuditEventType) -> None:
    """An administrator changing another person's post is recorded (their own posts are not)."""
    identity = request.identity
    if post.owner_id != identity.user_id:
        request.audit.record(
            event, user_id=post.owner_id, actor_id=identity.user_id, session_handle=identity.session_handle,
            ip_address=request.remote_addr, detail=f"post {post.id}: {post.title[:120]}",
        )


def _made_by_form(request, token: str | None, owner_id: int) -> Post | None:
    """The post an earlier submit of this form made, when it was this person's."""
    if token is None:
        return None
    return request.dbsession.scalars(select(Post).where(Post.form_token == token, Post.owner_id == owner_id)).one_or_none()


@view_config(
    route_name="post", request_method="GET", permission=Permission.VIEW, renderer="myapp:templates/post_show.jinja2"
)
def show_post(request):
    context = request.context
    return {
        "post": context.post,
        "can_edit": bool(request.has_permission(Permission.EDIT, context)),
        "can_delete": bool(request.has_permission(Permission.DELETE, context)),
    }


@view_config(
    route_name="post_edit", request_method="GET", permission=Permission.EDIT, renderer="myapp:templates/post_form.jinja2"
)
def edit_post_form(request):
    post = request.context.post
    return _form_page(
        request,
        form={"title": post.title, "body": post.body},
        errors={},
        action=request.route_path("post_edit", id=post.id),
        post=post,
        version=_version(post),
    )


@view_config(
    route_name="post_edit", request_method="POST", permission=Permission.EDIT, renderer="myapp:templates/post_form.jinja2"
)
def update_post(request):
    post = request.context.post
    form, errors = _read_form(request)
    action = request.route_path("post_edit", id=post.id)
    # The version the form was opened at (edit_post_form): a form without one (opened before it
    # was sent) is taken as it is.
    opened_at = request.POST.get("version")
    if errors:
        return _form_page(request, form=form, errors=errors, action=action, post=post, version=opened_at)
    if opened_at is not None and opened_at != _version(post):
        return _changed_since(request, form, action, post)
    # Only over the version just read: a save that crossed another since is refused as one whose
    # form was older (helper-142: a stale tab put back what a moderator had removed).
    post_id = post.id
    saved = request.dbsession.execute(
        update(Post).where(Post.id == post_id, Post.updated_at == post.updated_at)
        .values(title=form["title"], body=form["body"], updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    request.dbsession.expire(post)
    if saved != 1:
        if request.dbsession.scalar(select(Post.id).where(Post.id == post_id)) is None:
            raise HTTPNotFound()  # deleted meanwhile (helper-145: a 500, reading the post again)
        return _changed_since(request, form, action, post)
    _audit_someone_elses(request, post, AuditEventType.POST_EDITED_BY_ADMIN)
    return HTTPSeeOther(request.route_path("post", id=post.id, _query={"notice": "post_updated"}))


def _changed_since(request, form: dict, action: str, post: Post) -> dict:
    """The edit form again, with the person's words, for a post changed since it was opened: 409,
    and the version it now is, so that saving again replaces it knowingly."""
    return _form_page(
        request, form=form, action=action, post=post, version=_version(post), status=409,
        errors={"title": (
            "This post was changed after you opened it, and your changes were not saved. They are "
            "below: open the post in another tab to see what changed, then save again to replace it."
        )},
    )


def _version(post: Post) -> str:
    """What an edit form carries to say which version of the post it was opened at."""
    return post.updated_at.isoformat()


@view_config(route_name="post_delete", request_method="POST", permission=Permission.DELETE)
def delete_post(request):
    _audit_someone_elses(request, request.context.post, AuditEventType.POST_DELETED_BY_ADMIN)
    request.dbsession.delete(request.context.post)
    request.dbsession.flush()
    return HTTPSeeOther(request.route_path("posts", _query={"notice": "post_deleted"}))
