"""Timing for the benchmark: contenders taken in turns, medians, spreads, peak memory.

Every figure of ``python -m cybatchnorm bench`` is measured here: each
contender once per round, in a shuffled order with a short busy pause before
each call (:func:`samples`), or back to back (:func:`interleaved`), and
reported as medians with the min and max of the rounds.
"""
from __future__ import annotations

from collections.abc import Callable
import statistics
import time
import tracemalloc
from typing import Any

import numpy as np

__all__ = ["PAUSE", "interleaved", "pause", "peak_bytes", "ratio_record", "ratio_spread",
           "round_robin", "samples", "spread"]


# Pause between two timed calls: longer than an OpenMP runtime's spin-wait
# after a parallel region (libgomp spins about 0.3 ms by default). torch
# brings its own OpenMP runtime; without the pause, the threads one contender
# leaves spinning would steal the cores from the next contender's call. The
# pause spins rather than sleeps: after a 3 ms sleep a 20 us call took 135 us
# here (the core had gone idle), which no user calling in a loop would see.
PAUSE = 0.003


def pause(seconds: float = PAUSE) -> None:
    """Busy-wait ``seconds`` on this thread (see PAUSE)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def samples(calls: Any, repeats: int) -> dict[str, list[float]]:
    """Seconds of every run of every callable, timed in turns (one run of
    each per round) so that whatever else the machine does falls on all of
    them alike, with a short pause before each call (see PAUSE). Each round
    runs the contenders in a new order (a seeded shuffle), so that none
    always follows the same neighbour: with a fixed cyclic order the
    forward that followed torch's module step on 32 x 16 took 2.6x the time
    of the same forward given ``out=`` (154 us against 59 us); shuffled,
    the two agree."""
    for fn in calls.values():   # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    order = list(calls.items())
    shuffle = np.random.default_rng(12345)
    for _ in range(repeats):
        for i in shuffle.permutation(len(order)):
            k, fn = order[i]
            pause()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def round_robin(calls: Any, repeats: int) -> dict[str, float]:
    """Median seconds of every callable, from :func:`samples`."""
    return {k: statistics.median(v) for k, v in samples(calls, repeats).items()}


def spread(times: Any) -> dict[str, Any]:
    """``{"min", "median", "max"}`` of each contender's samples."""
    return {k: {"min": min(v), "median": statistics.median(v), "max": max(v)}
            for k, v in times.items()}


def interleaved(calls: Any, repeats: int,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Each contender once per round, back to back, ``repeats`` rounds after
    one warm-up run each; returns every contender's samples by ``clock``."""
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for k, fn in calls.items():
            t0 = clock()
            fn()
            times[k].append(clock() - t0)
    return times


def ratio_spread(ours: list[float], theirs: list[float]) -> tuple[float, float, float]:
    """The ratio of the medians of two contenders' samples, and the min and max
    of the per-round ratios."""
    per_round = [a / b for a, b in zip(ours, theirs)]
    return statistics.median(ours) / statistics.median(theirs), min(per_round), max(per_round)


def ratio_record(full: dict[str, list[float]], one: dict[str, list[float]],
                 **fields: Any) -> dict[str, Any]:
    """One row of a table of ours against torch: ``fields``, then the medians
    of ``full`` (every core, wall time), the ratio and its per-round
    [min, max], the same ratio of ``one`` (one thread, thread CPU time) and
    both sets of samples; ``full`` and ``one`` map "ours" and "torch" to
    seconds per round."""
    ratio, lo, hi = ratio_spread(full["ours"], full["torch"])
    ratio1, lo1, hi1 = ratio_spread(one["ours"], one["torch"])
    return {**fields, "ours": statistics.median(full["ours"]),
            "torch": statistics.median(full["torch"]), "ratio": ratio, "ratio_min": lo,
            "ratio_max": hi, "ratio_1thread": ratio1, "ratio_1thread_min": lo1,
            "ratio_1thread_max": hi1, "samples": full, "samples_1thread": one}


def peak_bytes(fn: Any) -> int:
    """Peak bytes allocated (as tracemalloc sees numpy's allocations) while ``fn()`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
