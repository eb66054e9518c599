"""The login service with a stub provider: the login transaction and the callback's order of checks.

The same flows over HTTP against a programmable provider are tests/functional/auth/.
"""

import hashlib
from datetime import timedelta
from types import SimpleNamespace

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from myapp.models import LoginTransaction, TokenRevocation, User
from myapp.models.meta import utcnow
from myapp.services.login import MAX_PENDING_PER_BROWSER, LoginError, LoginService, StepUp, groups_from
from myapp.services.oidc import (
    DPoPNotBound,
    OIDCError,
    ProviderMetadata,
    Providers,
    ProviderUnavailable,
    TokenRequestRefused,
    TokenResponseInvalid,
)
from myapp.services.tokenset import TokenCipher, TokenSet
from myapp.settings import OIDCSettings

ISSUER = "https://idp.example.test"
BROWSER = "b" * 43
SETTINGS = OIDCSettings(
    name="default", display_name="Sign in", issuer=ISSUER, client_id="app", client_secret="s", token_endpoint_auth_method="client_secret_basic",
    scope="openid", redirect_uri="https://app.example.test/auth/callback",
    post_logout_redirect_uri="https://app.example.test/", authorize_params={}, groups_claim="groups",
    fetch_userinfo=True, http_timeout=5,
)


class StubProvider:
    """Records what the service asks; answers as a test tells it."""

    def __init__(self):
        self.settings = SETTINGS
        self.sent = {}
        self.calls = []
        self.exchange = lambda code, verifier: {"access_token": "at", "token_type": "Bearer", "id_token": "idt"}
        self.claims = {"iss": ISSUER, "sub": "alice", "name": "Alice", "groups": ["staff"], "sid": "sid-1"}
        self.userinfo_claims = None
        self.iss_supported = True

    def authorization_url(self, *, state, nonce, code_verifier, prompt=None, resources=(), extra=None):
        self.sent = {"state": state, "nonce": nonce, "verifier": code_verifier, "prompt": prompt, "resources": resources,
                     "extra": extra or {}}
        return f"{ISSUER}/authorize?state={state}"

    def metadata(self):
        return ProviderMetadata(
            issuer=ISSUER, authorization_endpoint=ISSUER + "/a", token_endpoint=ISSUER + "/t", jwks_uri=ISSUER + "/k",
            userinfo_endpoint=ISSUER + "/u", end_session_endpoint=None, revocation_endpoint=None,
            signing_algorithms=frozenset({"RS256"}), iss_parameter_supported=self.iss_supported,
        )

    def new_dpop_key(self, metadata=None):
        return None

    def exchange_code(self, code, verifier, *, dpop=None):
        self.calls.append(("exchange_code", code, verifier))
        return self.exchange(code, verifier)

    def validate_id_token(self, id_token, *, nonce, access_token=None):
        self.calls.append(("validate_id_token", nonce))
        return dict(self.claims, nonce=nonce)

    def userinfo(self, access_token, *, subject, dpop=None):
        self.calls.append(("userinfo", access_token))
        return self.userinfo_claims


@pytest.fixture
def cipher():
    return TokenCipher([Fernet.generate_key().decode()])


@pytest.fixture
def oidc():
    return StubProvider()


@pytest.fixture
def service(dbsession, oidc, cipher):
    return LoginService(dbsession=dbsession, providers=Providers({"default": oidc}), cipher=cipher)


def begin(service, oidc, next_path="/posts", browser=BROWSER):
    service.begin(provider="default", next_path=next_path, browser_token=browser)
    return oidc.sent["state"]


def callback(service, state, browser=BROWSER, **params):
    return service.complete({"state": state, "code": "code-1", "iss": ISSUER, **params}, provider="default", browser_token=browser)


