"""In-process benchmark: latency percentiles and throughput of bundles against PyTorch and the
peers, on the small photographs and on camera-size JPEGs; the time breakdown of the pipeline;
the roofline. ``fusionrt bench`` calls :func:`run_benchmark`.

The numbers a reader can trust: the contenders of one case (input set, mode, batch size) are
timed in interleaved rounds (:func:`fusionrt.timing.interleaved_rounds`), so machine load hits
them alike; every ``x`` ratio is the median over rounds of the paired per-round ratio
(:func:`fusionrt.timing.paired_ratio`); a row with fewer than ``MIN_SAMPLES`` rounds gets no
ratio and no plot point, a row whose p90/p50 exceeds ``SPREAD_WARNING`` is warned about, and a
pipeline row faster than its own model row is flagged and not reported as a result
(:func:`check_results`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from fusionrt.bench.contender import Contender
from fusionrt.bench.report import RECONCILE_MS, RECONCILE_SHARE, REPORT_OUTPUT, write_report
from fusionrt.bundle import GRAPHS
from fusionrt.errors import InputError
from fusionrt.timing import interleaved_rounds, paired_ratio, time_calls
from fusionrt.utils import check_output_folder, progress_bar

PERCENTILES = (50, 90, 95, 99)
# Rounds a row needs for a ratio and a plot point: with fewer, one slow call moves the median of
# the paired ratios (docs/benchmarks.md).
MIN_SAMPLES = 10
# A row whose p90 is more than this times its p50 is warned about: its machine was not quiet.
SPREAD_WARNING = 1.5
# The input sets and the modes measured on them: the model's tensors do not depend on the source
# size, so camera-size JPEGs are measured in pipeline mode only.
INPUT_SETS = {"photos": ("model", "pipeline"), "camera": ("pipeline",)}
INPUT_DESCRIPTIONS = {
    "photos": "scikit-image photographs (128-512 px PNG/JPEG) with captions (fusionrt.samples.DEMO_PAIRS), cycled",
    "camera": "camera-size JPEGs (4032x3024, quality 92, fusionrt.samples.make_camera_photos) with the same captions",
}


def percentiles(samples: Sequence[float], points: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """Nearest-rank percentiles (the sorted sample at rank ceil(p/100 * n), as perf_analyzer
    reports them), keyed ``p50``, ``p90``...

    Raises:
        InputError: no samples.
    """
    data = np.sort(np.asarray(samples, dtype=np.float64))
    if data.size == 0:
        raise InputError("no samples to compute percentiles of")
    out = {}
    for p in points:
        rank = max(int(np.ceil(p / 100 * data.size)), 1)
        out[f"p{p:g}"] = float(data[rank - 1])
    return out


@dataclass
class Result:
    """One contender in one case: latency in ms per batch, throughput in samples/s."""

    contender: str
    mode: str  # "model" (preprocessed tensors) or "pipeline" (decode + preprocess + model + postprocess)
    batch_size: int
    iterations: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    throughput_per_s: float  # in-process: batch_size / p50; served: completed requests / window
    baseline: bool = False  # the reference of the run's speedups (PyTorch eager)
    # max |logit - PyTorch FP32 logit| over the case's inputs, None without a baseline
    max_abs_logit_error: float | None = None
    # median over the case's interleaved rounds of baseline_ms / row_ms, None without a baseline
    # or when either row is not reportable
    speedup_vs_baseline: float | None = None
    # what ran it: per graph the runtime/provider and the bundle precision, or the contender's own
    runs_on: str | None = None
    inputs: str = "photos"  # a key of INPUT_SETS
    # the same against the reference peer (OpenVINO's default, its pipeline as users write it)
    speedup_vs_peer: float | None = None
    reference_peer: bool = False
    # False: too few samples, or a pipeline faster than its own model; no ratio, no plot point
    reportable: bool = True
    notes: list = field(default_factory=list)


def _result(contender: Contender, mode: str, inputs: str, batch: int, seconds: np.ndarray) -> Result:
    """A row from its per-round seconds (no ratio yet; an empty array gives NaN times)."""
    ms = np.asarray(seconds, np.float64) * 1e3
    if ms.size == 0:
        nan = float("nan")
        return Result(contender.name, mode, batch, 0, nan, nan, nan, nan, nan, 0.0, contender.baseline, runs_on=contender.runs_on,
                      inputs=inputs, reference_peer=contender.reference_peer, reportable=False)
    pct = percentiles(ms)
    return Result(contender.name, mode, batch, int(ms.size), float(ms.mean()), pct["p50"], pct["p90"], pct["p95"], pct["p99"],
                  batch / (pct["p50"] / 1e3), contender.baseline, runs_on=contender.runs_on, inputs=inputs,
                  reference_peer=contender.reference_peer)


def engine_contender(name: str, engine, pipeline: bool = True, breakdown: bool = True) -> Contender:
    """``Engine.run`` on ``engine.preprocess(texts, images)``, and ``Engine.predict`` as the pipeline."""

    def model(texts, images):
        feed = engine.preprocess(texts, images)
        return lambda: engine.run(feed)

    def whole(texts, images):
        return lambda: engine.predict(texts, images)

    def logits(texts, images):
        return engine.run(engine.preprocess(texts, images))["logits"]

    return Contender(name, model, whole if pipeline else None, engine if breakdown else None, logits=logits, runs_on=runs_on(engine))


def runs_on(engine) -> str:
    """Where each graph of an engine runs and in which precision, grouped by runtime/provider:
    ``CPUExecutionProvider: text_encoder int8, image_encoder int8, fusion_head fp32`` (from
    ``engine.providers``, e.g. ``OpenVINO CPU (bf16)``, and ``engine.bundle.precision``)."""
    groups: dict[str, list[str]] = {}
    for graph, provider in engine.providers.items():
        groups.setdefault(provider, []).append(f"{graph} {engine.bundle.precision.get(graph, 'fp32')}")
    return "; ".join(f"{provider}: {', '.join(graphs)}" for provider, graphs in groups.items())


def pytorch_contender(checkpoint, threads: int) -> Contender:
    """The checkpoint's PyTorch model in eager mode (transformers' default attention,
    ``torch.inference_mode``, FP32): the baseline."""
    import torch

    from fusionrt.model import load_checkpoint

    torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint)

    def prep(texts, images):
        f, _ = ckpt.tokenizer(texts)
        f["pixel_values"] = ckpt.image_processor(images)
        return {k: torch.from_numpy(v) for k, v in f.items()}

    def model(texts, images):
        tensors = prep(texts, images)

        def run():
            with torch.inference_mode():
                return ckpt.model(**tensors)

        return run

    def pipeline(texts, images):
        def run():
            with torch.inference_mode():
                out = ckpt.model(**prep(texts, images))
            return torch.softmax(out.logits, -1).numpy()

        return run

    def logits(texts, images):
        with torch.inference_mode():
            return ckpt.model(**prep(texts, images)).logits.numpy()

    return Contender("pytorch eager (fp32)", model, pipeline, baseline=True, logits=logits, runs_on="PyTorch eager CPU (fp32)")


def machine_info(threads: int) -> dict:
    """The machine a result was measured on: CPU model and its INT8/BF16 flags, cores, threads, versions, date."""
    from fusionrt.cpu import cpu_info

    info = cpu_info()
    return {"cpu": info.model, "cpu_flags": list(info.flags), "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "platform": platform.platform(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("fusionrt", "onnxruntime", "numpy", "torch", "transformers", "tokenizers", "Pillow"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _inputs(batch_size: int, photos: Sequence[Path] | None = None):
    """``batch_size`` captions with encoded images: the demo's photographs, or ``photos`` (paths,
    e.g. camera-size JPEGs) with the demo's captions; both cycled to the batch size."""
    from fusionrt.samples import DEMO_PAIRS, photo_dir

    captions = [t for t, _ in DEMO_PAIRS]
    if photos is None:
        pairs = [(t, (photo_dir() / f).read_bytes()) for t, f in DEMO_PAIRS]
    else:
        pairs = [(captions[i % len(captions)], Path(p).read_bytes()) for i, p in enumerate(photos)]
    pairs = [pairs[i % len(pairs)] for i in range(batch_size)]
    return [t for t, _ in pairs], [b for _, b in pairs]


