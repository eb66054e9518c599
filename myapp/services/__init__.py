"""Services do the work; each is a plain class wired per request by a small factory here."""

from myapp.services.audit import AuditLog
from myapp.services.http import HttpClient
from myapp.services.login import LoginService, LogoutService
from myapp.services.oidc import OIDCClient
from myapp.services.sessions import SessionStore, TokenCipher


def includeme(config):
    settings = config.get_settings()["myapp"]
    cipher = TokenCipher(settings.tokens.encryption_keys)
    http = HttpClient(timeout=settings.oidc.http_timeout)
    oidc = OIDCClient(settings=settings.oidc, http=http)
    config.registry["token_cipher"] = cipher
    config.registry["http_client"] = http
    config.registry["oidc_client"] = oidc

    def session_store(request):
        return SessionStore(dbsession=request.dbsession, cipher=cipher, settings=settings.session)

    def audit(request):
        return AuditLog(dbsession=request.dbsession)

    def login_service(request):
        return LoginService(dbsession=request.dbsession, oidc=oidc, cipher=cipher, settings=settings.oidc)

    def logout_service(request):
        return LogoutService(dbsession=request.dbsession, oidc=oidc, sessions=request.session_store)

    config.add_request_method(session_store, reify=True)
    config.add_request_method(audit, reify=True)
    config.add_request_method(login_service, reify=True)
    config.add_request_method(logout_service, reify=True)