def test_begin_keeps_only_hashes_and_ciphertexts(service, oidc, dbsession):
    state = begin(service, oidc)
    row = dbsession.scalars(select(LoginTransaction)).one()
    assert row.state_hash == hashlib.sha256(state.encode()).hexdigest()
    assert row.browser_hash == hashlib.sha256(BROWSER.encode()).hexdigest()
    stored = f"{row.nonce!r} {row.code_verifier!r}"
    assert oidc.sent["nonce"] not in stored and oidc.sent["verifier"] not in stored
    assert row.next_path == "/posts" and row.expires_at - row.created_at == timedelta(minutes=10)


def test_a_browser_keeps_only_its_newest_sign_ins_and_old_ones_expire(service, oidc, dbsession):
    states = [begin(service, oidc) for _ in range(MAX_PENDING_PER_BROWSER + 3)]
    begin(service, oidc, browser="c" * 43)
    assert dbsession.query(LoginTransaction).count() == MAX_PENDING_PER_BROWSER + 1
    with pytest.raises(LoginError, match="already been used or was never started"):
        callback(service, states[0])
    assert callback(service, states[-1]).user_id


def test_a_successful_callback_upserts_the_user_and_returns_the_tokens(service, oidc, dbsession):
    state = begin(service, oidc)
    result = callback(service, state)
    user = dbsession.get(User, result.user_id)
    assert (user.issuer, user.subject, user.name, user.groups) == (ISSUER, "alice", "Alice", ["staff"])
    assert (result.next_path, result.provider_sid) == ("/posts", "sid-1")
    assert (result.tokens.access_token, result.tokens.id_token) == ("at", "idt")
    assert [call[0] for call in oidc.calls] == ["exchange_code", "validate_id_token", "userinfo"]
    assert oidc.calls[0][2] == oidc.sent["verifier"] and oidc.calls[1][1] == oidc.sent["nonce"]


def test_the_same_subject_signing_in_again_is_the_same_user_with_fresh_details(service, oidc, dbsession):
    first = callback(service, begin(service, oidc)).user_id
    oidc.claims = dict(oidc.claims, name="Alice Renamed", groups=["staff", "admins"])
    second = callback(service, begin(service, oidc)).user_id
    assert first == second
    assert dbsession.get(User, first).groups == ["admins", "staff"]


def test_userinfo_adds_claims_but_never_changes_who(service, oidc, dbsession):
    oidc.userinfo_claims = {"sub": "alice", "iss": "https://evil.example", "email": "a@example.test", "aud": "x"}
    user = dbsession.get(User, callback(service, begin(service, oidc)).user_id)
    assert (user.issuer, user.email) == (ISSUER, "a@example.test")


@pytest.mark.parametrize(
    "params, reason",
    [
        ({"state": ""}, "missing_state"),
        ({"state": "never-issued"}, "unknown_state"),
        ({"state": "x" * 5000}, "parameter_too_long"),
    ],
)
def test_a_callback_without_a_known_state_is_refused_before_anything_else(service, oidc, params, reason):
    begin(service, oidc)
    with pytest.raises(LoginError) as refused:
        service.complete({"code": "c", "iss": ISSUER, **params}, provider="default", browser_token=BROWSER)
    assert refused.value.reason == reason and oidc.calls == []


def test_a_state_is_single_use_even_when_the_first_attempt_failed(service, oidc):
    state = begin(service, oidc)
    with pytest.raises(LoginError, match="authorization code"):
        callback(service, state, code="")
    with pytest.raises(LoginError) as replay:
        callback(service, state)
    assert replay.value.reason == "unknown_state"


def test_another_browser_neither_completes_nor_cancels_the_sign_in(service, oidc):
    state = begin(service, oidc)
    for other in ("c" * 43, None):
        with pytest.raises(LoginError) as refused:
            callback(service, state, browser=other)
        assert refused.value.reason == "other_browser"
    assert callback(service, state).user_id


