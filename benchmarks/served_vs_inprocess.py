"""Served vs in-process throughput of the same bundle, and dynamic batching on vs off.

Usage: python benchmarks/served_vs_inprocess.py [--bundle fusionrt-demo/bundles/int8] [--concurrency 8]

Contenders, measured the same way (closed loop, single-item requests, windows until three agree
within 10%, fusionrt.bench.served.closed_loop) on the same real photographs and captions:
  - in-process: fusionrt.Engine called directly by 16 threads, and through BatchingEngine
    (the best of the two is "the best in-process configuration");
  - served: the python-backend Triton repository of the bundle (the server in the nvidia-pytriton
    wheel has no onnxruntime backend) at --concurrency, with dynamic batching on and off.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from fusionrt import BatchingEngine, Engine
from fusionrt.bench.runner import _inputs
from fusionrt.bench.served import closed_loop
from fusionrt.triton import Client, TritonServer, build_repository


class _InProcess:
    """closed_loop's client interface over an in-process callable."""

    def __init__(self, fn):
        self.predict = fn

    def statistics(self):
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="fusionrt-demo/bundles/int8")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--window-s", type=float, default=3.0)
    parser.add_argument("--max-windows", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads in-process")
    parser.add_argument("--json", default=None, help="also write the results and ratios here")
    parser.add_argument("--threads-per-instance", type=int, default=1,
                        help="intra-op threads of each served encoder (default: 1, the repository default)")
    args = parser.parse_args()
    texts, images = _inputs(8)
    items = list(zip(texts, images))
    out = {}
    engine = Engine.from_bundle(args.bundle, intra_op_num_threads=args.threads)
    r, _ = closed_loop(_InProcess(lambda t, i: engine.predict(t, i)), items, 16, args.window_s, args.max_windows)
    out["in-process direct (16 callers)"] = r
    with BatchingEngine(engine) as batcher:
        r, _ = closed_loop(_InProcess(lambda t, i: batcher.submit(t[0], i[0]).result()), items, 16, args.window_s, args.max_windows)
    out["in-process BatchingEngine (16 callers)"] = r
    engine.close()
    server_info = {}
    with tempfile.TemporaryDirectory() as tmp:
        for batching in (True, False):
            repo = build_repository(args.bundle, Path(tmp) / f"repo-{batching}", backend="python",
                                    threads_per_instance=args.threads_per_instance, dynamic_batching=batching)
            with TritonServer(repo, http_port=None, grpc_port=None, metrics_port=None) as server:
                with Client(server.grpc_url, timeout_s=120, max_concurrency=64) as client:
                    client.predict([texts[0]], [images[0]])
                    r, info = closed_loop(client, items, args.concurrency, args.window_s, args.max_windows)
            name = f"served, dynamic batching {'on' if batching else 'off'} (concurrency {args.concurrency})"
            out[name] = r
            server_info[name] = info["server"]
    table = {k: {"items_per_s": round(v.throughput_per_s, 2), "p50_ms": round(v.p50_ms, 1), "p99_ms": round(v.p99_ms, 1)} for k, v in out.items()}
    print(json.dumps({"results": table, "server": server_info}, indent=2))
    best = max(v.throughput_per_s for k, v in out.items() if k.startswith("in-process"))
    on = out[f"served, dynamic batching on (concurrency {args.concurrency})"].throughput_per_s
    off = out[f"served, dynamic batching off (concurrency {args.concurrency})"].throughput_per_s
    print(f"served (batching on) vs best in-process: {on / best:.2f}x (target >= 0.8x)")
    print(f"dynamic batching on vs off: {on / off:.2f}x (target >= 0.95x)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "concurrency": args.concurrency, "results": table, "server": server_info,
            "ratios": {"served_vs_best_inprocess": on / best, "batching_on_vs_off": on / off},
        }, indent=2))


if __name__ == "__main__":
    main()
