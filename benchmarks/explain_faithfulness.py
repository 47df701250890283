"""Faithfulness and cost of fusionrt's explanations (issue 28.5, 28.6), on a checkpoint's held-out set.

Usage (one command; rerun it after the default checkpoint changes):

    python benchmarks/explain_faithfulness.py [--workdir fusionrt-explain] [--checkpoint CKPT]
        [--examples 256] [--precisions int8,bf16,auto] [--threads 2] [--doc docs/explanations.md]
        [--bundle NAME=PATH ...]

Without ``--checkpoint`` it builds (or reuses, by its recipe stamp) the default checkpoint of
:mod:`fusionrt.model.default` in WORKDIR/checkpoint. Bundles go to WORKDIR/bundles (fp32; int8 on
the CPU target; bf16 on the OpenVINO target; auto from the fp32 and int8 bundles), reused when
their manifest names the checkpoint's weights; ``--bundle NAME=PATH`` uses an existing bundle
instead (read only; e.g. those ``fusionrt demo`` built). Then, on ``--examples`` held-out pairs spread
over the file (it is written label by label):

1. Grad-CAM (Selvaraju et al., 2017) on the image encoder's last feature map, from the PyTorch
   checkpoint in FP32 (the map's channels weighted by the spatially averaged gradient of the
   predicted class's logit, ReLU), against the FP32 bundle's region relevance: Spearman's rank
   correlation per item, for each method (``gradient``, ``rollout``, and ``grad-cam``: the
   bundle's own Grad-CAM, a check of the graph against PyTorch).
2. Deletion: occlude the k most relevant grid cells (pixels set to 0 after normalization, the
   normalization mean) and the predicted class's probability falls; the same with k random cells
   (one random order per item), k cells by Grad-CAM's order, and the k least relevant cells first.
   Mean probability per k, per order, and its mean over k = 0..48 (the area under the curve,
   trapezoids: lower is more faithful for a most-relevant-first order). Then the same orders as
   Chefer et al.'s (2021) perturbation test of bi-modal models: the k cells' region tokens removed
   from the fusion head's input (FP32 features, the checkpoint's head in PyTorch), and the share of
   items whose area is below the random order's.
3. On ``--agreement-examples`` held-out pairs (1024, spread likewise), for the ``gradient`` and
   ``grad-cam`` methods: FP32 against itself with exact pixels (``Engine.from_bundle(...,
   exact_pixels=True)``), then at every precision of ``--precisions``: the fraction of items
   whose most relevant region is FP32's (strict), and beside it a tie-aware figure: the fraction whose most relevant region is
   among FP32's 3 most relevant; FP32's top-1/top-2 gap (a fraction of its map's range) on the
   items that agree and on those that disagree; Spearman against FP32's map and the FP32
   bundle's Grad-CAM; and (``gradient``) which encoder moves the ranking: the FP32 explanation graph on FP32 text features with this
   precision's image features, and the other way round.
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
from fusionrt.cpu import cpu_description, cpu_info
from fusionrt.timing import interleaved_times, paired_ratio

KS = (1, 2, 4, 8, 16, 24, 32, 40, 48)  # up to all but one cell of a 7x7 grid
METHODS = ("gradient", "rollout", "grad-cam")
AGREEMENT_METHODS = ("gradient", "grad-cam")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(a, b).statistic
    return float(r) if np.isfinite(r) else 0.0


def build_bundles(ckpt: Path, root: Path, precisions: tuple[str, ...], given: dict[str, Path]) -> dict[str, Path]:
    from fusionrt.export import ExportOptions, export_bundle
    from fusionrt.export.auto import SearchOptions, search_precision

    weights = sha256_file(ckpt / "model.safetensors")
    stamp = {"checkpoint_sha256": weights}
    # Validation and its accuracy gate are the export's business (and minutes on 1024 held-out
    # pairs): here each bundle's explanations are measured against FP32's, whatever it agrees.
    recipes = {"fp32": ExportOptions(validate=False), "int8": ExportOptions(precision="int8", validate=False),
               "bf16": ExportOptions(precision="bf16", target="openvino", validate=False)}
    out: dict[str, Path] = dict(given)
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


def torch_pixels(pixels: np.ndarray, affine: tuple[np.ndarray, np.ndarray]):
    """What the image encoder takes in PyTorch, ``(B, 3, H, W)`` float32: uint8 ``(B, H, W, 3)``
    pixels normalized as the bundle's image graph does (``affine``: its ``(scale, shift)`` per
    channel, ``ImageProcessor.affine``), float pixels as they are."""
    import torch

    if pixels.dtype != np.uint8:
        return torch.from_numpy(pixels)
    scale, shift = (torch.from_numpy(np.asarray(a, np.float32)).view(1, 3, 1, 1) for a in affine)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() * scale + shift


def grad_cam(model, feed: dict[str, np.ndarray], affine: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM over the last map (B, L) and PyTorch's predicted classes (B,), in FP32, on the
    pixels the bundle's image graph sees (:func:`torch_pixels`)."""
    import torch

    t = {k: torch.from_numpy(v) for k, v in feed.items() if k != "pixel_values"}
    t["pixel_values"] = torch_pixels(feed["pixel_values"], affine)
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


