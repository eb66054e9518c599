"""The server for myapp: waitress, with a stricter reading of request framing.

``[server:main] use = egg:myapp#waitress`` in an ini file takes every waitress setting, as
``egg:waitress#main`` does, and differs in these ways:

- A request that carries both ``Content-Length`` and ``Transfer-Encoding``, or an HTTP/1.0 request
  that carries ``Transfer-Encoding`` (which waitress ignores there), is refused with 400 and
  its connection closed. Waitress would read the chunked body and keep the connection open for
  what follows; a front proxy that believed the other length could then smuggle a request through
  (RFC 9112 section 6.1: the server MUST close the connection after such a request). So is one
  whose ``Transfer-Encoding`` is not one line applying chunked once, and last (RFC 9112 sections
  6.1 and 6.3): ``chunked, chunked``, two lines of it, ``chunked,`` and an empty one, which
  waitress read as chunked once or as none and kept the connection, and ``chunked, gzip``,
  which it answered 501. So is a header line folded onto the next (RFC 9112 section 5.2), which
  waitress joined: a proxy in front that does not join them reads another framing.
- A head with a line ended by LF alone, or a chunked body whose last size line or trailers end so,
  is refused (400, the connection closed) as soon as that LF comes
  (:meth:`StrictRequestParser.received`): waitress ends each only at CRLF, and held such a request
  unanswered until ``channel_timeout`` (or took a request behind such trailers for more of them).
- ``max_request_body_size``, unless set, is one more than the largest body any of the app's routes
  takes (:func:`create_server`), where waitress's default read up to 1 GiB for the app to refuse;
  a path under a prefix whose routes take less (the proxy's ``/api/``: ``max_body_bytes``) is held
  to that (:meth:`StrictRequestParser._limit_by_path`). Either way a larger ``Content-Length`` is
  refused (413) from the head, and a chunked body is held
  to it by its bytes, its framing (which waitress counted with them) to an eighth of it (at least
  64 KiB: :func:`_framing_limit`), each size
  line to :data:`MAX_CHUNK_LINE` and its trailers to ``max_request_header_size`` (waitress gathered
  both in memory, any length, searched again at every read), and each line of its framing must end
  with CRLF however it is read (:class:`StrictChunkedReceiver`).
- What waitress answers itself (a request it could not read: its framing, a length, a header,
  a head too large; or an app that failed before answering) carries this site's hardening
  headers, as every answer of the app does, and is SPEC.md's JSON error for a program (``/api/``
  and the JSON ``/auth/`` routes) instead of plain text.
- Waitress settings that cannot work together (``trusted_proxy_headers`` or
  ``trusted_proxy_count`` without ``trusted_proxy``, an unknown setting), or that waitress takes but
  cannot serve with (:func:`refuse_unworkable`), stop it with one line, not a traceback.
- A request that expects ``100-continue`` but has been read whole (no body, or a head it refused)
  gets its answer at once: waitress sent 100 Continue and never answered it. One read while the
  request before it was served gets its 100 Continue once (:meth:`StrictChannel.handle_write`):
  waitress's loop could send it again, racing the request's thread.
- An answer written whole at once (its head and all of the body its ``Content-Length`` gives, or
  a status without a body) is sent in one piece (:class:`WholeAnswerTask`), not write by write:
  by the request's thread at once when it is the only one at work, else by waitress's loop once
  the request's thread is done with it (an app that goes on working after it, a slow
  ``close()``, then holds it back until then). An answer written in parts (the proxy's stream)
  goes as each part is written, as before.
- An HTTP/1.1 answer 204 or 304 keeps its connection open
  (:meth:`WholeAnswerTask.build_response_header`): waitress closed after any answer without a
  ``Content-Length``, which these may not carry though they end with their head; and nothing
  follows that head (a ``wsgi.file_wrapper`` body, which waitress sends whatever the status, is
  dropped: :meth:`StrictChannel.write_soon`).
- SIGTERM stops it as Ctrl+C does (:func:`stopped_by_sigterm`): the process exits normally, and
  OpenTelemetry sends the spans it still holds.

And it takes one setting of its own, ``cpu_affinity`` (Linux): ``off`` (the default), ``auto``, or
a CPU's number. Only one of a process's threads runs Python at a time, and handing that turn to a
thread that last ran on another CPU costs far more than the work itself (docs/benchmarks.md); so
held to one CPU, a process serves more calls for less CPU each. ``auto`` takes a CPU that no other
myapp process on the machine holds, one of each core first (:func:`cpu_order`), leaves the last
one to the rest of the machine, takes none under a CPU quota (:func:`cpu_quota`), and lets go of
its CPU when other work crowds it while another of its CPUs stands idle (:class:`CrowdingWatch`:
containers that share the machine's CPUs cannot see each other's claims and may take the same
one); a number takes that one and keeps it.
"""

import contextlib
import copy
import errno
import json
import logging
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import waitress
from waitress import wasyncore
from waitress.buffers import ReadOnlyFileBasedBuffer
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError, get_header_lines
from waitress.receiver import ChunkedReceiver
from waitress.rfc7230 import HEADER_FIELD_RE
from waitress.server import BaseWSGIServer, MultiSocketServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask
from waitress.utilities import BadRequest, RequestEntityTooLarge

from myapp.errors import ErrorCode
from myapp.headers import SERVER_ANSWER, SERVER_HEADERS
from myapp.request import BODY_LIMITS, LARGEST_BODY
from myapp.routes import is_json_path
from myapp.services.proxy import AnswerCutShort

log = logging.getLogger(__name__)


