"""OpenTelemetry spans (SPEC.md "Observability") with an in-memory exporter: what each request
records, the traceparent that reaches providers and upstreams, and a scan of every exported span
for anything secret."""

import json
import os
import subprocess
import sys

import pytest
from opentelemetry.trace import SpanKind

from myapp import tracing
from myapp.settings import SettingsError, load_settings
from tests.conftest import TEST_PUBLIC_URL, base_settings
from tests.functional.auth.flows import csrf_of, start_login
from tests.functional.conftest import COOKIE, Browser
from tests.support.fake_provider import CLIENT_SECRET
from tests.support.spans import recording_spans


@pytest.fixture
def spans():
    with recording_spans() as recorded:
        yield recorded


def everything_in(spans) -> str:
    """Every name, attribute and event of every span, as text."""
    return json.dumps(
        [{"name": s.name, "attributes": dict(s.attributes or {}), "events": [(e.name, dict(e.attributes or {})) for e in s.events],
          "resource": dict(s.resource.attributes)} for s in spans],
        default=str,
    )


def test_a_signed_in_api_call_with_a_refresh(spans, make_proxy_app, signed_in, upstream, provider):
    browser = signed_in(expires_in=0)
    response = browser.get("/api/up/items", headers={"X-CSRF": "1"}, status=200)
    names = [s.name for s in spans]
    assert "GET /api/{upstream}*subpath" in names
    assert "session.lookup" in names and "token.refresh" in names
    assert "provider token" in names and "upstream up" in names
    refresh = next(s for s in spans if s.name == "token.refresh")
    assert refresh.attributes["myapp.lock_wait_ms"] >= 0 and refresh.attributes["myapp.outcome"] == "ok"
    server = next(s for s in spans if s.name.startswith("GET /api/"))
    assert server.attributes["http.response.status_code"] == 200
    # One trace: the upstream and the provider got its traceparent.
    trace_id = format(server.context.trace_id, "032x")
    assert upstream.seen[-1]["headers"]["traceparent"].split("-")[1] == trace_id
    token_call = [headers for path, _, headers in provider.requests if path == "/token"][-1]
    assert token_call["HTTP_TRACEPARENT"].split("-")[1] == trace_id
    assert response.headers["X-Request-ID"]


def test_each_call_to_the_provider_names_what_it_fetches_the_provider_and_the_status(spans, make_app, provider):
    """Discovery, the key set and userinfo are named like the token endpoint's call, carry the
    provider's configured name, and the status it answered with, an error status too; nothing else."""
    provider.userinfo_response = lambda token: (503, {"error": "temporarily_unavailable"})
    browser = Browser(make_app())
    _, query = start_login(browser, "/posts")
    code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"])
    browser.get("/auth/callback", params={"code": code, "state": query["state"], "iss": provider.issuer}, status=303)
    calls = {s.name: dict(s.attributes) for s in spans if s.kind is SpanKind.CLIENT}
    for name, method, status in [("provider discovery", "GET", 200), ("provider jwks", "GET", 200),
                                 ("provider token", "POST", 200), ("provider userinfo", "GET", 503)]:
        assert calls.get(name) == {"http.request.method": method, "myapp.provider": "default",
                                   "http.response.status_code": status}, (name, calls)
    assert set(calls) == {"provider discovery", "provider jwks", "provider token", "provider userinfo"}