@dataclass(frozen=True)
class ContenderSet:
    """What a run measures: the contenders in report order, and the peers that could not be built."""

    contenders: list
    skipped: dict

    @property
    def reference(self) -> Contender | None:
        """The baseline whose logits the others are compared with (PyTorch eager FP32)."""
        return next((c for c in self.contenders if c.baseline and c.logits is not None), None)

    @property
    def engines(self) -> list:
        return [c.engine for c in self.contenders if c.engine is not None]


def build_contenders(bundles: Sequence, checkpoint, threads: int, peers: bool) -> ContenderSet:
    """Each bundle (model and pipeline), each FP32 bundle with ONNX Runtime graph optimizations off
    (model only); with ``checkpoint`` PyTorch eager FP32 (the baseline) and, with ``peers``, the
    peers of :func:`fusionrt.bench.peers.peer_contenders`."""
    from fusionrt.engine import Engine, EngineOptions, SessionOptions

    contenders: list[Contender] = []
    for b in bundles:
        e = Engine.from_bundle(b, intra_op_num_threads=threads)
        contenders.append(engine_contender(f"{Path(b).name} ({'/'.join(sorted(set(e.bundle.precision.values())))})", e))
        if set(e.bundle.precision.values()) == {"fp32"}:
            unopt = EngineOptions(cpu=SessionOptions(intra_op_num_threads=threads, graph_optimization_level="disable"))
            contenders.append(engine_contender(f"{Path(b).name} (fp32, ORT optimizations off)", Engine.from_bundle(b, options=unopt),
                                               pipeline=False, breakdown=False))
    skipped: dict[str, str] = {}
    if checkpoint is not None:
        contenders.append(pytorch_contender(checkpoint, threads))
        if peers:
            from fusionrt.bench.peers import peer_contenders

            found, skipped = peer_contenders(checkpoint, threads)
            contenders += found
    return ContenderSet(contenders, skipped)