class StrictRequestParser(HTTPRequestParser):
    # The bytes received up to the end of the request line, kept (not read) before anything else
    # can fail (a header, a length), so that the answer to a request that could not be read is
    # in its caller's language (:attr:`target_path`). Blank lines before it are skipped, as
    # waitress skips them (RFC 9112 section 2.2).
    head_start = b""

    # A chunked body's limits (parse_header): its decoded bytes are held to max_request_body_size
    # as set, and its framing (sizes, line ends, trailers), which waitress counts with them, to
    # _framing_limit() of it.
    chunked_limit = framing_limit = None

    def received(self, data):
        if self.completed:
            return 0
        if self.body_rcv is None:
            if b"\n" not in self.head_start.lstrip():
                self.head_start += data
            if self._has_bare_lf(data):
                # As waitress says of a head too large: the defaults of a request line, then the error.
                self.parse_header(b"GET / HTTP/1.0\r\n")
                self._refuse(BadRequest("Every line of a request's head must end with CRLF"))
                self.headers_finished = True
                return len(data)
        consumed = super().received(data)
        if self.chunked_limit is not None and (self.error is None or isinstance(self.error, RequestEntityTooLarge)):
            # Its bytes and its framing, each against its own limit (its lines are checked as
            # they come by StrictChunkedReceiver); waitress's own count is a backstop, in our words.
            too_large = self._too_large_chunked()
            if too_large is not None:
                self._refuse(too_large)
        elif isinstance(self.error, RequestEntityTooLarge):  # waitress's, by Content-Length: in the proxy's words
            self.error = RequestEntityTooLarge(_too_large(self.adj.max_request_body_size))
        return consumed

    def _refuse(self, error) -> None:
        self.error = error
        self.completed = True

    def _has_bare_lf(self, data: bytes) -> bool:
        """Whether the head received so far, with ``data``, holds a line ended by LF alone, after
        the blank lines before it, which waitress skips (RFC 9112 section 2.2 lets a recipient read
        LF as a line's end, or not). Waitress ends a head only at CRLF CRLF, and refuses one with a
        bare LF only then: a head ended by LF alone was never answered, its connection held until
        ``channel_timeout``, where a front proxy that reads LF as a line's end and passes the bytes
        on waits for an answer. Refused (400, the connection closed) as soon as that LF comes."""
        # Nearly every read: each LF in it after a CR, the first one's maybe at the end of the last
        # read; counted no further than the head's end, if it is in this read (the rest is a body,
        # or the requests after it: helper-126, every byte of a read counted for each of them).
        end = data.find(b"\r\n\r\n")
        part = data if end < 0 else data[: end + 2]
        if part.count(b"\n") == part.count(b"\r\n") + (part[:1] == b"\n" and self.header_plus[-1:] == b"\r"):
            return False
        head = self.header_plus + data
        end = head.find(b"\r\n\r\n")
        return _BARE_LF.search((head if end < 0 else head[: end + 2]).lstrip()) is not None

    def _too_large_chunked(self) -> RequestEntityTooLarge | None:
        decoded = len(self.body_rcv)
        if decoded >= self.chunked_limit:
            return RequestEntityTooLarge(_too_large(self.chunked_limit))
        if self.body_bytes_received - decoded >= self.framing_limit:
            return RequestEntityTooLarge(f"The request body's chunked framing is larger than {self.framing_limit - 1} bytes.")
        return None

    def _limit_by_path(self) -> None:
        """Hold the body to the largest the app's paths under the request's take, when that is
        less (``adj.body_limits``: its registry's :data:`BODY_LIMITS`, longest prefix first): an
        upload to the proxy over its ``max_body_bytes`` is refused from its head, in the proxy's
        words, not invited (100-continue) and read whole for the proxy to refuse, nor refused in
        the words of the largest body another route takes (helper-130). Read from the request
        line's path as received, less waitress's ``url_prefix``: a path the app reads otherwise
        (%-escaped, say) keeps the app-wide limit, and the app's own check."""
        limits = getattr(self.adj, "body_limits", None)
        if not limits:
            return
        path = self.app_path
        for prefix, largest in limits:
            if path.startswith(prefix):
                if largest + 1 < self.adj.max_request_body_size:  # waitress refuses one of the limit or more
                    self.adj = copy.copy(self.adj)
                    self.adj.max_request_body_size = largest + 1
                return

    @property
    def target_path(self) -> str:
        """The path of the request line, as far as it was received ("" until its target begins)."""
        return _request_line_path(self.head_start)

    @property
    def app_path(self) -> str:
        """:attr:`target_path` as the app reads it: less waitress's ``url_prefix`` (a mount)."""
        path, mount = self.target_path, self.adj.url_prefix
        if mount and (path == mount or path.startswith(mount + "/")):
            return path[len(mount) :] or "/"
        return path

    def parse_header(self, header_plus):
        # RFC 9112 section 5.2: obsolete line folding in a request is refused, or unfolded. Waitress
        # unfolds it; a proxy in front that does not reads another Transfer-Encoding or length.
        if b"\r\n " in header_plus or b"\r\n\t" in header_plus:
            raise ParsingError("A header line may not be folded onto the next")
        _refuse_ambiguous_transfer_encoding(header_plus)
        super().parse_header(header_plus)
        # Waitress has taken Transfer-Encoding out of the headers by now and decided on chunked.
        if self.chunked and "CONTENT_LENGTH" in self.headers:
            raise ParsingError("A request may not carry both Content-Length and Transfer-Encoding")
        # ... in HTTP/1.1 only: in HTTP/1.0 it leaves it there, and reads the body by its
        # Content-Length or as none, and what the client sent chunked as the next request.
        # RFC 9112 section 6.1: such framing is faulty, and the connection closes after it.
        if "TRANSFER_ENCODING" in self.headers:
            raise ParsingError("An HTTP/1.0 request may not carry Transfer-Encoding")
        # RFC 9112 section 3.2: an HTTP/1.1 request without Host, or any with more than one, is
        # answered 400 (waitress served the one, and joined the other's lines with a comma, which
        # no host holds).
        host = self.headers.get("HOST")
        if host is None and self.version == "1.1":
            raise ParsingError("A request of this version must carry Host")
        if host is not None and "," in host:
            raise ParsingError("A request may carry one Host")
        if self.chunked or self.content_length > 0:
            self._limit_by_path()
        if self.chunked:
            # Waitress holds what it receives of a chunked body, framing and all, to
            # max_request_body_size: a body the app takes, sent in chunks, was refused short of
            # it. Its decoded bytes are held to it here (received()), and its framing to
            # _framing_limit(); waitress's own count, at the two together, is a backstop.
            self.chunked_limit = self.adj.max_request_body_size
            self.framing_limit = _framing_limit(self.chunked_limit)
            self.adj = copy.copy(self.adj)
            self.adj.max_request_body_size = self.chunked_limit + self.framing_limit
            self.body_rcv = StrictChunkedReceiver(self.body_rcv.buf, self.adj.max_request_header_size)


_BARE_LF = re.compile(rb"(?<!\r)\n")
# The longest chunk size line taken, extensions and all (waitress took any, gathered in memory).
MAX_CHUNK_LINE = 4096


