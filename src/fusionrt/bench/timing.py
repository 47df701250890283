"""The timing helpers live in :mod:`fusionrt.timing` (the export's precision search times graphs
too, and sits below the bench layer); re-exported here for the benchmarks."""

from fusionrt.timing import interleaved_medians, interleaved_times, median_seconds, paired_ratio, time_calls, timed

__all__ = ["interleaved_medians", "interleaved_times", "median_seconds", "paired_ratio", "time_calls", "timed"]
