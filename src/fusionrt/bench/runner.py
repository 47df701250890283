"""In-process benchmark: latency percentiles and throughput of bundles against PyTorch, the time
breakdown of the pipeline, and the roofline. ``fusionrt bench`` calls :func:`run_benchmark`."""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fusionrt.bench.contender import Contender
from fusionrt.bench.report import RECONCILE_MS, RECONCILE_SHARE, write_report
from fusionrt.timing import time_calls
from fusionrt.bundle import GRAPHS
from fusionrt.errors import InputError
from fusionrt.utils import progress_bar

PERCENTILES = (50, 90, 95, 99)


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
    """One contender at one batch size: latency in ms per batch, throughput in samples/s."""

    contender: str
    mode: str  # "model" (preprocessed tensors) or "pipeline" (decode + preprocess + model + postprocess)
    batch_size: int
    iterations: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    throughput_per_s: float
    baseline: bool = False  # the reference of the run's speedups (PyTorch eager)
    # max |logit - PyTorch FP32 logit| over the batch's inputs (model mode), None without a baseline
    max_abs_logit_error: float | None = None
    # throughput over the baseline's at the same mode and batch size (paired by position in the
    # same run, not interleaved), None without a baseline
    speedup_vs_baseline: float | None = None
    # what ran it: per graph the runtime/provider and the bundle precision, or the contender's own
    runs_on: str | None = None


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


def measure(contender: str, mode: str, batch_size: int, fn: Callable[[], object], duration_s: float,
            warmup: int = 2, min_iterations: int = 5, max_iterations: int = 10_000, baseline: bool = False) -> Result:
    """Call ``fn`` for ``duration_s`` seconds (at least ``min_iterations`` times) after warm-up."""
    times = list(time_calls(fn, warmup, min_iterations, duration_s, max_iterations) * 1e3)
    pct = percentiles(times)
    mean = float(np.mean(times))
    return Result(contender, mode, batch_size, len(times), mean, pct["p50"], pct["p90"], pct["p95"], pct["p99"],
                  batch_size / (mean / 1e3), baseline)


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


def _inputs(batch_size: int):
    from fusionrt.samples import DEMO_PAIRS, photo_dir

    pairs = [(t, (photo_dir() / f).read_bytes()) for t, f in DEMO_PAIRS]
    pairs = [pairs[i % len(pairs)] for i in range(batch_size)]
    return [t for t, _ in pairs], [b for _, b in pairs]