@dataclass(frozen=True)
class Case:
    """One cell of the benchmark: every contender with this mode runs on these inputs."""

    inputs: str  # a key of INPUT_SETS
    mode: str
    batch_size: int
    texts: list
    images: list  # encoded bytes


def benchmark_cases(batch_sizes: Sequence[int], inputs: Sequence[str], camera_photos: Sequence[Path] = ()) -> list[Case]:
    """The cases of a run, by batch size, then input set, then mode (``INPUT_SETS``)."""
    cases = []
    for batch in batch_sizes:
        for name in inputs:
            texts, images = _inputs(batch, camera_photos if name == "camera" else None)
            cases += [Case(name, mode, batch, texts, images) for mode in INPUT_SETS[name]]
    return cases


def time_case(contenders: Sequence[Contender], case: Case, duration_s: float, min_samples: int = MIN_SAMPLES,
              errors: dict | None = None) -> list[Result]:
    """Time the contenders that have ``case.mode`` in interleaved rounds (at least ``min_samples``,
    more until ``duration_s`` per contender have passed) and return their rows, ratios filled
    from the paired rounds (:func:`paired_ratios`). A contender that fails keeps the rounds it
    finished, and a note with the error.

    Args:
        errors: contender name -> max |logit - baseline logit| on the case's inputs.
    """
    entries = [c for c in contenders if getattr(c, case.mode) is not None]
    calls = {c.name: getattr(c, case.mode)(case.texts, case.images) for c in entries}
    times, failures = interleaved_rounds(calls, warmup=2, min_rounds=min_samples, duration_s=duration_s * len(calls))
    rows = []
    for c in entries:
        row = _result(c, case.mode, case.inputs, case.batch_size, times[c.name])
        row.max_abs_logit_error = (errors or {}).get(c.name)
        if c.name in failures:
            row.notes.append(f"failed after {row.iterations} rounds: {failures[c.name]}")
        rows.append(row)
    paired_ratios(rows, times)
    return rows