class StrictChunkedReceiver(ChunkedReceiver):
    """Waitress's reader of a chunked body, given one piece of it at a time (a chunk's bytes, the
    CRLF after them, a size line up to its CRLF, the trailers), so that each line of its framing is
    checked whole, whatever reads it came in:

    - a line holding an LF that is not part of its CRLF is refused: waitress's patterns for a size
      line end with ``$``, which matches before a final LF, so ``5\\n`` before its CRLF was a size
      (helper-126: a chunked body a front proxy that ends lines at LF read otherwise hid a request
      that was served), and it waited for CRLF after trailers ended by LF alone (a connection held
      until ``channel_timeout``, or a request behind them taken for more trailers: helper-124);
    - a size line over :data:`MAX_CHUNK_LINE` and trailers over ``max_request_header_size`` are
      refused: waitress gathered both in memory, any length, searched again at every read;
    - an empty size line, and trailers that are not header fields, are refused: waitress skipped
      the one and took any lines up to a blank one for the other (helper-128).

    Refused with 400, the connection closed, as waitress refuses a size it cannot read."""

    def __init__(self, buf, max_trailers: int):
        super().__init__(buf)
        self.max_trailers = max_trailers

    def received(self, s):
        pos, size = 0, len(s)
        while pos < size and not self.completed and self.error is None:
            if self.chunk_remainder > 0:
                end = pos + self.chunk_remainder
            elif self.validate_chunk_end:
                end = pos + 2 - len(self.chunk_end)
            else:
                end = self._framing_end(s, pos)
                if end is None:
                    self.all_chunks_received = True  # as waitress marks a body it refuses
                    return size
            piece = s if pos == 0 and end >= size else s[pos:end]
            taken = super().received(piece)
            pos += taken
            if taken < len(piece):  # the trailers ended within it: the rest is the next request's
                break
        # Refused: the rest of the read is taken with it, as waitress takes it.
        return size if self.error is not None else pos

    def _framing_end(self, s: bytes, pos: int) -> int | None:
        """Where in ``s`` the size line (its CRLF included) or the trailers (their last CRLF
        included) that begin at ``pos`` end, ``len(s)`` when not in it; None, with ``error`` set,
        when they are refused. Searched no further than the longest taken, and the rest of the
        read never copied."""
        trailers = self.all_chunks_received
        held = self.trailer if trailers else self.control_line
        limit = self.max_trailers if trailers else MAX_CHUNK_LINE + 2  # with their CRLFs
        if held:  # begun in an earlier read (rare): what was held is checked already but its last byte
            text, start, scan, shift = held + s[pos : pos + limit], 0, len(held) - 1, pos - len(held)
        else:
            text, start, scan, shift = s, pos, pos, 0
        stop = min(len(text), start + limit + 1)
        if trailers and text.startswith(b"\r\n", start):
            end = start + 2
        else:
            found = text.find(b"\r\n\r\n" if trailers else b"\r\n", max(scan - 3, start), stop)
            end = found + (4 if trailers else 2) if found >= 0 else None
        checked = stop if end is None else end
        if checked - start > limit:
            self.error = BadRequest("A chunked body's size line or trailers are too long")
        elif _BARE_LF.search(text, scan, checked) if trailers else text.find(b"\n", scan, checked - (end is not None)) >= 0:
            self.error = BadRequest("Every line of a chunked body's framing must end with CRLF")
        elif end == start + 2 and not trailers:
            # RFC 9112 section 7.1: a size has a digit. Waitress skipped a blank line where one
            # should be; a reader that takes it for 0 ends the body there (helper-128).
            self.error = BadRequest("A chunk's size line is empty")
        elif trailers and end is not None and end > start + 2 and not all(
            HEADER_FIELD_RE.match(field) for field in text[start : end - 4].split(b"\r\n")
        ):
            # Waitress took any lines up to a blank one for trailers, a request among them (after a
            # last chunk, a front proxy that ends the body there sees that request; helper-128).
            self.error = BadRequest("A chunked body's trailers must be header fields")
        else:
            return len(s) if end is None else end + shift
        return None


def _framing_limit(limit: int) -> int:
    """The framing (sizes, extensions, line ends, trailers) a chunked body under ``limit`` may carry:
    an eighth of it, and at least 64 KiB. A chunk of 64 bytes or more carries less; one-byte chunks
    cost the server's loop about a microsecond a byte, so that a body of them costs it at most
    about as many seconds as its limit has MiB, less than waitress's own count let it cost."""
    return limit // 8 + 65536


def _too_large(limit: int) -> str:
    """What a 413 of the server says of a body of ``limit`` bytes or more (waitress's limit), in the
    proxy's words."""
    return f"The request body is larger than {limit - 1} bytes."


def _refuse_ambiguous_transfer_encoding(header_plus: bytes) -> None:
    """Refuse (400, and the connection closes) a request whose Transfer-Encoding is not one line
    that applies chunked once, and last (RFC 9112 sections 6.1 and 6.3), read as waitress reads
    its lines. Waitress joins repeated lines into one list and drops empty elements, so that
    "chunked, chunked", two lines of chunked, "chunked," and ", chunked" were all chunked once to
    it, and an empty Transfer-Encoding was none; a proxy in front that reads any of them
    otherwise (strict servers, Go's among them, take "chunked" alone) sees other requests than
    the app. A coding before a last chunked ("gzip, chunked") stays waitress's 501."""
    request_line_end = header_plus.find(b"\r\n")
    if request_line_end < 0 or b"transfer-encoding" not in header_plus.lower():
        return  # waitress refuses the one; the other is nearly every request, read no further
    values = []
    for line in get_header_lines(header_plus[request_line_end + 2 :]):
        field = HEADER_FIELD_RE.match(line)
        if field is not None and field.group("name").lower() == b"transfer-encoding":
            values.append(field.group("value"))
    if not values:
        return
    if len(values) > 1:
        raise ParsingError("Transfer-Encoding may be sent once")
    codings = [coding.strip(b" \t").lower() for coding in values[0].split(b",")]
    if codings[-1] != b"chunked" or codings.count(b"chunked") > 1 or b"" in codings:
        raise ParsingError("Transfer-Encoding must apply chunked once, and last")


