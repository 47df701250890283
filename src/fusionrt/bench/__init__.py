"""Benchmarks: timing helpers (the full latency/throughput suite is still to come)."""

from fusionrt.bench.timing import interleaved_medians, median_seconds, time_calls

__all__ = ["interleaved_medians", "median_seconds", "time_calls"]