TIE = 3  # the tie-aware figure: a precision's top cell is among FP32's TIE most relevant cells


def encoder_features(engine: Engine, texts: list, images: list) -> dict[str, np.ndarray]:
    """What the explanation graph takes, from ``engine``'s own graphs at its precision:
    ``text_features``, ``image_features``, ``attention_mask`` (batches of 32, concatenated; the
    texts' padding is the longest text's, so one call's arrays line up)."""
    feed = engine._check_feed(engine.prepare(texts, images, 0, "raise").feed)
    values = engine.runtime.infer(feed, outputs=("text_features", "image_features"))
    return {**values, "attention_mask": feed["attention_mask"]}


def graph_regions(engine: Engine, values: dict[str, np.ndarray]) -> np.ndarray:
    """Region relevance ``(B, L)`` (``gradient``) of ``engine``'s float32 explanation graph on given features."""
    from fusionrt.bundle import EXPLAIN_GRAPH
    from fusionrt.explanation import relevance as to_relevance

    out = engine._explainer_runtime().infer_graph(EXPLAIN_GRAPH, values)
    return to_relevance(out, values["attention_mask"], "gradient")[1]


def top_margin(rel: np.ndarray) -> np.ndarray:
    """``(top1 - top2) / (max - min)`` of each row of a relevance map ``(B, L)``: the gap between
    the two most relevant cells as a fraction of the map's range (a constant offset, which ranks
    nothing, cancels out)."""
    two = -np.sort(-rel, 1)[:, :2]
    return (two[:, 0] - two[:, 1]) / np.maximum(rel.max(1) - rel.min(1), 1e-12)


def compare(rel: np.ndarray, ref: np.ndarray, cam: np.ndarray) -> dict:
    """One precision's region relevance ``rel`` (B, L) against FP32's ``ref`` and Grad-CAM's ``cam``."""
    top, ref_top = rel.argmax(1), ref.argmax(1)
    agree = top == ref_top
    near = np.array([t in np.argsort(-r)[:TIE] for t, r in zip(top, ref)])
    margin = top_margin(ref)
    return {
        "strict": float(agree.mean()), "tie_aware": float(near.mean()),
        "fp32_margin_disagree_median": float(np.median(margin[~agree])) if (~agree).any() else None,
        "fp32_margin_agree_median": float(np.median(margin[agree])) if agree.any() else None,
        "spearman_vs_fp32": float(np.mean([spearman(a, b) for a, b in zip(rel, ref)])),
        "spearman_vs_gradcam": float(np.mean([spearman(a, b) for a, b in zip(rel, cam)])),
    }