class HardenedErrorTask(ErrorTask):
    """Waitress's own answer, to a request it could not read (framing, a length, a header) or
    to an app that failed before answering: with this site's hardening headers, and to a
    program (``/api/``, the JSON ``/auth/`` routes) SPEC.md's JSON error instead of text."""

    def execute(self):
        error = self.request.error
        status, headers, body = error.to_response(self.channel.server.adj.ident)
        path = self.request.app_path
        if not path and self.channel.requests:  # the app failed: waitress answers with a parser of its own
            path = getattr(self.channel.requests[0], "app_path", "")
        if is_json_path(path):
            body = json.dumps(
                {"error": _SERVER_ERROR_CODES.get(error.code, ErrorCode.BAD_REQUEST), "message": error.body},
                separators=(",", ":"),
            ).encode()
            headers = [("Content-Type", "application/json")]
        self.status = status
        # Waitress says HTTP/1.0 when the head failed before it read the version; this server
        # speaks HTTP/1.1, which the status line names (RFC 9110 section 6.2). It closes after.
        self.version = "1.1"
        self.response_headers.extend(headers)
        self.response_headers.extend(getattr(self.channel.server, "answer_headers", SERVER_ANSWER))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


def _request_line_path(head: bytes) -> str:
    """The path of the request line ``head`` starts with, as far as it was received ("" until its
    target begins): a line too long for the server, or one whose spaces are doubled, still says
    where it was going."""
    line = head.lstrip().partition(b"\n")[0]
    parts = line.split()
    if len(parts) < 2:
        return ""
    target = parts[1].split(b"?", 1)[0]
    if not target.startswith(b"/") and b"://" in target:  # the absolute form: the path after the authority
        target = b"/" + target.split(b"://", 1)[1].partition(b"/")[2]
    return target.decode("latin-1")


# Waitress's errors (waitress.utilities): bad request, too large, header fields too large, 500, 501.
_SERVER_ERROR_CODES = {
    400: ErrorCode.BAD_REQUEST, 413: ErrorCode.PAYLOAD_TOO_LARGE, 431: ErrorCode.BAD_REQUEST,
    500: ErrorCode.INTERNAL_ERROR, 501: ErrorCode.HTTP_ERROR,
}


class WholeAnswerTask(WSGITask):
    """An answer written whole at once (its head and all of the body its ``Content-Length`` gives,
    or one with no body) goes in one piece. Waitress's request thread sends each write itself: the
    head, then the body, each a system call that lets Python's lock go and waits for it back, which
    with the other threads running costs a context switch. So while other requests are at work the
    answer is left to the server's loop, to send when the request's thread is done with it: the
    loop sends what every finished request left in one turn (docs/benchmarks.md, "Sent whole by the
    loop"). A request served alone (:func:`serving_alone`) sends its answer from its own thread at
    once, in one piece, as soon as it is written: nothing wants the lock meanwhile, and the loop,
    asleep, would first have to be woken, which the answer waited for (docs/benchmarks.md, "Sent
    at once when served alone"). An answer written in parts (the proxy's stream of a long or
    endless answer) is sent as each part is written, as before."""

    held = False  # written whole, and left to the loop
    _ends_with_its_head = False  # while its head is built: a bodiless answer to keep the connection for
    _ends_with_its_last_chunk = False  # ... and a chunked one

    def build_response_header(self):
        """Waitress's head, except that an HTTP/1.1 answer 204 or 304 keeps the connection: waitress
        closed after any answer without a ``Content-Length``, which these may not carry (RFC 9110
        section 8.6), though each ends with its head (RFC 9112 section 6.3), so every 304 of a
        browser's revalidation (through the proxy, of a static file) and every 204 cost the next
        request a new connection. Nothing may follow such a head: waitress drops what the app
        writes for these statuses, and the channel drops the one body it would still send, a
        ``wsgi.file_wrapper``'s (:meth:`StrictChannel.write_soon`). Not a 1xx, which WSGI cannot
        send as an interim answer (the request's own answer would still be awaited). A request
        whose ``Connection`` names ``close`` still closes."""
        keeps = (
            self.version == "1.1"
            and not self.close_on_finish
            and "close" not in (option.strip().lower() for option in self.request.headers.get("CONNECTION", "").split(","))
        )
        self._ends_with_its_head = keeps and self.status.split(" ", 1)[0] in ("204", "304")
        # So does an answer sent chunked (a body without a Content-Length: the proxy's stream of an
        # upstream's chunked answer, however short), which its last chunk ends (RFC 9112 section
        # 7.1): waitress closed after every one, which cost each chunked call of an API a new
        # connection (helper-130). An answer that fails once begun has no last chunk, and closes
        # (waitress's channel marks it so). Not an answer to HEAD: it ends with its head, where
        # waitress still names chunks and writes the last one, which the next answer on a kept
        # connection would begin with (helper-133); it closes, as before.
        self._ends_with_its_last_chunk = (
            keeps and self.has_body and self.content_length is None and self.request.command != "HEAD"
        )
        try:
            return super().build_response_header()
        finally:
            self.channel.ended_with_head = self._ends_with_its_head
            self._ends_with_its_head = self._ends_with_its_last_chunk = False

    def set_close_on_finish(self) -> None:
        if self._ends_with_its_head or self._ends_with_its_last_chunk:
            return  # waitress's close for the missing Content-Length, the only one asked while the head is built
        super().set_close_on_finish()

    def write(self, data):
        if self.wrote_header or not self._whole(data):
            if self.held and data:
                # The app writes on after its whole answer (past its Content-Length, or a body its
                # status may not have; waitress drops it): the answer goes now, not when the app
                # is done, which an iterable that never ends never is.
                self.held = False
                self.channel.server.pull_trigger()
            return super().write(data)
        channel = self.channel
        # Waitress's write_soon sends at once from this thread when its buffer holds send_bytes
        # (1 by default); this write leaves it to the loop, which service() wakes when the request
        # is done. The two settings differ in nothing else: the loop may read either meanwhile.
        channel.adj = channel.server.later_adj
        try:
            super().write(data)
        finally:
            channel.adj = channel.server.adj
        if not serving_alone(channel.server.task_dispatcher):
            self.held = True
            return
        # As waitress's write_soon sends from this thread (under the channel's lock, which its
        # loop takes too); what the socket would not take yet is left to the loop, woken for it.
        with channel.outbuf_lock:
            if not channel.connected:
                # Closed by the loop since the write (the client went away): as write_soon says so.
                raise ClientDisconnected
            flushed, failed = channel._flush_exception(channel._flush_some, do_close=False)
            if failed or not flushed or channel.total_outbufs_len:
                channel.server.pull_trigger()

    def _whole(self, data: bytes) -> bool:
        if not self.has_body:
            return True
        return self.content_length is not None and not self.chunked_response and len(data) >= self.content_length


