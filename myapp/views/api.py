"""The BFF proxy's thin view (the service checks, forwards and streams; this counts), and the
short way a signed-in call reaches it.

``api_tween_factory`` answers a proxied call that passes every check without Pyramid's router,
view lookup, view derivers, pyramid_tm or the exception-view tween: it asks the same routes
mapper, the same JSON CSRF rule, the same security policy and the same ACL (the root factory's)
as the view's configuration below, and the same provider check as the view, then forwards as the
view does (``forward``); an exception is rendered by the same exception views. Any call that one of
those checks refuses, or that a step-up rule covers, goes the whole way round instead and is
refused there, exactly as before (a wrong provider's 403 is a denied action, audited in the
request's transaction).
A proxied call writes nothing in the request's transaction, so it needs none
(tests/functional/test_hot_path.py).
"""

import functools
import logging
import time

from pyramid.interfaces import IRootFactory, IRouteRequest, IRoutesMapper
from pyramid.view import view_config

from myapp.errors import APIError, ErrorCode, outage_errors
from myapp.resources import Permission
from myapp.routes import API_PREFIX, API_ROUTE
from myapp.security import json_csrf_failure
from myapp.services import Services
from myapp.services.proxy import StreamedBody
from myapp.services.stepup import rule_for
from myapp.tweens import UpstreamAnswer, unavailable_response
from myapp.views.errors import record_denial

log = logging.getLogger(__name__)

API_PERMISSION = Permission.USE_API


@view_config(route_name=API_ROUTE, permission=API_PERMISSION, json_csrf=True, require_csrf=False)
def proxy(request):
    """The long way's call: refused when its upstream takes no calls from the session's provider
    (a denied action, audited as the permission check's 403 is), else forwarded."""
    upstream_name = request.matchdict["upstream"]
    if request.services.proxy.refuses_provider(upstream_name, request.identity.provider):
        request.keep_transaction()
        record_denial(request, "wrong provider")
        request.services.metrics.proxied(upstream_name, 403)
        raise APIError(403, ErrorCode.WRONG_PROVIDER, "This API is not available to accounts of your sign-in provider.")
    return forward(request)


def forward(request):
    """The call to the upstream, once every check has let it through."""
    started = time.perf_counter()
    upstream_name = request.matchdict["upstream"]
    service = request.services.proxy
    metrics = request.services.metrics
    try:
        outgoing = service.prepare(request.environ, upstream_name=upstream_name, client_addr=request.remote_addr)
        try:
            upstream = service.exchange(outgoing, functools.partial(request.access_token, upstream=upstream_name))
        except BaseException:
            outgoing.close()
            raise
    except APIError as e:
        if upstream_name in service.upstreams:
            metrics.proxied(upstream_name, e.status)
        raise
    answered = time.perf_counter() - started
    try:
        status = service.status_line(upstream)
        headers = service.response_headers(upstream)
        small = service.small_body(upstream, request.method, upstream_name)
        if small is not None:
            response = UpstreamAnswer(status=status, headerlist=headers, body=small)
            outgoing.close()
        else:
            # The status line goes out with the body's first piece (PEP 3333): read it here, so
            # an upstream that breaks off or stalls before it is still a 502 or 504, not a cut answer.
            first = service.first_piece(upstream, upstream_name)
            response = UpstreamAnswer(
                status=status, headerlist=headers, app_iter=StreamedBody(upstream, outgoing, first)
            )
    except APIError as e:
        outgoing.close()
        metrics.proxied(upstream_name, e.status, answered)
        raise
    except Exception:  # whatever the upstream sent, it never becomes a 500
        log.warning("an answer of upstream %s could not be passed on", upstream_name, exc_info=True)
        upstream.close()
        outgoing.close()
        metrics.proxied(upstream_name, 502, answered)
        raise APIError(502, ErrorCode.UPSTREAM_UNAVAILABLE, "The API's answer could not be passed on.") from None
    except BaseException:
        upstream.close()
        outgoing.close()
        raise
    metrics.proxied(upstream_name, upstream.status, answered)
    return response


def api_tween_factory(handler, registry):
    """The short way for a proxied call that every check lets through (see the module's docstring)."""
    mapper = registry.getUtility(IRoutesMapper)
    route = mapper.get_route(API_ROUTE)
    request_iface = registry.queryUtility(IRouteRequest, name=API_ROUTE)
    root_factory = registry.getUtility(IRootFactory)
    settings = registry[Services].settings
    public_url, stepup_rules = settings.public_url, settings.stepup_rules
    outages = outage_errors()

    def tween(request):
        if not request.environ.get("PATH_INFO", "").startswith(API_PREFIX) or (
            stepup_rules and rule_for(stepup_rules, request.path_info) is not None
        ):
            return handler(request)
        matched = mapper(request)
        if matched["route"] is not route or json_csrf_failure(request, public_url) is not None:
            return handler(request)
        attrs = request.__dict__
        attrs["matchdict"], attrs["matched_route"] = matched["match"], route
        request.request_iface = request_iface
        try:
            context = attrs["root"] = attrs["context"] = root_factory(request)
            identity = request.identity
            if (
                identity is not None
                and request.has_permission(API_PERMISSION, context)
                # Refused and audited there, in the request's transaction.
                and not request.services.proxy.refuses_provider(attrs["matchdict"]["upstream"], identity.provider)
            ):
                return forward(request)
        except Exception:
            try:
                return request.invoke_exception_view(reraise=True)
            except outages:  # what the outage tween does when an exception view cannot answer
                return unavailable_response(request)
        return handler(request)  # refused there: 401 login_required, or 403 and its audit record

    return tween
