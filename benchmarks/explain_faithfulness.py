"""Faithfulness and cost of fusionrt's explanations (issue 28.5, 28.6), on a checkpoint's held-out set.

Usage (one command; rerun it after the default checkpoint changes):

    python benchmarks/explain_faithfulness.py [--workdir fusionrt-explain] [--checkpoint CKPT]
        [--examples 256] [--precisions int8,bf16,auto] [--threads 2] [--doc docs/explanations.md]

Without ``--checkpoint`` it builds (or reuses, by its recipe stamp) the default checkpoint of
:mod:`fusionrt.model.default` in WORKDIR/checkpoint. Bundles go to WORKDIR/bundles (fp32; int8 on
the CPU target; bf16 on the OpenVINO target; auto from the fp32 and int8 bundles), reused when
their manifest names the checkpoint's weights. Then, on the first ``--examples`` held-out pairs:

1. Grad-CAM (Selvaraju et al., 2017) on the image encoder's last feature map, from the PyTorch
   checkpoint in FP32 (the map's channels weighted by the spatially averaged gradient of the
   predicted class's logit, ReLU), against the FP32 bundle's region relevance: Spearman's rank
   correlation per item, for each method (``gradient``, ``rollout``).
2. Deletion: occlude the k most relevant grid cells (pixels set to 0 after normalization, the
   normalization mean) and the predicted class's probability falls; the same with k random cells
   (one random order per item) and k cells by Grad-CAM's order. Mean probability per k, per order.
3. At every precision of ``--precisions``: the fraction of items whose most relevant region is
   FP32's.
4. Cost: ``Engine.explain`` against ``Engine.predict`` on batch 8 (the same 8 pairs), in
   interleaved rounds, median of per-round ratios (fp32 bundle, ``--threads`` threads).

Writes WORKDIR/explain_faithfulness.json and the results section of ``--doc`` (between its
``<!-- results -->`` markers).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from fusionrt import Engine
from fusionrt.bundle import sha256_file
from fusionrt.cpu import cpu_info
from fusionrt.timing import interleaved_times, paired_ratio

KS = (1, 2, 4, 8, 16)
METHODS = ("gradient", "rollout")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(a, b).statistic
    return float(r) if np.isfinite(r) else 0.0


def build_bundles(ckpt: Path, root: Path, precisions: tuple[str, ...]) -> dict[str, Path]:
    from fusionrt.export import ExportOptions, export_bundle
    from fusionrt.export.auto import SearchOptions, search_precision

    weights = sha256_file(ckpt / "model.safetensors")
    stamp = {"checkpoint_sha256": weights}
    # Validation and its accuracy gate are the export's business (and minutes on 1024 held-out
    # pairs): here each bundle's explanations are measured against FP32's, whatever it agrees.
    recipes = {"fp32": ExportOptions(validate=False), "int8": ExportOptions(precision="int8", validate=False),
               "bf16": ExportOptions(precision="bf16", target="openvino", validate=False)}
    out: dict[str, Path] = {}
    for name in ("fp32", "int8", *precisions):
        if name in out:
            continue
        path = root / name
        marker = path / ".explain-benchmark.json"
        if marker.is_file() and json.loads(marker.read_text()) == stamp and (path / "manifest.json").is_file():
            out[name] = path
            continue
        say(f"exporting the {name} bundle to {path}")
        if name == "auto":
            search_precision(ckpt, path, ExportOptions(max_accuracy_drop=0.5, min_agreement=0.995),
                             SearchOptions(precisions=("fp32", "bf16", "int8"), eval_limit=256, rounds=5, max_tries=2),
                             progress=False, echo=lambda line: None, sources={p: out[p] for p in ("fp32", "int8")})
        else:
            export_bundle(ckpt, path, recipes[name], progress=False)
        marker.write_text(json.dumps(stamp))
        out[name] = path
    return out


def model_affine(model) -> tuple:
    """ImageNet normalization as (scale, shift) per channel: what a uint8 image graph applies."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return 1 / (255 * std), -mean / std