def test_an_expired_sign_in_is_refused_and_used_up(service, oidc, dbsession):
    state = begin(service, oidc)
    dbsession.execute(LoginTransaction.__table__.update().values(expires_at=utcnow() - timedelta(seconds=1)))
    with pytest.raises(LoginError) as refused:
        callback(service, state)
    assert refused.value.reason == "expired_state" and refused.value.next_path == "/posts"
    assert dbsession.query(LoginTransaction).count() == 0


def test_a_sign_in_page_left_open_too_long_is_late_not_from_another_browser(service, oidc, dbsession):
    """The binding cookie runs out with the transaction: the callback of a sign-in page left open
    past both came without it and was told "started in another browser"."""
    state = begin(service, oidc)
    dbsession.execute(LoginTransaction.__table__.update().values(expires_at=utcnow() - timedelta(seconds=1)))
    with pytest.raises(LoginError) as refused:
        callback(service, state, browser=None)
    assert refused.value.reason == "expired_state" and refused.value.next_path == "/posts"
    assert dbsession.query(LoginTransaction).count() == 0


def test_an_expired_sign_in_brought_by_another_browser_is_only_used_up(service, oidc, dbsession):
    """The expiry is checked before the browser: a state replayed from another browser after its
    ten minutes gets nothing from the order (no code exchanged, nobody signed in), and neither the
    attacker's nor the starting browser can complete it afterwards. A live one from another browser
    is still refused without being used up (test_another_browser_neither_completes...)."""
    state = begin(service, oidc)
    dbsession.execute(LoginTransaction.__table__.update().values(expires_at=utcnow()))
    with pytest.raises(LoginError) as refused:
        callback(service, state, browser="c" * 43)
    assert refused.value.reason == "expired_state"
    with pytest.raises(LoginError) as again:
        callback(service, state)
    assert again.value.reason == "unknown_state"
    assert not [call for call in oidc.calls if call[0] in ("exchange_code", "validate_id_token", "userinfo")]


def test_a_provider_error_consumes_the_sign_in_and_keeps_its_next_path(service, oidc):
    state = begin(service, oidc)
    with pytest.raises(LoginError) as refused:
        service.complete({"state": state, "error": "access_denied"}, provider="default", browser_token=BROWSER)
    assert (refused.value.reason, refused.value.next_path) == ("provider_error:access_denied", "/posts")
    assert "cancelled" in refused.value.message
    with pytest.raises(LoginError, match="already been used"):
        callback(service, state)
    with pytest.raises(LoginError) as junk:
        service.complete({"state": "x", "error": "<script>"}, provider="default", browser_token=BROWSER)
    assert junk.value.reason == "provider_error:invalid"


@pytest.mark.parametrize(
    "params, supported, reason",
    [({"iss": "https://other.example"}, True, "bad_iss_parameter"), ({"iss": None}, True, "missing_iss_parameter")],
)
def test_the_iss_parameter_is_checked_before_the_code_is_used(service, oidc, params, supported, reason):
    oidc.iss_supported = supported
    state = begin(service, oidc)
    query = {"state": state, "code": "c", "iss": ISSUER, **params}
    with pytest.raises(LoginError) as refused:
        service.complete({k: v for k, v in query.items() if v is not None}, provider="default", browser_token=BROWSER)
    assert refused.value.reason == reason and oidc.calls == []


def test_a_foreign_iss_is_refused_before_the_providers_discovery_is_read(service, oidc, monkeypatch):
    """A response naming another issuer is the mix-up defence's to refuse (RFC 9207), without a
    request to the expected provider's discovery: with that provider down it is still
    bad_iss_parameter (400), never a 503 that would blame the provider. The issuer it names is
    this provider's: then discovery is read, and its outage answers."""
    read = []

    def down():
        read.append("metadata")
        raise ProviderUnavailable("the provider is not answering")

    monkeypatch.setattr(oidc, "metadata", down)
    state = begin(service, oidc)
    with pytest.raises(LoginError) as refused:
        service.complete({"state": state, "code": "c", "iss": "https://other.example"}, provider="default",
                         browser_token=BROWSER)
    assert (refused.value.reason, refused.value.status) == ("bad_iss_parameter", 400)
    assert read == [] and oidc.calls == []
    state = begin(service, oidc)
    with pytest.raises(LoginError) as unavailable:
        service.complete({"state": state, "code": "c", "iss": ISSUER}, provider="default", browser_token=BROWSER)
    assert (unavailable.value.reason, unavailable.value.status) == ("provider_unavailable", 503)
    assert read == ["metadata"] and oidc.calls == []


