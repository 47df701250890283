"""Benchmarks: timing helpers here; the in-process suite (``fusionrt bench``) is
:mod:`fusionrt.bench.runner`, the served one (``fusionrt bench --url``) :mod:`fusionrt.bench.served`."""

from fusionrt.timing import interleaved_medians, interleaved_times, median_seconds, paired_ratio, time_calls

__all__ = ["interleaved_medians", "interleaved_times", "median_seconds", "paired_ratio", "time_calls"]
