"""Time units: integer nanoseconds in the core; conversions from the ms/s that users write.

Kept apart from `clock.py` so that pure code (policies, runtime state) can convert units without
importing anything that reads wall time.
"""

NS_PER_US = 1_000
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


def ms_to_ns(ms: float) -> int:
    """Convert milliseconds (float) to integer nanoseconds, rounding to the nearest ns."""
    return int(round(ms * NS_PER_MS))


def s_to_ns(s: float) -> int:
    """Convert seconds (float) to integer nanoseconds, rounding to the nearest ns."""
    return int(round(s * NS_PER_S))
