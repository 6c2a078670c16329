"""Arrival processes, seeded per stream: constant, Poisson, Gamma(rate, cv) and on-off MMPP.

Each process yields inter-arrival gaps in seconds from its own `numpy.random.Generator` (never the
global RNG), drawn in vectorised chunks so that a long stream costs little and holds little memory.
Per-stream seeds are derived as `seed + 31 * index` (the Shepherd runner's habit), so adding a stream
does not change the others.

Who calls it: `loadgen.workload` (for both the simulator and the live HTTP driver).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

CHUNK = 1024


def stream_seed(seed: int, index: int) -> int:
    """The seed of stream `index` of a workload seeded with `seed`."""
    return seed + 31 * index


def constant_gaps(rate: float, rng: np.random.Generator) -> Iterator[float]:
    """Evenly spaced arrivals (the first one after a uniform random phase)."""
    gap = 1.0 / rate
    yield float(rng.uniform(0, gap))
    while True:
        yield gap


def poisson_gaps(rate: float, rng: np.random.Generator) -> Iterator[float]:
    """Exponential gaps with mean 1/rate (cv = 1)."""
    while True:
        yield from rng.exponential(1.0 / rate, CHUNK).tolist()


def gamma_gaps(rate: float, cv: float, rng: np.random.Generator) -> Iterator[float]:
    """Gamma gaps with mean 1/rate and coefficient of variation `cv` (cv > 1: bursty; cv = 1: Poisson)."""
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    while True:
        yield from rng.gamma(shape, scale, CHUNK).tolist()


def mmpp_gaps(rates: list[float], mean_dwell_s: float, rng: np.random.Generator) -> Iterator[float]:
    """Markov-modulated Poisson: the rate switches among `rates` (uniformly at random) after an
    exponential dwell with mean `mean_dwell_s`; a rate of 0 is an 'off' phase (on-off traffic)."""
    t = 0.0
    last = 0.0
    state = int(rng.integers(len(rates)))
    phase_end = float(rng.exponential(mean_dwell_s))
    while True:
        r = rates[state]
        if r > 0:
            nxt = t + float(rng.exponential(1.0 / r))
        else:
            nxt = phase_end + 1.0
        if nxt < phase_end:
            t = nxt
            yield t - last
            last = t
        else:
            t = phase_end
            state = int(rng.integers(len(rates)))
            phase_end = t + float(rng.exponential(mean_dwell_s))
