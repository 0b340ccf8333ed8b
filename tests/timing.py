"""Time budgets in tests guard against a slow algorithm (a blow-up), not against a busy host: a
call over its budget is run again, at most twice, and the best time is what is held to it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def best_of(fn: Callable[[], Any], budget: float, tries: int = 3) -> tuple[float, Any]:
    """(the best of up to `tries` timings of `fn()`, its last result); stops once one is under
    `budget` seconds."""
    best, result = float("inf"), None
    for _ in range(tries):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
        if best < budget:
            break
    return best, result