def paired_ratios(rows: Sequence[Result], times: dict) -> None:
    """Fill ``speedup_vs_baseline`` and ``speedup_vs_peer`` of one case's rows: the median over
    the rounds both rows finished of reference seconds / row seconds."""
    for attr, is_reference in (("speedup_vs_baseline", lambda r: r.baseline), ("speedup_vs_peer", lambda r: r.reference_peer)):
        reference = next((r for r in rows if is_reference(r)), None)
        if reference is None:
            continue
        ref = times[reference.contender]
        for r in rows:
            n = min(len(ref), len(times[r.contender]))
            if n:
                setattr(r, attr, paired_ratio(ref[:n], times[r.contender][:n]))


def check_results(results: Sequence[Result], min_samples: int = MIN_SAMPLES) -> list[str]:
    """Apply the rules that make the numbers trustworthy, in place, and return the warnings.

    - A row with fewer than ``min_samples`` rounds is not reportable: no ratio, no plot point.
    - A pipeline row whose p50 is below the model row's p50 of the same contender and batch (the
      pipeline runs the model, whose tensors do not depend on the input set: a measurement
      artefact) is not reportable.
    - A row whose p90/p50 exceeds ``SPREAD_WARNING`` keeps its numbers, with a warning.
    - A ratio against a reference row that is not reportable is dropped.
    """
    warnings = []
    models = {(r.contender, r.batch_size): r for r in results if r.mode == "model"}
    for r in results:
        where = f"{r.contender} [{r.mode}, {r.inputs}, batch {r.batch_size}]"
        if r.iterations < min_samples:
            r.reportable = False
            r.notes.append(f"{r.iterations} samples < {min_samples}: no ratio, not plotted")
            warnings.append(f"{where}: {r.iterations} samples, fewer than {min_samples}: no ratio, not plotted "
                            "(raise --duration-s)")
        model = models.get((r.contender, r.batch_size))
        if r.mode == "pipeline" and model is not None and r.iterations and r.p50_ms < model.p50_ms:
            r.reportable = False
            r.notes.append(f"pipeline p50 {r.p50_ms:.1f} ms below its model p50 {model.p50_ms:.1f} ms: flagged, not a result")
            warnings.append(f"{where}: pipeline p50 {r.p50_ms:.1f} ms is below the same contender's model p50 "
                            f"{model.p50_ms:.1f} ms; the pipeline runs the model, so one of them was measured on a "
                            "disturbed machine: flagged, not a result")
        if r.iterations and r.p90_ms > SPREAD_WARNING * r.p50_ms:
            r.notes.append(f"spread p90/p50 {r.p90_ms / r.p50_ms:.2f}")
            warnings.append(f"{where}: p90/p50 = {r.p90_ms / r.p50_ms:.2f} > {SPREAD_WARNING:g}: a noisy row")
    reportable = {(r.contender, r.mode, r.batch_size, r.inputs): r.reportable for r in results}
    for attr, is_reference in (("speedup_vs_baseline", lambda r: r.baseline), ("speedup_vs_peer", lambda r: r.reference_peer)):
        refs = {(r.mode, r.batch_size, r.inputs): r for r in results if is_reference(r)}
        for r in results:
            ref = refs.get((r.mode, r.batch_size, r.inputs))
            if not r.reportable or ref is None or not reportable[(ref.contender, ref.mode, ref.batch_size, ref.inputs)]:
                setattr(r, attr, None)
    return warnings


def measure_cases(plan: ContenderSet, cases: Sequence[Case], duration_s: float, min_samples: int = MIN_SAMPLES,
                  progress: bool = True) -> list[Result]:
    """Every case of a run (:func:`time_case`), with each contender's logit error on its inputs."""
    bar = progress_bar(total=len(cases), desc="benchmark", unit="case", enabled=progress)
    results: list[Result] = []
    errors_of: dict = {}
    for case in cases:
        key = (case.inputs, case.batch_size)
        if key not in errors_of:
            errors_of[key] = logit_errors(plan, case.texts, case.images)
        results += time_case(plan.contenders, case, duration_s, min_samples, errors_of[key])
        bar.update()
    bar.close()
    return results


def logit_errors(plan: ContenderSet, texts: list, images: list) -> dict[str, float]:
    """Contender name -> max |logit - the baseline's logit| on these inputs (empty without one)."""
    reference = plan.reference
    if reference is None:
        return {}
    ref = reference.logits(texts, images)
    return {c.name: float(np.max(np.abs(np.asarray(c.logits(texts, images), np.float32) - ref)))
            for c in plan.contenders if c.logits is not None}


