"""``fusionrt demo``: default checkpoint -> FP32 bundle -> predictions on real photographs."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


from fusionrt.bundle import read_manifest
from fusionrt.timing import median_seconds
from fusionrt.export.passes import ATTENTION_OPS
from fusionrt.samples import DEMO_PAIRS, photo_dir
from fusionrt.errors import InputError
from fusionrt.utils import OUTPUT_MARKER, OutputKind, check_output_folder, format_table


@dataclass
class DemoResult:
    checkpoint: Path
    bundles: dict  # precision -> bundle path
    metrics: dict
    validations: dict  # precision -> manifest validation entry
    rows: list


def run_demo(
    workdir: str | Path = "fusionrt-demo",
    num_samples: int | None = None,
    precisions: tuple = ("fp32", "fp16", "int8"),
    threads: int | None = None,
    triton: bool = True,
    benchmark: bool = True,
    peers: bool = True,
    echo: Callable[[str], None] = print,
    progress: bool = True,
    auto: bool = True,
) -> DemoResult:
    """Build or reuse the default checkpoint, export and validate one bundle per precision,
    measure each in-process, predict on real photographs.

    Args:
        workdir: where ``checkpoint/``, ``data/`` and ``bundles/<precision>/`` are written: absent,
            empty, or an earlier demo's folder (what it holds that was built by the same recipe is
            reused, the rest rebuilt); any other folder is refused.
        num_samples: photograph examples of the default checkpoint (a third trains, two thirds are
            held out; fewer is faster); ``None`` is ``model.default.DEFAULT_NUM_SAMPLES`` (1536).
        precisions: bundles to export (``fp32`` first: the photographs are predicted with it).
        threads: intra-op threads of the engines (``None``: all cores).
        benchmark: end with a short benchmark of the FP32 and INT8 bundles against PyTorch at
            batch 8, written to ``DIR/report/``.
        peers: the benchmark's report also times the peers of
            :func:`fusionrt.bench.peers.peer_contenders` (OpenVINO's default conversion, NNCF INT8,
            PyTorch bf16), those this machine can run.
        triton: also build a Triton repository from the last bundle (INT8 by default), serve it
            and compare the served answers with the in-process ones (needs ``fusionrt[serve]``).
        auto: with fp32 and int8 among ``precisions``, also build the fastest bundle by
            ``--precision auto`` (``bundles/auto``) with the demo's smaller search budget (see
            :data:`DEMO_SEARCH`), print its table and benchmark it with the others.

    Raises:
        InputError: ``workdir`` holds files the demo did not write.
    """
    workdir = Path(workdir).absolute()
    check_output_folder(workdir, DEMO_OUTPUT, overwrite=True)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / OUTPUT_MARKER).write_text(DEMO_MARKER)
    started = time.perf_counter()
    steps = 3 + int(benchmark) + int(triton)
    echo(f"[1/{steps}] default checkpoint -> {workdir / 'checkpoint'}")
    ckpt, metrics = _checkpoint_step(workdir, num_samples, echo, progress)
    echo(f"[2/{steps}] export and validate {', '.join(precisions)} bundles -> {workdir / 'bundles'}")
    bundles, validations = _export_step(ckpt, workdir, precisions, threads, echo, progress)
    if auto and "fp32" in bundles and "int8" in bundles:
        bundles["auto"] = _auto_bundle(ckpt, bundles, workdir / "bundles" / "auto", echo, progress, threads)
    first = bundles[precisions[0]]
    echo(f"[3/{steps}] predictions of {first.name} on real photographs from {photo_dir()}")
    table = _predict_step(first, threads, echo)
    texts, images = [t for t, _ in DEMO_PAIRS], [photo_dir() / f for _, f in DEMO_PAIRS]
    if benchmark:
        contenders = [bundles[p] for p in ("fp32", "int8", "auto") if p in bundles]
        echo(f"[{steps - (1 if triton else 0)}/{steps}] short benchmark of {', '.join(c.name for c in contenders)} "
             f"against PyTorch at batch 8 -> {workdir / 'report'}")
        _benchmark_step(contenders, ckpt, workdir / "report", threads, echo, progress, peers)
    if triton:
        served = bundles[precisions[-1]]
        echo(f"[{steps}/{steps}] Triton: repository from {served.name} -> {workdir / 'triton_repo'}, served on 127.0.0.1")
        _serve_and_compare(served, workdir / "triton_repo", texts, images, threads, echo)
    echo(f"done in {time.perf_counter() - started:.0f} s. checkpoint: {ckpt}")
    for precision, bundle in bundles.items():
        echo(f"  bundle {precision}: {bundle}")
    return DemoResult(ckpt, bundles, metrics, validations, table)


def _checkpoint_step(workdir: Path, num_samples: int | None, echo, progress: bool) -> tuple[Path, dict]:
    """Build or reuse the default checkpoint; print its encoders, accuracy and ablations."""
    from fusionrt.model.default import DEFAULT_NUM_SAMPLES, build_default_checkpoint
    from fusionrt.model.encoders import DEFAULT_IMAGE_ENCODER_NOTE

    ckpt, reused = build_default_checkpoint(
        workdir / "checkpoint", workdir / "data", num_samples or DEFAULT_NUM_SAMPLES, progress=progress
    )
    metrics = json.loads((ckpt / "metrics.json").read_text())
    echo(("      reused (same recipe)" if reused else f"      trained in {metrics['train_seconds']} s"))
    echo(f"      encoders: text all-MiniLM-L6-v2 (pretrained); image {DEFAULT_IMAGE_ENCODER_NOTE}")
    held = metrics["heldout"]
    abl = metrics.get("ablations", {})
    echo(
        f"      held-out accuracy {held['accuracy']:.1%} (macro recall {held['macro_recall']:.1%}) on "
        f"{held['num_samples']} examples; text-only {abl.get('text_only', {}).get('accuracy', float('nan')):.1%}, "
        f"image-only {abl.get('image_only', {}).get('accuracy', float('nan')):.1%}"
    )
    return ckpt, metrics


def _export_step(ckpt: Path, workdir: Path, precisions: tuple, threads: int | None, echo, progress: bool) -> tuple[dict, dict]:
    """Export (or reuse) one validated bundle per precision; print the validation table.

    Returns:
        ``(bundles, validations)``: precision -> bundle path, and -> its manifest's Validation.
    """
    from fusionrt.engine import Engine
    from fusionrt.export import ExportOptions, export_bundle
    from fusionrt.model.data import read_jsonl

    heldout = read_jsonl(ckpt / "heldout.jsonl")[:8]
    small = _small_eval_set(ckpt, ExportOptions().min_agreement, echo)
    rows, bundles, validations = [], {}, {}
    for precision in precisions:
        options, bundle = ExportOptions(precision=precision, accept_small_eval_set=small), workdir / "bundles" / precision
        recipe = _bundle_recipe(ckpt, options)
        if _built_by(bundle, recipe):
            echo(f"      {precision}: reused {bundle} (same recipe: export options, checkpoint sha256, fusionrt version)")
        else:
            bundle = export_bundle(ckpt, bundle, options, progress=progress, overwrite=True)
            (bundle / BUNDLE_RECIPE_FILE).write_text(json.dumps(recipe, indent=2))
        manifest = read_manifest(bundle)
        v = manifest.validation
        engine = Engine.from_bundle(bundle, intra_op_num_threads=threads)
        feed = engine.preprocess([e.text for e in heldout], [e.image for e in heldout])
        per_s = len(heldout) / (median_seconds(lambda: engine.run(feed)))
        fused = sum(sum(g.fused_ops.get(op, 0) for op in ATTENTION_OPS) for g in manifest.graphs.values())
        rows.append((
            precision, f"{fused} attention", f"{v.max_abs_error_eval_data['logits']:.1e}",
            _with_interval(v.top1_agreement, v.top1_agreement_ci95, v.agreement_num_samples),
            _with_interval(v.accuracy, v.accuracy_ci95, v.eval_num_samples), f"{per_s:.1f}",
        ))
        bundles[precision], validations[precision] = bundle, v
    echo(format_table(("bundle", "fused ops", "max |dlogit|", "agree FP32 [95% CI]", "accuracy [95% CI]", "samples/s @8"), rows))
    echo("      (agreement, accuracy and |dlogit| on the held-out set against PyTorch FP32; samples/s of")
    echo("       Engine.run on preprocessed batches of 8, this machine, one run: not a benchmark)")
    return bundles, validations


def _predict_step(bundle: Path, threads: int | None, echo) -> list:
    """Predict :data:`DEMO_PAIRS` with ``bundle``; print and return the table's rows."""
    from fusionrt.engine import Engine

    engine = Engine.from_bundle(bundle, intra_op_num_threads=threads)
    preds = engine.predict([t for t, _ in DEMO_PAIRS], [photo_dir() / f for _, f in DEMO_PAIRS])
    table = [
        (t, f, p.label, f"{p.score:.3f}", f"{p.modality_weights['text']:.2f}/{p.modality_weights['image']:.2f}")
        for (t, f), p in zip(DEMO_PAIRS, preds)
    ]
    echo(format_table(("text", "image", "label", "score", "alpha text/image"), table))
    echo(
        "      (label = the caption's sentiment x the photographed subject: living (astronaut, cat, cameraman)\n"
        "       or object (coffee, rocket, motorcycle); logo.png is neither: its label is the nearer one.\n"
        "       The task was drawn from variants of these photographs; the held-out accuracy above is on\n"
        "       variants not trained on, a sixth of them camera-size JPEGs)"
    )
    return table


