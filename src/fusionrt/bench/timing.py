"""Wall-clock timing of a callable: warm-up, then repeated calls (time.perf_counter)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def time_calls(fn: Callable[[], object], warmup: int = 2, iterations: int = 7) -> np.ndarray:
    """Seconds per call of ``fn`` for ``iterations`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return times


def median_seconds(fn: Callable[[], object], warmup: int = 2, iterations: int = 7) -> float:
    """Median seconds per call of ``fn`` (see :func:`time_calls`)."""
    return float(np.median(time_calls(fn, warmup, iterations)))


def interleaved_times(contenders: dict, warmup: int = 2, rounds: int = 15) -> dict[str, np.ndarray]:
    """Seconds per call of each contender, ``(rounds,)`` each, timed in interleaved rounds (one
    call of each per round, back to back), so that drift in machine load hits all contenders
    alike and the contenders of one round can be compared pairwise (:func:`paired_ratio`)."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: np.asarray(t) for name, t in times.items()}


def interleaved_medians(contenders: dict, warmup: int = 2, rounds: int = 15) -> dict[str, float]:
    """Median seconds per call of each contender (see :func:`interleaved_times`)."""
    return {name: float(np.median(t)) for name, t in interleaved_times(contenders, warmup, rounds).items()}


def paired_ratio(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]``: the speed ratio of two contenders
    timed in the same rounds (a slower round slows both, and cancels out in its ratio)."""
    return float(np.median(np.asarray(numerator) / np.asarray(denominator)))
