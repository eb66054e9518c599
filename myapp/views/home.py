from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.view import view_config
from sqlalchemy import select

from myapp.models import Post
from myapp.resources import Permission


@view_config(
    route_name="home",
    request_method="GET",
    is_authenticated=False,
    renderer="myapp:templates/landing.jinja2",
    permission=NO_PERMISSION_REQUIRED,
)
def landing(request):
    return {}


@view_config(
    route_name="home",
    request_method="GET",
    is_authenticated=True,
    renderer="myapp:templates/dashboard.jinja2",
    permission=Permission.VIEW,
)
def dashboard(request):
    identity = request.identity
    posts = request.dbsession.scalars(
        select(Post).where(Post.owner_id == identity.user_id).order_by(Post.updated_at.desc()).limit(5)
    ).all()
    return {
        "posts": posts,
        "session_count": len(request.session_store.list_for_user(identity.user_id)),
    }
