"""fusionrt bundles against OpenVINO's default conversion of the PyTorch model, in one process (issue 16's Targets).

Usage: python benchmarks/openvino_peers.py BUNDLE [BUNDLE ...] --checkpoint CKPT [--providers P]
       [--threads 2] [--batch-size 8] [--runs 5] [--rounds 12] [--agreement 128] [--camera on|off]
       [--json OUT.json]

Contenders, all at the same batch of real photographs with captions (scikit-image's, as `fusionrt
bench`), with the same thread count:
  - PyTorch eager FP32 and PyTorch bf16 autocast (the latter where the CPU has bf16);
  - OpenVINO's default conversion of the PyTorch model (openvino.convert_model, default compile:
    bf16 where the CPU has it), the peer every ratio is against; its NNCF post-training INT8;
  - each BUNDLE through fusionrt.Engine (`--providers` passed to Engine.from_bundle).
Model mode is inference on preprocessed tensors; pipeline mode goes from encoded images and texts
to probabilities: the peers as users write them (Pillow open + convert at full size, resize,
crop, numpy normalization, in the calling thread, one image at a time: bench.peers.user_pixels),
and OpenVINO's default again with fusionrt's pooled decoding on its side. With `--camera on`
(default) pipeline mode runs twice: on the small photographs and on camera-size JPEGs
(fusionrt.samples.make_camera_photos: 4032x3024, quality 92, made in a temporary folder).

Each run times every contender of a mode in `--rounds` interleaved rounds (fusionrt.timing.
interleaved_times) and prints each one's median ms and its speed against the OpenVINO default
peer (the median over rounds of peer_ms / contender_ms: > 1 is faster than the peer); after the
runs, the median over runs of each ratio. Top-1 agreement with PyTorch FP32 is measured on the
first `--agreement` held-out examples of the checkpoint (0 skips it), max |logit - PyTorch FP32|
on the benchmark batch. The CPU model and flags come from fusionrt.cpu.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
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
from fusionrt.bench.runner import _inputs, engine_contender, machine_info, pytorch_contender
from fusionrt.cpu import cpu_info
from fusionrt.model import load_checkpoint
from fusionrt.model.data import read_jsonl
from fusionrt.samples import make_camera_photos
from fusionrt.timing import interleaved_times, median_seconds, paired_ratio, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", metavar="BUNDLE")
    parser.add_argument("--checkpoint", default="fusionrt-demo/checkpoint")
    parser.add_argument("--providers", default=None, help="passed to Engine.from_bundle (default: its own, auto)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds per run and mode")
    parser.add_argument("--agreement", type=int, default=128, help="held-out examples for top-1 agreement (0: skip)")
    parser.add_argument("--camera", default="on", choices=["on", "off"],
                        help="also the pipeline on camera-size JPEGs (default: on)")
    parser.add_argument("--json", default=None, help="also write every run's numbers here")
    args = parser.parse_args()

    info = cpu_info()
    print(f"CPU: {info.model} ({info.machine}), flags {', '.join(info.flags) or 'none reported'}; "
          f"{args.threads} threads, batch {args.batch_size}")
    texts, images = _inputs(args.batch_size)

    contenders, build_s, skipped = _contenders(args)
    peer, pooled = contenders[1], contenders[2]
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")

    reference = contenders[0].logits(texts, images)
    errors = {c.name: float(np.abs(c.logits(texts, images) - reference).max()) for c in contenders}
    agreement = _agreement(contenders, args.checkpoint, args.agreement, args.batch_size) if args.agreement else {}

    modes = {
        "model": {c.name: c.model(texts, images) for c in contenders if c.model is not None},
        "pipeline": {c.name: c.pipeline(texts, images) for c in contenders if c.pipeline is not None},
    }
    refs = {"model": [peer.name], "pipeline": [peer.name, pooled.name]}
    camera_dir = tempfile.TemporaryDirectory(prefix="fusionrt-camera-")
    if args.camera == "on":
        camera_texts, camera_images = _inputs(args.batch_size, make_camera_photos(camera_dir.name, args.batch_size))
        modes["pipeline camera"] = {c.name: c.pipeline(camera_texts, camera_images) for c in contenders if c.pipeline is not None}
        refs["pipeline camera"] = refs["pipeline"]
    runs = []
    for run in range(args.runs):
        entry = {}
        for mode, fns in modes.items():
            times = interleaved_times(fns, warmup=2, rounds=args.rounds)
            entry[mode] = {name: {"median_ms": float(np.median(t)) * 1e3,
                                  **{f"x {r}": paired_ratio(times[r], t) for r in refs[mode]}} for name, t in times.items()}
        runs.append(entry)
        _print(f"run {run + 1}/{args.runs}", entry, refs, errors, agreement)
    median = {mode: {name: {k: float(np.median([r[mode][name][k] for r in runs])) for k in runs[0][mode][name]}
                     for name in runs[0][mode]} for mode in modes}
    _print(f"median over {args.runs} runs (ms and ratios)", median, refs, errors, agreement)

    # where the serial peer pipeline's time goes (median ms of 7 calls each)
    ckpt = load_checkpoint(args.checkpoint)
    feed, _ = ckpt.tokenizer(texts)
    feed["pixel_values"] = ckpt.image_processor(images)
    parts = {
        "decode+resize+normalize (Pillow, calling thread)": lambda: [user_pixels(i, ckpt.image_processor) for i in images],
        "tokenize": lambda: ckpt.tokenizer(texts),
        "openvino infer": modes["model"][peer.name],
    }
    breakdown = {k: median_seconds(f) * 1e3 for k, f in parts.items()}
    print("serial peer pipeline, ms: " + ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items()))
    camera_dir.cleanup()
    if args.json:
        out = {"machine": machine_info(args.threads), "args": vars(args), "build_seconds": build_s, "skipped": skipped,
               "max_abs_logit_error": errors, "top1_agreement": agreement, "runs": runs, "median": median,
               "peer_pipeline_breakdown_ms": breakdown}
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


def _contenders(args) -> tuple[list, dict[str, float], dict[str, str]]:
    """PyTorch eager FP32, OpenVINO's default (serial, then pooled decoding), NNCF INT8, PyTorch
    bf16 and the bundles, in that order; the build seconds and the peers that could not be built."""
    build_s: dict[str, float] = {}
    contenders = [pytorch_contender(args.checkpoint, args.threads)]
    skipped: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings of the conversion
        converted = convert_checkpoint(args.checkpoint)
    build_s["openvino convert_model"] = converted.seconds
    peer = openvino_peer_contender(converted, args.threads)
    pooled = openvino_peer_contender(converted, args.threads, "pooled")
    contenders += [peer, pooled]
    try:
        build_s["nncf quantize"] = timed(lambda: contenders.append(nncf_peer_contender(converted, args.threads)))
    except PeerUnavailableError as exc:
        skipped["nncf"] = str(exc)
    try:
        contenders.append(pytorch_bf16_contender(args.checkpoint, args.threads))
    except PeerUnavailableError as exc:
        skipped["pytorch bf16"] = str(exc)
    options = {"intra_op_num_threads": args.threads}
    if args.providers:
        options["providers"] = args.providers
    for b in args.bundles:
        engine = Engine.from_bundle(b, **options)
        precisions = "/".join(sorted(set(engine.bundle.precision.values())))
        places = "/".join(sorted(set(engine.providers.values())))
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


def _print(title: str, entry: dict, refs: dict, errors: dict, agreement: dict) -> None:
    print(f"\n{title}")
    for mode, rows in entry.items():
        heads = [f"x {r}" for r in refs[mode]]
        print(f"  {mode}: ms | " + " | ".join(h.replace("x openvino default", "x OV default") for h in heads)
              + " | max abs logit err | top-1 agreement")
        for name, r in rows.items():
            agree = f"{agreement[name]:.1%}" if name in agreement else "-"
            print(f"    {name:62s} {r['median_ms']:7.1f} | " + " | ".join(f"{r[h]:5.2f}" for h in heads)
                  + f" | {errors.get(name, float('nan')):.2e} | {agree}")


if __name__ == "__main__":
    main()
