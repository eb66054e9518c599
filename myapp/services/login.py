"""Signing in: the login transaction, and the callback's checks in SPEC.md's order."""

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from myapp.models import LoginTransaction, User, UserSession, insert_ignoring_duplicates
from myapp.models.meta import utcnow
from myapp.services.dpop import DPoPKey, DPoPKeyUnreadable
from myapp.services.oidc import (
    CLOCK_SKEW,
    DPoPNotBound,
    OIDCClient,
    OIDCError,
    Providers,
    ProviderUnavailable,
    TokenRequestRefused,
    TokenResponseInvalid,
    error_code,
)
from myapp.services.sessions import SessionRecord, SessionRows, SignIn, same_provider_session, stored_sid
from myapp.services.tokenset import DPOP, TokenCipher, TokenSet, token_type_of
from myapp.settings import Upstream
from myapp.text import shown_text, storable

log = logging.getLogger(__name__)

LOGIN_TRANSACTION_LIFETIME = timedelta(minutes=10)
MAX_PENDING_PER_BROWSER = 10
MAX_PARAMETER_LENGTH = 4096
# The authorization response's parameters this client reads.
RESPONSE_PARAMETERS = ("state", "code", "iss", "error", "error_description")
AMR_COLUMN_LENGTH = UserSession.__table__.c.amr.type.length


# What a disabled account is told, at its sign-in and when its open session ends.
ACCOUNT_DISABLED_MESSAGE = "This account is disabled. If you think it should not be, ask an administrator."


class LoginError(Exception):
    """The sign-in failed; nothing was created. ``reason`` goes to the audit log.

    ``started_here`` is False when the callback answers no sign-in this app started (no state, an
    unknown one, a malformed response): anyone can send those, so they are counted and logged,
    never audited, where they would bury the real failures. ``user_id``: the person refused, when
    the provider's answer passed every check and named someone known here.
    """

    def __init__(
        self, reason: str, message: str, *, status: int = 400, next_path: str = "/", started_here: bool = True,
        user_id: int | None = None,
    ):
        super().__init__(message)
        self.reason = reason
        self.user_id = user_id
        self.message = message
        self.status = status
        self.next_path = next_path
        self.started_here = started_here


@dataclass(frozen=True)
class LoginResult:
    user_id: int
    provider: str
    tokens: TokenSet
    provider_sid: str | None
    next_path: str
    sign_in: SignIn = SignIn()
    # The hash of the login-binding cookie of the browser that signed in (the session keeps it).
    browser_binding: str | None = None


@dataclass(frozen=True)
class StepUp:
    """What a sign-in asks the provider for beyond the usual (SPEC.md "Step-up authentication")."""

    acr_values: tuple[str, ...] = ()
    max_age: int | None = None

    def __bool__(self) -> bool:
        return bool(self.acr_values) or self.max_age is not None

    def authorize_params(self) -> dict:
        params = {}
        if self.acr_values:
            params["acr_values"] = " ".join(self.acr_values)
        if self.max_age is not None:
            params["max_age"] = str(self.max_age)
        return params


