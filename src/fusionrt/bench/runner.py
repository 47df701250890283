"""In-process benchmark: latency percentiles and throughput of bundles against PyTorch, the time
breakdown of the pipeline, and the roofline. ``fusionrt bench`` calls :func:`run_benchmark`."""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fusionrt.bundle import GRAPHS
from fusionrt.errors import InputError

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


def measure(contender: str, mode: str, batch_size: int, fn: Callable[[], object], duration_s: float,
            warmup: int = 2, min_iterations: int = 5, max_iterations: int = 10_000) -> Result:
    """Call ``fn`` for ``duration_s`` seconds (at least ``min_iterations`` times) after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    end = time.perf_counter() + duration_s
    while (time.perf_counter() < end or len(times) < min_iterations) and len(times) < max_iterations:
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    pct = percentiles(times)
    mean = float(np.mean(times))
    return Result(contender, mode, batch_size, len(times), mean, pct["p50"], pct["p90"], pct["p95"], pct["p99"],
                  batch_size / (mean / 1e3))


def machine_info(threads: int) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
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
) -> dict:
    """Benchmark bundles (and baselines) on real photographs with captions; write the report.

    Contenders, same inputs and threads: each bundle through ``Engine.run`` (model) and
    ``Engine.predict`` (pipeline); each FP32 bundle with ONNX Runtime graph optimizations off;
    with ``checkpoint``, its PyTorch model in eager mode (transformers' default attention,
    ``torch.inference_mode``, FP32).

    Writes ``results.json``, ``results.csv``, ``report.md`` and PNG plots into ``report_dir``.

    Returns:
        The content of ``results.json``.

    Raises:
        InputError: no bundle, a batch size < 1 or a duration <= 0.
    """
    from tqdm.auto import tqdm

    from fusionrt.bench.flops import graph_flops_per_sample
    from fusionrt.engine import Engine, EngineOptions, SessionOptions
    from fusionrt.prediction import softmax
    from fusionrt.preprocessing import load_image

    if not bundles:
        raise InputError("give at least one bundle to benchmark")
    if min(batch_sizes) < 1 or duration_s <= 0:
        raise InputError(f"batch sizes must be >= 1 and duration > 0, got {list(batch_sizes)}, {duration_s}")
    report = Path(report_dir)
    report.mkdir(parents=True, exist_ok=True)
    engines = {}
    for b in bundles:
        e = Engine.from_bundle(b, intra_op_num_threads=threads)
        name = f"{Path(b).name} ({'/'.join(sorted(set(e.bundle.precision.values())))})"
        engines[name] = e
        if set(e.bundle.precision.values()) == {"fp32"}:
            unopt = EngineOptions(cpu=SessionOptions(intra_op_num_threads=threads, graph_optimization_level="disable"))
            engines[f"{Path(b).name} (fp32, ORT optimizations off)"] = Engine.from_bundle(b, options=unopt)
    torch_model = None
    if checkpoint is not None:
        import torch

        from fusionrt.model import load_checkpoint

        torch.set_num_threads(threads)
        torch_model = load_checkpoint(checkpoint)

    steps = len(batch_sizes) * (2 * len(engines) + (2 if torch_model else 0))
    bar = tqdm(total=steps, desc="benchmark", unit="case", disable=not progress)
    results: list[Result] = []
    breakdown: dict = {}
    roofline: dict = {}
    peaks_before = _measure_peaks(threads)
    for batch in batch_sizes:
        texts, images = _inputs(batch)
        for name, e in engines.items():
            feed = e.preprocess(texts, images)
            results.append(measure(name, "model", batch, lambda: e.run(feed), duration_s))
            bar.update()
            if "optimizations off" in name:
                bar.update()
                continue
            results.append(measure(name, "pipeline", batch, lambda: e.predict(texts, images), duration_s))
            bar.update()
            # where the time goes (median ms of a few calls each)
            env = e.runtime.infer(feed)
            parts = {
                "decode": lambda: [load_image(i) for i in images],
                "preprocess": lambda: (e.tokenizer(texts), e.image_processor(images)),
            }
            for g in e.runtime.graphs:
                parts[g] = lambda g=g: e.runtime.infer_graph(g, env)
            parts["postprocess"] = lambda: [e._prediction(l, w, False) for l, w in zip(softmax(env["logits"]), env["modality_weights"])]
            times = {k: float(np.median([_time(f) for _ in range(5)])) for k, f in parts.items()}
            times["preprocess"] = max(times["preprocess"] - times["decode"], 0.0)  # preprocess includes decoding
            breakdown.setdefault(name, {})[batch] = times
            fp32_ref = _fp32_sibling(e, engines)
            seq = int(feed["input_ids"].shape[1])
            roofline.setdefault(name, {})[batch] = {
                g: _roofline(graph_flops_per_sample(fp32_ref, g, batch, seq), batch, times[g]) for g in GRAPHS
            }
        if torch_model is not None:
            import torch

            ckpt = torch_model

            def prep():
                f, _ = ckpt.tokenizer(texts)
                f["pixel_values"] = ckpt.image_processor(images)
                return {k: torch.from_numpy(v) for k, v in f.items()}

            tensors = prep()

            def model_only():
                with torch.inference_mode():
                    return ckpt.model(**tensors)

            def pipeline():
                with torch.inference_mode():
                    out = ckpt.model(**prep())
                return torch.softmax(out.logits, -1).numpy()

            results.append(measure("pytorch eager (fp32)", "model", batch, model_only, duration_s))
            bar.update()
            results.append(measure("pytorch eager (fp32)", "pipeline", batch, pipeline, duration_s))
            bar.update()
    bar.close()
    # The roofline's peak: the best float32 throughput ONNX Runtime reaches on a large MatMul or
    # ResNet-shaped 3x3 Convs, measured before and after the contenders (this machine is shared
    # and noisy).
    peaks = {k: max(v, after) for (k, v), after in zip(peaks_before.items(), _measure_peaks(threads).values())}
    peak = max(peaks.values())
    for per_batch in roofline.values():
        for graphs in per_batch.values():
            for entry in graphs.values():
                entry["percent_of_peak"] = 100 * entry["achieved_gflops"] / peak if peak else 0.0
    data = {
        "machine": machine_info(threads),
        "versions": _versions(),
        "peak_gflops": peak,
        "peak_gflops_by_kernel": peaks,
        "duration_s": duration_s,
        "inputs": "scikit-image photographs with captions (fusionrt.demo.DEMO_PAIRS), cycled to the batch size",
        "results": [asdict(r) for r in results],
        "breakdown_ms": breakdown,
        "roofline": roofline,
    }
    write_report(data, report)
    return data


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _fp32_sibling(engine, engines) -> Path:
    """FLOPs are counted on FP32 graphs: the engine's own bundle if FP32, else a benchmarked FP32
    bundle, else the engine's (quantized graphs may then not be countable: 0)."""
    if set(engine.bundle.precision.values()) == {"fp32"}:
        return engine.bundle.path
    for e in engines.values():
        if set(e.bundle.precision.values()) == {"fp32"}:
            return e.bundle.path
    return engine.bundle.path


