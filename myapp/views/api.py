"""The BFF proxy's thin view: the service checks, forwards and streams; this counts."""

import functools
import logging
import time

from pyramid.response import Response
from pyramid.view import view_config

from myapp.errors import APIError, ErrorCode
from myapp.resources import Permission
from myapp.services.proxy import StreamedBody

log = logging.getLogger(__name__)


@view_config(route_name="api", permission=Permission.USE_API, json_csrf=True, require_csrf=False)
def proxy(request):
    started = time.perf_counter()
    upstream_name = request.matchdict["upstream"]
    service = request.services.proxy
    metrics = request.services.metrics
    try:
        configured = service.upstreams.get(upstream_name)
        if configured is not None and not configured.accepts(request.identity.session.provider):
            raise APIError(403, ErrorCode.WRONG_PROVIDER, "This API is not available to accounts of your sign-in provider.")
        outgoing = service.prepare(request.environ, upstream_name=upstream_name, client_addr=request.remote_addr)
        try:
            upstream = service.exchange(outgoing, functools.partial(request.access_token, upstream=upstream_name))
        except BaseException:
            outgoing.close()
            raise
    except APIError as e:
        if upstream_name in service.upstreams:
            metrics.proxy_requests.labels(upstream=upstream_name, status=str(e.status)).inc()
        raise
    metrics.proxy_requests.labels(upstream=upstream_name, status=str(upstream.status)).inc()
    metrics.proxy_latency.labels(upstream=upstream_name).observe(time.perf_counter() - started)
    try:
        status = f"{upstream.status} {upstream.reason or ''}".strip()
        headers = service.response_headers(upstream)
        small = service.small_body(upstream, request.method)
        if small is not None:
            outgoing.close()
            return Response(status=status, headerlist=headers, body=small)
        return Response(status=status, headerlist=headers, app_iter=StreamedBody(upstream, outgoing))
    except APIError:
        outgoing.close()
        raise
    except Exception:  # whatever the upstream sent, it never becomes a 500
        log.warning("an answer of upstream %s could not be passed on", upstream_name, exc_info=True)
        upstream.close()
        outgoing.close()
        raise APIError(502, ErrorCode.UPSTREAM_UNAVAILABLE, "The API's answer could not be passed on.") from None
