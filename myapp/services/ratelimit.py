"""A small in-process rate limiter for unauthenticated endpoints that create server-side state."""

import threading
import time
from collections import OrderedDict, deque


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key, in this process (a sliding window).

    For unauthenticated endpoints that create server-side state, such as starting a sign-in.
    Memory is bounded: the least recently seen keys are forgotten beyond ``max_keys``.
    """

    def __init__(self, *, limit: int, window: float, max_keys: int = 10000, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self._events: OrderedDict[str, deque] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = self.clock()
        with self._lock:
            events = self._events.pop(key, None) or deque()
            while events and events[0] <= now - self.window:
                events.popleft()
            allowed = len(events) < self.limit
            if allowed:
                events.append(now)
            self._events[key] = events
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
            return allowed
