"""The reference proxies of `make bench`: a Pyramid view forwarding to one upstream, with nothing
else — no sessions, no tokens (the caller's Authorization header is passed through), no hygiene.

N uses a pooled urllib3 connection: the floor of any Python proxy on this stack.
R is the same written the way most people would, with ``requests``.
"""

import requests
import urllib3
from pyramid.config import Configurator
from pyramid.response import Response


def make_app(upstream: str, client: str):
    pool = urllib3.PoolManager(maxsize=32)
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))

    def forward_urllib3(request):
        upstream_response = pool.request(
            request.method,
            upstream + request.matchdict["path"],
            headers={"Authorization": request.headers.get("Authorization", "")},
            preload_content=False,
        )
        body = upstream_response.read()
        upstream_response.release_conn()
        return Response(body=body, status=upstream_response.status, content_type=upstream_response.headers.get("Content-Type"))

    def forward_requests(request):
        upstream_response = session.request(
            request.method,
            upstream + request.matchdict["path"],
            headers={"Authorization": request.headers.get("Authorization", "")},
        )
        return Response(
            body=upstream_response.content,
            status=upstream_response.status_code,
            content_type=upstream_response.headers.get("Content-Type"),
        )

    with Configurator() as config:
        config.add_route("forward", "/{path:.*}")
        config.add_view(forward_urllib3 if client == "urllib3" else forward_requests, route_name="forward")
    return config.make_wsgi_app()