def test_the_providers_posts_are_named_by_what_they_do_not_by_their_path(spans, make_app, provider):
    """Keycloak's PAR endpoint ends in /request and revocation endpoints in /revoke: a span named
    after the path's last segment said neither (helper-44)."""
    provider.offers_par = True
    browser = Browser(make_app())
    browser.get("/login", status=303)
    (pushed,) = [dict(form) for form in provider.pushed.values()]
    code = provider.grant(challenge=pushed["code_challenge"], nonce=pushed["nonce"])
    browser.get("/auth/callback", params={"code": code, "state": pushed["state"], "iss": provider.issuer}, status=303)
    browser.post("/logout", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    posts = [s.name for s in spans if s.kind is SpanKind.CLIENT and s.attributes.get("http.request.method") == "POST"]
    assert posts == ["provider par", "provider token", "provider revocation"]


def test_a_request_not_sampled_makes_no_span_inside_and_passes_the_decision_on(
    spans, make_proxy_app, signed_in, upstream, provider, monkeypatch
):
    """A caller's traceparent flagged not sampled: the request's own span is not recorded, so
    none is made inside it (the session lookup, the refresh, the provider and upstream calls),
    and the upstream and the provider get traceparent with the same trace, not sampled."""
    started = []
    start = tracing.tracer.start_as_current_span
    monkeypatch.setattr(tracing.tracer, "start_as_current_span", lambda name, **kw: started.append(name) or start(name, **kw))
    browser = signed_in(expires_in=0)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    browser.get("/api/up/items", headers={"X-CSRF": "1", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-00",
                                          "tracestate": "rojo=00f067aa0ba902b7"}, status=200)
    assert started == ["GET"] and spans == []
    _, sent_trace, _, flags = upstream.seen[-1]["headers"]["traceparent"].split("-")
    assert (sent_trace, flags) == (trace_id, "00")
    assert upstream.seen[-1]["headers"]["tracestate"] == "rojo=00f067aa0ba902b7"  # the trace's, with it
    token_call = [headers for path, _, headers in provider.requests if path == "/token"][-1]
    assert token_call["HTTP_TRACEPARENT"].split("-")[1] == trace_id
    # Sampled, the same call makes every span it did.
    browser.get("/api/up/items", headers={"X-CSRF": "1", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}, status=200)
    assert "session.lookup" in started and "upstream up" in started and spans


# W3C Trace Context: a caller's traceparent and tracestate, and what of them may reach an upstream.
CALLERS_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CALLERS_STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
# Well-formed members, 7,935 characters; padded with empty members (allowed) to 10,000, too long.
LONG_BUT_READABLE = ",".join(f"m{i}={'v' * 250}" for i in range(31))
TOO_LONG = LONG_BUT_READABLE + "," * (10_000 - len(LONG_BUT_READABLE))
TRACE_CONTEXTS = [
    # (traceparent, tracestate, whether the traceparent reads, whether the tracestate goes with it)
    pytest.param(CALLERS_PARENT, CALLERS_STATE, True, True, id="both-read"),
    pytest.param(CALLERS_PARENT, LONG_BUT_READABLE, True, True, id="long-state"),
    pytest.param(CALLERS_PARENT, TOO_LONG, True, False, id="state-of-10000"),
    pytest.param(CALLERS_PARENT, "congo=t61rcWkgMzE,Rojo=1", True, False, id="state-key-in-upper-case"),
    pytest.param(CALLERS_PARENT, "congo=1,congo=2", True, False, id="state-key-twice"),
    pytest.param(CALLERS_PARENT, ",".join(f"k{i}=1" for i in range(33)), True, False, id="state-of-33-members"),
    pytest.param("00-abc-def-01", CALLERS_STATE, False, False, id="parent-malformed"),
    pytest.param("00-00000000000000000000000000000000-b7ad6b7169203331-01", CALLERS_STATE, False, False,
                 id="parent-of-trace-zero"),
    pytest.param(None, CALLERS_STATE, False, False, id="state-alone"),
]


def _trace_headers(traceparent, tracestate) -> dict:
    return {"X-CSRF": "1", **({"traceparent": traceparent} if traceparent else {}), "tracestate": tracestate}


@pytest.mark.parametrize("traceparent, tracestate, parent_reads, state_goes", TRACE_CONTEXTS)
def test_with_tracing_off_a_callers_trace_context_goes_on_unchanged_only_when_it_reads(
    signed_in, upstream, caplog, traceparent, tracestate, parent_reads, state_goes
):
    """Passed through as a proxy that takes no part in the trace passes it, unchanged; but an
    invalid traceparent goes nowhere, nor its tracestate, and a tracestate that does not read (too
    long, malformed, over 32 members) is dropped, as OpenTelemetry drops it."""
    with caplog.at_level("DEBUG"):
        signed_in().get("/api/up/items", headers=_trace_headers(traceparent, tracestate), status=200)
    seen = upstream.seen[-1]["headers"]
    assert seen.get("traceparent") == (traceparent if parent_reads else None)
    assert seen.get("tracestate") == (tracestate if state_goes else None)
    # Nor does it go into the log: OpenTelemetry's parser logged each malformed member, text and all.
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]


@pytest.mark.parametrize("traceparent, tracestate, parent_reads, state_goes", TRACE_CONTEXTS)
def test_with_tracing_on_an_upstream_gets_the_requests_traceparent_and_only_the_tracestate_that_goes_with_it(
    spans, signed_in, upstream, traceparent, tracestate, parent_reads, state_goes
):
    """The upstream's traceparent is this request's (its call's span), in the caller's trace when
    the caller's read; the caller's tracestate goes with it only then, and only if it reads."""
    signed_in().get("/api/up/items", headers=_trace_headers(traceparent, tracestate), status=200)
    seen = upstream.seen[-1]["headers"]
    call = next(s for s in spans if s.name == "upstream up")
    sent = call.context
    assert seen["traceparent"] == f"00-{sent.trace_id:032x}-{sent.span_id:016x}-{sent.trace_flags:02x}"
    assert (seen["traceparent"].split("-")[1] == CALLERS_PARENT.split("-")[1]) is parent_reads
    assert seen.get("tracestate") == (tracestate if state_goes else None)


