"""fusionrt bundles against PyTorch eager and OpenVINO's default conversion of the PyTorch model,
in one process (issue 16's Targets; the README's results table, issue 27.7).

Usage: python benchmarks/openvino_peers.py BUNDLE [BUNDLE ...] --checkpoint CKPT [--providers P]
       [--threads 2] [--batch-size 8] [--runs 5] [--rounds 12] [--duration-s 1] [--min-samples 10]
       [--agreement 128] [--camera on|off] [--extra-peers on|off] [--markdown TABLE.md] [--json OUT.json]

Contenders, on the same real photographs with captions (scikit-image's, as `fusionrt bench`),
with the same thread count:
  - PyTorch eager FP32 (the x PyTorch reference);
  - OpenVINO's default conversion of the PyTorch model (openvino.convert_model, default compile:
    bf16 where the CPU has it), the peer every x peer ratio is against; its NNCF post-training INT8;
  - with `--extra-peers on`: OpenVINO's default with fusionrt's pooled decoding on its side
    (pipeline only) and PyTorch bf16 autocast (where the CPU has bf16);
  - each BUNDLE through fusionrt.Engine (`--providers` passed to Engine.from_bundle).
Model mode is inference on preprocessed tensors; pipeline mode goes from encoded images and texts
to probabilities, the peers as users write them (Pillow open + convert at full size, resize,
crop, numpy normalization, in the calling thread, one image at a time: bench.peers.user_pixels).
With `--camera on` (default) pipeline mode runs on the small photographs and on camera-size JPEGs
(fusionrt.samples.make_camera_photos: 4032x3024, quality 92, made in a temporary folder).

Each run measures every case (batch 1 and `--batch-size`; model, pipeline, camera-size pipeline)
as `fusionrt bench` does (fusionrt.bench.runner.time_case: interleaved rounds, at least
`--rounds`, more until `--duration-s` per contender have passed; ratios the median of the paired
per-round ratios; check_results denies a ratio to a row with fewer than `--min-samples` rounds)
and prints p50, p99, samples/s and the ratios; after the runs, the median over runs of each
(fusionrt.bench.table.median_over_runs). `--markdown` writes the README's table from those medians
with the CPU (fusionrt.cpu.cpu_description), date, commit and load average. Top-1 agreement with
PyTorch FP32 is measured on the first `--agreement` held-out examples of the checkpoint (0 skips
it), max |logit - PyTorch FP32| on the benchmark batch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fusionrt import Engine
from fusionrt.bench.peers import (
    PeerUnavailableError,
    convert_checkpoint,
    nncf_peer_contender,
    openvino_peer_contender,
    pytorch_bf16_contender,
    user_pixels,
)
from fusionrt.bench.runner import (
    MIN_SAMPLES,
    _inputs,
    benchmark_cases,
    check_results,
    engine_contender,
    machine_info,
    pytorch_contender,
    time_case,
)
from fusionrt.bench.table import TableMachine, markdown_table, median_over_runs
from fusionrt.cpu import cpu_description, cpu_info
from fusionrt.model import load_checkpoint
from fusionrt.model.data import read_jsonl
from fusionrt.samples import make_camera_photos
from fusionrt.timing import median_seconds, timed


def main() -> None:
    args = _parser().parse_args()
    commit = _commit()  # of the code that runs, before anyone edits the checkout
    info = cpu_info()
    print(f"CPU: {cpu_description()} ({info.machine}); {args.threads} threads, batch 1 and {args.batch_size}")
    contenders, build_s, skipped = _contenders(args)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    texts, images = _inputs(args.batch_size)
    reference = contenders[0].logits(texts, images)
    errors = {c.name: float(np.abs(c.logits(texts, images) - reference).max()) for c in contenders}
    agreement = _agreement(contenders, args.checkpoint, args.agreement, args.batch_size) if args.agreement else {}

    with tempfile.TemporaryDirectory(prefix="fusionrt-camera-") as camera_dir:
        inputs = ["photos", "camera"] if args.camera == "on" else ["photos"]
        camera = make_camera_photos(camera_dir, args.batch_size) if args.camera == "on" else ()
        cases = benchmark_cases(sorted({1, args.batch_size}), inputs, camera)
        runs = []
        for run in range(args.runs):
            rows = [row for case in cases for row in time_case(contenders, case, args.duration_s, args.rounds, errors)]
            for warning in check_results(rows, args.min_samples):
                print(f"warning: {warning}")
            runs.append(rows)
            _print(f"run {run + 1}/{args.runs}", rows)
    median = median_over_runs(runs)
    _print(f"median over {args.runs} runs", median)
    breakdown = _peer_breakdown(args.checkpoint, contenders[1], texts, images)
    print("serial peer pipeline, ms: " + ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items()))
    if args.markdown:
        machine = TableMachine(cpu_description(), datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
                               commit, args.threads, os.getloadavg()[0],
                               shlex.join(["python", "benchmarks/openvino_peers.py", *sys.argv[1:]]))
        Path(args.markdown).write_text(markdown_table(median, machine, args.runs, args.min_samples,
                                                      {k: v for k, v in agreement.items() if k in {r.contender for r in median}},
                                                      args.agreement))
        print(f"wrote {args.markdown}")
    if args.json:
        out = {"machine": machine_info(args.threads), "cpu": cpu_description(), "args": vars(args), "build_seconds": build_s,
               "skipped": skipped, "max_abs_logit_error": errors, "top1_agreement": agreement,
               "runs": [[asdict(r) for r in rows] for rows in runs], "median": [asdict(r) for r in median],
               "peer_pipeline_breakdown_ms": breakdown}
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", metavar="BUNDLE")
    parser.add_argument("--checkpoint", default="fusionrt-demo/checkpoint")
    parser.add_argument("--providers", default=None, help="passed to Engine.from_bundle (default: its own, auto)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="the throughput batch (latency is at batch 1)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds per run and case, at least")
    parser.add_argument("--duration-s", type=float, default=1.0,
                        help="more rounds until this many seconds per contender and case have passed")
    parser.add_argument("--min-samples", type=int, default=MIN_SAMPLES, help="rounds a row needs for a ratio")
    parser.add_argument("--agreement", type=int, default=128, help="held-out examples for top-1 agreement (0: skip)")
    parser.add_argument("--camera", default="on", choices=["on", "off"],
                        help="also the pipeline on camera-size JPEGs (default: on)")
    parser.add_argument("--extra-peers", default="off", choices=["on", "off"],
                        help="also PyTorch bf16 autocast and OpenVINO's default with fusionrt's pooled decoding")
    parser.add_argument("--markdown", default=None, help="write the results table (README's) here")
    parser.add_argument("--json", default=None, help="also write every run's rows here")
    return parser


def _contenders(args) -> tuple[list, dict[str, float], dict[str, str]]:
    """PyTorch eager FP32, OpenVINO's default, NNCF INT8 and the bundles, in that order (with
    ``--extra-peers on`` OpenVINO's default with pooled decoding and PyTorch bf16 after the peer);
    the build seconds and the peers that could not be built."""
    build_s: dict[str, float] = {}
    contenders = [pytorch_contender(args.checkpoint, args.threads)]
    skipped: dict[str, str] = {}
    converted = convert_checkpoint(args.checkpoint)
    build_s["openvino convert_model"] = converted.seconds
    contenders.append(openvino_peer_contender(converted, args.threads))
    if args.extra_peers == "on":
        contenders.append(openvino_peer_contender(converted, args.threads, "pooled"))
        try:
            contenders.append(pytorch_bf16_contender(args.checkpoint, args.threads))
        except PeerUnavailableError as exc:
            skipped["pytorch bf16"] = str(exc)
    try:
        build_s["nncf quantize"] = timed(lambda: contenders.append(nncf_peer_contender(converted, args.threads)))
    except PeerUnavailableError as exc:
        skipped["nncf"] = str(exc)
    options = {"intra_op_num_threads": args.threads}
    if args.providers:
        options["providers"] = args.providers
    for b in args.bundles:
        engine = Engine.from_bundle(b, **options)
        precisions = "/".join(sorted(set(engine.bundle.precision.values())))
        places = "/".join(sorted({p.split(" (")[0] for p in engine.providers.values()}))  # "OpenVINO CPU (bf16)": its runtime
        contenders.append(engine_contender(f"fusionrt {Path(b).name} ({precisions}, {places})", engine, breakdown=False))
    return contenders, build_s, skipped


def _agreement(contenders, checkpoint, n: int, batch_size: int) -> dict[str, float]:
    """Share of the first ``n`` held-out examples on which each contender's top-1 label is
    PyTorch FP32's (``contenders[0]``); empty without a held-out split."""
    split = Path(checkpoint) / "heldout.jsonl"
    if not split.is_file():
        return {}
    examples = read_jsonl(split)[:n]
    labels: dict[str, list] = {c.name: [] for c in contenders}
    for start in range(0, len(examples), batch_size):
        part = examples[start : start + batch_size]
        t, i = [e.text for e in part], [e.image for e in part]
        for c in contenders:
            labels[c.name].append(np.argmax(c.logits(t, i), -1))
    ref = np.concatenate(labels[contenders[0].name])
    return {name: float(np.mean(np.concatenate(v) == ref)) for name, v in labels.items()}


