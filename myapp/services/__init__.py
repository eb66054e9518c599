"""Services do the work; each is a plain class wired per request by a small factory here."""

from myapp.services.audit import AuditLog
from myapp.services.sessions import SessionStore, TokenCipher


def includeme(config):
    settings = config.get_settings()["myapp"]
    cipher = TokenCipher(settings.tokens.encryption_keys)
    config.registry["token_cipher"] = cipher

    def session_store(request):
        return SessionStore(dbsession=request.dbsession, cipher=cipher, settings=settings.session)

    def audit(request):
        return AuditLog(dbsession=request.dbsession)

    config.add_request_method(session_store, reify=True)
    config.add_request_method(audit, reify=True)
