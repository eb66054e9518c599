"""Prometheus metrics: counted in every process, served at /metrics only when enabled.

Each app has its own registry (tests build many apps in one process). With several processes,
Prometheus scrapes each one; sums across them are the deployment's totals.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.logins = Counter("myapp_logins", "Successful sign-ins.", registry=self.registry)
        self.login_failures = Counter(
            "myapp_login_failures", "Failed sign-ins, by reason.", ["reason"], registry=self.registry
        )
        self.refreshes = Counter("myapp_token_refreshes", "Access tokens refreshed at the provider.", registry=self.registry)
        self.refresh_failures = Counter(
            "myapp_token_refresh_failures", "Refreshes that failed, by reason.", ["reason"], registry=self.registry
        )
        self.proxy_requests = Counter(
            "myapp_proxy_requests", "Proxied API calls, by upstream and status.", ["upstream", "status"],
            registry=self.registry,
        )
        self.proxy_latency = Histogram(
            "myapp_proxy_latency_seconds",
            "Time from receiving an API call to the upstream's response headers.",
            ["upstream"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.token_revocations = Counter(
            "myapp_token_revocations", "Tokens of ended sessions sent to the provider's revocation endpoint, by outcome.",
            ["outcome"], registry=self.registry,
        )
        self.active_sessions = Gauge("myapp_active_sessions", "Live sessions (all processes).", registry=self.registry)
        # The label children of every proxied call, looked up once each: ``labels()`` takes a
        # lock and checks its arguments on every call. Bounded: configured upstreams, three-digit statuses.
        self._proxied: dict[tuple[str, int], object] = {}
        self._latency: dict[str, object] = {}

    def proxied(self, upstream: str, status: int, seconds: float | None = None) -> None:
        """Count a proxied call to a configured upstream, and the time to its answer when it had one."""
        counter = self._proxied.get((upstream, status))
        if counter is None:
            counter = self._proxied[(upstream, status)] = self.proxy_requests.labels(upstream=upstream, status=str(status))
        counter.inc()
        if seconds is not None:
            latency = self._latency.get(upstream)
            if latency is None:
                latency = self._latency[upstream] = self.proxy_latency.labels(upstream=upstream)
            latency.observe(seconds)

    def exposition(self, active_sessions: float) -> bytes:
        self.active_sessions.set(active_sessions)
        return generate_latest(self.registry)


def failure_reason(reason: str) -> str:
    """A bounded label: provider error codes become one value each, anything else is cut short."""
    return reason.split(":", 1)[0][:40]
