"""Interleaved timing and paired ratios (benchmarks compare contenders timed in the same rounds)."""

from __future__ import annotations

import numpy as np

from fusionrt.bench import interleaved_medians, interleaved_times, paired_ratio


def test_interleaved_times_alternate_contenders_round_by_round():
    calls = []
    times = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, rounds=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up of each, then one call of each per round
    assert {k: v.shape for k, v in times.items()} == {"a": (3,), "b": (3,)}
    assert (times["a"] > 0).all()
    assert set(interleaved_medians({"a": lambda: None}, warmup=0, rounds=2)) == {"a"}


def test_paired_ratio_cancels_a_slow_round():
    # b takes twice as long as a in two rounds of three; round 2 is 10x slower for both.
    a = np.array([1.0, 10.0, 1.0])
    b = np.array([2.0, 20.0, 3.0])
    assert paired_ratio(b, a) == 2.0  # per-round ratios 2, 2, 3
    assert np.median(b) / np.median(a) == 3.0  # the ratio of medians is thrown off by the slow round
    assert paired_ratio([3.0, 1.0, 2.0], [1.0, 1.0, 1.0]) == 2.0


def test_time_calls_counts_warmup_iterations_and_duration(monkeypatch):
    from fusionrt import timing

    clock = iter(np.arange(0.0, 1000.0, 0.25))  # every perf_counter call advances 0.25 s
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(clock)))
    calls = []
    times = timing.time_calls(lambda: calls.append(1), warmup=2, iterations=3)
    assert len(calls) == 5 and times.shape == (3,) and np.allclose(times, 0.25)
    calls.clear()
    # duration 2 s: 3 calls are not enough, more follow until the clock passes the end
    times = timing.time_calls(lambda: calls.append(1), warmup=0, iterations=3, duration_s=2.0)
    assert len(calls) == len(times) and 3 < len(times) <= 6
    assert len(timing.time_calls(lambda: None, warmup=0, iterations=1, duration_s=1e9, max_iterations=4)) == 4


def test_interleaved_rounds_keep_the_minimum_and_drop_a_failing_contender():
    from fusionrt.timing import interleaved_rounds

    calls = []

    def broken():
        raise ValueError("bad input")

    times, failures = interleaved_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "c": broken},
                                         warmup=1, min_rounds=4, duration_s=0.0)
    assert calls == ["a", "b"] + ["a", "b"] * 4  # warm-up, then 4 rounds, one call each in turn
    assert [len(times[k]) for k in "abc"] == [4, 4, 0] and failures == {"c": "ValueError: bad input"}
