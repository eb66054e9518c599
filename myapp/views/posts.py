from pyramid.httpexceptions import HTTPSeeOther
from pyramid.view import view_config
from sqlalchemy import select

from myapp.models import Post
from myapp.resources import Permission

PAGE_SIZE = 20
LIMITS = {"title": 200, "body": 20000}


def _read_form(request) -> tuple[dict, dict]:
    form = {
        "title": request.POST.get("title", "").strip(),
        "body": request.POST.get("body", "").replace("\r\n", "\n").strip(),
    }
    errors = {}
    if not form["title"]:
        errors["title"] = "Give your post a title."
    elif len(form["title"]) > LIMITS["title"]:
        errors["title"] = f"Keep the title under {LIMITS['title']} characters."
    if len(form["body"]) > LIMITS["body"]:
        errors["body"] = f"Keep the text under {LIMITS['body']} characters."
    for key, value in form.items():
        if "\x00" in value:
            errors[key] = "This field contains characters that cannot be saved."
    return form, errors


def _form_page(request, *, form, errors, action, post=None):
    if errors:
        request.response.status_int = 400
    return {"form": form, "errors": errors, "limits": LIMITS, "action": action, "post": post}


@view_config(
    route_name="posts", request_method="GET", permission=Permission.VIEW, renderer="myapp:templates/posts_list.jinja2"
)
def list_posts(request):
    page = request.GET.get("page", "1")
    page = int(page) if page.isascii() and page.isdigit() and 0 < len(page) < 7 and int(page) > 0 else 1
    posts = request.dbsession.scalars(
        select(Post).order_by(Post.created_at.desc(), Post.id.desc()).offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE + 1)
    ).all()
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
    return _form_page(request, form={"title": "", "body": ""}, errors={}, action=request.route_path("posts"))


@view_config(
    route_name="posts", request_method="POST", permission=Permission.CREATE, renderer="myapp:templates/post_form.jinja2"
)
def create_post(request):
    form, errors = _read_form(request)
    if errors:
        return _form_page(request, form=form, errors=errors, action=request.route_path("posts"))
    post = Post(owner_id=request.identity.user_id, title=form["title"], body=form["body"])
    request.dbsession.add(post)
    request.dbsession.flush()
    return HTTPSeeOther(request.route_path("post", id=post.id, _query={"notice": "post_created"}))


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
    )


@view_config(
    route_name="post_edit", request_method="POST", permission=Permission.EDIT, renderer="myapp:templates/post_form.jinja2"
)
def update_post(request):
    post = request.context.post
    form, errors = _read_form(request)
    if errors:
        return _form_page(request, form=form, errors=errors, action=request.route_path("post_edit", id=post.id), post=post)
    post.title = form["title"]
    post.body = form["body"]
    request.dbsession.flush()
    return HTTPSeeOther(request.route_path("post", id=post.id, _query={"notice": "post_updated"}))


@view_config(route_name="post_delete", request_method="POST", permission=Permission.DELETE)
def delete_post(request):
    request.dbsession.delete(request.context.post)
    request.dbsession.flush()
    return HTTPSeeOther(request.route_path("posts", _query={"notice": "post_deleted"}))
