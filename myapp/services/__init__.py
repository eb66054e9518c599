"""Services do the work; each is a plain class wired per request by a small factory here."""

import redis

from myapp.services.audit import AuditLog
from myapp.services.http import HttpClient
from myapp.services.login import LoginService, LogoutService
from myapp.services.metrics import Metrics
from myapp.services.oidc import OIDCClient
from myapp.services.proxy import Proxy
from myapp.services.ratelimit import RateLimiter
from myapp.services.sessions import SessionStore, TokenCipher
from myapp.services.tokens import DatabaseRefreshLock, RedisRefreshLock, TokenManager


def includeme(config):
    settings = config.get_settings()["myapp"]
    registry = config.registry
    cipher = TokenCipher(settings.tokens.encryption_keys)
    http = HttpClient(timeout=settings.oidc.http_timeout)
    oidc = OIDCClient(settings=settings.oidc, http=http)
    redis_client = None
    if settings.lock.redis_url:
        redis_client = redis.Redis.from_url(settings.lock.redis_url, socket_timeout=5, socket_connect_timeout=2)

    # The lock outlives a slow provider call (its timeout), with room to spare.
    lock_timeout = settings.oidc.http_timeout * 2 + 5

    def lock_sessions():
        # Looked up at call time: tests rebind the factory to a rolled-back connection.
        return registry["own_dbsession_factory"]()

    if settings.lock.backend == "redis":
        lock = RedisRefreshLock(redis_client, lock_sessions, timeout=lock_timeout)
    else:
        lock = DatabaseRefreshLock(lock_sessions, timeout=lock_timeout)
    # Each sign-in start stores a login transaction: bound them per client address (generously:
    # a whole office may share one address).
    registry["login_rate_limiter"] = RateLimiter(limit=settings.login_rate_limit, window=60)
    registry["token_cipher"] = cipher
    registry["http_client"] = http
    registry["oidc_client"] = oidc
    registry["redis"] = redis_client
    metrics = registry["metrics"] = Metrics()
    registry["token_manager"] = TokenManager(
        lock=lock, oidc=oidc, cipher=cipher, settings=settings.tokens, metrics=metrics
    )
    registry["proxy"] = Proxy(
        upstreams=settings.upstreams, max_body_bytes=settings.proxy.max_body_bytes, public_url=settings.public_url
    )

    def session_store(request):
        return SessionStore(
            dbsession=lambda: request.dbsession,
            cipher=cipher,
            settings=settings.session,
            own_transactions=request.registry["own_dbsession_factory"],
            reads=request.registry["read_connection"],
        )

    def audit(request):
        return AuditLog(dbsession=request.dbsession)

    def login_service(request):
        return LoginService(dbsession=request.dbsession, oidc=oidc, cipher=cipher, settings=settings.oidc)

    def logout_service(request):
        return LogoutService(dbsession=request.dbsession, oidc=oidc, sessions=request.session_store)

    def access_token(request, stale=None):
        """A valid access token for this request's session (see TokenManager.access_token)."""
        return request.registry["token_manager"].access_token(request.session_record, stale=stale)

    config.add_request_method(session_store, reify=True)
    config.add_request_method(audit, reify=True)
    config.add_request_method(login_service, reify=True)
    config.add_request_method(logout_service, reify=True)
    config.add_request_method(access_token)


def close_resources(registry) -> None:
    """Release what an app holds (pooled connections, clients): for scripts and tests that end."""
    registry["http_client"].close()
    registry["proxy"].pool.clear()
    if registry["redis"] is not None:
        registry["redis"].close()
    for name in ("db_engine", "own_engine"):
        registry[name].dispose()
