"""An upstream API that records exactly what reached it and answers whatever a test asks for."""

import hashlib
import threading


class FakeUpstream:
    def __init__(self):
        self.stop = threading.Event()
        self.reset()

    def reset(self):
        self.seen = []  # one dict per request
        self.status = "200 OK"
        self.headers = [("Content-Type", "application/json")]
        self.body = b'{"ok": true}'
        self.stream_bytes = 0  # when set, answer that many bytes in chunks
        self.delay = 0.0
        self.refuse_tokens = set()  # access tokens answered with 401
        self.always_401 = False
        self.challenge = None  # a WWW-Authenticate value to answer every request with, in a 401

    def __call__(self, environ, start_response):
        digest, size = hashlib.sha256(), 0
        body = environ["wsgi.input"]
        while chunk := body.read(64 * 1024):
            digest.update(chunk)
            size += len(chunk)
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        self.seen.append(
            {
                "method": environ["REQUEST_METHOD"],
                "uri": environ.get("REQUEST_URI"),
                "path": environ["PATH_INFO"],
                "query": environ.get("QUERY_STRING", ""),
                "headers": headers,
                "body_bytes": size,
                "body_sha256": digest.hexdigest(),
            }
        )
        if self.delay:
            self.stop.wait(self.delay)
        token = headers.get("authorization", "").removeprefix("Bearer ")
        if self.challenge is not None:
            start_response("401 Unauthorized", [("WWW-Authenticate", self.challenge), ("Content-Type", "application/json")])
            return [b'{"upstream": "wants a stronger sign-in"}']
        if self.always_401 or token in self.refuse_tokens:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Bearer error="invalid_token"'), ("Content-Type", "application/json")])
            return [b'{"upstream": "refused"}']
        if self.stream_bytes:
            total = self.stream_bytes
            start_response(self.status, [("Content-Type", "application/octet-stream"), ("Content-Length", str(total))])
            return self._chunks(total)
        start_response(self.status, list(self.headers))
        return [self.body]

    @staticmethod
    def _chunks(total):
        block = bytes(range(256)) * 256
        while total > 0:
            piece = block[: min(len(block), total)]
            total -= len(piece)
            yield piece