def grad_cam(model, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM over the last map (B, L) and PyTorch's predicted classes (B,), in FP32."""
    import torch

    t = {k: torch.from_numpy(v) for k, v in feed.items()}
    if feed["pixel_values"].dtype == np.uint8:  # (B, H, W, 3) uint8 into the image graph: normalize as it does
        scale, shift = (torch.from_numpy(np.asarray(a, np.float32)).view(1, 3, 1, 1) for a in model_affine(model))
        t["pixel_values"] = t["pixel_values"].permute(0, 3, 1, 2).float() * scale + shift
    with torch.no_grad():
        text = model.encode_text(t["input_ids"], t["attention_mask"], t["token_type_ids"])
        image = model.encode_image(t["pixel_values"])  # (B, L, C): the last map, flattened
    image = image.clone().requires_grad_(True)
    logits = model.head(text, t["attention_mask"], image).logits
    target = logits.argmax(-1)
    logits.gather(1, target[:, None]).sum().backward()
    weights = image.grad.mean(1, keepdim=True)  # (B, 1, C)
    cam = torch.relu((weights * image).sum(-1))  # (B, L)
    return cam.detach().numpy(), target.numpy()


def occluded(pixels: np.ndarray, cells: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``pixels`` (``(3, H, W)`` normalized floats, or ``(H, W, 3)`` uint8) with the given grid
    cells set to the normalization mean (0 after normalizing; ImageNet's mean colour in uint8)."""
    hwc = pixels.dtype == np.uint8
    out = np.moveaxis(pixels.copy(), -1, 0) if hwc else pixels.copy()  # (3, H, W)
    h, w = grid
    ch, cw = out.shape[1] / h, out.shape[2] / w
    mean = np.array([124, 116, 104], np.uint8)[:, None, None] if hwc else 0.0
    for c in cells:
        i, j = divmod(int(c), w)
        out[:, round(i * ch) : round((i + 1) * ch), round(j * cw) : round((j + 1) * cw)] = mean
    return np.ascontiguousarray(np.moveaxis(out, 0, -1)) if hwc else out


def deletion(engine: Engine, feed: dict, orders: dict[str, np.ndarray], grid: tuple[int, int], classes: np.ndarray) -> dict:
    """Mean probability of each item's predicted class after occluding the first k cells of each order."""
    from fusionrt.prediction import softmax

    curves = {name: np.zeros((len(classes), len(KS) + 1)) for name in orders}
    for i in range(len(classes)):
        variants, index = [feed["pixel_values"][i]], []
        for name, order in orders.items():
            for k in KS:
                index.append(name)
                variants.append(occluded(feed["pixel_values"][i], order[i][:k], grid))
        n = len(variants)
        one = {k: np.repeat(v[i : i + 1], n, axis=0) for k, v in feed.items() if k != "pixel_values"}
        probs = softmax(engine.run({**one, "pixel_values": np.stack(variants)})["logits"])[:, classes[i]]
        for name in orders:
            curves[name][i, 0] = probs[0]
            curves[name][i, 1:] = [p for p, which in zip(probs[1:], index) if which == name]
    return {name: c.mean(0).tolist() for name, c in curves.items()}


def run(args) -> dict:
    from fusionrt.model.data import read_jsonl

    work = Path(args.workdir)
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
    else:
        from fusionrt.model.default import build_default_checkpoint

        say("building (or reusing) the default checkpoint")
        ckpt, _ = build_default_checkpoint(work / "checkpoint", work / "data")
    config = json.loads((ckpt / "config.json").read_text())
    bundles = build_bundles(ckpt, work / "bundles", args.precisions)
    examples = read_jsonl(ckpt / "heldout.jsonl")[: args.examples]
    texts, images = [e.text for e in examples], [str(e.image) for e in examples]
    engine = Engine.from_bundle(bundles["fp32"], intra_op_num_threads=args.threads)
    say(f"explaining {len(examples)} held-out pairs on the fp32 bundle")
    explained = {m: engine.explain(texts, images, method=m) for m in METHODS}
    relevance = {m: np.array([e.region_relevance.ravel() for e in ex]) for m, ex in explained.items()}
    grid = explained["gradient"][0].region_relevance.shape
    from fusionrt.model import load_checkpoint

    model = load_checkpoint(ckpt).model.eval()
    cams, classes = [], []
    for start in range(0, len(texts), 32):
        cam, target = grad_cam(model, engine.preprocess(texts[start : start + 32], images[start : start + 32]))
        cams.append(cam)
        classes.append(target)
    cam, torch_classes = np.concatenate(cams), np.concatenate(classes)
    engine_classes = np.array([engine.labels.index(e.explained_label) for e in explained["gradient"]])
    correlation = {m: [spearman(relevance[m][i], cam[i]) for i in range(len(cam))] for m in METHODS}
    say("deletion curves")
    rng = np.random.default_rng(0)
    orders = {"gradient": np.argsort(-relevance["gradient"], 1), "rollout": np.argsort(-relevance["rollout"], 1),
              "grad-cam": np.argsort(-cam, 1), "random": np.array([rng.permutation(cam.shape[1]) for _ in cam])}
    curves = {}
    for start in range(0, len(texts), 32):
        part = engine.preprocess(texts[start : start + 32], images[start : start + 32])
        sl = slice(start, start + len(part["input_ids"]))
        got = deletion(engine, part, {n: o[sl] for n, o in orders.items()}, grid, engine_classes[sl])
        for name, c in got.items():
            curves.setdefault(name, []).append((np.asarray(c), len(part["input_ids"])))
    curves = {n: (sum(c * k for c, k in parts) / sum(k for _, k in parts)).tolist() for n, parts in curves.items()}
    agreement = {}
    for name in args.precisions:
        say(f"explaining on the {name} bundle")
        with Engine.from_bundle(bundles[name], intra_op_num_threads=args.threads) as other:
            top = np.array([e.region_relevance.argmax() for e in other.explain(texts, images)])
        agreement[name] = float((top == relevance["gradient"].argmax(1)).mean())
    say("timing explain against predict, batch 8")
    t8, i8 = texts[:8], images[:8]
    times = interleaved_times({"predict": lambda: engine.predict(t8, i8), "explain": lambda: engine.explain(t8, i8)},
                              warmup=3, rounds=args.rounds)
    return {
        "checkpoint": str(ckpt), "image_config": config.get("image_config", {}), "examples": len(examples),
        "grid": list(grid), "cpu": cpu_info().model + (" (AMX)" if "amx_bf16" in cpu_info().flags else ""), "threads": args.threads, "ks": list(KS),
        "torch_agrees_with_bundle": float((torch_classes == engine_classes).mean()),
        "spearman": {m: {"mean": float(np.mean(v)), "median": float(np.median(v)), "positive": float(np.mean(np.array(v) > 0))}
                     for m, v in correlation.items()},
        "deletion": curves, "top_region_agreement": agreement,
        "explain_over_predict": paired_ratio(times["explain"], times["predict"]),
        "predict_ms": float(np.median(times["predict"]) * 1e3), "explain_ms": float(np.median(times["explain"]) * 1e3),
        "date": time.strftime("%Y-%m-%d"),
    }


def markdown(r: dict) -> str:
    enc = r["image_config"]
    encoder = f"{enc.get('model_type', 'resnet')} hidden sizes {enc.get('hidden_sizes')}" if enc else "see config.json"
    lines = [
        f"Measured {r['date']} on {r['cpu']}, {r['threads']} threads, checkpoint `{r['checkpoint']}` (image encoder: "
        f"{encoder}), {r['examples']} held-out pairs, a {r['grid'][0]}x{r['grid'][1]} grid "
        f"(`python benchmarks/explain_faithfulness.py`).",
        "",
        "Rank correlation (Spearman) of region relevance with Grad-CAM on the image encoder's last map (PyTorch FP32):",
        "",
        "| method | mean | median | items > 0 |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m} | {v['mean']:.3f} | {v['median']:.3f} | {v['positive']:.0%} |" for m, v in r["spearman"].items()]
    lines += ["", "Deletion: mean probability of the predicted class after occluding k grid cells:", "",
              "| order | " + " | ".join(f"k={k}" for k in [0, *r["ks"]]) + " |", "|---|" + "---|" * (len(r["ks"]) + 1)]
    lines += [f"| {n} | " + " | ".join(f"{p:.3f}" for p in c) + " |" for n, c in r["deletion"].items()]
    lines += ["", "Most relevant region equal to FP32's: " + ", ".join(f"{p} {v:.1%}" for p, v in r["top_region_agreement"].items())
              + f". Cost at batch 8: explain {r['explain_over_predict']:.2f}x predict (median of paired rounds; "
              f"predict {r['predict_ms']:.1f} ms, explain {r['explain_ms']:.1f} ms).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="fusionrt-explain")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint directory (default: the default checkpoint, built in WORKDIR)")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--precisions", default="int8,bf16,auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--doc", default=str(Path(__file__).parent.parent / "docs" / "explanations.md"))
    args = parser.parse_args()
    args.precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    if "bf16" in args.precisions and not cpu_info().bf16:
        args.precisions = tuple(p for p in args.precisions if p != "bf16")
        say("bf16 skipped: this CPU has neither AVX512-BF16 nor AMX")
    result = run(args)
    Path(args.workdir, "explain_faithfulness.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    print(text)
    doc = Path(args.doc)
    if doc.is_file() and "<!-- results -->" in doc.read_text():
        body = re.sub(r"<!-- results -->.*<!-- /results -->", lambda _: f"<!-- results -->\n{text}\n<!-- /results -->",
                      doc.read_text(), flags=re.S)
        doc.write_text(body)
        say(f"results written to {doc}")


if __name__ == "__main__":
    main()
