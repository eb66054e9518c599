"""Tweens: the few things that must happen around every request, before views read it."""

from urllib.parse import unquote_to_bytes

from pyramid.response import Response

from myapp.errors import ErrorCode
from myapp.routes import API_PREFIX, is_json_request

BAD_ADDRESS = "The address is not valid UTF-8."
BAD_BODY = "The form could not be read."
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_FORM_BYTES = 1024 * 1024


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


def _bad_request(request, message: str, status: int = 400) -> Response:
    if is_json_request(request):
        code = ErrorCode.PAYLOAD_TOO_LARGE if status == 413 else ErrorCode.BAD_REQUEST
        return Response(json={"error": str(code), "message": message}, status=status)
    # Plain text: a page would render the request's own undecodable address and parameters.
    return Response(message, status=status, content_type="text/plain")


def unreadable_request_tween_factory(handler, registry):
    """Answer 400 to what no view could read: a path or query that is not UTF-8, or a form body
    that does not parse (a multipart body without a boundary, say). Proxied bodies are left alone:
    they stream to the upstream unread."""

    def tween(request):
        request.add_finished_callback(_close_spooled_body)
        environ = request.environ
        path = environ.get("PATH_INFO", "")
        if not _decodes(path, query=False) or not _decodes(environ.get("QUERY_STRING", ""), query=True):
            return _bad_request(request, BAD_ADDRESS)
        if environ.get("CONTENT_TYPE", "").startswith(FORM_TYPES) and not path.startswith(API_PREFIX):
            if (request.content_length or 0) > MAX_FORM_BYTES:
                return _bad_request(request, "The form is too large.", 413)
            try:
                request.POST
            except ValueError:
                return _bad_request(request, BAD_BODY)
        return handler(request)

    return tween


def _close_spooled_body(request):
    """WebOb spools large bodies to a temporary file it never closes; close it when done."""
    body = request.environ.get("wsgi.input")
    if body is not None and getattr(body, "name", None) is not None and hasattr(body, "close"):
        body.close()


def includeme(config):
    config.add_tween("myapp.tweens.unreadable_request_tween_factory", under="INGRESS")