def serving_alone(dispatcher) -> bool:
    """Whether the calling request's thread is the only one of the server's at work, with no
    request waiting for a thread. Read without the dispatcher's lock: a hint, which a request read
    the next moment makes stale; either answer sends the answer whole and in order. A dispatcher
    that keeps no such count (not waitress's) is never alone: its answers go by the loop."""
    pools = getattr(dispatcher, "pools", (dispatcher,))
    try:
        return sum(pool.active_count for pool in pools) <= 1 and not any(pool.queue for pool in pools)
    except AttributeError:
        return False


class StrictChannel(HTTPChannel):
    parser_class = StrictRequestParser
    error_task_class = HardenedErrorTask
    task_class = WholeAnswerTask
    # The answer whose head was written last ends with it, its connection kept (204, 304:
    # WholeAnswerTask.build_response_header).
    ended_with_head = False

    def write_soon(self, data):
        """Waitress's, except that a ``wsgi.file_wrapper`` body after a head that ends the answer
        is closed, not sent: waitress sends one whatever the status, and on the connection kept
        open its bytes would be read as the answer to the next request, whoever sent it."""
        if self.ended_with_head and isinstance(data, ReadOnlyFileBasedBuffer):
            data.close()
            return 0
        return super().write_soon(data)

    def send_continue(self):
        """``Expect: 100-continue`` on a request read whole already (no body, or a head that
        waitress refused: its length, its framing, its size) is answered with its final status at
        once (RFC 9110 section 10.1.1), never 100. Waitress sent 100 Continue and then marked such
        a request unread: no more bytes came, no answer went, and the connection hung until
        ``channel_timeout``; an upload too large was invited all the same."""
        if self.request is not None and self.request.completed:
            self.request.expect_continue = False
            return
        super().send_continue()

    def handle_write(self):
        """Waitress's loop sends without the channel's lock once no request is under way; but the
        request's thread, at the end of ``service()``, may still send 100 Continue to the request
        read meanwhile, and with it what the answer before left to the loop (:class:`WholeAnswerTask`),
        under the lock: both sent the same bytes, the answer went twice, and the thread failed. (In
        3 s of 4 connections each pipelining two GETs and a POST that expects 100-continue, 3 got
        bytes twice: the answer; on waitress alone, the 100 Continue. None with the lock.) The loop
        waits for the lock there: the thread holds it only while it sends what it can."""
        if self.requests:
            return super().handle_write()
        with self.outbuf_lock:
            return super().handle_write()


class LoggedAlready(logging.Filter):
    """Keeps waitress from logging as a traceback an answer the proxy cut short on purpose: the
    proxy logged it as one line, and waitress's traceback would say nothing more."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], AnswerCutShort))


# Where an app's registry lists the path prefixes it serves on threads of their own: those of
# the development stack, which the app calls in the same process (its provider, its API).
OWN_THREADS = "myapp.server.own_threads"


class PrefixDispatcher:
    """Waitress's task dispatcher for an app that calls itself over HTTP: a request whose path
    starts with one of ``prefixes`` is served by threads of its own, any other by the app's.

    On one pool, as many calls at once as there are threads, each waiting for its call to the
    development API (or for the refresh that waits for the development provider), leave none to
    answer them: every call waited out its timeout (24 at once on 8 threads: 16 answered 504 after
    30 to 60 s).
    """

    def __init__(self, app_threads: ThreadedTaskDispatcher, prefixes: tuple[str, ...]):
        self.app_threads = app_threads
        self.own_threads = ThreadedTaskDispatcher()
        self.pools = (app_threads, self.own_threads)  # serving_alone() counts both
        self.prefixes = prefixes

    def set_thread_count(self, count: int) -> None:
        self.app_threads.set_thread_count(count)
        self.own_threads.set_thread_count(count)

    def add_task(self, channel) -> None:
        requests = getattr(channel, "requests", None)
        path = (getattr(requests[0], "path", None) or "") if requests else ""
        (self.own_threads if path.startswith(self.prefixes) else self.app_threads).add_task(channel)

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        app_done = self.app_threads.shutdown(cancel_pending, timeout)
        return self.own_threads.shutdown(cancel_pending, timeout) and app_done


def create_server(app, **settings):
    """``waitress.create_server`` whose connections read requests with :class:`StrictRequestParser`
    and answer what they cannot read with the app's hardening headers (its registry's
    ``SERVER_HEADERS``), and which serves the paths the app lists under :data:`OWN_THREADS` on
    threads of their own (:class:`PrefixDispatcher`), as many as the app's.

    Unless ``max_request_body_size`` is set, it is one more than the largest body the app takes (its
    registry's :data:`LARGEST_BODY`), and a request to a path under a prefix of its
    :data:`BODY_LIMITS` is held to that prefix's, when less: a larger one is refused (413) as soon
    as its head says so, before any of it is read, and one that expects 100-continue is not
    invited to send it.
    Waitress's own default (1 GiB) had the whole body read into a file first, for the app to refuse:
    a client uploading a file too large for the proxy sent all of it for nothing."""
    waitress_log = logging.getLogger("waitress")
    if not any(isinstance(f, LoggedAlready) for f in waitress_log.filters):
        waitress_log.addFilter(LoggedAlready())
    registry = getattr(app, "registry", None) or {}
    largest = registry.get(LARGEST_BODY)
    if largest is not None and settings.get("max_request_body_size") is None:
        # Waitress refuses a body of max_request_body_size bytes or more.
        settings = {**settings, "max_request_body_size": largest + 1}
    server = waitress.create_server(app, **settings)
    servers = [dispatcher for dispatcher in socket_map(server).values() if isinstance(dispatcher, BaseWSGIServer)]
    # StrictRequestParser._limit_by_path's, on the Adjustments its parsers are given.
    body_limits = tuple(sorted(registry.get(BODY_LIMITS, {}).items(), key=lambda item: -len(item[0])))
    for dispatcher in servers:
        dispatcher.adj.body_limits = body_limits
        dispatcher.channel_class = StrictChannel
        dispatcher.later_adj = copy.copy(dispatcher.adj)  # WholeAnswerTask's
        dispatcher.later_adj.send_bytes = sys.maxsize
        # What its own answers carry: HSTS among them when the app's cookie is Secure.
        dispatcher.answer_headers = tuple(registry.get(SERVER_HEADERS, SERVER_ANSWER))
    prefixes = tuple(registry.get(OWN_THREADS, ()))
    if prefixes:
        routing = PrefixDispatcher(server.task_dispatcher, prefixes)
        routing.own_threads.set_thread_count(server.adj.threads)
        for holder in {id(s): s for s in [server, *servers]}.values():
            holder.task_dispatcher = routing
    return server


def socket_map(server) -> dict:
    """What waitress's loop watches: the server's own sockets (each listening socket and its wake-up
    pipe), then its connections. One socket: that socket's server, whose map is ``_map``; several
    (``listen`` with more than one address, ``*:8080`` among them): a MultiSocketServer's ``map``."""
    return server.map if isinstance(server, MultiSocketServer) else server._map


def refuse_unworkable_limit(server) -> None:
    """Raise ValueError when ``connection_limit`` leaves no room for a connection: waitress counts
    the server's own sockets against it, so a limit at or below their number took none, listening
    and logging "reached the connection limit" (1 and 2 with one address, as 0 and -1)."""
    own, limit = len(socket_map(server)), server.adj.connection_limit
    if limit <= own:
        raise ValueError(f"connection_limit = {limit}: must be more than {own}, the server's own sockets")


# A CPU claimed by ``auto`` (or named) is an abstract socket of this name, bound while the process
# lives: one per CPU and network namespace, freed by the kernel however the process ends.
CLAIM_PREFIX = "myapp-cpu-"
CGROUP_ROOT = Path("/sys/fs/cgroup")
_claims: list[socket.socket] = []


def parse_cpu_affinity(value: str) -> str | int | None:
    """``cpu_affinity`` as written: None for ``off``, ``"auto"``, or the number of a CPU this
    process may use. Anything else is refused before the server starts."""
    value = value.strip().lower()
    if value in ("", "off"):
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("cpu_affinity needs Linux (leave it off here)")
    if value == "auto":
        return value
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"cpu_affinity: {value!r} is not off, auto or a CPU's number")
    allowed = os.sched_getaffinity(0)
    if int(value) not in allowed:
        raise ValueError(f"cpu_affinity: CPU {int(value)} is not one this process may use ({_listed(allowed)})")
    return int(value)