def _benchmark_step(contenders: list, ckpt: Path, report: Path, threads: int | None, echo, progress: bool, peers: bool) -> None:
    """A short ``fusionrt bench`` of ``contenders`` against PyTorch (and ``peers``) at batch 8; print its glimpse."""
    from fusionrt.bench.runner import run_benchmark

    data = run_benchmark(contenders, report, checkpoint=ckpt, batch_sizes=(8,), threads=threads or 2,
                         duration_s=GLIMPSE_DURATION_S, progress=progress, inputs=("photos",), overwrite=True, peers=peers)
    echo(format_table(("contender", "mode", "p50 ms", "samples/s", "x PyTorch"), _glimpse(data)))
    echo(f"      (rows of {report / 'report.md'}: the contenders timed in interleaved rounds, at least")
    echo(f"       {data['min_samples']} each; x PyTorch is the median over rounds of PyTorch's time over the row's;")
    echo("       a glimpse: the README's table is the measured result)")
    for warning in data["warnings"]:
        echo(f"      warning: {warning}")


# The demo's benchmark: fusionrt bench at batch 8 on the small photographs, with at least
# runner.MIN_SAMPLES interleaved rounds per case and 0.5 s per contender (about 20 s on 2 cores);
# its glimpse prints rows of that report, so the two cannot disagree.
GLIMPSE_DURATION_S = 0.5
BUNDLE_RECIPE_FILE = ".fusionrt-demo-recipe.json"
# The demo's folder is its own cache (reruns reuse what matches): an earlier demo's folder has the
# marker, or (written before the marker) the default checkpoint's recipe stamp.
# Another fusionrt output (a bundle, a checkpoint, a report: its marker names its kind) is not one.
def _demo_folder(folder: Path) -> bool:
    from fusionrt.model.default import RECIPE_FILE

    try:
        marker = (folder / OUTPUT_MARKER).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return (folder / "checkpoint" / RECIPE_FILE).is_file() and not (folder / OUTPUT_MARKER).exists()
    return marker == DEMO_MARKER


