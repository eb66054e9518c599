"""The BFF proxy's thin view: the service checks, forwards and streams."""

from pyramid.response import Response
from pyramid.view import view_config

from myapp.resources import Permission
from myapp.services.proxy import StreamedBody


@view_config(route_name="api", permission=Permission.USE_API, json_csrf=True, require_csrf=False)
def proxy(request):
    service = request.registry["proxy"]
    outgoing = service.prepare(
        request.environ, upstream_name=request.matchdict["upstream"], client_addr=request.remote_addr
    )
    try:
        upstream = service.exchange(outgoing, request.access_token)
    except BaseException:
        outgoing.close()
        raise
    status = f"{upstream.status} {upstream.reason or ''}".strip()
    headers = service.response_headers(upstream)
    small = service.small_body(upstream, request.method)
    if small is not None:
        outgoing.close()
        return Response(status=status, headerlist=headers, body=small)
    return Response(status=status, headerlist=headers, app_iter=StreamedBody(upstream, outgoing))