def hold_to_one_cpu(choice: str | int) -> tuple[int | None, str]:
    """Hold every thread of this process to one CPU (``choice`` as :func:`parse_cpu_affinity`
    returned it), so that the threads it starts later are held too: which CPU (None when ``auto``
    finds none to take), and a line saying so. A system call that fails raises an ``OSError``
    naming the setting."""
    try:
        return _hold(choice)
    except OSError as e:
        raise OSError(f"cpu_affinity = {choice}: {_why(e)}") from e


def _hold(choice: str | int) -> tuple[int | None, str]:
    if choice != "auto":
        claim_cpu(choice)  # so that an ``auto`` process leaves it alone; held either way
        _hold_threads({choice})
        return choice, f"held to CPU {choice} (cpu_affinity = {choice})"
    allowed = os.sched_getaffinity(0)
    if len(allowed) == 1:
        [cpu] = allowed
        claim_cpu(cpu)  # held already, by whoever gave it this one CPU
        return cpu, f"held to CPU {cpu} (cpu_affinity = auto: the only CPU it may use)"
    quota = cpu_quota()
    if quota:
        return None, (
            f"not held to a CPU (cpu_affinity = auto): {quota}, as containers that share a machine's CPUs "
            "are; give it a CPU of its own (a cpuset) or name one"
        )
    *takes, left = cpu_order(allowed)
    for cpu in takes:
        if claim_cpu(cpu):
            _hold_threads({cpu})
            try:
                CrowdingWatch(cpu, allowed).start()
            except RuntimeError as e:  # no thread to be had (a container's pids.max): held, unwatched
                return cpu, f"held to CPU {cpu} (cpu_affinity = auto; not watched for crowding: {e})"
            return cpu, f"held to CPU {cpu} (cpu_affinity = auto)"
    return None, (
        f"not held to a CPU (cpu_affinity = auto): other myapp processes hold every CPU it takes "
        f"({_listed(set(takes))}; CPU {left} is left to the rest of the machine); run no more processes "
        f"than that, or name a CPU"
    )


def claim_cpu(cpu: int) -> bool:
    """Claim ``cpu`` for this process until it ends; False when another process holds it."""
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0{CLAIM_PREFIX}{cpu}")
    except OSError as e:
        claim.close()
        if e.errno == errno.EADDRINUSE:
            return False
        raise
    _claims.append(claim)
    return True


def _forget_claims() -> None:
    # A forked child must not keep its parent's CPUs claimed after the parent ends.
    while _claims:
        _claims.pop().close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_claims)


def _siblings(cpu: int) -> set[int]:
    try:
        return parse_cpu_list(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text())
    except (OSError, ValueError):
        return {cpu}


def cpu_order(allowed: set[int], siblings: Callable[[int], set[int]] = _siblings) -> list[int]:
    """The order ``auto`` tries CPUs in: one of each core before a second of any (hyperthreads of
    one core share it), and the highest first (the first CPUs take most of the interrupts)."""

    def rank(cpu: int) -> int:
        return sorted((siblings(cpu) & allowed) | {cpu}, reverse=True).index(cpu)

    return sorted(allowed, key=lambda cpu: (rank(cpu), -cpu))


def parse_cpu_list(text: str) -> set[int]:
    """The kernel's CPU list format: ``0-3,8,10-11``."""
    cpus = set()
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def cpu_quota(cgroup_root: Path | None = None, own_cgroup: Path = Path("/proc/self/cgroup")) -> str | None:
    """What limits this process to a share of the machine's CPUs (its cgroup's CPU quota, or an
    ancestor's: cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or None."""
    root = cgroup_root or CGROUP_ROOT
    try:
        lines = own_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, name = root, "cpu.max"
        elif "cpu" in controllers.split(","):
            base, name = root / controllers, "cpu.cfs_quota_us"
        else:
            continue
        cgroup = PurePosixPath(path.lstrip("/"))
        for directory in (cgroup, *cgroup.parents):
            try:
                value = " ".join((base / directory / name).read_text().split())
            except OSError:
                continue
            # No quota: "max 100000" (v2), "-1" (v1).
            if value and value.split()[0] not in ("max", "-1"):
                return f"its cgroup has a CPU quota ({name} {value})"
    return None


