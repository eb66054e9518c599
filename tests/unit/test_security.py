from datetime import timedelta

import pytest
from pyramid.testing import DummyRequest
from webob import Request

from myapp.cookies import SessionCookie
from myapp.routes import safe_next_path
from myapp.security import form_origin_failure, json_csrf_failure, same_origin
from myapp.settings import SessionSettings

PUBLIC = "https://app.example.com"


@pytest.mark.parametrize(
    "value",
    ["/", "/posts", "/posts/5?notice=x&page=2", "/a%20b", "/path#frag", "/x//y", "/%2e%2e/"],
)
def test_local_paths_are_kept(value):
    assert safe_next_path(value) == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "posts",
        "//evil.example",
        "//evil.example/path",
        "/\\evil.example",
        "\\\\evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        " /evil",
        "/ /evil",
        "https://evil.example",
        "https:evil.example",
        "http:/evil.example",
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "/%2F/evil.example",
        "/%2f%2fevil.example",
        "/%5Cevil.example",
        "%2F%2Fevil.example",
        "/\x00",
        "/\x7f",
        "/" + "a" * 3000,
        ["/"],
        "/\u0130",
        "/caf\u00e9",
        "/\u2028x",
    ],
)
def test_open_redirect_payloads_fall_back_to_root(value):
    assert safe_next_path(value) == "/"


@pytest.mark.parametrize(
    "origin, expected",
    [
        ("https://app.example.com", True),
        ("https://app.example.com:443", True),
        ("https://APP.example.com", True),
        ("http://app.example.com", False),
        ("https://app.example.com:8443", False),
        ("https://evil.example", False),
        ("https://app.example.com.evil.example", False),
        ("null", False),
        ("", False),
        ("https://[broken", False),
        ("https://evil@app.example.com", False),
        ("https://@app.example.com", False),
        ("https://user:pw@app.example.com:443", False),
        ("https://app.example.com?", False),
        ("https://app.example.com/?x=1", False),
        ("https://app.example.com#", False),
        ("https://app.example.com/", True),
    ],
)
def test_same_origin(origin, expected):
    assert same_origin(origin, PUBLIC) is expected


def request(method="GET", **headers):
    return DummyRequest(method=method, headers=headers)


def test_json_csrf_needs_the_header():
    assert json_csrf_failure(request(), PUBLIC) is not None
    assert json_csrf_failure(request(**{"X-CSRF": "0"}), PUBLIC) is not None
    assert json_csrf_failure(request(**{"X-CSRF": "1"}), PUBLIC) is None


def test_json_csrf_refuses_cross_site_fetches():
    assert json_csrf_failure(request(**{"X-CSRF": "1", "Sec-Fetch-Site": "cross-site"}), PUBLIC) is not None
    assert json_csrf_failure(request(**{"X-CSRF": "1", "Sec-Fetch-Site": "same-origin"}), PUBLIC) is None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_json_csrf_checks_origin_on_unsafe_methods(method):
    assert json_csrf_failure(request(method, **{"X-CSRF": "1", "Origin": PUBLIC}), PUBLIC) is None
    assert json_csrf_failure(request(method, **{"X-CSRF": "1"}), PUBLIC) is None
    assert json_csrf_failure(request(method, **{"X-CSRF": "1", "Origin": "null"}), PUBLIC) is not None
    assert json_csrf_failure(request(method, **{"X-CSRF": "1", "Origin": "https://evil.example"}), PUBLIC) is not None


