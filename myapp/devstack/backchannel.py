"""OpenID Connect Back-Channel Logout 1.0: tell each client of an ended session, server to server."""

import logging
import secrets
import time
from collections.abc import Mapping

import requests

from myapp.devstack.keys import TokenSigner
from myapp.devstack.models import Client, ProviderSession
from myapp.devstack.storage import Stat, Stats

log = logging.getLogger(__name__)

LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_LIFETIME = 120
TIMEOUT = 5.0


class BackchannelNotifier:
    def __init__(self, *, issuer: str, signer: TokenSigner, clients: Mapping[str, Client], stats: Stats):
        self.issuer = issuer
        self.signer = signer
        self.clients = clients
        self.stats = stats

    def logout_token(self, client: Client, session: ProviderSession) -> str:
        """A logout token (section 2.4): an event instead of a nonce, typed ``logout+jwt``."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": client.client_id,
            "iat": now,
            "exp": now + LOGOUT_TOKEN_LIFETIME,
            "jti": secrets.token_urlsafe(16),
            "sub": session.user.subject,
            "sid": session.sid,
            "events": {LOGOUT_EVENT: {}},
        }
        return self.signer.sign(claims, typ="logout+jwt")

    def notify(self, session: ProviderSession) -> None:
        """POST a logout token to every client that signed in through ``session``; never raises.

        Called without any lock held: the client may be served by this very process.
        """
        for client_id in sorted(session.client_ids):
            client = self.clients.get(client_id)
            if client is None or not client.backchannel_logout_uri:
                continue
            self._send(client.backchannel_logout_uri, self.logout_token(client, session))

    def _send(self, uri: str, logout_token: str) -> None:
        try:
            response = requests.post(
                uri, data={"logout_token": logout_token}, timeout=TIMEOUT, allow_redirects=False
            )
        except requests.RequestException as e:
            self.stats.increment(Stat.BACKCHANNEL_LOGOUT_FAILURES)
            log.warning("back-channel logout to %s failed: %s", uri, type(e).__name__)
            return
        if 200 <= response.status_code < 300:
            self.stats.increment(Stat.BACKCHANNEL_LOGOUTS_SENT)
        else:
            self.stats.increment(Stat.BACKCHANNEL_LOGOUT_FAILURES)
            log.warning("back-channel logout to %s answered %s", uri, response.status_code)