def _hold_threads(cpus: set[int]) -> None:
    """Every thread to ``cpus``, this one first: a thread started meanwhile by one not yet held is
    found on the next reading of the list."""
    os.sched_setaffinity(0, cpus)
    held = {threading.get_native_id()}
    while True:
        threads = {int(tid) for tid in os.listdir("/proc/self/task")} - held
        if not threads:
            return
        for tid in threads:
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:  # it ended meanwhile
                pass
        held |= threads


def read_cpu_times(cpus: set[int], stat: Path = Path("/proc/stat")) -> dict[int, tuple[int, int, int]]:
    """For each of ``cpus``, in clock ticks since boot: the time it ran (user, nice, system and
    interrupts), the time it stood idle (idle and iowait), and all its time (steal too)."""
    times = {}
    for line in stat.read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(field) for field in (fields + ["0"] * 8)[:8])
        # Interrupts count as running: a process's own network traffic is handled in them, and its
        # CPU time (time.process_time) includes what was handled in its own context.
        ran, stood = user + nice + system + irq + softirq, idle + iowait
        times[int(name[3:])] = (ran, stood, ran + stood + steal)
    return times


def crowding(cpu: int, before: dict, after: dict, own_ticks: float) -> str | None:
    """Why a process held to ``cpu`` would do better unheld, between two readings of
    :func:`read_cpu_times` in which it ran ``own_ticks``: its CPU stayed busy (idle under 10 % of the
    time), other processes ran on it at least a quarter of the time, and another CPU it may use stood
    idle at least half of the time. Else None."""
    share = {}
    for each in after.keys() & before.keys():  # a CPU taken offline meanwhile is left out
        ran, idle, total = (a - b for a, b in zip(after[each], before[each], strict=True))
        if total > 0:
            share[each] = (ran / total, idle / total, total)
    if cpu not in share:
        return None
    ran, idle, total = share.pop(cpu)
    others = ran - own_ticks / total
    idlest = max(share, key=lambda each: share[each][1], default=None)
    if idle >= 0.1 or others < 0.25 or idlest is None or share[idlest][1] < 0.5:
        return None
    return f"other processes ran on it {others:.0%} of the time while CPU {idlest} stood idle {share[idlest][1]:.0%}"


class CrowdingWatch(threading.Thread):
    """Lets go of the CPU that ``auto`` took, once and for good, when :func:`crowding` finds it
    crowded at ``times`` readings in a row, ``seconds`` apart, and once more after a pause of
    random length: the process then runs on every CPU it may use, as with ``cpu_affinity = off``,
    and gives up its claim. The one case it is for: processes that cannot see each other's claims
    (containers with a network namespace each and no CPU quota) and took the same CPU, under a
    load that needs more than that CPU while another stands idle. ``times`` is drawn from
    ``readings`` and the readings start at a random moment, so that of processes crowding each
    other one usually lets go first and the next finds its CPU no longer crowded. It stops
    watching, and the process stays as it is, when something else moves the process (a changed
    cpuset) or /proc/stat cannot be read or does not show the CPU (lxcfs renumbers them)."""

    seconds = 5.0
    readings = (2, 6)

    def __init__(self, cpu: int, allowed: set[int]):
        super().__init__(name="myapp-cpu-watch", daemon=True)
        self.cpu, self.allowed = cpu, allowed
        self.times = random.randint(*self.readings)
        self.ticks_per_second = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        try:
            reason = self.watch()
        except Exception as e:  # a thread's error would be a traceback: it stays held, and says why
            log.warning("cpu_affinity = auto: no longer watching CPU %d: %s", self.cpu, _why(e))
            return
        if reason is None:
            return
        try:
            _hold_threads(self.allowed)
        except Exception as e:
            log.warning("cpu_affinity = auto: could not let go of CPU %d (%s): %s", self.cpu, reason, _why(e))
            return
        _forget_claims()
        log.warning(
            "let go of CPU %d (cpu_affinity = auto): %s, at %d readings in a row %g s apart and one more; "
            "it now runs on CPUs %s", self.cpu, reason, self.times, self.seconds, _listed(self.allowed),
        )

    def held_as_before(self) -> bool:
        return os.sched_getaffinity(0) == {self.cpu}

    def reading(self) -> tuple[dict, float]:
        times = read_cpu_times(self.allowed)
        if self.cpu not in times:
            raise LookupError(f"/proc/stat does not show CPU {self.cpu}")
        return times, time.process_time()

    def crowded(self, before: tuple[dict, float], after: tuple[dict, float]) -> str | None:
        return crowding(self.cpu, before[0], after[0], (after[1] - before[1]) * self.ticks_per_second)

    def watch(self) -> str | None:
        """Why the CPU is crowded, once it has been ``times`` readings in a row and once more after
        a pause; None when the process was moved by something else meanwhile."""
        crowded = 0
        time.sleep(random.uniform(0, self.seconds))
        before = self.reading()
        while True:
            time.sleep(self.seconds)
            if not self.held_as_before():
                log.warning("cpu_affinity = auto: no longer watching CPU %d: the process was moved to CPUs %s",
                            self.cpu, _listed(os.sched_getaffinity(0)))
                return None
            after = self.reading()
            crowded = crowded + 1 if self.crowded(before, after) else 0
            if crowded >= self.times:
                # Another process that crowded this CPU may have let go meanwhile: a fresh reading
                # after a pause of random length starts after it did.
                time.sleep(random.uniform(0, self.seconds))
                before = self.reading()
                time.sleep(self.seconds)
                after = self.reading()
                reason = self.crowded(before, after)
                if reason:
                    return reason
                crowded = 0
            before = after


