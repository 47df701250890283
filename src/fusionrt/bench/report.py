"""The benchmark reports: results.json, results.csv, report.md and the PNG plots, for the
in-process benchmark (:func:`fusionrt.bench.runner.run_benchmark`) and the served one
(:func:`fusionrt.bench.served.run_served_benchmark`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fusionrt.bundle import GRAPHS


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
        + " GFLOP/s, measured before and after the run"
        + "".join(f"; {k} peak {v:.0f} G{'OP' if k == 'int8' else 'FLOP'}/s"
                  for k, v in data.get("peak_gflops_by_precision", {}).items() if k != "fp32")
        + (f". CPU flags: {', '.join(m['cpu_flags'])}." if m.get("cpu_flags") else "."),
        f"Versions: {', '.join(f'{k} {v}' for k, v in data['versions'].items())}.", "",
        "| contender | mode | batch | mean ms | p50 ms | p90 ms | p95 ms | p99 ms | samples/s | max abs logit error vs PyTorch FP32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = r.get("max_abs_logit_error")
        lines.append(f"| {r['contender']} | {r['mode']} | {r['batch_size']} | {r['mean_ms']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['throughput_per_s']:.1f} | "
                     f"{'' if err is None else f'{err:.2e}'} |")
    if data.get("skipped"):
        lines += ["", "Not measured here:", ""] + [f"- {name}: {why}" for name, why in data["skipped"].items()]
    lines += ["", "## Time breakdown (ms per batch, median)", "", "| contender | batch | " + " | ".join(_PARTS) + " |",
              "|---|---|" + "---|" * len(_PARTS)]
    for name, per_batch in data["breakdown_ms"].items():
        for batch, t in per_batch.items():
            lines.append(f"| {name} | {batch} | " + " | ".join(f"{t.get(p, 0):.1f}" for p in _PARTS) + " |")
    lines += ["", "## Roofline (FLOPs counted on the FP32 graph)", "",
              "Each row against the measured peak of the precision its graph runs in (INT8 graphs: the INT8 "
              "MatMul peak; FP16 graphs run float32 kernels on ONNX Runtime's CPU provider).", "",
              "| contender | batch | graph | GFLOP/sample | GFLOP/s | peak | % of peak |", "|---|---|---|---|---|---|---|"]
    for name, per_batch in data["roofline"].items():
        for batch, graphs in per_batch.items():
            for g, r in graphs.items():
                if r["gflop_per_sample"]:
                    lines.append(f"| {name} | {batch} | {g} | {r['gflop_per_sample']:.2f} | {r['achieved_gflops']:.1f} | "
                                 f"{r.get('peak', 'fp32')} | {r['percent_of_peak']:.0f}% |")
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
    base = {(r["mode"], r["batch_size"]): r["throughput_per_s"] for r in rows if r.get("baseline")}
    labels, values = [], []
    for r in rows:
        ref = base.get((r["mode"], r["batch_size"]))
        if ref and not r.get("baseline"):
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
