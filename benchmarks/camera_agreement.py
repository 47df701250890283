"""Bundles against their PyTorch FP32 model on camera-size photographs none of them was calibrated on
(issues 26.5 and 27.1).

Usage: python benchmarks/camera_agreement.py BUNDLE [BUNDLE ...] --checkpoint CKPT
       [--count 512] [--seed 1000] [--photos DIR] [--json OUT.json]

The photographs are the default task's (model.data.make_photo_dataset with camera_fraction 1: every
one a 4032x3024 JPEG, quality 92, a variant of scikit-image's photographs) drawn with a seed other
than the checkpoint's (0), so no calibration or training example is among them. Per bundle:
  - top-1 agreement with PyTorch FP32 on exactly the same pixels (the checkpoint's image processor,
    JPEG draft decoding as the engine does by default), with its 95% Wilson interval;
  - accuracy of the bundle and of PyTorch FP32 on the photographs' labels;
  - agreement of the bundle's answers on draft-decoded pixels with its answers on fully decoded ones.
The CPU model comes from fusionrt.cpu.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from fusionrt import Engine
from fusionrt.cpu import cpu_info
from fusionrt.export.validate import _eval_examples, _torch_outputs, wilson_interval
from fusionrt.model import load_checkpoint
from fusionrt.model.data import make_photo_dataset

BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", metavar="BUNDLE")
    parser.add_argument("--checkpoint", default="fusionrt-demo/checkpoint")
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1000, help="photographs' seed (the checkpoint's data used 0)")
    parser.add_argument("--photos", default="camera-photos", help="folder of the photographs (reused when present)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    data = make_photo_dataset(args.photos, num_samples=args.count, seed=args.seed, camera_fraction=1.0)
    examples, labels, _ = _eval_examples(ckpt, data)
    engines = {b: Engine.from_bundle(b, intra_op_num_threads=2) for b in args.bundles}
    exact = dataclasses.replace(ckpt.image_processor, jpeg_draft=False)
    ref, got, got_exact = [], {b: [] for b in engines}, {b: [] for b in engines}
    for start in range(0, len(examples), BATCH):
        part = examples[start : start + BATCH]
        feed, _ = ckpt.tokenizer([ex.text for ex in part])
        draft = {**feed, "pixel_values": ckpt.image_processor.pixels([ex.image for ex in part], "uint8")}
        full = {**feed, "pixel_values": exact.pixels([ex.image for ex in part], "uint8")}
        ref.append(_torch_outputs(ckpt, draft)["logits"].argmax(-1))
        for b, engine in engines.items():
            got[b].append(engine.run(draft)["logits"].argmax(-1))
            got_exact[b].append(engine.run(full)["logits"].argmax(-1))
        print(f"{start + len(part)}/{len(examples)}", flush=True)
    ref = np.concatenate(ref)
    n = len(ref)
    cpu = cpu_info()
    results = {"cpu": {"model": cpu.model, "flags": list(cpu.flags)}, "count": n, "seed": args.seed,
               "pytorch_fp32_accuracy": float((ref == labels).mean()), "bundles": {}}
    for b in engines:
        pred, pred_exact = np.concatenate(got[b]), np.concatenate(got_exact[b])
        agreed, same = int((pred == ref).sum()), int((pred == pred_exact).sum())
        results["bundles"][b] = {
            "agreement": agreed / n, "agreement_ci95": wilson_interval(agreed, n),
            "accuracy": float((pred == labels).mean()),
            "draft_vs_full_agreement": same / n, "draft_vs_full_ci95": wilson_interval(same, n),
        }
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
