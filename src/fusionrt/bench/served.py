"""Served benchmark against the ``fusionrt`` ensemble, after perf_analyzer's method.

Closed loop: at each concurrency level N, N callers send single-item requests back to back;
after ``warmup_s`` seconds that are not counted, measurement windows of ``window_s`` seconds repeat
until three consecutive windows agree within 10% in throughput (perf_analyzer's stability rule), at
most ``max_windows``. Open loop: requests
arrive as a Poisson process at ``request_rate`` per second; a request's latency counts from its
scheduled arrival, so queueing behind a slow server is included. Server-side queue and compute time
per composing model come from Triton's statistics API (differences over the level).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from fusionrt.bench.report import REPORT_OUTPUT, SERVED, write_report
from fusionrt.bench.runner import Result, machine_info, percentiles
from fusionrt.errors import InputError
from fusionrt.utils import check_output_folder

STABILITY = 0.10  # windows agree within 10%
# Default p99 bound of the capacity figure (ms): the served INT8 ensemble's p99 at concurrency 8 on
# a 2-core CPU, rounded up (docs/performance-notes.md, "Serving"); give the bound your service promises.
P99_BOUND_MS = 200.0


def _server_deltas(before: dict, after: dict) -> dict:
    out = {}
    for model, a in after.items():
        b = before.get(model, {})
        execs = a["execution_count"] - b.get("execution_count", 0)
        infers = a["inference_count"] - b.get("inference_count", 0)
        if not infers:
            continue
        ok = max(a["success_count"] - b.get("success_count", 0), 1)
        out[model] = {
            "inference_count": infers,
            "execution_count": execs,
            "queue_ms_per_request": (a["queue_ns_total"] - b.get("queue_ns_total", 0)) / ok / 1e6,
            "compute_ms_per_request": (a["compute_ns_total"] - b.get("compute_ns_total", 0)) / ok / 1e6,
        }
    return out


def closed_loop(
    client, items: list, concurrency: int, window_s: float, max_windows: int, warmup_s: float = 0.0
) -> tuple[Result, dict]:
    """One concurrency level: ``concurrency`` callers send single-item requests back to back;
    windows of ``window_s`` seconds until three agree (or ``max_windows``).

    ``warmup_s``: seconds the callers run before the first window, so that it measures the
    steady state rather than the pipeline filling up (completions and server statistics of the
    warm-up are not counted). Latencies are in ms, throughput in items per second.

    Raises:
        InputError: no request succeeded in the measured windows.
    """
    lock = threading.Lock()
    latencies: list[float] = []
    failures = [0]
    stop = threading.Event()

    def caller(k: int) -> None:
        i = k
        while not stop.is_set():
            text, image = items[i % len(items)]
            start = time.perf_counter()
            try:
                client.predict([text], [image])
            except Exception:
                with lock:
                    failures[0] += 1
            else:
                with lock:
                    latencies.append((time.perf_counter() - start) * 1e3)
            i += concurrency

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(concurrency)]
    before = client.statistics()
    for t in threads:
        t.start()
    if warmup_s > 0:
        time.sleep(warmup_s)
        before = client.statistics()
    rates, windows = [], []
    began = time.perf_counter()
    for _ in range(max_windows):
        with lock:
            n0 = len(latencies)
        time.sleep(window_s)
        with lock:
            window = latencies[n0:]
        rates.append(len(window) / window_s)
        windows.append(window)
        last = rates[-3:]
        if len(last) == 3 and max(last) > 0 and (max(last) - min(last)) / max(last) <= STABILITY:
            break
    stop.set()
    for t in threads:
        t.join()
    after = client.statistics()
    samples = [x for w in windows[-3:] for x in w]
    if not samples:
        raise InputError(f"no request succeeded at concurrency {concurrency} ({failures[0]} failed)")
    pct = percentiles(samples)
    result = Result(f"served (concurrency {concurrency})", "served", 1, len(samples), float(np.mean(samples)),
                    pct["p50"], pct["p90"], pct["p95"], pct["p99"], float(np.mean(rates[-3:])))
    info = {"concurrency": concurrency, "windows": len(rates), "stable": len(rates) < max_windows or _stable(rates),
            "window_throughputs": [round(r, 2) for r in rates], "failures": failures[0],
            "seconds": round(time.perf_counter() - began, 1), "server": _server_deltas(before, after)}
    return result, info


def alternating_windows(
    contenders: dict, items: list, rounds: int, window_s: float, warmup_s: float
) -> tuple[dict[str, list[Result]], dict[str, dict]]:
    """Contenders measured alike on a shared machine: in each of ``rounds`` rounds every
    contender runs :func:`closed_loop` for one window of ``window_s`` seconds (after ``warmup_s``
    seconds that are not counted), in an order rotated every round, the others idle meanwhile;
    so drift in the machine's speed hits all of them, and round ``i`` of two contenders can be
    compared pairwise (:func:`fusionrt.timing.paired_ratio` of their per-round figures).

    Args:
        contenders: name -> ``(client, concurrency)``; the client has ``predict(texts, images)``
            and ``statistics()`` (:class:`~fusionrt.triton.Client`, or an in-process adapter).
        items: ``(text, encoded image)`` pairs the callers cycle through.

    Returns:
        ``(windows, server)``: name -> its :class:`Result` per round, in round order (latency ms
        per single-item request, throughput items/s); name -> composing model -> its
        ``inference_count`` and ``execution_count`` summed over the rounds and its
        ``queue_ms_per_request`` and ``compute_ms_per_request`` per round (Triton's statistics;
        none for a client whose ``statistics()`` is empty, as an in-process adapter's).

    Raises:
        InputError: ``rounds`` < 1, or no request of a window succeeded.
    """
    if rounds < 1:
        raise InputError(f"rounds must be >= 1, got {rounds}")
    windows: dict[str, list[Result]] = {name: [] for name in contenders}
    server: dict[str, dict] = {name: {} for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            client, concurrency = contenders[name]
            result, info = closed_loop(client, items, concurrency, window_s, 1, warmup_s)
            windows[name].append(result)
            for model, stats in info["server"].items():
                total = server[name].setdefault(model, {"inference_count": 0, "execution_count": 0,
                                                        "queue_ms_per_request": [], "compute_ms_per_request": []})
                total["inference_count"] += stats["inference_count"]
                total["execution_count"] += stats["execution_count"]
                total["queue_ms_per_request"].append(round(stats["queue_ms_per_request"], 3))
                total["compute_ms_per_request"].append(round(stats["compute_ms_per_request"], 3))
    return windows, server


def _stable(rates: list[float]) -> bool:
    last = rates[-3:]
    return len(last) == 3 and max(last) > 0 and (max(last) - min(last)) / max(last) <= STABILITY


def open_loop(client, items: list, request_rate: float, duration_s: float, seed: int = 0) -> tuple[Result, dict]:
    """Poisson arrivals at ``request_rate``/s for ``duration_s``; latency from scheduled arrival."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / request_rate, size=int(request_rate * duration_s * 2) + 10)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < duration_s]
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    before = client.statistics()
    start = time.perf_counter()

    def send(k: int, scheduled: float) -> None:
        text, image = items[k % len(items)]
        try:
            client.predict([text], [image])
        except Exception:
            with lock:
                failures[0] += 1
            return
        with lock:
            latencies.append((time.perf_counter() - (start + scheduled)) * 1e3)

    with ThreadPoolExecutor(64) as pool:
        for k, at in enumerate(arrivals):
            delay = start + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, k, float(at))
    wall = time.perf_counter() - start
    after = client.statistics()
    if not latencies:
        raise InputError(f"no request succeeded at request rate {request_rate}/s ({failures[0]} failed)")
    pct = percentiles(latencies)
    result = Result(f"served (Poisson {request_rate:g}/s)", "served", 1, len(latencies), float(np.mean(latencies)),
                    pct["p50"], pct["p90"], pct["p95"], pct["p99"], len(latencies) / wall)
    return result, {"request_rate": request_rate, "sent": len(arrivals), "failures": failures[0],
                    "server": _server_deltas(before, after)}


