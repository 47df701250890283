"""Served vs in-process throughput of the same bundle, and dynamic batching on vs off.

Usage: python benchmarks/served_vs_inprocess.py [--bundle fusionrt-demo/bundles/int8] [--concurrency 8]

Contenders, measured the same way (closed loop, single-item requests,
fusionrt.bench.served.closed_loop) on the same real photographs and captions, in alternating
windows (--rounds rounds of one --window-s window each, after --warmup-s seconds of requests
that are not counted, order rotated every round; both servers stay up and idle while the others
run), so that the drifting speed of a shared machine hits all of them; ratios are the median of
the per-round ratios, and items/s, p50 and p99 (ms) the medians over each contender's windows:
  - in-process: fusionrt.Engine called directly by 16 threads, and through BatchingEngine
    (the one with the higher median items/s is "the best in-process configuration");
  - served: the python-backend Triton repository of the bundle (the server in the nvidia-pytriton
    wheel has no onnxruntime backend) at --concurrency, with dynamic batching on and off, through
    the HTTP client (--protocol, perf_analyzer's default), and with batching on through the other
    protocol's client too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

import numpy as np

from fusionrt import BatchingEngine, Engine
from fusionrt.bench.runner import _inputs
from fusionrt.bench.served import alternating_windows
from fusionrt.triton import Client, TritonServer, RepositoryOptions, build_repository


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
    parser.add_argument("--window-s", type=float, default=3.0, help="seconds each contender runs per round")
    parser.add_argument("--warmup-s", type=float, default=0.5,
                        help="seconds each contender runs before its window, not counted (the pipeline fills up)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds; each runs every contender once, in rotated order")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads in-process")
    parser.add_argument("--json", default=None, help="also write the results and ratios here")
    parser.add_argument("--threads-per-instance", type=int, default=1,
                        help="intra-op threads of each served encoder (default: 1, the repository default)")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http",
                        help="client protocol of the served contenders (the other one is measured with batching on too)")
    args = parser.parse_args()
    texts, images = _inputs(8)
    items = list(zip(texts, images))
    other = "grpc" if args.protocol == "http" else "http"
    on_name = f"served {args.protocol}, dynamic batching on (concurrency {args.concurrency})"
    off_name = f"served {args.protocol}, dynamic batching off (concurrency {args.concurrency})"
    other_name = f"served {other}, dynamic batching on (concurrency {args.concurrency})"
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        engine = stack.enter_context(Engine.from_bundle(args.bundle, intra_op_num_threads=args.threads))
        batcher = stack.enter_context(BatchingEngine(engine))
        contenders = {
            "in-process direct (16 callers)": (_InProcess(lambda t, i: engine.predict(t, i)), 16),
            "in-process BatchingEngine (16 callers)": (_InProcess(lambda t, i: batcher.submit(t[0], i[0]).result()), 16),
        }
        for name, batching in ((on_name, True), (off_name, False)):
            repo = build_repository(args.bundle, tmp / f"repo-{batching}", RepositoryOptions(backend="python",
                                    threads_per_instance=args.threads_per_instance, dynamic_batching=batching))
            server = stack.enter_context(TritonServer(repo, http_port=None, grpc_port=None, metrics_port=None))
            urls = {"http": server.http_url, "grpc": server.grpc_url}
            for contender, protocol in ((name, args.protocol), (other_name, other)) if batching else ((name, args.protocol),):
                client = stack.enter_context(Client(urls[protocol], protocol=protocol, timeout_s=120, max_concurrency=64))
                client.predict([texts[0]], [images[0]])
                contenders[contender] = (client, args.concurrency)
        # Contenders alternate window by window (this machine is shared: its speed drifts), the
        # idle servers waiting meanwhile; ratios are taken within each round.
        windows, server = alternating_windows(contenders, items, args.rounds, args.window_s, args.warmup_s)
    table = {
        name: {"items_per_s": round(float(np.median([w.throughput_per_s for w in ws])), 2),
               "p50_ms": round(float(np.median([w.p50_ms for w in ws])), 1),
               "p99_ms": round(float(np.median([w.p99_ms for w in ws])), 1),
               "window_items_per_s": [round(w.throughput_per_s, 1) for w in ws]}
        for name, ws in windows.items()
    }
    rate = {name: [w.throughput_per_s for w in ws] for name, ws in windows.items()}
    # The best in-process configuration is the one with the higher median; its own windows are the
    # reference of every round (a per-round maximum of the two would lean upward with the noise).
    best = max(("in-process direct (16 callers)", "in-process BatchingEngine (16 callers)"), key=lambda n: table[n]["items_per_s"])
    inproc = rate[best]
    served_vs_best = float(np.median([on / ref for on, ref in zip(rate[on_name], inproc)]))
    on_vs_off = float(np.median([on / off for on, off in zip(rate[on_name], rate[off_name])]))
    other_vs_best = float(np.median([o / ref for o, ref in zip(rate[other_name], inproc)]))
    print(json.dumps({"results": table, "server": {k: v for k, v in server.items() if v}}, indent=2))
    print(f"served {args.protocol} (batching on) vs best in-process ({best}), median of {args.rounds} rounds: {served_vs_best:.3f}x (target >= 0.8x: {'met' if served_vs_best >= 0.8 else 'missed'})")
    print(f"served {other} (batching on) vs best in-process: {other_vs_best:.3f}x")
    print(f"dynamic batching on vs off, median of {args.rounds} rounds: {on_vs_off:.3f}x (target >= 0.95x: {'met' if on_vs_off >= 0.95 else 'missed'})")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "concurrency": args.concurrency, "rounds": args.rounds, "window_s": args.window_s, "protocol": args.protocol,
            "results": table, "server": {k: v for k, v in server.items() if v},
            "best_inprocess": best,
            "ratios": {"served_vs_best_inprocess": served_vs_best, "batching_on_vs_off": on_vs_off,
                       f"served_{other}_vs_best_inprocess": other_vs_best},
        }, indent=2))


if __name__ == "__main__":
    main()