def repeated(params: Mapping[str, str], names) -> bool:
    """Whether any of ``names`` is in ``params`` more than once (RFC 6749 3.1: none may be): a
    query's multidict (WebOb's ``getall``) can hold a name twice, a plain mapping cannot. The
    callback's and /login's rule."""
    getall = getattr(params, "getall", None)
    return getall is not None and any(len(getall(name)) > 1 for name in names)


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class LoginService:
    def __init__(
        self,
        *,
        dbsession: Session,
        providers: Providers,
        cipher: TokenCipher,
        upstreams: Mapping[str, Upstream] = MappingProxyType({}),
        clock: Callable[[], datetime] = utcnow,
    ):
        self.dbsession = dbsession
        self.providers = providers
        self.cipher = cipher
        self.upstreams = upstreams
        self.clock = clock

    def resources_for(self, provider: str) -> tuple[str, ...]:
        """RFC 8707 section 2.1: the authorization asks for the resource of every upstream this
        provider's sessions get their own token for by refresh, so that the grant covers them all."""
        resources: dict[str, None] = {}
        for upstream in self.upstreams.values():
            if upstream.accepts(provider) and not upstream.exchange:
                resources.update(dict.fromkeys(upstream.resources))
        return tuple(resources)

    def begin(
        self,
        *,
        provider: str,
        next_path: str,
        browser_token: str,
        prompt: str | None = None,
        step_up: StepUp = StepUp(),
    ) -> str:
        """Record a login transaction for ``provider`` and return its authorization URL. Raises
        :class:`UnknownProvider`, or :class:`OIDCError` when the provider cannot be reached."""
        client = self.providers.named(provider)
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        if step_up.max_age == 0:
            prompt = "login"  # max_age=0 means "sign in again now"; prompt=login says so to every provider
        extra = step_up.authorize_params()
        # RFC 9449: the session's key pair is made now, and the authorization code bound to it
        # (dpop_jkt, section 10): a code that leaks cannot be redeemed without this server's key.
        dpop = client.new_dpop_key()
        if dpop is not None:
            extra["dpop_jkt"] = dpop.thumbprint()
        url = client.authorization_url(
            state=state, nonce=nonce, code_verifier=verifier, prompt=prompt, resources=self.resources_for(provider),
            extra=extra,
        )
        now = self.clock()
        browser_hash = _sha256(browser_token)
        self.dbsession.execute(delete(LoginTransaction).where(LoginTransaction.expires_at < now))
        # A few tabs may sign in at once; a browser starting more gives up its oldest attempts.
        kept = (
            select(LoginTransaction.id)
            .where(LoginTransaction.browser_hash == browser_hash)
            .order_by(LoginTransaction.id.desc())
            .limit(MAX_PENDING_PER_BROWSER - 1)
        )
        self.dbsession.execute(
            delete(LoginTransaction).where(
                LoginTransaction.browser_hash == browser_hash, LoginTransaction.id.not_in(kept.scalar_subquery())
            )
        )
        self.dbsession.add(
            LoginTransaction(
                state_hash=_sha256(state),
                browser_hash=browser_hash,
                nonce=self.cipher.encrypt(nonce),
                code_verifier=self.cipher.encrypt(verifier),
                next_path=next_path,
                provider=provider,
                acr_values=" ".join(step_up.acr_values) or None,
                max_age=step_up.max_age,
                dpop_key=self.cipher.encrypt(dpop.to_json()) if dpop else None,
                created_at=now,
                expires_at=now + LOGIN_TRANSACTION_LIFETIME,
            )
        )
        self.dbsession.flush()
        return url

    def complete(
        self, params: Mapping[str, str], *, provider: str, browser_token: str | None,
        signed_in: SessionRecord | None = None,
    ) -> LoginResult:
        """The callback of ``provider`` (the one its URL names), failing closed at each step in
        SPEC.md's order. No token is used early. ``signed_in``: the browser's live session, which a
        refused sign-in leaves as it is."""
        for name in RESPONSE_PARAMETERS:
            if len(params.get(name, "")) > MAX_PARAMETER_LENGTH:
                raise LoginError("parameter_too_long", "The sign-in response is malformed.", started_here=False)
        if repeated(params, RESPONSE_PARAMETERS):
            # RFC 6749 3.1: none more than once. A query's last copy is the one read, so a response
            # with a second state, code or issuer put before the provider's was read as the
            # provider's (helper-132); which copy a front proxy or a log reads is anyone's guess.
            raise LoginError("parameter_repeated", "The sign-in response is malformed.", started_here=False)
        if params.get("error"):
            try:
                transaction = self._take_transaction(params.get("state", ""), browser_token)
            except LoginError as e:
                raise self._provider_error(params["error"], "/", e.started_here) from None
            # An error answer is the provider's only when it came from the provider the sign-in was
            # sent to (RFC 9207 section 2.4), as for a code.
            self._answering_provider(transaction, provider, params.get("iss"))
            raise self._provider_error(params["error"], transaction.next_path, True)
        transaction = self._take_transaction(params.get("state", ""), browser_token)
        next_path = transaction.next_path

        def fail(reason, message, status=400, user_id=None):
            return LoginError(reason, message, status=status, next_path=next_path, user_id=user_id)
        iss = params.get("iss")
        client = self._answering_provider(transaction, provider, iss)
        settings = client.settings
        try:
            metadata = client.metadata()
        except OIDCError as e:
            raise fail(e.reason, e.message, 503 if isinstance(e, ProviderUnavailable) else 502) from None
        if iss is None and metadata.iss_parameter_supported:
            raise fail("missing_iss_parameter", "The sign-in response does not say which provider sent it.")
        code = params.get("code")
        if not code:
            raise fail("missing_code", "The sign-in response has no authorization code.")

        verifier = self.cipher.decrypt(transaction.code_verifier)
        nonce = self.cipher.decrypt(transaction.nonce)
        if verifier is None or nonce is None:
            raise fail("transaction_unreadable", "This sign-in can no longer be completed.")
        # What the provider issued to a sign-in refused after the code was exchanged (an ID token or
        # a step-up that does not pass, a provider gone while checking it): not kept, and not left
        # live either. The refused sign-in's records are committed (LoginError), and the revoker
        # revokes it: the refresh token, else the access token. Not when the browser is signed in
        # at this provider already (a step-up that did not pass): it was most likely made in the
        # same session at the provider as that one, whose tokens revoking it could end there
        # (same_provider_session), and nobody holds it; unless it was refused once its person was
        # known (account_disabled), another person in another session at the provider.
        issued, sid = TokenSet(), None
        try:
            try:
                # RFC 9449: the key the sign-in started with (a sign-in started before DPoP was turned on gets one now).
                dpop = self._dpop_key(transaction, client, metadata, fail)
                token = client.exchange_code(code, verifier, dpop=dpop)
                issued = TokenSet.issued_in(token)
                if token_type_of(token) != DPOP:
                    dpop = None  # auto: the provider chose Bearer; the session has no key to keep
                id_token = token.get("id_token")
                if not isinstance(id_token, str):
                    raise OIDCError("missing_id_token", "The provider did not return an ID token.")
                claims = client.validate_id_token(id_token, nonce=nonce, access_token=token["access_token"])
            except ProviderUnavailable as e:
                raise fail(e.reason, e.message, 503) from None
            except TokenRequestRefused as e:
                raise fail(e.reason, "The provider refused to complete this sign-in. Please start again.") from None
            except DPoPNotBound as e:
                issued = e.issued()
                raise fail(e.reason, e.message, 502) from None
            except TokenResponseInvalid as e:
                issued = e.issued()
                raise fail(e.reason, f"The sign-in could not be verified: {e.message}") from None
            except OIDCError as e:
                raise fail(e.reason, f"The sign-in could not be verified: {e.message}", 502 if e.reason == "provider_misconfigured" else 400) from None
            sign_in = self._check_step_up(transaction, claims, fail)

            # Every check has passed: only now is the access token used.
            sid = stored_sid(claims.get("sid"))
            if settings.fetch_userinfo:
                userinfo = client.userinfo(token["access_token"], subject=claims["sub"], dpop=dpop)
                if userinfo:
                    claims = {**claims, **{k: v for k, v in userinfo.items() if k not in ("iss", "aud", "sub")}}
            user = self.upsert_user(claims, client)
            if user.disabled:
                # Its session would be dead at once (SessionStore.dead_reason): none is made, and the
                # person is told why rather than shown a signed-out page.
                raise fail("account_disabled", ACCOUNT_DISABLED_MESSAGE, 403, user_id=user.id)
        except LoginError as e:
            if (
                signed_in is None
                or signed_in.user_issuer != settings.issuer
                # Someone else's sign-in refused once known (account_disabled), in another session at
                # the provider than the browser's: revoking it ends nothing of the signed-in person's.
                or e.user_id is not None
                and e.user_id != signed_in.user_id
                and not same_provider_session(signed_in.user_issuer, signed_in.provider_sid, settings.issuer, sid)
            ):
                SessionRows(self.dbsession, self.cipher, self.clock).revoke_later(settings.issuer, issued)
            raise

        return LoginResult(
            user_id=user.id,
            provider=provider,
            tokens=TokenSet.from_response(token, self.clock(), dpop_key=dpop.to_json() if dpop else None),
            provider_sid=sid,
            next_path=next_path,
            sign_in=sign_in,
            browser_binding=transaction.browser_hash,
        )

    def _answering_provider(self, transaction: LoginTransaction, provider: str, iss: str | None) -> OIDCClient:
        """The client of the provider whose callback (``provider``, the one its URL names) answers
        ``transaction``, once the answer is shown to come from the provider the sign-in was sent
        to: back at that provider's callback, whatever the response claims (the mix-up defence,
        RFC 9700 section 4.4), and naming its issuer when it names one (``iss``, RFC 9207)."""

        def fail(reason, message):
            return LoginError(reason, message, next_path=transaction.next_path)
        if transaction.provider != provider:
            raise fail("wrong_provider_callback", "This sign-in was started with another provider. Please start again.")
        client = self.providers.get(provider)
        if client is None:
            raise fail("unknown_provider", "This sign-in provider is no longer configured. Please start again.")
        if iss is not None and iss != client.settings.issuer:
            raise fail("bad_iss_parameter", "The sign-in response came from another provider.")
        return client

    def _dpop_key(self, transaction: LoginTransaction, client: OIDCClient, metadata, fail) -> DPoPKey | None:
        if transaction.dpop_key is None:
            return client.new_dpop_key(metadata)
        try:
            return DPoPKey.from_json(self.cipher.decrypt(transaction.dpop_key))
        except DPoPKeyUnreadable:
            raise fail("transaction_unreadable", "This sign-in can no longer be completed.") from None

    def _check_step_up(self, transaction: LoginTransaction, claims: Mapping, fail) -> SignIn:
        """OpenID Connect Core 3.1.2.1 and 3.1.3.7: after asking for ``max_age`` or ``acr_values``,
        the ID token must carry ``auth_time`` (recent enough) and an ``acr`` among those asked for."""
        now = self.clock()
        sign_in = sign_in_from(claims, now)
        asked = transaction.max_age is not None or transaction.acr_values
        if not asked:
            return sign_in
        not_confirmed = "The sign-in provider did not confirm the stronger sign-in this page needs. Please try again."
        if sign_in.auth_time is None:
            raise fail("auth_time_missing" if "auth_time" not in claims else "auth_time_invalid", not_confirmed)
        if transaction.max_age is not None:
            # No older than the rule that asked allows, so that the new session satisfies it (a
            # provider that ignores max_age is refused here rather than asked again and again); a
            # minute of clock skew only for shorter ages (/login?max_age=0).
            if (now - sign_in.auth_time).total_seconds() > max(transaction.max_age, CLOCK_SKEW):
                raise fail("auth_time_too_old", not_confirmed)
        if transaction.acr_values and sign_in.acr not in transaction.acr_values.split():
            raise fail("acr_not_satisfied", not_confirmed)
        return sign_in

    def _take_transaction(self, state: str, browser_token: str | None) -> LoginTransaction:
        """Find and delete (single use) the transaction this callback answers."""
        if not state:
            raise LoginError(
                "missing_state", "The sign-in response is incomplete. Please start again.", started_here=False
            )
        state_hash = _sha256(state)
        transaction = self.dbsession.scalars(
            select(LoginTransaction).where(LoginTransaction.state_hash == state_hash)
        ).one_or_none()
        # The lookup is by hash; compare again in constant time so the check never hinges on the index.
        if transaction is None or not hmac.compare_digest(transaction.state_hash, state_hash):
            raise LoginError(
                "unknown_state",
                "This sign-in link has already been used or was never started here. Please start again.",
                started_here=False,
            )
        next_path = transaction.next_path
        if transaction.expires_at <= self.clock():
            # Before the browser's check: its binding cookie runs out with the transaction, so a
            # sign-in page left open too long comes back without it, late, not from another browser.
            self.dbsession.execute(delete(LoginTransaction).where(LoginTransaction.id == transaction.id))
            raise LoginError("expired_state", "This sign-in took too long. Please start again.", next_path=next_path)
        # Another browser's callback neither completes nor cancels this sign-in.
        if not browser_token or not hmac.compare_digest(transaction.browser_hash, _sha256(browser_token)):
            raise LoginError(
                "other_browser",
                "This sign-in was started in another browser. Please start again here.",
                next_path=next_path,
            )
        taken = self.dbsession.execute(
            delete(LoginTransaction).where(LoginTransaction.id == transaction.id)
        ).rowcount
        if taken != 1:
            raise LoginError("unknown_state", "This sign-in link has already been used. Please start again.")
        return transaction

    @staticmethod
    def _provider_error(error: str, next_path: str, started_here: bool) -> LoginError:
        messages = {
            "access_denied": "Sign-in was cancelled, or the provider did not allow it.",
            "login_required": "The provider needs you to sign in again.",
            "consent_required": "The provider needs your consent first.",
            "interaction_required": "The provider needs you to sign in again.",
            "temporarily_unavailable": "The provider is temporarily unavailable. Please try again in a moment.",
            "server_error": "The provider had a problem. Please try again in a moment.",
        }
        code = error_code(error)
        return LoginError(
            f"provider_error:{code}"[:64],
            messages.get(code, "The provider could not sign you in."),
            next_path=next_path,
            started_here=started_here,
        )

    def upsert_user(self, claims: Mapping, client: OIDCClient) -> User:
        """Users are keyed by (issuer, sub), never by email (the same address at two providers is
        two people); their details refresh at each login."""
        issuer = client.settings.issuer
        # Two first sign-ins of one person at once must not collide on the (issuer, sub) key.
        insert_ignoring_duplicates(self.dbsession, User, {"issuer": issuer, "subject": claims["sub"]}, ["issuer", "subject"])
        user = self.dbsession.scalars(select(User).where(User.issuer == issuer, User.subject == claims["sub"])).one()
        user.name = _text(claims.get("name")) or _text(claims.get("preferred_username")) or _text(claims.get("email")) or ""
        user.email = _text(claims.get("email"), 320) or None
        claim = client.settings.groups_claim
        user.groups = groups_from(claims.get(claim)) if claim is not None else []
        user.last_login_at = self.clock()
        self.dbsession.flush()
        return user


