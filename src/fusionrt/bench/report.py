"""The benchmark reports: results.json, results.csv, report.md and the PNG plots, for the
in-process benchmark (:func:`fusionrt.bench.runner.run_benchmark`) and the served one
(:func:`fusionrt.bench.served.run_served_benchmark`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fusionrt.bundle import GRAPHS

# The stage sum reconciles with the pipeline's p50 when they differ by at most this share of the
# p50, or RECONCILE_MS, whichever is larger: the stages are the pipeline's own steps timed one at a
# time, so what is left is Engine.predict's glue (feed checks, chunking) and timing noise on a
# shared machine; RECONCILE_MS covers the tiny test bundle, whose whole pipeline is a few ms.
RECONCILE_SHARE = 0.15
RECONCILE_MS = 1.0
# ``data["benchmark"]``: which benchmark wrote the results (absent: the in-process one).
SERVED = "served"
IN_PROCESS = "in-process"


def _benchmark(data: dict) -> str:
    return data.get("benchmark", IN_PROCESS)


def write_report(data: dict, report: Path) -> None:
    """results.json, results.csv, report.md and the PNG plots that have data (:func:`report_figures`)."""
    (report / "results.json").write_text(json.dumps(data, indent=2))
    rows = data["results"]
    with open(report / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = {SERVED: _served_report_lines, IN_PROCESS: _report_lines}[_benchmark(data)](data)
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
    plots = sorted(report_figures_names(data))
    lines += ["", f"Plots against the closed-loop concurrency: {', '.join(plots) or 'none (no closed-loop level)'} "
              "(throughput; p50/p90/p99 latency; queue and compute time per composing model)."]
    return lines


def report_figures_names(data: dict) -> set[str]:
    """The plot files a served report writes (those with data): see :func:`report_figures`."""
    if not any("concurrency" in level for level in data["levels"]):
        return set()
    servers = {m for level in data["levels"] if "concurrency" in level for m in level.get("server", {})}
    return {"throughput.png", "latency.png"} | ({"server_time.png"} if servers else set())


def _report_lines(data: dict) -> list[str]:
    """report.md of the in-process benchmark."""
    rows = data["results"]
    m = data["machine"]
    lines = [
        "# fusionrt benchmark", "",
        f"{m['date']} on {m['cpu']} ({m['cores']} cores), {m['threads']} threads, CPU only. "
        f"Measured peak: {data['peak_gflops']:.0f} GFLOP/s, the best of ONNX Runtime float32 "
        + ", ".join(f"{k} {v:.0f}" for k, v in data.get("peak_gflops_by_kernel", {}).items())
        + " GFLOP/s, measured before and after the run"
        + "".join(f"; {k} peak {v:.0f} G{'OP' if k == 'int8' else 'FLOP'}/s"
                  for k, v in data.get("peak_gflops_by_precision", {}).items() if k != "fp32")
        + (f". CPU flags: {', '.join(m['cpu_flags'])}." if m.get("cpu_flags") else "."),
        f"Versions: {', '.join(f'{k} {v}' for k, v in data['versions'].items())}.", "",
        "A bundle's row is named `FOLDER (PRECISIONS)`: the bundle folder's name, then the precisions of its "
        "graphs, each once, sorted and joined by `/` (`int8 (fp32/int8)`: the folder `int8`, whose graphs are "
        "INT8 but one in FP32: static INT8 keeps the fusion head in FP32). *runs on* says, per graph, the "
        "runtime/provider (`engine.providers`) and the bundle precision. *x PyTorch* is the row's samples/s "
        "over PyTorch eager FP32's at the same mode and batch in this run (not interleaved: "
        "`benchmarks/export_speedups.py` gives interleaved ratios). *model*: `Engine.run` on preprocessed "
        "tensors; *pipeline*: encoded photographs and captions to predictions.", "",
        "| contender | mode | batch | mean ms | p50 ms | p90 ms | p95 ms | p99 ms | samples/s | x PyTorch | "
        "max abs logit error vs PyTorch FP32 | runs on |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        err, speedup = r.get("max_abs_logit_error"), r.get("speedup_vs_baseline")
        lines.append(f"| {r['contender']} | {r['mode']} | {r['batch_size']} | {r['mean_ms']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['throughput_per_s']:.1f} | "
                     f"{'-' if speedup is None else f'{speedup:.2f}x'} | {'' if err is None else f'{err:.2e}'} | "
                     f"{r.get('runs_on') or ''} |")
    if data.get("skipped"):
        lines += ["", "Not measured here:", ""] + [f"- {name}: {why}" for name, why in data["skipped"].items()]
    lines += _breakdown_lines(data["breakdown_ms"])
    lines += ["", "## Roofline (FLOPs counted on the FP32 graph)", "",
              "Every graph of every benchmarked bundle, each against the measured peak of the precision it runs in "
              "(INT8 graphs: the INT8 MatMul peak; a float graph OpenVINO computes in bf16: the bf16 peak; FP16 graphs "
              "run float32 kernels on ONNX Runtime's CPU provider: the float32 peak). FLOPs per sample are those of the "
              "FP32 graph at the benchmark's sequence length (a benchmarked FP32 bundle's; without one, the bundle's own "
              "graph: the same operations, which quantization and FP16 change in arithmetic, not in count).", "",
              "| contender | batch | graph | precision | runs on | GFLOP/sample | ms | GFLOP/s | peak | % of peak |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, per_batch in data["roofline"].items():
        for batch, graphs in per_batch.items():
            for g, r in graphs.items():
                head = f"| {name} | {batch} | {g} | {r.get('precision', '')} | {r.get('runs_on', '')} | "
                if r["gflop_per_sample"]:
                    lines.append(head + f"{r['gflop_per_sample']:.2f} | {r['ms']:.1f} | {r['achieved_gflops']:.1f} | "
                                 f"{r.get('peak', 'fp32')} | {r['percent_of_peak']:.0f}% |")
                else:
                    lines.append(head + f"not countable | {r['ms']:.1f} | - | {r.get('peak', 'fp32')} | - |")
    return lines


def _breakdown_lines(breakdown: dict) -> list[str]:
    """The stage table: the pipeline's own steps, their sum against the measured pipeline p50,
    and the serial cost of what the decode pool overlaps."""
    lines = ["", "## Time breakdown (ms per batch, median of 7 calls each)", "",
             "The steps of `Engine.predict`, timed one at a time on the same batch: *prepare* is the pooled "
             "decode, tokenization and resize/crop/normalize, as the pipeline runs it (images decoded in a thread "
             "pool); then each graph and the postprocess (softmax, predictions). *sum* adds them; *pipeline p50* is "
             "the measured pipeline row above; *rest* is p50 minus sum (the engine's glue and timing noise). A row "
             f"reconciles when |rest| <= max({RECONCILE_SHARE:.0%} of p50, {RECONCILE_MS:g} ms). Not in the sum: "
             "*serial decode* and *serial preprocess* are the same decoding and tokenize + resize/crop/normalize done "
             "one image after another in the calling thread, the work the pool overlaps inside *prepare*.", "",
             "| contender | batch | " + " | ".join(_PARTS) + " | sum | pipeline p50 | rest | reconciles | serial decode | serial preprocess |",
             "|---|---|" + "---|" * (len(_PARTS) + 6)]
    for name, per_batch in breakdown.items():
        for batch, t in per_batch.items():
            p50 = t.get("pipeline_p50_ms")
            lines.append(
                f"| {name} | {batch} | " + " | ".join(_ms(t.get(p, 0.0)) for p in _PARTS)
                + f" | {t['stages_sum_ms']:.1f} | {'-' if p50 is None else f'{p50:.1f}'} | "
                + ("- | - |" if p50 is None else f"{t['unaccounted_ms']:+.1f} | {'yes' if t['reconciles'] else 'no'} |")
                + f" {t['serial_decode_ms']:.1f} | {t['serial_preprocess_ms']:.1f} |"
            )
    return lines


_PARTS = ("prepare", *GRAPHS, "postprocess")


def _ms(value: float) -> str:
    """A stage time: one decimal, two below 1 ms (a postprocess of a few rows is ~0.05 ms)."""
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def _plots(data: dict, report: Path) -> None:
    """Write the figures of :func:`report_figures` as PNGs (100 dpi); a figure with no data is
    not written, and one left from an earlier report in the folder is removed."""
    import matplotlib.pyplot as plt

    figures = report_figures(data)
    for name in ALL_PLOTS:
        path = report / name
        if name in figures:
            fig = figures[name]
            for ax in fig.axes:
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7)
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
        elif path.is_file():
            path.unlink()


# Every plot a report may hold: in-process latency/throughput/speedup/breakdown against batch
# size; served latency/throughput/server_time against concurrency.
ALL_PLOTS = ("latency.png", "throughput.png", "speedup.png", "breakdown.png", "server_time.png")


def report_figures(data: dict) -> dict:
    """The report's matplotlib figures that have data, by file name (not saved: see :func:`_plots`).

    In-process (``run_benchmark``): ``latency.png`` (pipeline p50/p99 vs batch size),
    ``throughput.png`` (samples/s vs batch size), ``speedup.png`` (over PyTorch eager, with a
    baseline only), ``breakdown.png`` (stages per batch, the measured pipeline p50 marked).
    Served (``run_served_benchmark``, ``data["benchmark"] == "served"``): ``throughput.png`` and
    ``latency.png`` (p50/p90/p99) against the closed-loop concurrency, ``server_time.png`` (queue
    and compute ms per request of each composing model against concurrency). The open-loop
    (Poisson) level has no concurrency: it is in report.md only.
    """
    import matplotlib

    matplotlib.use("Agg")
    return {SERVED: _served_figures, IN_PROCESS: _inprocess_figures}[_benchmark(data)](data)


def _inprocess_figures(data: dict) -> dict:
    import matplotlib.pyplot as plt

    rows = data["results"]
    series: dict = {}
    for r in rows:
        series.setdefault((r["contender"], r["mode"]), []).append(r)
    figures = {}
    pipelines = {k: rs for k, rs in series.items() if k[1] == "pipeline"}
    if pipelines:
        fig, ax = plt.subplots(figsize=(8, 5))
        for (name, _), rs in pipelines.items():
            xs = [r["batch_size"] for r in rs]
            ax.plot(xs, [r["p50_ms"] for r in rs], marker="o", label=f"{name} p50")
            ax.plot(xs, [r["p99_ms"] for r in rs], marker="x", linestyle="--", label=f"{name} p99")
        ax.set(xlabel="batch size", ylabel="latency per batch (ms)", title="Pipeline latency percentiles")
        figures["latency.png"] = fig
    if rows:
        fig, ax = plt.subplots(figsize=(8, 5))
        for (name, mode), rs in series.items():
            ax.plot([r["batch_size"] for r in rs], [r["throughput_per_s"] for r in rs], marker="o", label=f"{name} [{mode}]")
        ax.set(xlabel="batch size", ylabel="samples/s", title="Throughput")
        figures["throughput.png"] = fig
    speedups = [(f"{r['contender']}\n{r['mode']} b{r['batch_size']}", r["speedup_vs_baseline"])
                for r in rows if r.get("speedup_vs_baseline") is not None and not r.get("baseline")]
    if speedups:
        fig, ax = plt.subplots(figsize=(8, 5))
        ax.bar(range(len(speedups)), [v for _, v in speedups])
        ax.axhline(1.0, color="k", linewidth=0.8)
        ax.set_xticks(range(len(speedups)), [k for k, _ in speedups], fontsize=6, rotation=60, ha="right")
        ax.set(ylabel="x PyTorch eager (samples/s)", title="Speedup over PyTorch eager FP32 (same run)")
        figures["speedup.png"] = fig
    entries = [(f"{n} b{b}", t) for n, per in data["breakdown_ms"].items() for b, t in per.items()]
    if entries:
        fig, ax = plt.subplots(figsize=(8, 5))
        bottoms = np.zeros(len(entries))
        for part in _PARTS:
            vals = np.array([t.get(part, 0.0) for _, t in entries])
            ax.bar(range(len(entries)), vals, bottom=bottoms, label=part)
            bottoms += vals
        measured = [(i, t["pipeline_p50_ms"]) for i, (_, t) in enumerate(entries) if t.get("pipeline_p50_ms") is not None]
        if measured:
            ax.scatter([i for i, _ in measured], [v for _, v in measured], marker="_", s=400, color="k", zorder=3,
                       label="pipeline p50 (measured)")
        ax.set_xticks(range(len(entries)), [e[0] for e in entries], fontsize=6, rotation=60, ha="right")
        ax.set(ylabel="ms per batch", title="Where the time goes (stages of Engine.predict)")
        figures["breakdown.png"] = fig
    return figures


def _served_figures(data: dict) -> dict:
    import matplotlib.pyplot as plt

    from fusionrt.triton.repository import ENSEMBLE  # its own statistics sum its steps': the composing models are plotted

    closed = [(level["concurrency"], r, level) for r, level in zip(data["results"], data["levels"]) if "concurrency" in level]
    if not closed:
        return {}
    xs = [c for c, _, _ in closed]
    figures = {}
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(xs, [r["throughput_per_s"] for _, r, _ in closed], marker="o", label=f"{data['protocol']} client, single-item requests")
    ax.set(xlabel="concurrency (requests in flight)", ylabel="requests/s (= items/s)", title="Served throughput (closed loop)")
    ax.set_xticks(xs)
    figures["throughput.png"] = fig
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, style in (("p50_ms", "-"), ("p90_ms", "--"), ("p99_ms", ":")):
        ax.plot(xs, [r[key] for _, r, _ in closed], marker="o", linestyle=style, label=key.split("_")[0])
    ax.set(xlabel="concurrency (requests in flight)", ylabel="latency per request (ms)", title="Served latency percentiles (client side)")
    ax.set_xticks(xs)
    figures["latency.png"] = fig
    models = sorted({m for _, _, level in closed for m in level.get("server", {})} - {ENSEMBLE})
    if models:
        fig, (queue, compute) = plt.subplots(1, 2, figsize=(11, 5), sharex=True)
        for model in models:
            points = [(c, level["server"][model]) for c, _, level in closed if model in level.get("server", {})]
            queue.plot([c for c, _ in points], [st["queue_ms_per_request"] for _, st in points], marker="o", label=model)
            compute.plot([c for c, _ in points], [st["compute_ms_per_request"] for _, st in points], marker="o", label=model)
        queue.set(xlabel="concurrency (requests in flight)", ylabel="ms per request", title="Queue time per model (Triton statistics)")
        compute.set(xlabel="concurrency (requests in flight)", ylabel="ms per request", title="Compute time per model (Triton statistics)")
        queue.set_xticks(xs)
        figures["server_time.png"] = fig
    return figures