DEMO_MARKER = "written by fusionrt demo\n"
DEMO_OUTPUT = OutputKind("demo folder", "--workdir", InputError, ours=_demo_folder, lists_entries=False)
# The demo's --precision auto budget: the fp32 and int8 bundles it exported are the candidates'
# graphs (no int8-dynamic, no INT8 head: the demo's int8 bundle has an FP32 head), 256 held-out
# examples for the per-candidate accuracy, 5 timing rounds, 2 verifying exports at most. The
# verifying export still validates on the whole held-out set. `fusionrt export --precision auto`
# searches more (int8-dynamic, the INT8 head, every example, 10 rounds).
DEMO_SEARCH = {"precisions": ("fp32", "bf16", "int8"), "eval_limit": 256, "rounds": 5, "max_tries": 2}


def _auto_bundle(ckpt: Path, bundles: dict, out: Path, echo, progress: bool, threads: int | None = None) -> Path:
    """``--precision auto`` with the demo's budget; reused when built by the same recipe."""
    from fusionrt.export import ExportOptions
    from fusionrt.export.auto import SearchOptions, search_precision

    options = ExportOptions.auto_budget()
    options = dataclasses.replace(options, accept_small_eval_set=_small_eval_set(ckpt, options.min_agreement, lambda _: None))
    recipe = {**_bundle_recipe(ckpt, options), "search": {k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_SEARCH.items()},
              "sources": {p: {g: v.sha256 for g, v in read_manifest(bundles[p]).graphs.items()} for p in ("fp32", "int8")}}
    if _built_by_search(out, recipe):
        echo(f"      auto: reused {out} (same recipe, same candidate graphs)")
        result = read_manifest(out).precision_search
    else:
        echo("      --precision auto (the demo's smaller search: fp32/bf16/int8 candidates from the bundles above, "
             f"accuracy on {DEMO_SEARCH['eval_limit']} held-out examples per candidate)")
        found = search_precision(ckpt, out, options, SearchOptions(**DEMO_SEARCH, threads=threads), progress=progress,
                                 echo=lambda line: echo(f"      {line}"), sources={p: bundles[p] for p in ("fp32", "int8")},
                                 overwrite=True)
        (out / BUNDLE_RECIPE_FILE).write_text(json.dumps(recipe, indent=2))
        result = found.to_dict()
    rows = [
        (c["graph"], c["runtime"], c["precision"], "-" if c["ms"] is None else f"{c['ms']:.1f}",
         "-" if c["agreement"] is None else f"{c['agreement']:.2%}",
         "yes" if result["choice"] and result["choice"][c["graph"]]["precision"] == c["precision"]
         and result["choice"][c["graph"]]["target"] == c["target"] else "")
        for c in sorted(result["candidates"], key=lambda c: (c["graph"], c["ms"] if c["ms"] is not None else 1e9))
    ]
    echo(format_table(("graph", "runtime", "precision", "ms @8", "agree FP32", "chosen"), rows))
    echo(f"      chosen: --precision {result['precision']} --target {result['target']}; {out / 'precision_report.md'}")
    return out