def analyze_engines(plan: ContenderSet, results: Sequence[Result], batch_sizes: Sequence[int]) -> tuple[dict, dict]:
    """The stage breakdown (:func:`stage_breakdown`) and the roofline rows (FLOPs, ms, achieved
    G operations per second; the peak is placed by :func:`place_on_roofline`) of every contender
    with an engine, on the small photographs."""
    from fusionrt.bench.flops import graph_flops_per_sample

    pipelines = {(r.contender, r.batch_size): r for r in results if r.mode == "pipeline" and r.inputs == "photos"}
    breakdown: dict = {}
    roofline: dict = {}
    for batch in batch_sizes:
        texts, images = _inputs(batch)
        for c in plan.contenders:
            if c.engine is None:
                continue
            e = c.engine
            feed = e.preprocess(texts, images)
            breakdown.setdefault(c.name, {})[batch] = times = stage_breakdown(e, texts, images, feed, pipelines.get((c.name, batch)))
            fp32_ref = _fp32_sibling(e, plan.engines)
            seq = int(feed["input_ids"].shape[1])
            roofline.setdefault(c.name, {})[batch] = {
                g: {**_roofline(graph_flops_per_sample(fp32_ref, g, batch, seq), batch, times[g]),
                    "peak": _peak_of(e, g), "precision": e.bundle.precision.get(g, "fp32"), "runs_on": e.providers[g]}
                for g in GRAPHS
            }
    return breakdown, roofline


@contextlib.contextmanager
def _camera_photos(inputs: Sequence[str], count: int):
    """Camera-size JPEGs for the ``camera`` input set, made in a temporary folder removed after
    the run (none without it)."""
    if "camera" not in inputs:
        yield []
        return
    from fusionrt.samples import make_camera_photos

    with tempfile.TemporaryDirectory(prefix="fusionrt-camera-") as folder:
        yield make_camera_photos(folder, count)


def run_benchmark(
    bundles: Sequence[str | os.PathLike],
    report_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16),
    threads: int = 2,
    duration_s: float = 3.0,
    progress: bool = True,
    peers: bool = True,
    inputs: Sequence[str] = ("photos", "camera"),
    min_samples: int = MIN_SAMPLES,
    overwrite: bool = False,
) -> dict:
    """Benchmark bundles (and baselines) on real photographs with captions; write the report.

    Contenders (:func:`build_contenders`), same inputs and threads: each bundle through
    ``Engine.run`` (model) and ``Engine.predict`` (pipeline); each FP32 bundle with ONNX Runtime
    graph optimizations off; with ``checkpoint``, its PyTorch model in eager mode (the baseline),
    and with ``peers`` also the peers of :func:`fusionrt.bench.peers.peer_contenders` (OpenVINO's
    default conversion with its pipeline as users write it, the reference of ``x peer``; the same
    with pooled decoding; NNCF INT8; PyTorch bf16 autocast), those that cannot be built here
    listed under ``skipped`` with the reason.

    Input sets (``inputs``, keys of ``INPUT_SETS``): ``photos``, the small photographs, in model
    and pipeline mode; ``camera``, camera-size JPEGs made at run time (``max(batch_sizes)`` of
    them), in pipeline mode. Each case (input set, mode, batch size) times its contenders in
    interleaved rounds: at least ``min_samples``, more until ``duration_s`` per contender have
    passed; the rules of :func:`check_results` then apply, and their warnings are in the report.

    Writes ``results.json``, ``results.csv``, ``report.md`` and PNG plots into ``report_dir``: an
    absent or empty folder, or (with ``overwrite``) a report fusionrt wrote; checked before measuring.

    Returns:
        The content of ``results.json``.

    Raises:
        InputError: no bundle, a batch size < 1, a duration <= 0, an unknown input set or
            ``min_samples`` < 1; ``report_dir`` holds files fusionrt did not write, or a report
            without ``overwrite``.
    """
    if not bundles:
        raise InputError("give at least one bundle to benchmark")
    if min(batch_sizes) < 1 or duration_s <= 0 or min_samples < 1:
        raise InputError(f"batch sizes, --min-samples must be >= 1 and --duration-s > 0, got {list(batch_sizes)}, "
                         f"{min_samples}, {duration_s}")
    unknown = sorted(set(inputs) - set(INPUT_SETS))
    if unknown or not inputs:
        raise InputError(f"--inputs {','.join(inputs)}: expected some of {', '.join(INPUT_SETS)}")
    report = Path(report_dir)
    check_output_folder(report, REPORT_OUTPUT, overwrite)  # before the measuring
    plan = build_contenders(bundles, checkpoint, threads, peers)
    measured_before = _measure_peaks(threads)
    with _camera_photos(inputs, max(batch_sizes)) as camera:
        results = measure_cases(plan, benchmark_cases(batch_sizes, inputs, camera), duration_s, min_samples, progress)
    warnings = check_results(results, min_samples)
    breakdown, roofline = analyze_engines(plan, results, batch_sizes)
    peaks = _peaks(threads, measured_before, _measure_peaks(threads))
    warnings += place_on_roofline(roofline, peaks)
    data = {
        "machine": machine_info(threads),
        "versions": _versions(),
        "peaks": {k: p.to_dict() for k, p in peaks.items()},
        "peak_gflops": peaks["fp32"].best_measured_gops,
        "peak_gflops_by_kernel": dict(peaks["fp32"].measured_gops),
        "peak_gflops_by_precision": {k: p.best_measured_gops for k, p in peaks.items() if p.measured_gops},
        "duration_s": duration_s,
        "min_samples": min_samples,
        "spread_warning": SPREAD_WARNING,
        "inputs": {name: INPUT_DESCRIPTIONS[name] for name in inputs},
        "results": [asdict(r) for r in results],
        "warnings": warnings,
        "breakdown_ms": breakdown,
        "roofline": roofline,
        "skipped": plan.skipped,
    }
    write_report(data, report, overwrite)
    return data