def _peer_breakdown(checkpoint, peer, texts: list, images: list) -> dict[str, float]:
    """Where the serial peer pipeline's time goes at the throughput batch: median ms of 7 calls each."""
    ckpt = load_checkpoint(checkpoint)
    parts = {
        "decode+resize+normalize (Pillow, calling thread)": lambda: [user_pixels(i, ckpt.image_processor) for i in images],
        "tokenize": lambda: ckpt.tokenizer(texts),
        "openvino infer": peer.model(texts, images),
    }
    return {k: median_seconds(f) * 1e3 for k, f in parts.items()}


def _commit() -> str:
    """``git rev-parse --short HEAD`` of this checkout, ``+changes`` when its tracked files differ."""
    root = Path(__file__).resolve().parent.parent
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+changes" if dirty.strip() else "")


def _print(title: str, rows) -> None:
    print(f"\n{title}")
    case = None
    for r in rows:
        if (r.inputs, r.mode, r.batch_size) != case:
            case = (r.inputs, r.mode, r.batch_size)
            print(f"  {r.mode}, {r.inputs}, batch {r.batch_size}: rounds | p50 ms | p99 ms | samples/s | x OV default | x PyTorch"
                  " | max abs logit err")
        ratios = " | ".join("  -  " if x is None else f"{x:5.2f}" for x in (r.speedup_vs_peer, r.speedup_vs_baseline))
        err = "-" if r.max_abs_logit_error is None else f"{r.max_abs_logit_error:.2e}"
        print(f"    {r.contender:62s} {r.iterations:4d} | {r.p50_ms:7.1f} | {r.p99_ms:7.1f} | {r.throughput_per_s:7.1f} | {ratios}"
              f" | {err}{'' if r.reportable else ' (not a result)'}")


if __name__ == "__main__":
    main()