def test_a_missing_iss_is_fine_when_the_provider_does_not_send_one(service, oidc):
    oidc.iss_supported = False
    state = begin(service, oidc)
    assert service.complete({"state": state, "code": "c"}, provider="default", browser_token=BROWSER).user_id


def test_a_transaction_no_key_can_read_cannot_complete(service, oidc, dbsession):
    state = begin(service, oidc)
    service.cipher = TokenCipher([Fernet.generate_key().decode()])
    with pytest.raises(LoginError) as refused:
        callback(service, state)
    assert refused.value.reason == "transaction_unreadable" and oidc.calls == []


@pytest.mark.parametrize(
    "error, reason, status",
    [
        (ProviderUnavailable("down"), "provider_unavailable", 503),
        (TokenRequestRefused("invalid_grant", None), "token_error:invalid_grant", 400),
        (OIDCError("bad_nonce", "nonce"), "bad_nonce", 400),
        (OIDCError("provider_misconfigured", "metadata"), "provider_misconfigured", 502),
    ],
)
def test_provider_failures_create_nothing(service, oidc, dbsession, error, reason, status):
    def fail(code, verifier):
        raise error

    oidc.exchange = fail
    with pytest.raises(LoginError) as refused:
        callback(service, begin(service, oidc))
    assert (refused.value.reason, refused.value.status) == (reason, status)
    assert dbsession.query(User).count() == 0


def test_a_token_response_without_an_id_token_is_refused(service, oidc, dbsession):
    oidc.exchange = lambda code, verifier: {"access_token": "at", "token_type": "Bearer"}
    with pytest.raises(LoginError) as refused:
        callback(service, begin(service, oidc))
    assert refused.value.reason == "missing_id_token" and dbsession.query(User).count() == 0


ISSUED = {"access_token": "at-1", "refresh_token": "rt-1", "token_type": "Bearer", "id_token": "idt"}


def queued_for_revocation(dbsession, cipher) -> list[tuple[str, str, str]]:
    rows = dbsession.execute(select(TokenRevocation.issuer, TokenRevocation.token, TokenRevocation.token_type_hint))
    return [(issuer, cipher.decrypt(token), hint) for issuer, token, hint in rows]


def raising(error):
    def call(*args, **kwargs):
        raise error

    return call


def answering(answer):
    return lambda code, verifier: answer


@pytest.mark.parametrize(
    "stub, refusal, reason",
    [
        ("validate_id_token", raising(OIDCError("bad_signature", "signature")), "bad_signature"),
        ("exchange", answering({k: v for k, v in ISSUED.items() if k != "id_token"}), "missing_id_token"),
        ("validate_id_token", raising(ProviderUnavailable("the provider's keys timed out")), "provider_unavailable"),
        ("exchange", raising(DPoPNotBound(ISSUED)), "dpop_not_bound"),
        ("exchange", raising(TokenResponseInvalid("The provider's token response has no access token.", TokenSet(refresh_token="rt-1"))),
         "token_response_invalid"),
    ],
)
def test_a_sign_in_refused_after_the_code_was_exchanged_leaves_no_issued_token_live(
    service, oidc, dbsession, cipher, stub, refusal, reason
):
    """What the provider issued to a sign-in that is then refused is kept nowhere: queued for the
    revoker (the refresh token, else the access token), as the sign-in's records are."""
    oidc.exchange = answering(dict(ISSUED))
    setattr(oidc, stub, refusal)
    with pytest.raises(LoginError) as refused:
        callback(service, begin(service, oidc))
    assert refused.value.reason == reason and dbsession.query(User).count() == 0
    assert queued_for_revocation(dbsession, cipher) == [(ISSUER, "rt-1", "refresh_token")]