def regions_of(explained: list) -> np.ndarray:
    """``(N, L)`` region relevance of a list of explanations."""
    return np.array([e.region_relevance.ravel() for e in explained])


def precision_agreement(name: str, path: Path, fp32_features: list[dict], texts: list, images: list, refs: dict[str, np.ndarray],
                        threads: int, arrays: dict, fp32: Engine) -> dict:
    """:func:`compare` of a precision's ``explain`` by each method of ``refs`` (FP32's maps by that
    method; ``refs["grad-cam"]`` is also the Grad-CAM every map is correlated with), and, for
    ``gradient``, of the FP32 explanation graph on mixed features (this precision's image encoder
    with FP32's text encoder, and the other way round). ``fp32_features``: the FP32 bundle's
    :func:`encoder_features` in batches of 32."""
    out, cam = {}, refs["grad-cam"]
    with Engine.from_bundle(path, intra_op_num_threads=threads) as other:
        for method, ref in refs.items():
            arrays[name if method == "gradient" else f"{name}_{method}"] = rel = regions_of(other.explain(texts, images, method=method))
            out[method] = compare(rel, ref, cam)
        mixed = {"image_only": [], "text_only": []}
        for a, start in zip(fp32_features, range(0, len(texts), 32)):
            b = encoder_features(other, texts[start : start + 32], images[start : start + 32])
            mixed["image_only"].append(graph_regions(fp32, {**a, "image_features": b["image_features"]}))
            mixed["text_only"].append(graph_regions(fp32, {**a, "text_features": b["text_features"]}))
    for part, chunks in mixed.items():
        arrays[f"{name}_{part}"] = np.concatenate(chunks)
        out["gradient"][f"{part}_quantized"] = compare(arrays[f"{name}_{part}"], refs["gradient"], cam)
    return out


def agreements(args, bundles: dict[str, Path], engine: Engine, texts: list, images: list, arrays: dict) -> dict:
    """Part 3 on ``texts``/``images`` (the ``--agreement-examples`` pairs), for the
    ``gradient`` and ``grad-cam`` methods: ``{method: {"fp32, exact pixels" | precision: compare()}}``."""
    refs = {m: regions_of(engine.explain(texts, images, method=m)) for m in AGREEMENT_METHODS}
    arrays.update({f"agreement_fp32_{m}": r for m, r in refs.items()})
    features = [encoder_features(engine, texts[s : s + 32], images[s : s + 32]) for s in range(0, len(texts), 32)]
    out: dict = {m: {} for m in AGREEMENT_METHODS}
    say("explaining on the fp32 bundle with exact pixels")
    with Engine.from_bundle(bundles["fp32"], intra_op_num_threads=args.threads, exact_pixels=True) as exact:
        for m, ref in refs.items():
            arrays[f"fp32_exact_pixels_{m}"] = rel = regions_of(exact.explain(texts, images, method=m))
            out[m]["fp32, exact pixels"] = compare(rel, ref, refs["grad-cam"])
    for name in args.precisions:
        say(f"explaining on the {name} bundle ({len(texts)} pairs)")
        for m, got in precision_agreement(name, bundles[name], features, texts, images, refs, args.threads, arrays, engine).items():
            out[m][name] = got
    return out


def occluded(pixels: np.ndarray, cells: np.ndarray, grid: tuple[int, int], mean_uint8: np.ndarray) -> np.ndarray:
    """``pixels`` (``(3, H, W)`` normalized floats, or ``(H, W, 3)`` uint8) with the given grid
    cells set to the normalization mean (0 after normalizing; ``mean_uint8``, the bundle's
    ``image_mean`` in 0-255, for uint8 pixels)."""
    hwc = pixels.dtype == np.uint8
    out = np.moveaxis(pixels.copy(), -1, 0) if hwc else pixels.copy()  # (3, H, W)
    h, w = grid
    ch, cw = out.shape[1] / h, out.shape[2] / w
    mean = np.asarray(mean_uint8, np.uint8)[:, None, None] if hwc else 0.0
    for c in cells:
        i, j = divmod(int(c), w)
        out[:, round(i * ch) : round((i + 1) * ch), round(j * cw) : round((j + 1) * cw)] = mean
    return np.ascontiguousarray(np.moveaxis(out, 0, -1)) if hwc else out