def _roofline(flops_per_sample: int, batch: int, ms: float) -> dict:
    """GFLOP per sample and achieved GFLOP/s of one graph; ``percent_of_peak`` is added once the
    run's peak is known."""
    achieved = flops_per_sample * batch / (ms / 1e3) / 1e9 if ms > 0 else 0.0
    return {"gflop_per_sample": flops_per_sample / 1e9, "ms": ms, "achieved_gflops": achieved}


def _measure_peaks(threads: int) -> dict[str, float]:
    """Float32 GFLOP/s of ONNX Runtime on a large MatMul and on ResNet-shaped 3x3 Convs."""
    from fusionrt.bench.flops import measure_conv_peak_gflops, measure_peak_gflops

    return {"matmul": measure_peak_gflops(threads), "conv": measure_conv_peak_gflops(threads)}


def write_report(data: dict, report: Path) -> None:
    """results.json, results.csv, report.md and four PNG plots."""
    (report / "results.json").write_text(json.dumps(data, indent=2))
    rows = data["results"]
    with open(report / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if "url" in data:
        lines = _served_report_lines(data)
    else:
        lines = _report_lines(data)
    (report / "report.md").write_text("\n".join(lines) + "\n")
    _plots(data, report)


def _served_report_lines(data: dict) -> list[str]:
    """report.md of ``fusionrt bench --url``: client-side latency per level, then the server's
    queue and compute time per composing model (Triton statistics, deltas over the level)."""
    m, rows = data["machine"], data["results"]
    lines = [
        "# fusionrt served benchmark", "",
        f"{m['date']}: the `fusionrt` ensemble at {data['url']} ({data['protocol']}), single-item requests; "
        f"client on {m['cpu']} ({m['cores']} cores), Python {m['python']}.", "",
        "| level | requests | mean ms | p50 ms | p90 ms | p95 ms | p99 ms | requests/s | failures |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r, level in zip(rows, data["levels"]):
        lines.append(f"| {r['contender']} | {r['iterations']} | {r['mean_ms']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['throughput_per_s']:.1f} | {level.get('failures', 0)} |")
    lines += ["", "## Server side (Triton statistics over each level, ms per request)", "",
              "| level | model | inferences | executions | queue ms | compute ms |", "|---|---|---|---|---|---|"]
    for r, level in zip(rows, data["levels"]):
        for model, st in level.get("server", {}).items():
            lines.append(f"| {r['contender']} | {model} | {st['inference_count']} | {st['execution_count']} | "
                         f"{st['queue_ms_per_request']:.2f} | {st['compute_ms_per_request']:.2f} |")
    return lines


def _report_lines(data: dict) -> list[str]:
    """report.md of the in-process benchmark."""
    rows = data["results"]
    m = data["machine"]
    lines = [
        "# fusionrt benchmark", "",
        f"{m['date']} on {m['cpu']} ({m['cores']} cores), {m['threads']} threads, CPU only. "
        f"Measured peak: {data['peak_gflops']:.0f} GFLOP/s, the best of ONNX Runtime float32 "
        + ", ".join(f"{k} {v:.0f}" for k, v in data.get("peak_gflops_by_kernel", {}).items())
        + " GFLOP/s, measured before and after the run.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in data['versions'].items())}.", "",
        "| contender | mode | batch | mean ms | p50 ms | p90 ms | p95 ms | p99 ms | samples/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['contender']} | {r['mode']} | {r['batch_size']} | {r['mean_ms']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['throughput_per_s']:.1f} |")
    lines += ["", "## Time breakdown (ms per batch, median)", "", "| contender | batch | " + " | ".join(_PARTS) + " |",
              "|---|---|" + "---|" * len(_PARTS)]
    for name, per_batch in data["breakdown_ms"].items():
        for batch, t in per_batch.items():
            lines.append(f"| {name} | {batch} | " + " | ".join(f"{t.get(p, 0):.1f}" for p in _PARTS) + " |")
    lines += ["", "## Roofline (FLOPs counted on the FP32 graph)", "",
              "Against the float32 peak: INT8 and FP16 graphs run other kernels and may exceed 100%.", "",
              "| contender | batch | graph | GFLOP/sample | GFLOP/s | % of float32 peak |", "|---|---|---|---|---|---|"]
    for name, per_batch in data["roofline"].items():
        for batch, graphs in per_batch.items():
            for g, r in graphs.items():
                if r["gflop_per_sample"]:
                    lines.append(f"| {name} | {batch} | {g} | {r['gflop_per_sample']:.2f} | {r['achieved_gflops']:.1f} | {r['percent_of_peak']:.0f}% |")
    return lines


_PARTS = ("decode", "preprocess", *GRAPHS, "postprocess")


def _plots(data: dict, report: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["results"]
    series: dict = {}
    for r in rows:
        series.setdefault((r["contender"], r["mode"]), []).append(r)
    fig, ax = plt.subplots(figsize=(8, 5))
    for (name, mode), rs in series.items():
        if mode != "pipeline":
            continue
        xs = [r["batch_size"] for r in rs]
        ax.plot(xs, [r["p50_ms"] for r in rs], marker="o", label=f"{name} p50")
        ax.plot(xs, [r["p99_ms"] for r in rs], marker="x", linestyle="--", label=f"{name} p99")
    ax.set(xlabel="batch size", ylabel="latency per batch (ms)", title="Pipeline latency percentiles")
    _save(fig, ax, report / "latency.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    for (name, mode), rs in series.items():
        ax.plot([r["batch_size"] for r in rs], [r["throughput_per_s"] for r in rs], marker="o", label=f"{name} [{mode}]")
    ax.set(xlabel="batch size", ylabel="samples/s", title="Throughput")
    _save(fig, ax, report / "throughput.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    base = {(r["mode"], r["batch_size"]): r["throughput_per_s"] for r in rows if r["contender"].startswith("pytorch")}
    labels, values = [], []
    for r in rows:
        ref = base.get((r["mode"], r["batch_size"]))
        if ref and not r["contender"].startswith("pytorch"):
            labels.append(f"{r['contender']}\n{r['mode']} b{r['batch_size']}")
            values.append(r["throughput_per_s"] / ref)
    ax.bar(range(len(values)), values)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_xticks(range(len(values)), labels, fontsize=6, rotation=60, ha="right")
    ax.set(ylabel="x PyTorch eager", title="Speedup over PyTorch eager (same run)" if values else "No PyTorch baseline (--checkpoint)")
    _save(fig, ax, report / "speedup.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    entries = [(f"{n} b{b}", t) for n, per in data["breakdown_ms"].items() for b, t in per.items()]
    bottoms = np.zeros(len(entries))
    for part in _PARTS:
        vals = np.array([t.get(part, 0.0) for _, t in entries])
        ax.bar(range(len(entries)), vals, bottom=bottoms, label=part)
        bottoms += vals
    ax.set_xticks(range(len(entries)), [e[0] for e in entries], fontsize=6, rotation=60, ha="right")
    ax.set(ylabel="ms per batch", title="Where the time goes")
    _save(fig, ax, report / "breakdown.png")


def _save(fig, ax, path: Path) -> None:
    """Legend (when something is labelled), PNG at 100 dpi, figure closed."""
    import matplotlib.pyplot as plt

    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
