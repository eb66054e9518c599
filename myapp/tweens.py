"""Tweens: the few things that must happen around every request, before Pyramid decodes it."""

from urllib.parse import unquote_to_bytes

from pyramid.response import Response

BAD_REQUEST = "The address is not valid UTF-8."


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


def undecodable_request_tween_factory(handler, registry):
    """Answer 400 to a path or query that is not UTF-8, before anything tries to decode it."""

    def tween(request):
        environ = request.environ
        if not _decodes(environ.get("PATH_INFO", ""), query=False) or not _decodes(
            environ.get("QUERY_STRING", ""), query=True
        ):
            if environ.get("PATH_INFO", "").startswith(("/api/", "/auth/")):
                return Response(json={"error": "bad_path", "message": BAD_REQUEST}, status=400)
            return Response(BAD_REQUEST, status=400, content_type="text/plain")
        return handler(request)

    return tween


def includeme(config):
    config.add_tween("myapp.tweens.undecodable_request_tween_factory", under="INGRESS")