def test_a_sign_in_refused_for_its_token_answer_revokes_the_access_token_it_issued_without_a_refresh_token(
    service, oidc, dbsession, cipher
):
    """A usable access token in an answer refused for something else (its type, a refresh token
    that is not a string) is live at the provider until it expires: revoked, as for a step-up."""
    oidc.exchange = raising(TokenResponseInvalid("The provider's token response is not a Bearer token.", TokenSet(access_token="at-1")))
    with pytest.raises(LoginError) as refused:
        callback(service, begin(service, oidc))
    assert refused.value.reason == "token_response_invalid"
    assert queued_for_revocation(dbsession, cipher) == [(ISSUER, "at-1", "access_token")]


def test_a_step_up_the_provider_did_not_confirm_leaves_no_issued_token_live(service, oidc, dbsession, cipher):
    oidc.exchange = answering({"access_token": "at-1", "token_type": "Bearer", "id_token": "idt"})
    service.begin(provider="default", next_path="/admin", browser_token=BROWSER, step_up=StepUp(acr_values=("mfa",)))
    with pytest.raises(LoginError) as refused:
        callback(service, oidc.sent["state"])
    assert refused.value.reason == "auth_time_missing"  # no auth_time, no acr: not confirmed
    # No refresh token was issued: the access token is what could be used.
    assert queued_for_revocation(dbsession, cipher) == [(ISSUER, "at-1", "access_token")]


@pytest.mark.parametrize("signed_in_at, revoked", [(ISSUER, []), ("https://other.example.test", [(ISSUER, "rt-1", "refresh_token")])])
def test_a_refused_step_up_in_a_browser_signed_in_at_the_provider_revokes_nothing(
    service, oidc, dbsession, cipher, signed_in_at, revoked
):
    """Made in the same session at the provider as the browser's own (most likely), whose tokens
    revoking it could end there (Keycloak): it is not kept, nobody holds it, and it is left to expire."""
    oidc.exchange = answering(dict(ISSUED))
    service.begin(provider="default", next_path="/admin", browser_token=BROWSER, step_up=StepUp(acr_values=("mfa",)))
    with pytest.raises(LoginError):
        service.complete({"state": oidc.sent["state"], "code": "code-1", "iss": ISSUER}, provider="default",
                         browser_token=BROWSER, signed_in=SimpleNamespace(user_issuer=signed_in_at))
    assert queued_for_revocation(dbsession, cipher) == revoked


@pytest.mark.parametrize("error", [TokenRequestRefused("invalid_grant", None), ProviderUnavailable("down")])
def test_a_sign_in_whose_code_exchange_failed_has_nothing_to_revoke(service, oidc, dbsession, cipher, error):
    oidc.exchange = raising(error)
    with pytest.raises(LoginError):
        callback(service, begin(service, oidc))
    assert queued_for_revocation(dbsession, cipher) == []


def test_a_sign_in_that_passes_queues_nothing_for_revocation(service, oidc, dbsession, cipher):
    oidc.exchange = answering(dict(ISSUED))
    assert callback(service, begin(service, oidc)).tokens.refresh_token == "rt-1"
    assert queued_for_revocation(dbsession, cipher) == []


@pytest.mark.parametrize(
    "value, groups",
    [("admins", ["admins"]), (["b", "a", "a", "", 7], ["a", "b"]), (None, []), ({"x": 1}, []), (["g" * 300], ["g" * 255])],
)
def test_groups_from_any_claim_shape(value, groups):
    assert groups_from(value) == groups
