"""Tweens: the few things that must happen around every request, before views read it."""

from urllib.parse import unquote_to_bytes

from pyramid.response import Response

from myapp.errors import ErrorCode, json_error
from myapp.routes import is_json_request

BAD_ADDRESS = "The address is not valid UTF-8."


def _decodes(raw: str, *, query: bool) -> bool:
    # WSGI hands PATH_INFO over as latin-1 text of the raw bytes; QUERY_STRING is still %-encoded.
    try:
        data = raw.encode("latin-1")
        if query:
            data = unquote_to_bytes(data.replace(b"+", b" "))
        data.decode("utf-8")
        return True
    except UnicodeError:
        return False


def _bad_request(request, message: str) -> Response:
    if is_json_request(request):
        return json_error(400, ErrorCode.BAD_REQUEST, message)
    # Plain text: a page would render the request's own undecodable address and parameters.
    return Response(message, status=400, content_type="text/plain")


def unreadable_request_tween_factory(handler, registry):
    """Answer 400 to an address no view could read: a path or query that is not UTF-8. Bodies are
    left alone: a form is read by the view that takes it (``Request.POST``), a proxied body streams
    to the upstream unread."""

    def tween(request):
        request.add_finished_callback(_close_spooled_body)
        environ = request.environ
        if not _decodes(environ.get("PATH_INFO", ""), query=False) or not _decodes(
            environ.get("QUERY_STRING", ""), query=True
        ):
            return _bad_request(request, BAD_ADDRESS)
        return handler(request)

    return tween


def _close_spooled_body(request):
    """WebOb spools large bodies to a temporary file it never closes; close it when done."""
    body = request.environ.get("wsgi.input")
    if body is not None and getattr(body, "name", None) is not None and hasattr(body, "close"):
        body.close()


def includeme(config):
    config.add_tween("myapp.tweens.unreadable_request_tween_factory", under="INGRESS")
