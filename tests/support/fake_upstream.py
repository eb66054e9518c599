"""An upstream API that records exactly what reached it and answers whatever a test asks for."""

import hashlib
import threading

from tests.support.dpop_check import ProofRefused, verify_proof


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
        # DPoP (RFC 9449): proofs are checked as a strict resource server does; a nonce, when set,
        # is demanded; refuse_proofs answers every proof with invalid_dpop_proof.
        self.dpop_nonce = None
        self.refuse_proofs = False
        self.dpop_jtis = set()
        self.dpop_refusals = []
        self.dpop_failures = []  # why each proof was found invalid

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
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme == "DPoP":
            refused = self._dpop_refusal(environ, headers, token)
            if refused is not None:
                self.dpop_refusals.append(refused)
                extra = [("DPoP-Nonce", self.dpop_nonce)] if refused == "use_dpop_nonce" else []
                start_response(
                    "401 Unauthorized",
                    [("WWW-Authenticate", f'DPoP error="{refused}", algs="ES256"'), ("Content-Type", "application/json")] + extra,
                )
                return [b'{"upstream": "proof refused"}']
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

    def _dpop_refusal(self, environ, headers, token) -> str | None:
        if self.refuse_proofs:
            return "invalid_dpop_proof"
        url = f"http://{environ['HTTP_HOST']}{(environ.get('REQUEST_URI') or environ['PATH_INFO']).split('?')[0]}"
        try:
            _, claims, _ = verify_proof(headers.get("dpop", ""), method=environ["REQUEST_METHOD"], url=url, access_token=token)
        except ProofRefused as e:
            self.dpop_failures.append(str(e))
            return "invalid_dpop_proof"
        if claims["jti"] in self.dpop_jtis:
            return "invalid_dpop_proof"  # a replayed proof
        self.dpop_jtis.add(claims["jti"])
        if self.dpop_nonce is not None and claims.get("nonce") != self.dpop_nonce:
            return "use_dpop_nonce"
        return None

    @staticmethod
    def _chunks(total):
        block = bytes(range(256)) * 256
        while total > 0:
            piece = block[: min(len(block), total)]
            total -= len(piece)
            yield piece