def mean_uint8(engine: Engine) -> np.ndarray:
    """The bundle's normalization mean as uint8 pixels (what normalizes to 0)."""
    scale, shift = engine.image_processor.affine
    return np.clip(np.round(-np.asarray(shift) / np.asarray(scale)), 0, 255).astype(np.uint8)


def deletion(engine: Engine, feed: dict, orders: dict[str, np.ndarray], grid: tuple[int, int], classes: np.ndarray) -> dict:
    """Probability of each item's predicted class after occluding the first k cells of each order:
    ``{order: (N, len(KS) + 1)}``, k = 0 first."""
    from fusionrt.prediction import softmax

    curves = {name: np.zeros((len(classes), len(KS) + 1)) for name in orders}
    for i in range(len(classes)):
        variants, index = [feed["pixel_values"][i]], []
        for name, order in orders.items():
            for k in KS:
                index.append(name)
                variants.append(occluded(feed["pixel_values"][i], order[i][:k], grid, mean_uint8(engine)))
        n = len(variants)
        one = {k: np.repeat(v[i : i + 1], n, axis=0) for k, v in feed.items() if k != "pixel_values"}
        probs = softmax(engine.run({**one, "pixel_values": np.stack(variants)})["logits"])[:, classes[i]]
        for name in orders:
            curves[name][i, 0] = probs[0]
            curves[name][i, 1:] = [p for p, which in zip(probs[1:], index) if which == name]
    return curves


def token_deletion(head, features: list[dict], orders: dict[str, np.ndarray]) -> dict:
    """Chefer et al.'s (2021, section 4) positive perturbation test for bi-modal models: the image's
    region tokens removed from the fusion head's input, k at a time in each order (the head's
    cross-attention and image mean then run over the L - k regions kept), on FP32 features.

    Args:
        head: the checkpoint's :class:`~fusionrt.model.modeling.FusionHead` (PyTorch, eval mode).
        features: the FP32 bundle's ``text_features``, ``attention_mask``, ``image_features``
            (:func:`encoder_features`), in batches that line up with the orders' rows.
        orders: ``(N, L)`` cell indices per order, most removed first.

    Returns:
        ``{order: {"curve": mean probability of the item's predicted class per k (0, *KS),
        "items": (N, len(KS) + 1) per-item probabilities}}``.
    """
    import torch

    ks = (0, *KS)
    out = {name: [] for name in orders}
    start = 0
    with torch.no_grad():
        for f in features:
            t, m, v = (torch.from_numpy(f[k]) for k in ("text_features", "attention_mask", "image_features"))
            rows = torch.arange(len(t))
            target = head(t, m, v).logits.argmax(-1)
            for name, order in orders.items():
                probs = []
                for k in ks:
                    keep = torch.from_numpy(np.sort(order[start : start + len(t), k:], 1))  # (b, L - k)
                    kept = torch.gather(v, 1, keep.unsqueeze(-1).expand(-1, -1, v.shape[-1]))
                    probs.append(torch.softmax(head(t, m, kept).logits, -1)[rows, target].numpy())
                out[name].append(np.stack(probs, 1))
            start += len(t)
    return {name: {"curve": np.concatenate(p).mean(0).tolist(), "items": np.concatenate(p)} for name, p in out.items()}


def area(curve: np.ndarray) -> np.ndarray:
    """Area under deletion curves ``(..., len(KS) + 1)`` over k = 0..KS[-1], trapezoids, divided by KS[-1]."""
    return np.trapz(curve, (0, *KS), axis=-1) / KS[-1]


