"""Proxied calls counted by upstream and status, through the label children Metrics keeps."""

from myapp.services.metrics import Metrics


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def test_proxied_calls_are_counted_by_upstream_and_status():
    metrics = Metrics()
    for _ in range(3):
        metrics.proxied("demo", 200, 0.002)
    metrics.proxied("demo", 502)  # refused before any answer: counted, no latency
    metrics.proxied("other", 200, 0.5)
    assert sample(metrics, "myapp_proxy_requests_total", upstream="demo", status="200") == 3
    assert sample(metrics, "myapp_proxy_requests_total", upstream="demo", status="502") == 1
    assert sample(metrics, "myapp_proxy_requests_total", upstream="other", status="200") == 1
    assert sample(metrics, "myapp_proxy_latency_seconds_count", upstream="demo") == 3
    assert sample(metrics, "myapp_proxy_latency_seconds_bucket", upstream="demo", le="0.0025") == 3
    assert sample(metrics, "myapp_proxy_latency_seconds_count", upstream="other") == 1


def test_each_app_counts_apart():
    one, two = Metrics(), Metrics()
    one.proxied("demo", 200, 0.001)
    assert sample(two, "myapp_proxy_requests_total", upstream="demo", status="200") is None