def _why(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _listed(cpus: set[int]) -> str:
    return ", ".join(str(cpu) for cpu in sorted(cpus))


def serve_paste(app, global_conf, **settings):
    """The ``paste.server_runner`` (``use = egg:myapp#waitress``). A server that cannot start ends
    the process with status 2 here: pserve takes a SystemExit for an ordinary end and exits 0, which
    systemd's ``Restart=on-failure`` and any monitoring would take for a clean stop."""
    try:
        return serve(app, **settings)
    except SystemExit as e:
        if e.code in (None, 0):
            raise
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(e.code if isinstance(e.code, int) else 1)


# Waitress takes any integer for these: below these, a server starts that never answers (no thread;
# every connection reset by a read of no bytes; every request waiting for an outgoing buffer below
# no bytes, or to read -1 requests ahead), that refuses every request (431 to every head: the
# shortest, "GET / HTTP/1.0" and its blank line, 18 bytes, is refused at 18 or less; 413 to every
# body: it refuses a body of max_request_body_size or more, so 1 refuses all), or whose loop spins
# a CPU without waiting (0 s) or ends in a traceback (a wait below 0 s); backlog below 0 is read as
# 0 by listen(), and far below overflowed it. (connection_limit: refuse_unworkable_limit, once the
# server's own sockets are known.)
AT_LEAST = {
    "threads": 1, "max_request_header_size": 19, "max_request_body_size": 2, "recv_bytes": 1,
    "outbuf_high_watermark": 1, "channel_request_lookahead": 0, "asyncore_loop_timeout": 1, "backlog": 0,
}

# The settings waitress reads with int() (its Adjustments; a test keeps the list in step with it).
# int() also takes "+8" and other scripts' digits ("٨"), which myapp's own settings refuse
# (settings.py, whole numbers); these are held to the same rule, a minus sign allowed so that the
# bounds can name what was given, and what int() cannot read is refused naming its setting.
WHOLE_NUMBER_SETTINGS = (
    "port", "threads", "trusted_proxy_count", "backlog", "recv_bytes", "send_bytes", "outbuf_overflow",
    "outbuf_high_watermark", "inbuf_overflow", "connection_limit", "cleanup_interval", "channel_timeout",
    "max_request_header_size", "max_request_body_size", "asyncore_loop_timeout", "channel_request_lookahead",
)
_WHOLE_NUMBER = re.compile(r"-?[0-9]+(?:_[0-9]+)*")
# What the system can take: listen()'s backlog is a C int, and so is how long the loop waits in
# milliseconds under asyncore_use_poll. Past these the server failed with an OverflowError's
# traceback, at start (backlog = 99999999999) or in its loop (asyncore_loop_timeout; refused under
# select too: 24 days is wait enough). Each read of a connection takes recv_bytes of memory at once
# (99999999999: a MemoryError at every read, every connection reset), and each thread is a thread of
# the system's (threads = 100000 ran out of them at start). Any other number has at most 18 digits,
# as myapp's own (a port: at most 65535, below).
AT_MOST = {"backlog": 2**31 - 1, "asyncore_loop_timeout": 2_147_483, "recv_bytes": 2**30, "threads": 1024}
MAX_DIGITS = 18


def refuse_unworkable(settings: dict) -> None:
    """Raise ValueError, naming the setting, for waitress settings that read but cannot work: a
    number written other than in ASCII digits, one past what the system can take, a count or size
    below 1, or a port past 65535, which the system's resolver wraps round to another
    (``http_port=80810`` listened on 15274). What waitress cannot read at all it refuses itself."""
    for name in WHOLE_NUMBER_SETTINGS:
        value = settings.get(name)
        number = _integer(value, f"{name} = {str(value).strip()}", names=False)
        if number is not None and name in AT_LEAST and number < AT_LEAST[name]:
            raise ValueError(f"{name} = {number}: must be at least {AT_LEAST[name]}")
        if number is not None and name in AT_MOST and number > AT_MOST[name]:
            raise ValueError(f"{name} = {number}: must be at most {AT_MOST[name]}")
    ports = [("port", f"{settings['port']}")] if settings.get("port") is not None else []
    for entry in str(settings.get("listen") or "").split():
        _, colon, port = entry.rpartition(":")
        if colon and "]" not in port:
            ports.append(("listen", f"port {port}"))
    for name, port in ports:
        number = _integer(port.removeprefix("port "), f"{name}: {port}", names=name == "listen")
        if number is not None and not 0 <= number <= 65535:
            raise ValueError(f"{name}: {port} is not a port (0 to 65535)")


def _integer(value, said: str, names: bool) -> int | None:
    """The number ``value`` is (None for none), or ValueError, beginning with ``said``, for one
    written other than as ASCII digits or of more than :data:`MAX_DIGITS`. With ``names`` (a port
    in ``listen``), what int() cannot read is None: a service's name, ``*:http``, for the resolver."""
    if value is None:
        return None
    text = str(value).strip()
    if not _WHOLE_NUMBER.fullmatch(text):
        try:
            int(text)
        except ValueError:
            if names:
                return None
        raise ValueError(f"{said} is not a whole number (digits 0-9)")
    if len(text.lstrip("-").replace("_", "").lstrip("0")) > MAX_DIGITS:
        raise ValueError(f"{said} is too large")
    return int(text)


def serve(app, **settings):
    """Hold the CPU as ``cpu_affinity`` says, then serve with waitress until stopped; a setting
    that cannot work is one line and ``SystemExit(2)``."""
    try:
        refuse_unworkable(settings)
        cpu_affinity = parse_cpu_affinity(settings.pop("cpu_affinity", "off"))
        # Before waitress starts its threads: they inherit the CPU.
        cpu, said = hold_to_one_cpu(cpu_affinity) if cpu_affinity is not None else (None, None)
        server = create_server(app, **settings)
        try:
            refuse_unworkable_limit(server)
        except ValueError:
            server.task_dispatcher.shutdown()
            wasyncore.close_all(socket_map(server))
            raise
    except (ValueError, TypeError, OverflowError, OSError, RuntimeError) as e:
        print(f"myapp: [server:main]: {str(e).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig()
    if said:
        print(f"myapp: {said}", file=sys.stdout if cpu is not None else sys.stderr, flush=True)
    server.print_listen("Serving on http://{}:{}")
    with stopped_by_sigterm():
        server.run()
    return 0


def _stop(signum, frame):
    raise SystemExit(0)


@contextlib.contextmanager
def stopped_by_sigterm():
    """SIGTERM (how systemd, Docker and Kubernetes stop a service) ends the server as Ctrl+C does:
    waitress stops taking requests and lets its threads finish theirs, and the interpreter exits
    normally, running its atexit handlers, among them OpenTelemetry's, which sends the spans its
    batch processor still holds. Python's default for SIGTERM ended the process on the spot, and with
    it the traces of the last seconds of requests. Only in the main thread (signals can be handled
    nowhere else); the handler before is put back once the server stops."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)
