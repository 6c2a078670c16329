"""Observed load per workflow for `esg`: arrival rate and burstiness, measured once per scaling tick.

ESG sizes its pools to the arrival rate it observes, not one batch at a time, and keeps headroom for
the burstiness it observes, not a fixed utilisation target. Per workflow it keeps:

- `rate_rps`: an EWMA of the arrivals counted per tick (its entry queues' `arrivals` counters), with
  the shortest time constant that keeps its standard error below `PRECISION` (see `observe`), corrected
  for its start as Adam's moment estimates are (Kingma and Ba, ICLR 2015): divided by the total weight
  its samples hold, so that the first ticks are averaged alike instead of the first alone standing for
  the whole time constant;
- `dispersion`: an EWMA of the index of dispersion of those counts, (count - mean)^2 / mean. It is
  about 1 for Poisson arrivals and about cv^2 for a renewal process of inter-arrival CV cv, and larger
  for on-off sources; the pool's headroom grows with its square root (`esg_plan.instances_needed`).

NOTE: counts per tick, not the inter-arrival-gap EWMA of `AfwQueue`: a gap EWMA never decays while no
arrival comes (a stream that stopped keeps its last rate forever), and with bursty gaps 1/EWMA(gap)
swings by the burst. The longest averaging time is the workflow's longest cold start: a pool started
on an estimate is ready only that long after it anyway; a sudden surge that the estimate has not
caught yet shows up as a backlog, which the pool answers directly (`esg_pool`).

Who calls it: `esg.EsgPolicy.schedule` on each tick. Pure: it reads queue counters and returns new values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NS_PER_S = 1_000_000_000
# NOTE: the relative standard error the rate estimate aims for: a quarter of the planning band (a plan
# is searched again when the rate moves by 2^(1/4), `esg_plan.needs_replan`), so noise alone crosses
# it in fewer than 1 in 10,000 ticks
PRECISION = (2 ** (1 / 4) - 1) / 4


@dataclass(slots=True)
class Load:
    """What is known of one workflow's arrivals (mutable policy state, owned by the `esg` state dict)."""

    wf: object  # the deployed workflow object it measures (compared by identity: a redeploy starts afresh)
    count: int  # entry-queue arrivals counted at the last tick
    at_ns: int  # time of the last tick
    last_arrival_ns: int = -1  # the tick at which arrivals were last seen
    tau_s: float = 1.0  # the rate's averaging time at the last tick (see `observe`)
    rate_rps: float = 0.0
    weight: float = 0.0  # the rate EWMA's total sample weight (1 - the prior's): `rate_rps` is divided by it
    raw_rps: float = 0.0  # the EWMA before that division
    dispersion: float = 1.0  # index of dispersion of counts; 1 = Poisson (the prior before data)
    ticks: int = 0


def observe(load: Load, count: int, now_ns: int, tau_min_s: float, tau_max_s: float) -> None:
    """Fold the arrivals since the last tick into the estimates (in place: `load` is the policy's own).

    The rate's averaging time is the shortest in which its standard error, sqrt(D / (rate x tau)), is
    below `PRECISION`, kept within [`tau_min_s`, `tau_max_s`]: a busy stream is followed within a few
    ticks (an on-off source's new phase is seen at once), a sparse one is averaged as long as a cold
    start. The dispersion, a second moment, is always averaged over `tau_max_s`."""
    dt_ns = now_ns - load.at_ns
    if dt_ns <= 0:
        return
    n = count - load.count
    if n > 0:
        load.last_arrival_ns = now_ns
    dt_s = dt_ns / NS_PER_S
    inst = n / dt_s
    first = load.ticks == 0
    if first:
        # NOTE: the first tick that saw arrivals starts the rate: a fresh stream has nothing to average
        # with, and averaging in the silence before the first invocation would start it far too low.
        # It is one sample among the next ones, not a seed: one 25 ms tick holds a handful of arrivals
        # (its count's error is about 1/sqrt(n)), and as a seed it stood for the whole time constant: esg
        # sized its first pools, which keep-alive then keeps, on that handful.
        load.count = count
        load.at_ns = now_ns
        if n == 0:
            return
        load.rate_rps = inst  # only to pick the first sample's time constant, as every later one is
    tau = load.dispersion / (max(load.rate_rps, 1e-9) * PRECISION * PRECISION)
    tau = min(max(tau, tau_min_s), tau_max_s)
    load.tau_s = tau
    a = 1.0 - math.exp(-dt_s / tau)
    if not first:
        # NOTE: the sample's denominator is at least one arrival: after a long silence the expected count
        # is near 0 and the first burst would otherwise read as an astronomical dispersion
        expect = load.rate_rps * dt_s
        d = (n - expect) ** 2 / max(expect, 1.0)
        ad = 1.0 - math.exp(-dt_s / tau_max_s)
        load.dispersion = (1 - ad) * load.dispersion + ad * d
    load.raw_rps = (1 - a) * load.raw_rps + a * inst
    load.weight = (1 - a) * load.weight + a
    load.rate_rps = load.raw_rps / load.weight
    load.ticks += 1
    load.count = count
    load.at_ns = now_ns


def rate_variance(load: Load) -> float:
    """Variance of the rate estimate: a count over about `tau_s x weight` seconds of index of dispersion D.

    NOTE: `weight` (the share of the EWMA its samples hold, 1 - exp(-elapsed / tau)) makes the window the
    time actually averaged: a stream seen for 0.1 s of a 1 s time constant has been counted over 0.1 s, not
    1 s. Without it the first ticks' interval was about sqrt(1 / weight) too narrow, so a handful of early
    arrivals could put even its lower end above one instance's capacity: whether esg started a second
    instance in the first second then hung on how ticks happened to fall against the arrivals (0.3 s into a
    live video run, 8.1 s into its simulated twin). Once the EWMA is full (weight near 1) nothing changes."""
    window_s = load.tau_s * load.weight
    return load.dispersion * load.rate_rps / window_s if window_s > 0 else 0.0


def upper_rate_rps(load: Load) -> float:
    """The upper end of the rate's confidence interval: two standard errors above the estimate."""
    return load.rate_rps + 2.0 * math.sqrt(rate_variance(load))


def entry_arrivals(wf) -> int:
    """Invocations that reached `wf` so far: the largest arrival counter among its entry stages' queues
    (every entry stage gets each invocation once)."""
    return max(wf.stages[e].queue.arrivals for e in wf.entries)


# NOTE: the one-sided tail of two standard errors of a normal: the confidence the rate's interval uses
# (`upper_rate_rps`), so a count is called significant at the same odds as a rate
TAIL = 0.02275


def beyond_chance(count: int, mean: float) -> bool:
    """Whether `count` events are more than a Poisson count of mean `mean` would give by chance, at the
    rate interval's confidence: P(K >= count) < `TAIL`, summed exactly from P(K = count) up (in logs, so
    a large mean does not underflow). `esg.EsgPolicy` asks it of the jobs a pool shed against those its
    plan allows."""
    if count <= 0:
        return False
    if mean <= 0:
        return True
    if count <= mean:
        return False  # a Poisson's median is at least mean - ln 2, so P(K >= count) >= 1/2 here
    j = count
    p = math.exp(count * math.log(mean) - mean - math.lgamma(count + 1))  # P(K = count)
    tail = 0.0
    while True:
        tail += p
        if tail >= TAIL:
            return False
        j += 1
        r = mean / j  # < 1 and falling: what is left is at most a geometric series of ratio r
        p *= r
        if tail + p / (1.0 - r) < TAIL:
            return True
