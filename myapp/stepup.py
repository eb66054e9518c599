"""Step-up authentication (SPEC.md "Step-up authentication"): paths that need a stronger or more
recent sign-in than the session has, and an upstream's RFC 9470 challenge asking for one.

A request under a ``myapp.stepup.rules`` prefix whose session does not satisfy the rule is answered
here, once its view's permission check has let it through and before the view runs: a page that
explains and offers to sign in again, or, for JSON routes, 401 ``step_up_required`` with the
``login_url`` that asks the provider for what is missing. After the permission check, not before:
someone the route's ACL refuses gets SPEC.md's 403 at once, rather than a stronger sign-in that
would end in the same 403.
"""

from pyramid.renderers import render_to_response

from myapp.errors import ErrorCode, json_error
from myapp.models.meta import utcnow
from myapp.routes import API_ROUTE, is_json_request, return_path
from myapp.services import Services
from myapp.services.stepup import StepUpRequired, rule_for, satisfies


def login_url(request, required: StepUpRequired, next_path: str) -> str:
    query = {"next": next_path}
    identity = request.identity
    if identity is not None:
        query["provider"] = identity.provider  # a step-up stays at the provider of the session
    if required.acr_values:
        query["acr_values"] = " ".join(required.acr_values)
    if required.max_age is not None:
        query["max_age"] = str(required.max_age)
    return request.route_path("login", _query=query)


def _next_path(request) -> str:
    return return_path(request, request.services.settings.public_url)


# The units a step-up page names a max_age in, the largest first.
_AGE_UNITS = ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second"))


def how_recent(max_age: int) -> str:
    """What the step-up page says of a ``max_age`` (seconds), in the largest unit that says it
    exactly: "... from the last minute.", "... from the last 90 seconds.", "... 15 hours."."""
    if max_age <= 0:
        return "This part of the site needs you to sign in again now."
    size, unit = next((size, unit) for size, unit in _AGE_UNITS if max_age % size == 0)
    count = max_age // size
    return f"This part of the site needs a sign-in from the last {unit if count == 1 else f'{count} {unit}s'}."


def step_up_response(request, required: StepUpRequired):
    url = login_url(request, required, _next_path(request))
    if is_json_request(request):
        response = json_error(401, ErrorCode.STEP_UP_REQUIRED, required.message)
        response.json_body = {**response.json_body, "login_url": url}
        return response
    recent = how_recent(required.max_age) if required.max_age is not None else None
    response = render_to_response(
        "myapp:templates/step_up.jinja2", {"login_url": url, "required": required, "recent": recent}, request=request
    )
    response.status = 401
    return response


def _refused_by_its_view(request) -> bool:
    """A proxied call to an upstream that takes no calls from the session's provider: the view's
    403 ``wrong_provider`` comes first, as the permission check's 403 does, rather than a stronger
    sign-in that would end in it."""
    identity = request.identity
    return (
        identity is not None
        and request.matched_route is not None
        and request.matched_route.name == API_ROUTE
        and request.services.proxy.refuses_provider(request.matchdict.get("upstream", ""), identity.provider)
    )


def stepup_view(view, info):
    """A view deriver: below Pyramid's permission check (``secured_view``), as view derivers are
    unless told otherwise. Exception views (the 403 and 404 pages, ...) are never stepped up."""
    rules = info.registry[Services].settings.stepup_rules
    if not rules or info.exception_only:
        return view

    def stepped_up(context, request):
        rule = rule_for(rules, request.path_info)
        if rule is not None and request.exception is None and not _refused_by_its_view(request):
            identity = request.identity
            if identity is not None and not satisfies(identity.session, rule, utcnow()):
                max_age = int(rule.max_age.total_seconds()) if rule.max_age is not None else None
                return step_up_response(request, StepUpRequired(rule.acr_values, max_age))
        return view(context, request)

    return stepped_up


def includeme(config):
    config.add_view_deriver(stepup_view)

