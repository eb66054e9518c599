"""The app's request: typed properties for the services a view needs, and the few named things a
request learns on its way (why its session ended, whether its transaction keeps its work).

Views, resources and the security policy reach services only through these properties; nothing
looks anything up in the registry by a string.
"""

from pyramid.decorator import reify
from pyramid.request import Request as PyramidRequest
from sqlalchemy.orm import Session

from myapp.services import Services
from myapp.services.audit import AuditLog
from myapp.services.login import LoginService
from myapp.services.logout import LogoutService
from myapp.services.sessions import EndReason, SessionStore


class Request(PyramidRequest):
    # Why the session the cookie named is no longer live, so that the next page can say so.
    signed_out_reason: EndReason | None = None
    # Set by keep_transaction(): pyramid_tm commits even though the answer is an error.
    keeps_transaction: bool = False

    @reify
    def services(self) -> Services:
        return self.registry[Services]

    @reify
    def dbsession(self) -> Session:
        """The request's ORM session, in pyramid_tm's transaction."""
        return self.services.database.request_session(self)

    @reify
    def session_store(self) -> SessionStore:
        services = self.services
        return SessionStore(
            dbsession=lambda: self.dbsession,
            cipher=services.cipher,
            settings=services.settings.session,
            own_transactions=services.database.own_transaction,
            reads=services.database.read,
        )

    @reify
    def audit(self) -> AuditLog:
        return AuditLog(dbsession=self.dbsession)

    @reify
    def login_service(self) -> LoginService:
        services = self.services
        return LoginService(dbsession=self.dbsession, oidc=services.oidc, cipher=services.cipher, settings=services.settings.oidc)

    @reify
    def logout_service(self) -> LogoutService:
        services = self.services
        return LogoutService(
            dbsession=self.dbsession,
            oidc=services.oidc,
            tokens=services.tokens,
            sessions=self.session_store,
            audit=self.audit,
        )

    def access_token(self, stale: str | None = None) -> str:
        """A valid access token for this request's session (see TokenManager.access_token)."""
        return self.services.tokens.access_token(self.identity.session, stale=stale)

    def keep_transaction(self) -> None:
        """Commit this request's work even though it answers with an error."""
        self.keeps_transaction = True

    def restart_transaction(self) -> None:
        """Discard what this request wrote so far and start again, keeping what comes next."""
        self.tm.abort()
        self.tm.begin()
        self.keep_transaction()


def includeme(config):
    config.set_request_factory(Request)
