"""The BFF proxy's thin view: the service checks, forwards and streams; this counts."""

import time

from pyramid.response import Response
from pyramid.view import view_config

from myapp.errors import APIError
from myapp.resources import Permission
from myapp.services.proxy import StreamedBody


@view_config(route_name="api", permission=Permission.USE_API, json_csrf=True, require_csrf=False)
def proxy(request):
    started = time.perf_counter()
    upstream_name = request.matchdict["upstream"]
    service = request.services.proxy
    metrics = request.services.metrics
    try:
        outgoing = service.prepare(request.environ, upstream_name=upstream_name, client_addr=request.remote_addr)
        try:
            upstream = service.exchange(outgoing, request.access_token)
        except BaseException:
            outgoing.close()
            raise
    except APIError as e:
        if upstream_name in service.upstreams:
            metrics.proxy_requests.labels(upstream=upstream_name, status=str(e.status)).inc()
        raise
    metrics.proxy_requests.labels(upstream=upstream_name, status=str(upstream.status)).inc()
    metrics.proxy_latency.labels(upstream=upstream_name).observe(time.perf_counter() - started)
    status = f"{upstream.status} {upstream.reason or ''}".strip()
    headers = service.response_headers(upstream)
    small = service.small_body(upstream, request.method)
    if small is not None:
        outgoing.close()
        return Response(status=status, headerlist=headers, body=small)
    return Response(status=status, headerlist=headers, app_iter=StreamedBody(upstream, outgoing))