def sign_in_from(claims: Mapping, now: datetime) -> SignIn:
    """The ID token's acr, amr and auth_time, each only when well-formed (and bounded for storage).

    An ``auth_time`` later than ``now`` by more than the clock skew is none (it would satisfy every
    ``max_age`` for as long as it lies ahead); one within the skew counts as ``now``."""
    acr = claims.get("acr")
    acr = acr if isinstance(acr, str) and 0 < len(acr) <= 255 and storable(acr) else None
    amr = []
    for method in claims.get("amr") if isinstance(claims.get("amr"), list) else ():
        # Up to 20 methods of up to 64 characters, as many as fit sessions.amr written as JSON.
        if isinstance(method, str) and 0 < len(method) <= 64 and len(json.dumps([*amr, method])) <= AMR_COLUMN_LENGTH:
            amr.append(method)
            if len(amr) == 20:
                break
    auth_time = claims.get("auth_time")
    when = None
    if isinstance(auth_time, (int, float)) and not isinstance(auth_time, bool) and 0 < auth_time < 1e11:
        when = datetime.fromtimestamp(int(auth_time), timezone.utc)
        if when > now + timedelta(seconds=CLOCK_SKEW):
            when = None
        elif when > now:
            when = now
    return SignIn(acr=acr, amr=tuple(amr), auth_time=when)


def _text(value, limit=255) -> str:
    return shown_text(value).strip()[:limit] if isinstance(value, str) else ""


def groups_from(value) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    # A group no database stores as it is (a NUL, a lone surrogate) names no group of any setting
    # (ini files are UTF-8 text): left out, as it can grant nothing here (helper-116).
    return sorted({g[:255] for g in value if isinstance(g, str) and g and storable(g)})[:500]
