"""fusionrt.bench.served.alternating_windows with in-process clients (no server): one window per
contender per round, the order rotated every round, Triton's statistics summed per contender."""

from __future__ import annotations

import threading

import pytest

from fusionrt.bench.served import alternating_windows
from fusionrt.errors import InputError


class _Client:
    """closed_loop's client interface: records which contender served each request, and
    statistics as Triton's API gives them (cumulative counts and nanoseconds)."""

    def __init__(self, name: str, log: list, lock: threading.Lock):
        self.name, self.log, self.lock, self.served = name, log, lock, 0

    def predict(self, texts, images):
        with self.lock:
            self.log.append(self.name)
            self.served += 1

    def statistics(self):
        with self.lock:
            n = self.served
        return {"image_encoder": {"inference_count": n, "execution_count": n, "success_count": n,
                                  "queue_ns_total": 1000 * n, "compute_ns_total": 2_000_000 * n}}


def test_alternating_windows_rotate_the_order_and_sum_statistics():
    log, lock = [], threading.Lock()
    clients = {name: _Client(name, log, lock) for name in ("float32", "uint8")}
    items = [("a caption", b"bytes")] * 3
    windows, server = alternating_windows({k: (c, 2) for k, c in clients.items()}, items, 3, 0.05, 0.0)
    assert {k: len(v) for k, v in windows.items()} == {"float32": 3, "uint8": 3}
    assert all(w.iterations > 0 and 0 <= w.p50_ms <= w.p99_ms for ws in windows.values() for w in ws)
    # windows in the order float32 uint8 | uint8 float32 | float32 uint8: requests come in four
    # runs of one contender (without rotation: six)
    runs = [log[0]] + [b for a, b in zip(log, log[1:]) if a != b]
    assert runs == ["float32", "uint8", "float32", "uint8"]
    for name, c in clients.items():
        stats = server[name]["image_encoder"]
        assert stats["inference_count"] == stats["execution_count"] == c.served
        assert stats["compute_ms_per_request"] == [2.0, 2.0, 2.0] and stats["queue_ms_per_request"] == [0.001] * 3


def test_alternating_windows_need_a_round():
    with pytest.raises(InputError, match="rounds must be >= 1"):
        alternating_windows({}, [], 0, 1.0, 0.0)
