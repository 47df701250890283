"""Resident memory and speed of an OpenVINO bundle under varied input shapes.

Usage:
  python benchmarks/openvino_memory.py --make DIR            # a real-size bundle: MiniLM + ResNet-18,
                                                               # fresh head, --precision bf16 --target openvino
  python benchmarks/openvino_memory.py --bundle DIR/bundle [--shapes 300] [--variants plugin,cap:0,cap:50,buckets,fusionrt]

Variants of OpenVINOOptions: ``plugin`` is OpenVINO's own behaviour (CPU_RUNTIME_CACHE_CAPACITY
5000, no buckets: fusionrt before issue 23); ``cap:N`` that capacity, no buckets; ``buckets`` the
sequence (multiples of 16) and batch (powers of two) buckets at capacity 5000; ``both`` those
buckets at RUNTIME_CACHE_CAPACITY; ``fusionrt`` the defaults (sequence buckets, that capacity).
1. Memory: per variant, a fresh process runs ``Engine.run`` over the same ``--shapes`` random
   (batch 1-8, seq 2-max) feeds and prints its RSS after a sixth, half and all of them, and the
   seconds taken.
2. Speed: in one process, ``plugin`` against each other variant, interleaved rounds of (a) one
   fixed shape (batch 8, seq 64), (b) ``Engine.predict`` on the benchmark's 8 photographs and
   captions (``fusionrt bench`` at batch 8) and (c) a cycle of 60 distinct shapes (more than a
   capacity of 50 holds): the median of per-round time ratios (variant / plugin).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    """This process's resident set size (VmRSS of /proc/self/status), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def feeds(rng, count: int, max_seq: int, hw: tuple, vocab: int = 30000, max_batch: int = 8):
    """``count`` random feeds of random (batch, seq): ids, a mask with random lengths, pixels."""
    for _ in range(count):
        batch, seq = int(rng.integers(1, max_batch + 1)), int(rng.integers(2, max_seq + 1))
        lengths = np.concatenate([[seq], rng.integers(1, seq + 1, batch - 1)])
        yield {
            "input_ids": rng.integers(1000, vocab, (batch, seq)).astype(np.int64),
            "attention_mask": (np.arange(seq)[None] < lengths[:, None]).astype(np.int64),
            "token_type_ids": np.zeros((batch, seq), np.int64),
            "pixel_values": rng.standard_normal((batch, 3) + hw).astype(np.float32),
        }


def engine(bundle: str, variant: str, threads: int):
    """An Engine on ``bundle`` with the OpenVINOOptions of ``variant`` (see the module docstring)."""
    from fusionrt import Engine
    from fusionrt.engine import EngineOptions
    from fusionrt.engine.openvino_runtime import OpenVINOOptions

    ov = OpenVINOOptions(inference_num_threads=threads)
    if variant == "both":
        ov = OpenVINOOptions(inference_num_threads=threads, batch_buckets=True)
    elif variant != "fusionrt":
        buckets = variant == "buckets"
        capacity = int(variant.split(":")[1]) if variant.startswith("cap:") else None
        ov = OpenVINOOptions(inference_num_threads=threads, runtime_cache_capacity=capacity,
                             seq_bucket=16 if buckets else None, batch_buckets=buckets)
    return Engine.from_bundle(bundle, options=EngineOptions(openvino=ov))


def child(bundle: str, variant: str, shapes: int, threads: int) -> dict:
    """One memory run in this process (see the module docstring, step 1)."""
    e = engine(bundle, variant, threads)
    hw = e.image_processor.output_hw
    rng = np.random.default_rng(0)
    marks, rss, started = {shapes // 6, shapes // 2, shapes}, {"start": rss_mib()}, time.perf_counter()
    for i, feed in enumerate(feeds(rng, shapes, e.bundle.max_seq_len, hw), 1):
        e.run(feed)
        if i in marks:
            rss[str(i)] = round(rss_mib())
    return {"variant": variant, "rss_mib": rss, "seconds": round(time.perf_counter() - started, 1)}


def speed(bundle: str, variants: list, threads: int, rounds: int = 3) -> dict:
    """Step 2 of the module docstring."""
    from fusionrt.timing import interleaved_times, paired_ratio

    engines = {v: engine(bundle, v, threads) for v in ["plugin"] + [v for v in variants if v != "plugin"]}
    any_engine = next(iter(engines.values()))
    rng = np.random.default_rng(1)
    hw = any_engine.image_processor.output_hw
    fixed = {"input_ids": rng.integers(1000, 30000, (8, 64)).astype(np.int64), "attention_mask": np.ones((8, 64), np.int64),
             "token_type_ids": np.zeros((8, 64), np.int64), "pixel_values": rng.standard_normal((8, 3) + hw).astype(np.float32)}
    cycle = list(feeds(rng, 60, any_engine.bundle.max_seq_len, hw))

    def run_cycle(e):
        for f in cycle:
            e.run(f)

    from fusionrt.bench.runner import _inputs

    texts, images = _inputs(8)
    out = {}
    for name, call in (("fixed batch 8 seq 64", lambda e: e.run(fixed)), ("predict, bench batch 8", lambda e: e.predict(texts, images)),
                       ("cycle of 60 shapes", run_cycle)):
        times = interleaved_times({c: (lambda e=e: call(e)) for c, e in engines.items()}, warmup=1, rounds=rounds)
        out[name] = {v: round(paired_ratio(times[v], times["plugin"]), 3) for v in engines if v != "plugin"}
        out[name]["plugin_s"] = round(float(np.median(times["plugin"])), 4)
    return out


def make(directory: Path) -> Path:
    """A real-size bundle: the default encoders (pretrained MiniLM, ResNet-18) with a fresh head."""
    from fusionrt.export import ExportOptions, export_bundle
    from fusionrt.model import save_checkpoint
    from fusionrt.model.data import LABELS
    from fusionrt.model.encoders import base_model

    model, tokenizer, image_processor, source = base_model(list(LABELS))
    save_checkpoint(directory / "checkpoint", model.eval(), tokenizer, image_processor, source)
    return export_bundle(directory / "checkpoint", directory / "bundle",
                         ExportOptions(precision="bf16", target="openvino", validate=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make", type=Path, default=None)
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--shapes", type=int, default=300)
    parser.add_argument("--variants", default="plugin,cap:0,cap:50,buckets,both,fusionrt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--speed", default="plugin,cap:50,fusionrt", help="variants timed against each other ('off': none)")
    args = parser.parse_args()
    if args.make:
        print(make(args.make))
        return
    if args.child:
        print(json.dumps(child(args.bundle, args.child, args.shapes, args.threads)))
        return
    variants = args.variants.split(",")
    for v in (v for v in variants if v):
        out = subprocess.run([sys.executable, __file__, "--bundle", args.bundle, "--child", v, "--shapes", str(args.shapes),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)
    if args.speed != "off":
        print(json.dumps({"speed_ratio_vs_plugin": speed(args.bundle, args.speed.split(","), args.threads)}))


if __name__ == "__main__":
    main()