def _small_eval_set(ckpt: Path, min_agreement: float, echo) -> bool:
    """Whether the checkpoint's held-out split is too small for the gate to resolve ``min_agreement``
    (a demo run with a reduced ``--num-samples``); says so, since its exports then gate the point
    estimate (``accept_small_eval_set``)."""
    from fusionrt.export.validate import examples_needed
    from fusionrt.model.data import read_jsonl

    n, needed = len(read_jsonl(ckpt / "heldout.jsonl")), examples_needed(min_agreement)
    if needed is not None and n < needed:
        echo(f"      note: {n} held-out examples cannot resolve --min-agreement {min_agreement:g} (it needs {needed}): "
             "the bundles are gated on the point estimate (--accept-small-eval-set)")
        return True
    return False


def _built_by_search(bundle: Path, recipe: dict) -> bool:
    """``bundle`` is intact and its demo stamp equals ``recipe`` (search budget, candidate graphs)."""
    from fusionrt.bundle import Bundle
    from fusionrt.errors import FusionrtError

    stamp = bundle / BUNDLE_RECIPE_FILE
    try:
        return stamp.is_file() and json.loads(stamp.read_text()) == recipe and Bundle.load(bundle, verify=True).manifest.precision_search is not None
    except (FusionrtError, OSError, ValueError):
        return False