def stage_breakdown(engine, texts: list, images: list, feed: dict, pipeline=None, iterations: int = 7) -> dict:
    """Median ms of each step ``Engine.predict`` takes, timed one at a time on the same batch.

    Stages (they add up to the pipeline): ``prepare``, the pooled decode + tokenize +
    resize/crop/normalize of :meth:`Engine.prepare`, as the pipeline runs it; each graph
    (``runtime.infer_graph``); ``postprocess`` (softmax, predictions). ``stages_sum_ms`` is their
    sum. With ``pipeline`` (the pipeline :class:`Result` of this engine and batch):
    ``pipeline_p50_ms``, ``unaccounted_ms`` (p50 minus the sum) and ``reconciles`` (see
    ``RECONCILE_SHARE``). Not in the sum, what the pool overlaps: ``serial_decode_ms`` (each
    image decoded in turn) and ``serial_preprocess_ms`` (tokenizer and image processor, serially,
    decoding excluded).
    """
    from fusionrt.preprocessing import load_image

    env = engine.runtime.infer(feed)
    parts = {"prepare": lambda: engine.prepare(texts, images, errors="raise")}
    for g in engine.runtime.graphs:
        parts[g] = lambda g=g: engine.runtime.infer_graph(g, env)
    parts["postprocess"] = lambda: engine.predictions(env["logits"], env["modality_weights"])
    times = {k: float(np.median(time_calls(f, warmup=1, iterations=iterations))) * 1e3 for k, f in parts.items()}
    out = dict(times)
    out["stages_sum_ms"] = sum(times.values())
    serial = {
        "decode": lambda: [load_image(i) for i in images],
        "decode_and_preprocess": lambda: (engine.tokenizer(texts), engine.image_processor(images)),
    }
    serial_ms = {k: float(np.median(time_calls(f, warmup=1, iterations=iterations))) * 1e3 for k, f in serial.items()}
    out["serial_decode_ms"] = serial_ms["decode"]
    out["serial_preprocess_ms"] = max(serial_ms["decode_and_preprocess"] - serial_ms["decode"], 0.0)
    if pipeline is not None:
        out["pipeline_p50_ms"] = pipeline.p50_ms
        out["unaccounted_ms"] = pipeline.p50_ms - out["stages_sum_ms"]
        out["reconciles"] = abs(out["unaccounted_ms"]) <= max(RECONCILE_SHARE * pipeline.p50_ms, RECONCILE_MS)
    return out


