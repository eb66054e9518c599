"""Tweens: the few things that must happen around every request, before views read it."""

import logging
from urllib.parse import urlsplit

from pyramid.response import Response
from pyramid.tweens import INGRESS

from myapp.errors import ErrorCode, describe_outage, json_error, outage_errors
from myapp.request import is_utf8
from myapp.routes import API_PREFIX, is_json_request
from myapp.services import Services
from myapp.services.proxy import PATH_NOT_ALLOWED

log = logging.getLogger(__name__)
BAD_ADDRESS = "The address is not valid UTF-8."


def _decodes(raw: str, *, query: bool) -> bool:
    # WSGI hands PATH_INFO over as latin-1 text of the raw bytes; QUERY_STRING is still %-encoded.
    try:
        data = raw.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return is_utf8(data, form_encoded=query)


def _bad_request(request, message: str) -> Response:
    if is_json_request(request):
        return json_error(400, ErrorCode.BAD_REQUEST, message)
    # Plain text: a page would render the request's own undecodable address and parameters.
    return Response(message, status=400, content_type="text/plain")


def unreadable_request_tween_factory(handler, registry):
    """Answer 400 to an address no view could read: a path or query that is not UTF-8. A proxied
    call's query is not read here but passed through as it came (SPEC.md: the query string passes
    through), whatever its encoding. Bodies are left alone: a form is read by the view that takes
    it (``Request.POST``), a proxied body streams to the upstream unread."""

    def tween(request):
        environ = request.environ
        path = environ.get("PATH_INFO", "")
        if not _decodes(path, query=False) or (
            not path.startswith(API_PREFIX) and not _decodes(environ.get("QUERY_STRING", ""), query=True)
        ):
            return _bad_request(request, BAD_ADDRESS)
        if "\n" in path and path.startswith(API_PREFIX):
            # A route's "*subpath" stops at a line feed, and the path would match no route: 404
            # unknown_upstream for an upstream that exists. The proxy refuses it anyway.
            return json_error(400, ErrorCode.BAD_PATH, PATH_NOT_ALLOWED)
        try:
            return handler(request)
        finally:
            _close_spooled_body(environ)

    return tween


def _close_spooled_body(environ):
    """WebOb spools large bodies to a temporary file it never closes; close it when done."""
    body = environ.get("wsgi.input")
    if body is not None and getattr(body, "name", None) is not None and hasattr(body, "close"):
        body.close()


class UpstreamAnswer(Response):
    """An upstream's answer, passed back by the proxy: an absolute ``Location`` in it is the
    upstream's own (SPEC.md: upstream redirects are passed back), whatever host it names."""


def public_location_tween_factory(handler, registry):
    """A redirect names this app by ``myapp.public_url``, never by the request's ``Host``.

    WebOb makes a relative ``Location`` absolute from the ``Host`` header and the server's scheme,
    both written by whoever sent the request: ``Host: evil.example`` on ``GET /posts`` came back as
    ``Location: http://evil.example/login?next=%2Fposts``, which a cache in between could keep
    and serve to others, and behind a proxy that ends TLS the scheme was ``http``. Resolved here
    against the public URL instead (with WebOb's own rules, which refuse a protocol-relative
    ``//host``), for the app's redirects and for an upstream's relative ``Location`` alike;
    WebOb leaves an absolute one as it is. An absolute one on the request's own origin is moved
    to the public URL too, unless an upstream sent it (:class:`UpstreamAnswer`): an upstream's
    absolute or protocol-relative ``Location`` names the host it means, and passes back so."""
    public_url = registry[Services].settings.public_url
    public = urlsplit(public_url)
    public_origin = {"wsgi.url_scheme": public.scheme, "HTTP_HOST": public.netloc}

    def tween(request):
        response = handler(request)
        headerlist = response.headerlist
        for i, (name, value) in enumerate(headerlist):
            if name.lower() == "location":
                if isinstance(response, UpstreamAnswer):
                    if value.startswith("//"):  # on the upstream's word, the host it names
                        value = f"{public.scheme}:{value}"
                else:
                    # Absolute already, from the same Host: Pyramid's static view adds a trailing
                    # slash to request.path_url (GET /static/. came back as http://evil.example/static/./).
                    own_origin = request.host_url
                    if value == own_origin or value.startswith(own_origin + "/"):
                        value = public_url + value[len(own_origin) :]
                at_public_url = {**request.environ, **public_origin}
                headerlist[i] = (name, Response._make_location_absolute(at_public_url, value))
        return response

    return tween


def outage_tween_factory(handler, registry):
    """The database or Redis gone mid-request, or at commit (pyramid_tm's tween runs above the
    exception views): 503 ``service_unavailable``, never waitress's bare 500. Nothing is written
    half: the transaction was aborted on the way out."""
    outages = outage_errors()

    def tween(request):
        try:
            return handler(request)
        except outages as e:
            log.warning("service unavailable on %s %s: %s", request.method, request.path, describe_outage(e))
            return unavailable_response(request)

    return tween


def unavailable_response(request) -> Response:
    if is_json_request(request):
        response = json_error(503, ErrorCode.SERVICE_UNAVAILABLE, "The service is briefly unavailable. Try again shortly.")
    else:
        response = Response(UNAVAILABLE_PAGE, status=503, content_type="text/html", charset="utf-8")
    response.headers["Retry-After"] = "5"
    response.headers["Cache-Control"] = "no-store"
    return response


# Self-contained on purpose: rendering the usual layout would look up the session again.
UNAVAILABLE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Briefly unavailable · myapp</title><link rel="stylesheet" href="/static/app.css"></head>
<body><main id="main" class="container page"><section class="card message-page" aria-labelledby="t">
<p class="error-code"><span class="visually-hidden">Error </span>503</p>
<h1 id="t">Briefly unavailable</h1>
<p class="lead">We cannot reach our database right now. Nothing you did was lost: please try again in a moment.</p>
<p><a class="button button-large" href="">Try again</a></p></section></main></body></html>"""


def includeme(config):
    # Below the request id and the request's span, so that its 400 carries X-Request-ID too;
    # above everything that reads the path.
    config.add_tween(
        "myapp.tweens.unreadable_request_tween_factory",
        under=("myapp.tracing.request_tween_factory", "myapp.observability.request_id_tween_factory", INGRESS),
        over="myapp.views.api.api_tween_factory",
    )
    config.add_tween("myapp.tweens.public_location_tween_factory", under="INGRESS")
    config.add_tween("myapp.tweens.outage_tween_factory", over="pyramid_tm.tm_tween_factory")
    # Below the request id and the request's span, which every request has; above the rest.
    config.add_tween(
        "myapp.views.api.api_tween_factory", under=("myapp.tracing.request_tween_factory", INGRESS),
        over="myapp.tweens.outage_tween_factory",
    )