def _glimpse(data: dict) -> list:
    """Rows (contender, mode, p50 ms, samples/s, x PyTorch) of the report's bundles and PyTorch
    eager: the results of ``data`` (``run_benchmark``'s) that have an engine or are the
    baseline, as the report gives them (a flagged row shows ``flagged``)."""
    names = set(data["breakdown_ms"]) | {r["contender"] for r in data["results"] if r["baseline"]}
    rows = []
    for mode in ("model", "pipeline"):
        for r in data["results"]:
            if r["contender"] in names and r["mode"] == mode:
                ratio = r.get("speedup_vs_baseline")
                rows.append((r["contender"], mode, f"{r['p50_ms']:.0f}", f"{r['throughput_per_s']:.1f}",
                             "-" if ratio is None else f"{ratio:.2f}") if r.get("reportable", True)
                            else (r["contender"], mode, "flagged", "-", "-"))
    return rows


def _bundle_recipe(ckpt: Path, options) -> dict:
    """What a demo bundle is built from: the export options (as the manifest records them), the
    checkpoint's weights (sha256) and the fusionrt version."""
    from dataclasses import asdict

    from fusionrt import __version__
    from fusionrt.bundle import sha256_file

    return {"export_options": json.loads(json.dumps(asdict(options))), "checkpoint_sha256": sha256_file(ckpt / "model.safetensors"),
            "fusionrt": __version__}


def _built_by(bundle: Path, recipe: dict) -> bool:
    """The bundle at ``bundle`` is intact (graph sha256s as its manifest records) and was built by
    ``recipe`` (the stamp the demo wrote, and the manifest's export options, equal it)."""
    from fusionrt.bundle import Bundle
    from fusionrt.errors import FusionrtError

    stamp = bundle / BUNDLE_RECIPE_FILE
    try:
        if not stamp.is_file() or json.loads(stamp.read_text()) != recipe:
            return False
        return Bundle.load(bundle, verify=True).manifest.export_options == recipe["export_options"]
    except (FusionrtError, OSError, ValueError):
        return False


def _serve_and_compare(bundle: Path, repo: Path, texts: list, images: list, threads, echo) -> None:
    """Build a python-backend repository (the server in the nvidia-pytriton wheel has no
    onnxruntime backend), start it, send the photographs, print served next to in-process."""
    from fusionrt.engine import Engine
    from fusionrt.triton import Client, TritonServer, RepositoryOptions, build_repository

    build_repository(bundle, repo, RepositoryOptions(backend="python"), overwrite=True)
    local = Engine.from_bundle(bundle, intra_op_num_threads=threads).predict(texts, images)
    with TritonServer(repo, http_port=None, grpc_port=None, metrics_port=None) as server:
        echo(f"      server ready: grpc {server.grpc_url}, http {server.http_url} (admin APIs behind its key; "
             "a development server on 127.0.0.1, never to expose)")
        with Client(server.grpc_url, protocol="grpc", timeout_s=60, admin_key=server.admin_key) as client:
            remote = client.predict(texts, [Path(i) for i in images], errors="return")
    rows = []
    for (t, img), lp, rp in zip(zip(texts, images), local, remote):
        served = "ERROR " + str(rp) if isinstance(rp, Exception) else f"{rp.label} {rp.score:.3f}"
        rows.append((Path(img).name, f"{lp.label} {lp.score:.3f}", served))
    echo(format_table(("image", "in-process", "served (Triton)"), rows))
    echo("      (served texts are padded to a length bucket, in-process ones to the longest of the batch:")
    echo("       FP32 and static-INT8 answers do not depend on it; only int8-dynamic bundles may differ)")
    echo("      server stopped")


def _with_interval(share: float | None, ci95: list | None, n: int | None) -> str:
    """``99.8% [99.3-99.9] of 1024``: a share with its 95% Wilson interval and the count."""
    if share is None:
        return "-"
    if not ci95:
        return f"{share:.1%}"
    return f"{share:.1%} [{ci95[0]:.1%}-{ci95[1]:.1%}] of {n}"
