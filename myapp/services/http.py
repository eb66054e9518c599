"""One pooled HTTP client for talking to the provider, with default timeouts and one error type."""

import json
from urllib.parse import urlsplit

import requests
from authlib.integrations.requests_client import OAuth2Session
from requests.adapters import HTTPAdapter

from myapp import tracing

MAX_DOCUMENT_BYTES = 1024 * 1024


class HTTPFailure(Exception):
    """A call that did not produce a usable answer: unreachable, slow, an error status, or junk.

    ``unavailable`` is True when trying again later may help (connection refused, timeout, 5xx),
    False when the answer itself is wrong (4xx, malformed body).
    """

    def __init__(self, message: str, *, unavailable: bool, status: int | None = None, headers=None):
        super().__init__(message)
        self.unavailable = unavailable
        # The error status and its headers, when the server answered (a DPoP nonce challenge, say).
        self.status = status
        self.headers = headers or {}


def describe(error: requests.RequestException) -> HTTPFailure:
    if isinstance(error, requests.Timeout):
        return HTTPFailure("timed out", unavailable=True)
    if isinstance(error, requests.ConnectionError):
        return HTTPFailure("connection failed", unavailable=True)
    if isinstance(error, requests.TooManyRedirects):
        return HTTPFailure("answered with a redirect, which is not followed", unavailable=False)
    if isinstance(error, requests.HTTPError) and error.response is not None:
        status = error.response.status_code
        return HTTPFailure(f"answered HTTP {status}", unavailable=status >= 500)
    return HTTPFailure(type(error).__name__, unavailable=True)


class HttpClient:
    """A pooled ``requests`` transport shared by every call; requests never follow redirects."""

    def __init__(self, *, timeout: float, pool_maxsize: int = 32):
        self.timeout = timeout
        self.adapter = HTTPAdapter(pool_connections=8, pool_maxsize=pool_maxsize, max_retries=0)
        self.session = requests.Session()
        self._mount(self.session)

    def _mount(self, session: requests.Session) -> None:
        session.trust_env = False
        # Every call, Authlib's token and revocation requests included: a redirect is an error.
        session.max_redirects = 0
        session.mount("https://", self.adapter)
        session.mount("http://", self.adapter)

    def get_json(self, url: str, *, headers: dict | None = None, timeout: float | None = None) -> dict:
        """GET a JSON object of bounded size; raise :class:`HTTPFailure` for anything else."""
        headers = {"Accept": "application/json", **(headers or {})}
        with tracing.outgoing_span("provider GET", kind_of="provider", target=urlsplit(url).netloc, method="GET"):
            tracing.inject(headers)
            return self._get_json(url, headers, timeout)

    def _get_json(self, url: str, headers: dict, timeout: float | None) -> dict:
        try:
            with self.session.get(
                url,
                headers=headers,
                timeout=timeout or self.timeout,
                allow_redirects=False,
                stream=True,
            ) as response:
                if response.status_code != 200:
                    raise HTTPFailure(
                        f"answered HTTP {response.status_code}",
                        unavailable=response.status_code >= 500,
                        status=response.status_code,
                        headers=response.headers,
                    )
                body = response.raw.read(MAX_DOCUMENT_BYTES + 1, decode_content=True)
        except requests.RequestException as e:
            raise describe(e) from None
        if len(body) > MAX_DOCUMENT_BYTES:
            raise HTTPFailure("answered with a document over 1 MiB", unavailable=False)
        try:
            document = json.loads(body)
        except ValueError:
            raise HTTPFailure("answered with something that is not JSON", unavailable=False) from None
        if not isinstance(document, dict):
            raise HTTPFailure("answered with JSON that is not an object", unavailable=False)
        return document

    def oauth2_session(self, **kwargs) -> OAuth2Session:
        """An Authlib client for one exchange, on the shared connection pool."""
        session = OAuth2Session(default_timeout=self.timeout, **kwargs)
        self._mount(session)
        return session

    def close(self) -> None:
        self.session.close()
        self.adapter.close()