def test_no_span_holds_a_secret(spans, make_app, provider):
    app = make_app()
    browser = Browser(app)
    _, query = start_login(browser, "/posts")
    code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"])
    browser.get("/auth/callback", params={"code": code, "state": query["state"], "iss": provider.issuer}, status=303)
    cookie = browser.cookies[COOKIE]
    browser.post("/logout", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    token_form = [form for path, form, _ in provider.requests if path == "/token"][0]
    secrets_seen = [code, query["state"], query["nonce"], token_form["code_verifier"], cookie, CLIENT_SECRET,
                    *provider.used_refresh_tokens, *provider.refresh_tokens, *provider.access_tokens, *provider.revoked]
    text = everything_in(spans)
    assert spans and "/auth/callback" in text
    for secret in secrets_seen:
        assert secret and secret not in text, "a secret in a span"
    assert "eyJ" not in text and "code=" not in text and "state=" not in text


def test_a_method_of_the_callers_own_invention_names_no_span(spans, make_app):
    """The request line is the caller's: each method it made up (any token, thousands of characters
    long) was a span name and an attribute value of its own, so that anyone could fill a tracing
    backend's index of operation names. As OpenTelemetry's HTTP conventions have it, a method outside
    HTTP's own is ``_OTHER``, and its span's name says ``HTTP``."""
    from webtest import TestApp

    caller = TestApp(make_app(), lint=False)  # WebTest's checker refuses such methods, waitress does not
    for method in ("FOO" + "X" * 4000, "BAR", "get"):
        caller.request("/healthz", method=method, status="*")
        caller.request("/nowhere", method=method, status="*")
    caller.request("/healthz", method="PATCH", status="*")
    names = sorted(s.name for s in spans if s.kind == SpanKind.SERVER)
    assert names == ["HTTP", "HTTP", "HTTP", "HTTP /healthz", "HTTP /healthz", "HTTP /healthz", "PATCH /healthz"]
    methods = [s.attributes["http.request.method"] for s in spans if s.kind == SpanKind.SERVER]
    assert sorted(methods) == ["PATCH"] + ["_OTHER"] * 6


def test_tracing_settings():
    settings = load_settings(base_settings("sqlite://", **{"myapp.otel.enabled": "true", "myapp.otel.exporter": "console"}))
    assert (settings.otel.enabled, settings.otel.exporter, settings.otel.service_name) == (True, "console", "myapp")
    assert load_settings(base_settings("sqlite://")).otel.enabled is False
    with pytest.raises(SettingsError, match="^myapp.otel.endpoint: required by myapp.otel.exporter = otlp"):
        load_settings(base_settings("sqlite://", **{"myapp.otel.enabled": "true"}))
    with pytest.raises(SettingsError, match="^myapp.otel.exporter: 'jaeger' is not one of otlp, console$"):
        load_settings(base_settings("sqlite://", **{"myapp.otel.exporter": "jaeger"}))


def test_expired_tokens_refreshed_in_a_page_are_traced_too(spans, make_proxy_app, signed_in, upstream, provider):
    app = make_proxy_app(**{"myapp.dashboard.upstream": "up"})
    upstream.body = b'{"notes": []}'
    signed_in(app=app, expires_in=0).get("/", status=200)
    assert any(s.name == "token.refresh" for s in spans)


def test_no_span_of_a_dpop_session_holds_a_proof_or_the_key(spans, make_proxy_app, upstream, provider, committed):
    from sqlalchemy import select

    from myapp.models import UserSession
    from myapp.services import Services

    provider.dpop_algorithms = ["ES256"]
    app = make_proxy_app(**{"myapp.oidc.dpop": "required"})
    browser = Browser(app)
    _, query = start_login(browser)
    code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"], dpop_jkt=query["dpop_jkt"])
    browser.get("/auth/callback", params={"code": code, "state": query["state"], "iss": provider.issuer}, status=303)
    upstream.dpop_nonce = "n-1"
    browser.get("/api/up/items", headers={"X-CSRF": "1"}, status=200)
    committed.commit()
    row = committed.scalars(select(UserSession).order_by(UserSession.id.desc()).limit(1)).one()
    private = json.loads(app.registry[Services].cipher.decrypt(row.dpop_key))["jwk"]["d"]
    proofs = [seen["headers"]["dpop"] for seen in upstream.seen] + [proof for _, proof, _ in provider.dpop_proofs]
    text = everything_in(spans)
    assert "upstream up" in text and len(proofs) >= 3
    for secret in [private, query["dpop_jkt"], *proofs, *provider.access_tokens]:
        assert secret not in text, "a DPoP secret in a span"
    assert "eyJ" not in text


# A process of its own: the tracer provider is installed once per process.
SAMPLER = """
import types
from opentelemetry import trace
from myapp.tracing import setup_tracing
setup_tracing(types.SimpleNamespace(enabled=True, exporter="console", endpoint=None, service_name="myapp"))
print(trace.get_tracer_provider().sampler.get_description())
"""


@pytest.mark.parametrize(
    "environ, root",
    [
        ({}, "root:AlwaysOnSampler"),  # every request, by default
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
         "root:TraceIdRatioBased{0.1}"),
    ],
)
def test_opentelemetry_s_own_sampler_variables_choose_which_requests_are_traced(environ, root):
    """docs/configuration.md: sampling is set as for any OpenTelemetry SDK, and a caller's sampled
    traceparent is followed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    said = subprocess.run([sys.executable, "-c", SAMPLER], env=clean | environ, capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert said.startswith("ParentBased{") and root in said and "remoteParentSampled:AlwaysOnSampler" in said, said
