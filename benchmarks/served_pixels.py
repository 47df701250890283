"""Served p50 at concurrency 8 with uint8 against float32 pixels (issue 27's served target).

Usage: python benchmarks/served_pixels.py FLOAT32_BUNDLE UINT8_BUNDLE [--concurrency 8] [--runs 3]
       [--rounds 4] [--window-s 3] [--warmup-s 0.5] [--protocol http] [--json OUT.json]

The two bundles are one checkpoint exported at one precision with `--pixels float32` and
`--pixels uint8` (checked: same labels and precisions, the pixel inputs differ). Each gets the
python-backend Triton repository `fusionrt triton build` writes (default options), served by
its own server on free 127.0.0.1 ports; both stay up. A run is `--rounds` rounds of
fusionrt.bench.served.alternating_windows: each round one closed-loop window per server
(`--concurrency` callers sending single-item requests of the small photographs with captions,
encoded bytes, after `--warmup-s` seconds not counted), in rotated order. Per run: the median
over rounds of each server's p50 and items/s, and of the paired per-round ratios uint8 / float32
(p50 below 1 is faster; items/s above 1 is more); after the runs, the median over runs. Also:
the pixel bytes per image between preprocess and image_encoder (from the bundles' manifests), and
Triton's per-model compute and queue ms per request (median over rounds), which say where a
difference comes from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from fusionrt.bundle import Bundle
from fusionrt.bench.runner import _inputs
from fusionrt.bench.served import alternating_windows
from fusionrt.cpu import cpu_description
from fusionrt.errors import InputError
from fusionrt.timing import paired_ratio
from fusionrt.triton import Client, RepositoryOptions, TritonServer, build_repository


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float32_bundle")
    parser.add_argument("uint8_bundle")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run; each runs one window of each server")
    parser.add_argument("--window-s", type=float, default=3.0)
    parser.add_argument("--warmup-s", type=float, default=0.5, help="seconds before each window, not counted")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    bundles = {"float32": Bundle.load(args.float32_bundle), "uint8": Bundle.load(args.uint8_bundle)}
    _check_pair(bundles)
    pixel_bytes = {k: int(np.prod(b.pixel_input[1])) * np.dtype(k).itemsize for k, b in bundles.items()}
    print(f"CPU: {cpu_description()}; load average {os.getloadavg()[0]:.1f}; pixel bytes per image {pixel_bytes} "
          f"({pixel_bytes['float32'] / pixel_bytes['uint8']:.1f}x fewer with uint8)")
    texts, images = _inputs(8)
    items = list(zip(texts, images))
    runs = []
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fusionrt-pixels-")))
        contenders = {}
        for name, bundle in bundles.items():
            repo = build_repository(bundle.path, tmp / f"repo-{name}", RepositoryOptions(backend="python"))
            server = stack.enter_context(TritonServer(repo, http_port=None, grpc_port=None, metrics_port=None,
                                                      log_path=tmp / f"{name}.log"))
            url = server.http_url if args.protocol == "http" else server.grpc_url
            client = stack.enter_context(Client(url, protocol=args.protocol, timeout_s=120, max_concurrency=64,
                                                admin_key=server.admin_key))
            client.predict([texts[0]], [images[0]])
            contenders[name] = (client, args.concurrency)
        for run in range(args.runs):
            windows, server = alternating_windows(contenders, items, args.rounds, args.window_s, args.warmup_s)
            runs.append(_summary(windows, server))
            print(f"run {run + 1}/{args.runs} (load average {os.getloadavg()[0]:.1f}): {json.dumps(runs[-1])}")
    median = {key: float(np.median([r[key] for r in runs])) for key in runs[0] if not isinstance(runs[0][key], dict)}
    print(f"median over {args.runs} runs: " + json.dumps({k: round(v, 3) for k, v in median.items()}))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_description(), "args": vars(args), "pixel_bytes": pixel_bytes,
                                               "runs": runs, "median": median}, indent=2))


def _check_pair(bundles: dict) -> None:
    """The two bundles differ in their pixel input only (labels and precisions equal)."""
    f, u = bundles["float32"], bundles["uint8"]
    if f.pixel_input[0] != "float32" or u.pixel_input[0] != "uint8":
        raise InputError(f"want a float32-pixel bundle then a uint8-pixel one, got {f.pixel_input[0]} ({f.path}) and "
                         f"{u.pixel_input[0]} ({u.path}): export them with --pixels float32 and --pixels uint8")
    if f.precision != u.precision or f.labels != u.labels:
        raise InputError(f"{f.path} and {u.path} differ beyond their pixels (precision {f.precision} vs {u.precision}): "
                         "export one checkpoint at one --precision twice")


def _summary(windows: dict, server: dict) -> dict:
    """One run: each server's median p50, p99 and items/s over its rounds, the paired ratios, and
    the median per-model compute and queue ms per request."""
    out = {}
    for name, ws in windows.items():
        out[f"{name} p50 ms"] = float(np.median([w.p50_ms for w in ws]))
        out[f"{name} p99 ms"] = float(np.median([w.p99_ms for w in ws]))
        out[f"{name} items/s"] = float(np.median([w.throughput_per_s for w in ws]))
    out["p50 uint8 / float32"] = paired_ratio([w.p50_ms for w in windows["uint8"]], [w.p50_ms for w in windows["float32"]])
    out["items/s uint8 / float32"] = paired_ratio([w.throughput_per_s for w in windows["uint8"]],
                                                  [w.throughput_per_s for w in windows["float32"]])
    for name, models in server.items():
        out[f"{name} server ms per request"] = {
            model: {"compute": float(np.median(s["compute_ms_per_request"])), "queue": float(np.median(s["queue_ms_per_request"]))}
            for model, s in models.items() if s["compute_ms_per_request"]}
    return out


if __name__ == "__main__":
    main()