def capacity_at_p99(results: Sequence[dict], levels: Sequence[dict], p99_bound_ms: float = P99_BOUND_MS) -> dict:
    """Per-replica capacity: the highest closed-loop throughput whose p99 is within ``p99_bound_ms``.

    Args:
        results: the benchmark's results as saved (``asdict(Result)``: ``p99_ms``, ``throughput_per_s``).
        levels: the matching level infos (closed-loop ones have ``concurrency`` and ``server``).
        p99_bound_ms: the latency bound (ms).

    Returns:
        ``{"p99_bound_ms", "items_per_s", "concurrency", "p99_ms", "queue_us_per_request"}`` of
        that level; ``queue_us_per_request`` is the server's queue time per ensemble request, summed
        over the composing models (what the deployment's autoscaler measures). The last four are
        ``None`` when no closed-loop level is within the bound.
    """
    from fusionrt.triton.repository import ENSEMBLE

    best = None
    for r, level in zip(results, levels):
        if "concurrency" in level and r["p99_ms"] <= p99_bound_ms and (best is None or r["throughput_per_s"] > best[0]["throughput_per_s"]):
            best = (r, level)
    if best is None:
        return {"p99_bound_ms": p99_bound_ms, "items_per_s": None, "concurrency": None, "p99_ms": None, "queue_us_per_request": None}
    r, level = best
    queue_ms = sum(st["queue_ms_per_request"] for model, st in level["server"].items() if model != ENSEMBLE)
    return {"p99_bound_ms": p99_bound_ms, "items_per_s": round(r["throughput_per_s"], 2), "concurrency": level["concurrency"],
            "p99_ms": round(r["p99_ms"], 2), "queue_us_per_request": round(queue_ms * 1e3, 1)}