def _fp32_sibling(engine, engines) -> Path:
    """FLOPs are counted on FP32 graphs: the engine's own bundle if FP32, else a benchmarked FP32
    bundle, else the engine's (quantized graphs may then not be countable: 0)."""
    if set(engine.bundle.precision.values()) == {"fp32"}:
        return engine.bundle.path
    for e in engines:
        if set(e.bundle.precision.values()) == {"fp32"}:
            return e.bundle.path
    return engine.bundle.path


def _roofline(flops_per_sample: int, batch: int, ms: float) -> dict:
    """GFLOP per sample and achieved GFLOP/s of one graph; the peak and ``percent_of_peak`` are
    added once the run's peaks are known (:func:`place_on_roofline`)."""
    achieved = flops_per_sample * batch / (ms / 1e3) / 1e9 if ms > 0 else 0.0
    return {"gflop_per_sample": flops_per_sample / 1e9, "ms": ms, "achieved_gflops": achieved}


# The peak a graph's roofline row is measured against, by the graph's bundle precision: INT8
# graphs run u8 x s8 kernels, bf16 ones bf16 kernels; ONNX Runtime's CPU provider runs FP16
# graphs' MatMuls and Convs through float32 kernels.
PEAK_OF_PRECISION = {"fp32": "fp32", "fp16": "fp32", "int8": "int8", "int8-dynamic": "int8", "bf16": "bf16"}


def _peak_of(engine, graph: str) -> str:
    """The peak a graph's roofline row uses: by its bundle precision, except that a float graph the
    runtime computes in bf16 (OpenVINO's ``inference_precisions``, bf16 where the CPU has it) uses
    the bf16 peak."""
    peak = PEAK_OF_PRECISION.get(engine.bundle.precision.get(graph, "fp32"), "fp32")
    ran = getattr(engine.runtime, "inference_precisions", {}).get(graph)  # only OpenVINO's runtime reports one
    return "bf16" if peak == "fp32" and ran == "bf16" else peak


def _measure_peaks(threads: int) -> dict[str, dict[str, float]]:
    """Measured peaks per precision and kernel (:func:`fusionrt.bench.peaks.measure_peaks`)."""
    from fusionrt.bench.peaks import measure_peaks

    return measure_peaks(threads)


def _peaks(threads: int, before: dict, after: dict) -> dict:
    """The :class:`~fusionrt.bench.peaks.Peak` of each precision: theoretical, and the best of
    each kernel measured before and after the contenders (this machine is shared and noisy)."""
    from fusionrt.bench.peaks import theoretical_peaks

    peaks = theoretical_peaks(threads)
    for precision, peak in peaks.items():
        kernels = {**before.get(precision, {}), **after.get(precision, {})}
        peak.measured_gops = {k: max(before.get(precision, {}).get(k, 0.0), after.get(precision, {}).get(k, 0.0)) for k in kernels}
    return peaks


def place_on_roofline(roofline: dict, peaks: dict) -> list[str]:
    """Put every roofline row against the peak of the precision it runs in
    (:func:`~fusionrt.bench.peaks.peak_used`): ``peak_gops``, ``peak_name`` and
    ``percent_of_peak``. A row above its peak (a wrong FLOP count or peak) gets no percentage
    and a warning: a roofline never shows more than 100%.

    Returns:
        The warnings.
    """
    from fusionrt.bench.peaks import peak_used

    warnings = []
    for name, per_batch in roofline.items():
        for batch, graphs in per_batch.items():
            for g, entry in graphs.items():
                used, label = peak_used(peaks[entry["peak"]])
                entry["peak_gops"], entry["peak_name"] = used, label
                percent = 100 * entry["achieved_gflops"] / used if used else None
                if percent is not None and percent > 100:
                    warnings.append(f"roofline {name} batch {batch} {g}: {entry['achieved_gflops']:.0f} G/s is above the "
                                    f"peak {label}: no percentage")
                    percent = None
                entry["percent_of_peak"] = percent
    return warnings