def test_json_csrf_ignores_origin_on_safe_methods():
    assert json_csrf_failure(request("GET", **{"X-CSRF": "1", "Origin": "https://evil.example"}), PUBLIC) is None


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Origin": "https://app.example.com"}, None),
        ({"Origin": "https://APP.example.com:443"}, None),
        ({"Referer": "https://app.example.com/posts/new?draft=1"}, None),
        ({"Referer": "https://app.example.com:443/"}, None),
        ({"Origin": "https://evil.example", "Referer": "https://app.example.com/"}, "sent from another origin"),
        ({"Referer": "https://app.example.com.evil.example/"}, "sent from another origin"),
        ({"Referer": "https://app.example.com@evil.example/"}, "sent from another origin"),
        ({"Referer": "http://app.example.com/"}, "sent from another origin"),
        ({"Referer": "https://[app.example.com/"}, "sent from another origin"),
        ({"Origin": "null"}, "sent from another origin"),
        ({"Origin": ""}, "an empty Origin header"),
        ({"Origin": " ", "Referer": "https://app.example.com/"}, "an empty Origin header"),
        ({}, "missing Origin or Referer"),
    ],
)
def test_a_forms_origin_is_the_public_urls_whatever_the_host(headers, expected):
    """Never the request's Host: behind a proxy it may be the proxy's own address, or anything."""
    form = Request.blank(
        "/posts", method="POST", headers=headers, environ={"HTTP_HOST": "127.0.0.1:6543", "wsgi.url_scheme": "https"}
    )
    assert form_origin_failure(form, PUBLIC) == expected


def test_a_form_naming_no_origin_is_refused_only_when_it_came_over_https():
    """As Pyramid's check did: over plain http (a development server, a proxy that sends no
    X-Forwarded-Proto) the CSRF token decides; a named origin is compared all the same."""
    assert form_origin_failure(Request.blank("/posts", method="POST"), "http://127.0.0.1:6543") is None
    assert form_origin_failure(Request.blank("/posts", method="POST"), PUBLIC) is None
    over_https = Request.blank("/posts", method="POST", environ={"wsgi.url_scheme": "https"})
    assert form_origin_failure(over_https, PUBLIC) == "missing Origin or Referer"
    other_name = Request.blank("/posts", method="POST", headers={"Origin": "http://localhost:6543"})
    assert form_origin_failure(other_name, "http://127.0.0.1:6543") == "sent from another origin"
    assert form_origin_failure(Request.blank("/posts", method="POST", headers={"Origin": "null"}), PUBLIC) == (
        "sent from another origin"
    )


def test_an_empty_origin_is_refused_by_the_form_rule_as_by_the_json_rule_over_http_too():
    """It was read as no Origin: over plain http the Referer went unchecked and the token decided,
    where the JSON rule refuses it."""
    for referer in ({}, {"Referer": "http://evil.example/"}):
        form = Request.blank("/posts", method="POST", headers={"Origin": "", **referer})
        assert form_origin_failure(form, "http://127.0.0.1:6543") == "an empty Origin header"
    call = Request.blank("/api/demo/notes", method="POST", headers={"Origin": "", "X-CSRF": "1"})
    assert json_csrf_failure(call, "http://127.0.0.1:6543") == "the Origin header does not match this site"


def settings(**kw):
    values = dict(
        cookie_name="__Host-session",
        cookie_secure=True,
        cookie_samesite="Lax",
        idle_timeout=timedelta(hours=1),
        absolute_timeout=timedelta(days=1),
    )
    values.update(kw)
    return SessionSettings(**values)


def test_cookie_attributes_exactly_as_spec():
    name, value = SessionCookie(settings()).set("abc", 3600)
    assert name == "Set-Cookie"
    parts = [p.strip() for p in value.split(";")]
    assert parts[0] == "__Host-session=abc"
    attributes = {p.split("=")[0].lower(): p for p in parts[1:]}
    assert attributes.keys() == {"max-age", "path", "expires", "secure", "httponly", "samesite"}
    assert attributes["max-age"] == "Max-Age=3600"
    assert attributes["path"] == "Path=/"
    assert attributes["samesite"] == "SameSite=Lax"
    assert "domain" not in attributes


def test_cookie_strict_and_insecure_for_development():
    _, value = SessionCookie(settings(cookie_name="sid", cookie_secure=False, cookie_samesite="Strict")).set("abc", 60)
    assert "SameSite=Strict" in value
    assert "secure" not in value.lower()


def test_cookie_delete_keeps_the_attributes_browsers_need():
    _, value = SessionCookie(settings()).delete()
    assert value.startswith("__Host-session=;")
    assert "Max-Age=0" in value and "Path=/" in value and "secure" in value.lower()