def run_served_benchmark(
    url: str,
    report_dir: str,
    protocol: str = "grpc",
    concurrency: Sequence[int] = (1, 2, 4, 8, 16),
    request_rate: float | None = None,
    window_s: float = 2.0,
    max_windows: int = 8,
    timeout_s: float = 60.0,
    warmup_s: float = 0.5,
    p99_bound_ms: float = P99_BOUND_MS,
    admin_key: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Closed-loop concurrency sweep (and an open-loop level with ``request_rate``) against the
    ``fusionrt`` ensemble at ``url``; writes the same report files as the in-process benchmark.
    Each concurrency level runs ``warmup_s`` seconds before its first window (see :func:`closed_loop`).
    ``results.json`` gets ``capacity``: the per-replica throughput under ``p99_bound_ms`` (see
    :func:`capacity_at_p99`), which ``fusionrt triton deploy --bench-result`` reads.
    ``admin_key``: the server's admin key; the per-model statistics (and the labels) are behind
    it on servers started by ``fusionrt serve`` or deployed by ``fusionrt triton deploy``.

    Raises:
        InputError: a concurrency < 1, a rate or p99 bound <= 0, or no request succeeded at some
            level; ``report_dir`` holds files fusionrt did not write, or a report without ``overwrite``
            (checked before the first request).
    """
    from fusionrt.bench.runner import _inputs
    from fusionrt.triton import Client

    if not concurrency or min(concurrency) < 1:
        raise InputError(f"concurrency levels must be >= 1, got {list(concurrency)}")
    if request_rate is not None and request_rate <= 0:
        raise InputError(f"--request-rate must be > 0, got {request_rate}")
    if not p99_bound_ms > 0:
        raise InputError(f"p99_bound_ms must be > 0, got {p99_bound_ms}")
    check_output_folder(report_dir, REPORT_OUTPUT, overwrite)  # before the first request
    texts, images = _inputs(8)
    items = list(zip(texts, images))
    results, levels = [], []
    with Client(url, protocol=protocol, timeout_s=timeout_s, max_concurrency=max(max(concurrency), 64),
                admin_key=admin_key) as client:
        client.predict([texts[0]], [images[0]])  # warm-up
        for n in concurrency:
            r, info = closed_loop(client, items, n, window_s, max_windows, warmup_s)
            results.append(r)
            levels.append(info)
        if request_rate is not None:
            r, info = open_loop(client, items, request_rate, window_s * 3)
            results.append(r)
            levels.append(info)
    from dataclasses import asdict

    data = {
        "benchmark": SERVED,
        "machine": machine_info(threads=0),  # the client's machine
        "url": url,
        "protocol": protocol,
        "results": [asdict(r) for r in results],
        "levels": levels,
        "breakdown_ms": {},
        "roofline": {},
    }
    data["capacity"] = capacity_at_p99(data["results"], levels, p99_bound_ms)
    write_report(data, Path(report_dir), overwrite)
    return data
