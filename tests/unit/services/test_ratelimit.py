from myapp.services.ratelimit import RateLimiter


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_limit_per_key_in_a_sliding_window():
    clock = Clock()
    limiter = RateLimiter(limit=3, window=60, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")
    clock.now = 59
    assert not limiter.allow("a")
    clock.now = 60.5
    assert limiter.allow("a")


def test_memory_is_bounded():
    limiter = RateLimiter(limit=1, window=60, max_keys=100)
    for i in range(1000):
        limiter.allow(str(i))
    assert len(limiter._events) == 100
    assert limiter.allow("0")  # long forgotten