def run_benchmark(
    bundles: Sequence[str | os.PathLike],
    report_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    threads: int = 2,
    duration_s: float = 3.0,
    progress: bool = True,
    peers: bool = True,
) -> dict:
    """Benchmark bundles (and baselines) on real photographs with captions; write the report.

    Contenders, same inputs and threads: each bundle through ``Engine.run`` (model) and
    ``Engine.predict`` (pipeline); each FP32 bundle with ONNX Runtime graph optimizations off;
    with ``checkpoint``, its PyTorch model in eager mode (transformers' default attention,
    ``torch.inference_mode``, FP32), and with ``peers`` also the peers of
    :func:`fusionrt.bench.peers.peer_contenders` (OpenVINO's default conversion, with serial and
    pooled decoding, NNCF INT8, PyTorch bf16 autocast), those that cannot be built here listed
    under ``skipped`` with the reason. Every contender's max |logit - PyTorch FP32| on the
    benchmark inputs is in its results (``max_abs_logit_error``).

    Writes ``results.json``, ``results.csv``, ``report.md`` and PNG plots into ``report_dir``.

    Returns:
        The content of ``results.json``.

    Raises:
        InputError: no bundle, a batch size < 1 or a duration <= 0.
    """
    from fusionrt.bench.flops import graph_flops_per_sample
    from fusionrt.engine import Engine, EngineOptions, SessionOptions

    if not bundles:
        raise InputError("give at least one bundle to benchmark")
    if min(batch_sizes) < 1 or duration_s <= 0:
        raise InputError(f"batch sizes must be >= 1 and duration > 0, got {list(batch_sizes)}, {duration_s}")
    report = Path(report_dir)
    report.mkdir(parents=True, exist_ok=True)
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
    engines = [c.engine for c in contenders if c.engine is not None]
    reference = next((c for c in contenders if c.baseline and c.logits is not None), None)

    steps = len(batch_sizes) * sum((c.model is not None) + (c.pipeline is not None) for c in contenders)
    bar = progress_bar(total=steps, desc="benchmark", unit="case", enabled=progress)
    results: list[Result] = []
    breakdown: dict = {}
    roofline: dict = {}
    peaks_before = _measure_peaks(threads)
    precision_peaks_before = _measure_precision_peaks(threads)
    for batch in batch_sizes:
        texts, images = _inputs(batch)
        ref_logits = reference.logits(texts, images) if reference is not None else None
        for c in contenders:
            error = None
            if ref_logits is not None and c.logits is not None:
                error = float(np.max(np.abs(np.asarray(c.logits(texts, images), np.float32) - ref_logits)))
            pipeline_result = None
            if c.model is not None:
                results.append(measure(c.name, "model", batch, c.model(texts, images), duration_s, baseline=c.baseline))
                results[-1].max_abs_logit_error, results[-1].runs_on = error, c.runs_on
                bar.update()
            if c.pipeline is not None:
                results.append(measure(c.name, "pipeline", batch, c.pipeline(texts, images), duration_s, baseline=c.baseline))
                results[-1].max_abs_logit_error, results[-1].runs_on = error, c.runs_on
                pipeline_result = results[-1]
                bar.update()
            if c.engine is None:
                continue
            e = c.engine
            feed = e.preprocess(texts, images)
            breakdown.setdefault(c.name, {})[batch] = times = stage_breakdown(e, texts, images, feed, pipeline_result)
            fp32_ref = _fp32_sibling(e, engines)
            seq = int(feed["input_ids"].shape[1])
            roofline.setdefault(c.name, {})[batch] = {
                g: {**_roofline(graph_flops_per_sample(fp32_ref, g, batch, seq), batch, times[g]),
                    "peak": _peak_of(e, g), "precision": e.bundle.precision.get(g, "fp32"), "runs_on": e.providers[g]}
                for g in GRAPHS
            }
    bar.close()
    # The roofline's peaks, measured before and after the contenders (this machine is shared and
    # noisy): float32, the best ONNX Runtime reaches on a large MatMul or ResNet-shaped 3x3 Convs;
    # int8 and bf16, a large MatMul in the kernels those graphs run (see _measure_precision_peaks).
    base = {(r.mode, r.batch_size): r.throughput_per_s for r in results if r.baseline}
    for r in results:
        if (r.mode, r.batch_size) in base:
            r.speedup_vs_baseline = r.throughput_per_s / base[(r.mode, r.batch_size)]
    peaks = {k: max(v, after) for (k, v), after in zip(peaks_before.items(), _measure_peaks(threads).values())}
    peak = max(peaks.values())
    precision_peaks = {"fp32": peak}
    for k, after in _measure_precision_peaks(threads).items():
        precision_peaks[k] = max(precision_peaks_before.get(k, 0.0), after)
    for per_batch in roofline.values():
        for graphs in per_batch.values():
            for entry in graphs.values():
                if entry["peak"] not in precision_peaks:  # not measurable here (bf16 without openvino)
                    entry["peak"] = "fp32"
                used = precision_peaks[entry["peak"]]
                entry["percent_of_peak"] = 100 * entry["achieved_gflops"] / used if used else 0.0
    data = {
        "machine": machine_info(threads),
        "versions": _versions(),
        "peak_gflops": peak,
        "peak_gflops_by_kernel": peaks,
        "peak_gflops_by_precision": precision_peaks,
        "duration_s": duration_s,
        "inputs": "scikit-image photographs with captions (fusionrt.demo.DEMO_PAIRS), cycled to the batch size",
        "results": [asdict(r) for r in results],
        "breakdown_ms": breakdown,
        "roofline": roofline,
        "skipped": skipped,
    }
    write_report(data, report)
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
    """GFLOP per sample and achieved GFLOP/s of one graph; ``percent_of_peak`` is added once the
    run's peak is known."""
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


def _measure_precision_peaks(threads: int) -> dict[str, float]:
    """Peak GOP/s of the other precisions: ``int8``, ONNX Runtime's ``MatMulInteger``; ``bf16``,
    OpenVINO's MatMul at bf16 inference precision, only where the CPU has AVX512-BF16 or AMX-BF16
    and openvino is installed."""
    from fusionrt.bench.flops import measure_bf16_peak_gflops, measure_int8_peak_gops
    from fusionrt.cpu import cpu_info

    out = {"int8": measure_int8_peak_gops(threads)}
    if cpu_info().bf16:
        try:
            out["bf16"] = measure_bf16_peak_gflops(threads)
        except ImportError:
            pass
    return out


def _measure_peaks(threads: int) -> dict[str, float]:
    """Float32 GFLOP/s of ONNX Runtime on a large MatMul and on ResNet-shaped 3x3 Convs."""
    from fusionrt.bench.flops import measure_conv_peak_gflops, measure_peak_gflops

    return {"matmul": measure_peak_gflops(threads), "conv": measure_conv_peak_gflops(threads)}
