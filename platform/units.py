"""Time units: integer nanoseconds in the core; conversions from the ms/s that users write.

Kept apart from `clock.py` so that pure code (policies, runtime state) can convert units without
importing anything that reads wall time.

Limits: every duration a user writes (a workflow's `slo_ms`, an invocation's `slo_ms` override, a
function's `keep_alive_s`) becomes integer nanoseconds that the core adds to the clock's `now_ns` and
sends over the wire (msgpack ints are at most 64 bits). `MAX_DURATION_S` bounds them so that every such
sum fits a signed 64-bit integer; the input checks (`specs`, `gateway.api.parse_slo_ms`) refuse larger
values with a 422 naming the field, and `ms_to_ns`/`s_to_ns` refuse them too (ValueError), so that no
path turns 1e308 ms into an OverflowError or a 1000-digit integer.
"""

NS_PER_US = 1_000
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000

# The clock's range: integer nanoseconds in a signed 64-bit integer hold 2**63 - 1 ns, about 292 years.
INT64_MAX_NS = 2**63 - 1
# NOTE: one year (3.15e16 ns) is 1/292 of that range. `now_ns` (LoopClock: ns since the host's monotonic
# origin, i.e. its boot; VirtualClock: since 0) plus a deadline, a keep-alive and a cold start then fits
# int64 for well over 250 years of uptime. No SLO or keep-alive of a DNN inference platform needs
# longer: a year is "forever" for every practical purpose, while 1e308 ms is a typo or an attack.
MAX_DURATION_S = 365 * 24 * 3600
MAX_DURATION_MS = MAX_DURATION_S * 1000


def _out_of_range(value: float, unit: str) -> ValueError:
    return ValueError(f"{value!r} {unit} is not a finite duration within {MAX_DURATION_S} s (units.MAX_DURATION_S)")


def ms_to_ns(ms: float) -> int:
    """Convert milliseconds (float) to integer nanoseconds, rounding to the nearest ns.
    ValueError for NaN, infinities and anything longer than MAX_DURATION_S."""
    # NOTE: `not (-M <= x <= M)` is also true for NaN, so one comparison covers NaN, infinities and range
    if not -MAX_DURATION_MS <= ms <= MAX_DURATION_MS:
        raise _out_of_range(ms, "ms")
    return int(round(ms * NS_PER_MS))


def s_to_ns(s: float) -> int:
    """Convert seconds (float) to integer nanoseconds, rounding to the nearest ns.
    ValueError for NaN, infinities and anything longer than MAX_DURATION_S."""
    if not -MAX_DURATION_S <= s <= MAX_DURATION_S:
        raise _out_of_range(s, "s")
    return int(round(s * NS_PER_S))