def test_oversized_cookie_is_not_read():
    cookie = SessionCookie(settings())
    req = Request.blank("/", headers={"Cookie": "__Host-session=" + "a" * 10_000})
    assert cookie.read(req) is None
    assert cookie.is_present(req)


def test_undecodable_cookie_header_is_no_cookie():
    cookie = SessionCookie(settings())
    req = Request.blank("/")
    req.environ["HTTP_COOKIE"] = "__Host-session=\xe9\xe8"
    assert not cookie.read(req)
    assert cookie.is_present(req)


@pytest.mark.parametrize(
    "header, present",
    [
        ("__Host-session=abc", True),
        ("a=1; __Host-session=abc", True),
        ("a=1;__Host-session=", True),
        ("__Host-session =abc", True),
        # Inside another cookie's value, which a site may set for a parent domain (helper-114).
        ('a="x,__Host-session=1"', False),
        ("a=x __Host-session=1", False),
        ("a=x,__Host-session=1", False),
        # Another cookie whose name ends with this one's (which a site may set on a parent domain),
        # or whose value holds it, is not it (helper-111).
        ("x__Host-session=1", False),
        ("return=/x?__Host-session=1", False),
        ("a=__Host-session=1; b=2", False),
        # Only spaces and tabs around a name (RFC 6265 section 4.2.1): a name with U+00A0 (its UTF-8
        # bytes as WSGI carries them, or the byte alone), U+3000 or a vertical tab before it is
        # another cookie, which a site of a parent domain may set (helper-115).
        ("\t__Host-session\t=abc", True),
        ("\xc2\xa0__Host-session=abc", False),
        ("\xa0__Host-session=abc", False),
        ("\xe3\x80\x80__Host-session=abc", False),
        ("\x0b__Host-session=abc", False),
        ("__Host-session\x0c=abc", False),
        # Another cookie that is not UTF-8 leaves this one readable.
        ("junk=\xff; __Host-session=abc", True),
        ("", False),
    ],
)
def test_a_cookie_is_present_by_its_whole_name(header, present):
    req = Request.blank("/", headers={"Cookie": header} if header else {})
    assert SessionCookie(settings()).is_present(req) is present
    # And read only so: WebOb's request.cookies read __Host-session=1 inside another's value.
    assert bool(SessionCookie(settings()).read(req)) is (present and "=abc" in header)


@pytest.mark.parametrize("method", ["PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH"])
def test_json_csrf_checks_origin_on_every_method_that_is_not_safe(method):
    """RFC 9110 section 9.2.1: only GET, HEAD, OPTIONS and TRACE are safe; an upstream may take
    WebDAV's methods (its ``methods`` setting), and they change things as POST does."""
    assert json_csrf_failure(request(method, **{"X-CSRF": "1", "Origin": PUBLIC}), PUBLIC) is None
    assert json_csrf_failure(request(method, **{"X-CSRF": "1", "Origin": "https://evil.example"}), PUBLIC) is not None
    assert json_csrf_failure(request(method, **{"X-CSRF": "1", "Origin": "null"}), PUBLIC) is not None


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE"])
def test_json_csrf_and_its_audit_read_the_same_safe_methods(method):
    from myapp import security
    from myapp.views import errors

    assert errors.SAFE_METHODS is security.SAFE_METHODS
    assert method in security.SAFE_METHODS
    assert json_csrf_failure(request(method, **{"X-CSRF": "1", "Origin": "https://evil.example"}), PUBLIC) is None


@pytest.mark.parametrize("supplied", ["\ud800", "tok\udcff", "tokén", "", None])
def test_a_csrf_token_that_is_not_ascii_matches_nothing_and_raises_nothing(supplied):
    """A lone surrogate could not be encoded for the comparison: a 500 (helper-118)."""
    from myapp.security import csrf_tokens_match

    assert csrf_tokens_match("token", supplied) is False
    assert csrf_tokens_match("token", "token") is True
