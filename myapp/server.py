"""The server for myapp: waitress, with a stricter reading of request framing.

``[server:main] use = egg:myapp#waitress`` in an ini file takes every waitress setting, as
``egg:waitress#main`` does, and differs in two ways:

- A request that carries both ``Content-Length`` and ``Transfer-Encoding`` is refused with 400 and
  its connection closed. Waitress would read the chunked body and keep the connection open for
  what follows; a front proxy that believed the other length could then smuggle a request through
  (RFC 9112 section 6.1: the server MUST close the connection after such a request).
- Waitress settings that cannot work together (``trusted_proxy_headers`` or
  ``trusted_proxy_count`` without ``trusted_proxy``, an unknown setting) stop it with one line,
  not a traceback.
"""

import logging
import sys

import waitress
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.server import BaseWSGIServer

log = logging.getLogger(__name__)


class StrictRequestParser(HTTPRequestParser):
    def parse_header(self, header_plus):
        super().parse_header(header_plus)
        # Waitress has taken Transfer-Encoding out of the headers by now and decided on chunked.
        if self.chunked and "CONTENT_LENGTH" in self.headers:
            raise ParsingError("A request may not carry both Content-Length and Transfer-Encoding")


class StrictChannel(HTTPChannel):
    parser_class = StrictRequestParser


def create_server(app, **settings):
    """``waitress.create_server`` whose connections read requests with :class:`StrictRequestParser`."""
    server = waitress.create_server(app, **settings)
    for dispatcher in list(server._map.values()):
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = StrictChannel
    return server


def serve_paste(app, global_conf, **settings):
    """The ``paste.server_runner`` (``use = egg:myapp#waitress``)."""
    try:
        server = create_server(app, **settings)
    except (ValueError, TypeError, OSError) as e:
        print(f"myapp: [server:main]: {str(e).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig()
    server.print_listen("Serving on http://{}:{}")
    server.run()
    return 0