def run(args) -> dict:
    from fusionrt.model.data import read_jsonl, spread

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
    else:
        from fusionrt.model.default import build_default_checkpoint

        say("building (or reusing) the default checkpoint")
        ckpt, _ = build_default_checkpoint(work / "checkpoint", work / "data")
    config = json.loads((ckpt / "config.json").read_text())
    bundles = build_bundles(ckpt, work / "bundles", args.precisions, args.bundle)
    heldout = read_jsonl(ckpt / "heldout.jsonl")  # written label by label: subsets are spread over it
    chosen = spread(len(heldout), args.examples)
    examples = [heldout[i] for i in chosen]
    texts, images = [e.text for e in examples], [str(e.image) for e in examples]
    engine = Engine.from_bundle(bundles["fp32"], intra_op_num_threads=args.threads)
    say(f"explaining {len(examples)} held-out pairs on the fp32 bundle")
    explained = {m: engine.explain(texts, images, method=m) for m in METHODS}
    relevance = {m: regions_of(ex) for m, ex in explained.items()}
    grid = explained["gradient"][0].region_relevance.shape
    from fusionrt.model import load_checkpoint

    model = load_checkpoint(ckpt).model.eval()
    cams, classes = [], []
    for start in range(0, len(texts), 32):
        cam, target = grad_cam(model, engine.preprocess(texts[start : start + 32], images[start : start + 32]),
                               engine.image_processor.affine)
        cams.append(cam)
        classes.append(target)
    cam, torch_classes = np.concatenate(cams), np.concatenate(classes)
    engine_classes = np.array([engine.labels.index(e.explained_label) for e in explained["gradient"]])
    correlation = {m: [spearman(relevance[m][i], cam[i]) for i in range(len(cam))] for m in METHODS}
    say("deletion curves")
    rng = np.random.default_rng(0)
    orders = {"gradient": np.argsort(-relevance["gradient"], 1), "rollout": np.argsort(-relevance["rollout"], 1),
              "grad-cam": np.argsort(-cam, 1), "random": np.array([rng.permutation(cam.shape[1]) for _ in cam]),
              "gradient, least first": np.argsort(relevance["gradient"], 1), "grad-cam, least first": np.argsort(cam, 1)}
    curves = {}
    for start in range(0, len(texts), 32):
        part = engine.preprocess(texts[start : start + 32], images[start : start + 32])
        sl = slice(start, start + len(part["input_ids"]))
        for name, c in deletion(engine, part, {n: o[sl] for n, o in orders.items()}, grid, engine_classes[sl]).items():
            curves.setdefault(name, []).append(c)
    curves = {n: np.concatenate(parts) for n, parts in curves.items()}
    pixel_beats = {n: float((area(c) < area(curves["random"])).mean()) for n, c in curves.items() if n != "random"}
    curves = {n: c.mean(0).tolist() for n, c in curves.items()}
    say("deletion by region tokens")
    features = [encoder_features(engine, texts[s : s + 32], images[s : s + 32]) for s in range(0, len(texts), 32)]
    removed = token_deletion(model.head, features, orders)
    beats = {n: float((area(d["items"]) < area(removed["random"]["items"])).mean()) for n, d in removed.items() if n != "random"}
    arrays = {"fp32": relevance["gradient"], "fp32_rollout": relevance["rollout"], "fp32_grad_cam": relevance["grad-cam"], "gradcam": cam}
    agreed_at = spread(len(heldout), args.agreement_examples)
    agreed = [heldout[i] for i in agreed_at]
    agreement = agreements(args, bundles, engine, [e.text for e in agreed], [str(e.image) for e in agreed], arrays)
    rows = np.searchsorted(agreed_at, chosen)  # the --examples pairs among the agreement's, whose FP32 features token_deletion has
    for name in args.precisions:
        if (rows < len(agreed_at)).all() and (agreed_at[np.minimum(rows, len(agreed_at) - 1)] == chosen).all():
            own_map = arrays[name][rows]
        else:
            with Engine.from_bundle(bundles[name], intra_op_num_threads=args.threads) as other:
                own_map = regions_of(other.explain(texts, images))
        own = token_deletion(model.head, features, {name: np.argsort(-own_map, 1)})[name]
        agreement["gradient"][name]["token_deletion_area"] = float(area(np.asarray(own["curve"])))
    np.savez_compressed(work / "explain_faithfulness_regions.npz", **arrays)
    say("timing explain against predict, batch 8")
    t8, i8 = texts[:8], images[:8]
    times = interleaved_times({"predict": lambda: engine.predict(t8, i8), "explain": lambda: engine.explain(t8, i8)},
                              warmup=3, rounds=args.rounds)
    return {
        "checkpoint": str(ckpt), "image_config": config.get("image_config", {}), "examples": len(examples),
        "grid": list(grid), "cpu": cpu_description(), "threads": args.threads, "ks": list(KS),
        "torch_agrees_with_bundle": float((torch_classes == engine_classes).mean()),
        "spearman": {m: {"mean": float(np.mean(v)), "median": float(np.median(v)), "positive": float(np.mean(np.array(v) > 0))}
                     for m, v in correlation.items()},
        "deletion": curves, "deletion_beats_random": pixel_beats, "token_deletion": {n: d["curve"] for n, d in removed.items()},
        "token_deletion_beats_random": beats, "top_region_agreement": agreement, "agreement_examples": len(agreed),
        "fp32_top_margin_median": float(np.median(top_margin(arrays["agreement_fp32_gradient"]))),
        "sources": {s: int(sum(e.source == s for e in examples)) for s in sorted({str(e.source) for e in examples})},
        "labels": {s: int(sum(e.label == s for e in examples)) for s in sorted({e.label for e in examples})},
        "bundles": {n: str(p) for n, p in bundles.items()}, "commit": commit(),
        "explain_over_predict": paired_ratio(times["explain"], times["predict"]),
        "predict_ms": float(np.median(times["predict"]) * 1e3), "explain_ms": float(np.median(times["explain"]) * 1e3),
        "date": time.strftime("%Y-%m-%d"),
    }


def commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(r: dict) -> str:
    enc = r["image_config"]
    sizes = f" hidden sizes {enc['hidden_sizes']}" if enc.get("hidden_sizes") else ""
    encoder = f"{enc.get('model_type', 'resnet')}{sizes}" if enc else "see config.json"
    lines = [
        f"Measured {r['date']} on {r['cpu']}, {r['threads']} threads, commit {r['commit']}, checkpoint `{r['checkpoint']}` "
        f"(image encoder: {encoder}), {r['examples']} held-out pairs ("
        + ", ".join(f"{n} {s}" for s, n in r["sources"].items()) + "; " + ", ".join(f"{n} {s}" for s, n in r["labels"].items())
        + f"), a {r['grid'][0]}x{r['grid'][1]} grid "
        f"(`python benchmarks/explain_faithfulness.py`).",
        "",
        "Rank correlation (Spearman) of region relevance with Grad-CAM on the image encoder's last map (PyTorch FP32):",
        "",
        "| method | mean | median | items > 0 |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m} | {v['mean']:.3f} | {v['median']:.3f} | {v['positive']:.0%} |" for m, v in r["spearman"].items()]
    lines += ["", "Deletion: mean probability of the predicted class after occluding k grid cells (area: the curve's mean "
              "over k; last column: the items whose area is below the random order's):", "",
              "| order | " + " | ".join(f"k={k}" for k in [0, *r["ks"]]) + " | area | items below random |",
              "|---|" + "---|" * (len(r["ks"]) + 3)]
    ks = [0, *r["ks"]]
    pixel_beats = r["deletion_beats_random"]
    lines += [f"| {n} | " + " | ".join(f"{p:.3f}" for p in c) + f" | {area(np.asarray(c)):.3f} | "
              + (f"{pixel_beats[n]:.1%}" if n in pixel_beats else "-") + " |" for n, c in r["deletion"].items()]
    lines += ["", "Deletion by region tokens (Chefer et al., 2021, positive perturbation): the k cells removed from the "
              "fusion head's input (FP32 features, the checkpoint's head), mean probability of the predicted class; "
              "last column: the items whose area is below the random order's:", "",
              "| order | " + " | ".join(f"k={k}" for k in ks) + " | area | items below random |",
              "|---|" + "---|" * (len(ks) + 2)]
    beats = r["token_deletion_beats_random"]
    lines += [f"| {n} | " + " | ".join(f"{p:.3f}" for p in c) + f" | {area(np.asarray(c)):.3f} | "
              + (f"{beats[n]:.1%}" if n in beats else "-") + " |" for n, c in r["token_deletion"].items()]
    lines += ["", f"Most relevant region per precision against FP32's, on {r['agreement_examples']} held-out pairs, "
              "method `gradient`. Strict: the same cell of the grid; tie-aware: "
              f"among FP32's {TIE} most relevant cells. FP32's gap between its two most relevant cells, as a fraction of its "
              f"map's range (max - min), median over all items: {r['fp32_top_margin_median']:.1%}; over the items a precision "
              "disagrees / agrees on: in the table. Then the FP32 explanation graph on FP32 text features with this "
              "precision's image features (image encoder only), and the other way round (text encoder only). The first "
              "row is FP32 against itself with exact pixels (`exact_pixels=True`: JPEGs decoded at full size, the crop "
              "resampled from the decoded image): how often pixel changes a viewer cannot see move FP32's own top cell:", "",
              "| precision | strict | tie-aware | FP32 gap where they disagree / agree | Spearman vs FP32 | vs Grad-CAM "
              "| image encoder only: strict | text encoder only: strict | token deletion area of its order |",
              "|---|---|---|---|---|---|---|---|---|"]
    for p, v in r["top_region_agreement"]["gradient"].items():
        dis, agr = v["fp32_margin_disagree_median"], v["fp32_margin_agree_median"]
        mixed = (f"{v['image_only_quantized']['strict']:.1%} | {v['text_only_quantized']['strict']:.1%} | "
                 f"{v['token_deletion_area']:.3f}" if "image_only_quantized" in v else "- | - | -")
        lines.append(f"| {p} | {v['strict']:.1%} | {v['tie_aware']:.1%} | "
                     f"{'-' if dis is None else f'{dis:.1%}'} / {'-' if agr is None else f'{agr:.1%}'} | "
                     f"{v['spearman_vs_fp32']:.3f} | {v['spearman_vs_gradcam']:.3f} | {mixed} |")
    lines += ["", "The same with method `grad-cam` (Grad-CAM computed by the bundle's explanation graph):", "",
              "| precision | strict | tie-aware | Spearman vs FP32's grad-cam |", "|---|---|---|---|"]
    lines += [f"| {p} | {v['strict']:.1%} | {v['tie_aware']:.1%} | {v['spearman_vs_fp32']:.3f} |"
              for p, v in r["top_region_agreement"]["grad-cam"].items()]
    lines += ["", f"Cost at batch 8: explain {r['explain_over_predict']:.2f}x predict (the median of the paired rounds' "
              f"ratios; median times: predict {r['predict_ms']:.1f} ms, explain {r['explain_ms']:.1f} ms).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="fusionrt-explain")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint directory (default: the default checkpoint, built in WORKDIR)")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--agreement-examples", type=int, default=1024,
                        help="held-out pairs of the top-region agreement (part 3); the other parts use --examples")
    parser.add_argument("--precisions", default="int8,bf16,auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--bundle", action="append", default=[], metavar="NAME=PATH",
                        help="use this bundle for NAME (fp32, int8, bf16, auto) instead of exporting one (read only)")
    parser.add_argument("--doc", default=str(Path(__file__).parent.parent / "docs" / "explanations.md"))
    args = parser.parse_args()
    args.precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    args.bundle = {k: Path(v) for k, _, v in (b.partition("=") for b in args.bundle)}
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
