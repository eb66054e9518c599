"""Bounded in-memory stores: what a process keeps between requests because making it again would
give the same (a parsed text, a decrypted token, a route's path). What fills them comes from
requests or rows, so each holds a limit, and is emptied when full rather than left to grow."""

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def remember(store: dict, key, value: T, limit: int) -> T:
    """``value``, kept in ``store`` under ``key``: a store holding ``limit`` is emptied first."""
    if len(store) >= limit:
        store.clear()
    store[key] = value
    return value


def remembered(store: dict, key, make: Callable[..., T], limit: int) -> T:
    """What ``store`` keeps under ``key``, else ``make(key)``, kept there (:func:`remember`)."""
    value = store.get(key)
    if value is None:
        value = remember(store, key, make(key), limit)
    return value
