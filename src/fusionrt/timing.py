"""Wall-clock timing of callables (time.perf_counter): warm-up, then repeated calls, alone
(:func:`time_calls`) or interleaved with other contenders (:func:`interleaved_times`). Every
timing in fusionrt's benchmarks goes through :func:`timed`."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (``time.perf_counter``)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_calls(
    fn: Callable[[], object], warmup: int = 2, iterations: int = 7, duration_s: float = 0.0, max_iterations: int = 10_000
) -> np.ndarray:
    """Seconds per call of ``fn``, after ``warmup`` untimed calls: at least ``iterations`` calls,
    and more until ``duration_s`` seconds of calls have passed (at most ``max_iterations``)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    end = time.perf_counter() + duration_s
    while (len(times) < iterations or time.perf_counter() < end) and len(times) < max_iterations:
        times.append(timed(fn))
    return np.asarray(times)


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
            times[name].append(timed(fn))
    return {name: np.asarray(t) for name, t in times.items()}


def interleaved_medians(contenders: dict, warmup: int = 2, rounds: int = 15) -> dict[str, float]:
    """Median seconds per call of each contender (see :func:`interleaved_times`)."""
    return {name: float(np.median(t)) for name, t in interleaved_times(contenders, warmup, rounds).items()}


def paired_ratio(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]``: the speed ratio of two contenders
    timed in the same rounds (a slower round slows both, and cancels out in its ratio)."""
    return float(np.median(np.asarray(numerator) / np.asarray(denominator)))


def interleaved_rounds(
    contenders: dict, warmup: int = 2, min_rounds: int = 10, duration_s: float = 0.0, max_rounds: int = 10_000
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Seconds per call of each contender in interleaved rounds (as :func:`interleaved_times`):
    at least ``min_rounds`` rounds, and more until ``duration_s`` seconds have passed (at most
    ``max_rounds``). A contender whose call raises is timed no further: its array is shorter
    than the others' (empty when its warm-up failed) and its error is reported.

    Returns:
        ``(times, failures)``: name -> ``(rounds,)`` seconds, in round order; name -> the error.
    """
    live = dict(contenders)
    failures: dict[str, str] = {}
    times: dict[str, list[float]] = {name: [] for name in contenders}

    def call(name: str, fn, record: bool) -> None:
        try:
            seconds = timed(fn)
        except Exception as exc:  # a failing contender stops; the others' rounds go on
            failures[name] = f"{type(exc).__name__}: {exc}"
            del live[name]
            return
        if record:
            times[name].append(seconds)

    for name, fn in contenders.items():
        for _ in range(warmup):
            if name in live:
                call(name, fn, record=False)
    end = time.perf_counter() + duration_s
    rounds = 0
    while live and rounds < max_rounds and (rounds < min_rounds or time.perf_counter() < end):
        for name, fn in list(live.items()):
            call(name, fn, record=True)
        rounds += 1
    return {name: np.asarray(t) for name, t in times.items()}, failures
