"""Services do the work. Those that live as long as the app are built once, here, into one typed
:class:`Services` object; those bound to a request's transaction are built by the typed
properties of :class:`myapp.request.Request`."""

from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from myapp.cookies import LoginBindingCookie, SessionCookie
from myapp.models import Database
from myapp.services.login import LOGIN_TRANSACTION_LIFETIME
from myapp.services.metrics import Metrics
from myapp.services.oidc import Providers
from myapp.services.proxy import Proxy
from myapp.services.ratelimit import RateLimiter
from myapp.services.revocation import Revoker
from myapp.services.sessions import RecentTouches
from myapp.services.tokens import DatabaseRefreshLock, RedisRefreshLock, TokenManager
from myapp.services.tokenset import TokenCipher
from myapp.settings import Settings


def connect_redis(url: str, *, socket_timeout: float = 5.0, socket_connect_timeout: float = 2.0) -> redis.Redis:
    """The client of the Redis refresh lock (and /readyz's check): each command answered within
    ``socket_timeout`` or failed, and tried once more only on a connection found dead. Said here,
    not left to redis-py's defaults, which differ by how a client is made (8.x: none from a URL, ten
    tries with backoff from ``Redis(host=...)``): with those, a Redis that answers late holds a
    refresh, and /readyz, for about eleven timeouts, a minute with 5 s, instead of one."""
    once_more_if_dead = Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
    return redis.Redis.from_url(
        url, socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout, retry=once_more_if_dead
    )


@dataclass(frozen=True)
class Services:
    """Everything the app holds for its whole life, shared by every thread: ``request.services``."""

    settings: Settings
    database: Database
    cipher: TokenCipher
    providers: Providers
    tokens: TokenManager
    revoker: Revoker
    proxy: Proxy
    metrics: Metrics
    redis: redis.Redis | None
    session_cookie: SessionCookie
    login_cookie: LoginBindingCookie
    # Each sign-in start stores a login transaction, and each callback spends one or fails: both
    # bounded per client address (generously: a whole office may share one address).
    login_rate_limiter: RateLimiter
    callback_rate_limiter: RateLimiter
    # Which sessions this process recorded activity for lately (one write for parallel requests).
    recent_touches: RecentTouches

    @classmethod
    def build(cls, settings: Settings, database: Database) -> "Services":
        cipher = TokenCipher(settings.tokens.encryption_keys)
        providers = Providers.build(settings.providers)
        metrics = Metrics()
        redis_client = None
        if settings.lock.redis_url:
            redis_client = connect_redis(settings.lock.redis_url)
        # Its holder's calls to the provider end in time (settings.REFRESH_LOCK_MARGIN); every other
        # database wait is bounded above it (models.WAIT_MARGIN).
        lock_timeout = settings.refresh_lock_timeout
        if settings.lock.backend == "redis":
            lock = RedisRefreshLock(redis_client, database.own_transaction, timeout=lock_timeout)
        else:
            lock = DatabaseRefreshLock(database.own_transaction, timeout=lock_timeout)
        return cls(
            settings=settings,
            database=database,
            cipher=cipher,
            providers=providers,
            tokens=TokenManager(
                lock=lock, providers=providers, cipher=cipher, settings=settings.tokens, metrics=metrics,
                upstreams=settings.upstreams, database=database,
            ),
            revoker=Revoker(
                database=database, cipher=cipher, providers=providers,
                idle_timeout=settings.session.idle_timeout, metrics=metrics,
            ),
            proxy=Proxy(
                upstreams=settings.upstreams, max_body_bytes=settings.proxy.max_body_bytes, public_url=settings.public_url
            ),
            metrics=metrics,
            redis=redis_client,
            session_cookie=SessionCookie(settings.session),
            login_cookie=LoginBindingCookie(settings.session, LOGIN_TRANSACTION_LIFETIME),
            login_rate_limiter=RateLimiter(limit=settings.login_rate_limit, window=60),
            callback_rate_limiter=RateLimiter(limit=settings.login_rate_limit, window=60),
            recent_touches=RecentTouches(),
        )

    def close(self) -> None:
        """Release what the app holds (pooled connections, clients): for scripts and tests that end."""
        self.revoker.stop()
        self.providers.close()
        self.proxy.close()
        if self.redis is not None:
            self.redis.close()
        self.database.dispose()


def includeme(config):
    services = config.registry[Services] = Services.build(config.get_settings()["myapp"], config.registry[Database])
    if services.settings.revocation.interval:
        services.revoker.start(services.settings.revocation.interval)
