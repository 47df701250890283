"""The benchmark reports: results.json, results.csv, report.md and the PNG plots, for the
in-process benchmark (:func:`fusionrt.bench.runner.run_benchmark`) and the served one
(:func:`fusionrt.bench.served.run_served_benchmark`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fusionrt.bundle import GRAPHS
from fusionrt.errors import InputError
from fusionrt.utils import OutputKind, atomic_directory

# A report folder fusionrt wrote holds its results and their summary.
REPORT_OUTPUT = OutputKind("benchmark report", "--report", InputError,
                           ours=lambda p: (p / "results.json").is_file() and (p / "report.md").is_file())

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


def write_report(data: dict, report_dir: Path, overwrite: bool = False) -> None:
    """results.json, results.csv, report.md and the PNG plots that have data (:func:`report_figures`),
    written to ``report_dir`` through :func:`fusionrt.utils.atomic_directory` (:data:`REPORT_OUTPUT`).

    Raises:
        InputError: ``report_dir`` holds files fusionrt did not write, or a report without ``overwrite``.
    """
    with atomic_directory(report_dir, REPORT_OUTPUT, overwrite) as report:
        _write_files(data, report)


def _write_files(data: dict, report: Path) -> None:
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
        f"{m['date']} on {m['cpu']} ({m['cores']} cores), {m['threads']} threads, CPU only"
        + (f"; CPU flags: {', '.join(m['cpu_flags'])}." if m.get("cpu_flags") else "."),
        f"Versions: {', '.join(f'{k} {v}' for k, v in data['versions'].items())}.", "",
        "Inputs: " + "; ".join(f"*{k}*, {v}" for k, v in data["inputs"].items()) + ".", "",
        "A bundle's row is named `FOLDER (PRECISIONS)`: the bundle folder's name, then the precisions of its "
        "graphs, each once, sorted and joined by `/` (`int8 (fp32/int8)`: the folder `int8`, whose graphs are "
        "INT8 but one in FP32: static INT8 keeps the fusion head in FP32). *runs on* says, per graph, the "
        "runtime/provider (`engine.providers`) and the bundle precision. *model*: `Engine.run` on preprocessed "
        "tensors; *pipeline*: encoded photographs and captions to predictions.", "",
        f"How it is measured: the contenders of one case (inputs, mode, batch) run in interleaved rounds, one call "
        f"each per round, at least {data['min_samples']} rounds and more until {data['duration_s']:g} s per contender "
        "have passed. *samples/s* is the batch over the p50. *x PyTorch* and *x peer* are the median over the "
        "rounds of PyTorch eager FP32's (resp. the peer's: OpenVINO's default conversion, its pipeline as users "
        "write it) time over the row's, in the same round: > 1 is faster. A row with fewer than "
        f"{data['min_samples']} samples has no ratio and no plot point; a pipeline row faster than its own model "
        "row is flagged and not a result (see Warnings).", "",
        "| contender | inputs | mode | batch | samples | mean ms | p50 ms | p90 ms | p99 ms | samples/s | x PyTorch | x peer | "
        "max abs logit error vs PyTorch FP32 | runs on |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(_result_line(r))
    if data.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in data["warnings"]]
    if data.get("skipped"):
        lines += ["", "Not measured here:", ""] + [f"- {name}: {why}" for name, why in data["skipped"].items()]
    lines += _breakdown_lines(data["breakdown_ms"])
    lines += _roofline_lines(data)
    return lines


def _result_line(r: dict) -> str:
    """One row of the results table; a flagged row shows its times struck out and no ratio."""
    err = r.get("max_abs_logit_error")

    def ratio(key: str) -> str:
        value = r.get(key)
        return "-" if value is None else f"{value:.2f}x"

    if not r.get("reportable", True):
        why = "; ".join(r.get("notes", [])) or "not reportable"
        return (f"| {r['contender']} | {r.get('inputs', 'photos')} | {r['mode']} | {r['batch_size']} | {r['iterations']} | "
                f"flagged: {why} | | | | | - | - | {'' if err is None else f'{err:.2e}'} | {r.get('runs_on') or ''} |")
    spread = " (noisy)" if any(n.startswith("spread") for n in r.get("notes", [])) else ""
    return (f"| {r['contender']} | {r.get('inputs', 'photos')} | {r['mode']} | {r['batch_size']} | {r['iterations']} | "
            f"{r['mean_ms']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f}{spread} | {r['p99_ms']:.1f} | "
            f"{r['throughput_per_s']:.1f} | {ratio('speedup_vs_baseline')} | {ratio('speedup_vs_peer')} | "
            f"{'' if err is None else f'{err:.2e}'} | {r.get('runs_on') or ''} |")


def _roofline_lines(data: dict) -> list[str]:
    """The peaks table (theoretical and measured per precision) and the roofline rows."""
    lines = ["", "## Peaks", "",
             "Theoretical: cores x clock x operations per cycle per core of the CPU's fastest unit of that precision "
             "(a multiply-add is 2 operations; the clock is the highest the machine reports). Measured: the best of "
             "large GEMMs and convolutions in ONNX Runtime and OpenVINO at that precision, before and after the run. "
             "The roofline divides by the theoretical peak, or by the measured one where the theoretical is unknown "
             "or below it (a clock above the reported one).", "",
             "| precision | unit | ops/cycle/core | cores | clock GHz | theoretical G/s | measured G/s (kernel) | "
             "measured % of theoretical | source of ops/cycle |",
             "|---|---|---|---|---|---|---|---|---|"]
    for precision, p in data.get("peaks", {}).items():
        best = max(p["measured_gops"].items(), key=lambda kv: kv[1], default=None)
        theory, clock = p.get("theoretical_gops"), p.get("clock_ghz")
        lines.append(f"| {precision} | {p.get('unit') or '-'} | {p.get('ops_per_cycle') or '-'} | {p['cores']} | "
                     f"{'-' if clock is None else f'{clock:.2f}'} | "
                     f"{'-' if theory is None else f'{theory:.0f}'} | "
                     f"{'-' if best is None else f'{best[1]:.0f} ({best[0]})'} | "
                     f"{'-' if not (best and theory) else f'{100 * best[1] / theory:.0f}%'} | {p.get('source') or '-'} |")
    lines += ["", "## Roofline (FLOPs counted on the FP32 graph)", "",
              "Every graph of every benchmarked bundle, against the peak of the precision it runs in (INT8 graphs: "
              "int8; a float graph OpenVINO computes in bf16: bf16; FP16 graphs run float32 kernels on ONNX Runtime's "
              "CPU provider: fp32), named in *peak*. FLOPs per sample are those of the FP32 graph at the benchmark's "
              "sequence length (a benchmarked FP32 bundle's; without one, the bundle's own graph: the same operations, "
              "which quantization and FP16 change in arithmetic, not in count). *ms* is the graph's median alone "
              "(time breakdown).", "",
              "| contender | batch | graph | precision | runs on | GFLOP/sample | ms | G/s | peak | % of peak |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, per_batch in data["roofline"].items():
        for batch, graphs in per_batch.items():
            for g, r in graphs.items():
                head = f"| {name} | {batch} | {g} | {r.get('precision', '')} | {r.get('runs_on', '')} | "
                peak = r.get("peak_name", r.get("peak", "fp32"))
                if r["gflop_per_sample"]:
                    percent = r.get("percent_of_peak")
                    lines.append(head + f"{r['gflop_per_sample']:.2f} | {r['ms']:.1f} | {r['achieved_gflops']:.1f} | "
                                 f"{peak} | {'-' if percent is None else f'{percent:.1f}%'} |")
                else:
                    lines.append(head + f"not countable | {r['ms']:.1f} | - | {peak} | - |")
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
    """Write the figures of :func:`report_figures` as PNGs (100 dpi, legends kept in the file); a
    figure with no data is not written, and one left from an earlier report in the folder is removed."""
    import matplotlib.pyplot as plt

    figures = report_figures(data)
    for name in ALL_PLOTS:
        path = report / name
        if name in figures:
            figures[name].savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figures[name])
        elif path.is_file():
            path.unlink()


# Every plot a report may hold: in-process latency/throughput/speedup/breakdown against batch
# size; served latency/throughput/server_time against concurrency.
ALL_PLOTS = ("latency.png", "throughput.png", "speedup.png", "breakdown.png", "server_time.png")
# One colour and one marker per contender (12 of each, so no two contenders share both); one
# line style per percentile.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
           "#000000", "#e6ab02")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
PERCENTILE_STYLES = {"p50_ms": "-", "p90_ms": "-.", "p99_ms": "--"}


def report_figures(data: dict) -> dict:
    """The report's matplotlib figures that have data, by file name (not saved: see :func:`_plots`).

    In-process (``run_benchmark``), one panel per case (inputs and mode), against batch size,
    reportable rows only (:func:`fusionrt.bench.runner.check_results`): ``latency.png`` (p50
    and p99 per batch), ``throughput.png`` (samples/s), ``speedup.png`` (a row of panels for x
    PyTorch eager and one for x the peer, those with a reference in the run), ``breakdown.png`` (stages per batch, the measured
    pipeline p50 marked). Served (``run_served_benchmark``, ``data["benchmark"] == "served"``):
    ``throughput.png`` and ``latency.png`` (p50/p90/p99) against the closed-loop concurrency,
    ``server_time.png`` (queue and compute ms per request of each composing model against
    concurrency). The open-loop (Poisson) level has no concurrency: it is in report.md only.
    A contender keeps its colour and marker in every figure; legends sit outside the axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    return {SERVED: _served_figures, IN_PROCESS: _inprocess_figures}[_benchmark(data)](data)


def contender_styles(names) -> dict[str, dict]:
    """Name -> matplotlib ``color`` and ``marker``, in first-seen order (distinct pairs for up to 132)."""
    order = list(dict.fromkeys(names))
    return {n: {"color": COLOURS[i % len(COLOURS)], "marker": MARKERS[(i + i // len(COLOURS)) % len(MARKERS)]}
            for i, n in enumerate(order)}


def _legend_outside(fig, styles: dict, line_styles: dict | None = None) -> None:
    """One legend right of the axes: a line per contender (its colour and marker), then a grey
    line per line style (``label -> linestyle``)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="-", **style) for style in styles.values()]
    labels = list(styles)
    for label, ls in (line_styles or {}).items():
        handles.append(Line2D([], [], color="0.35", linestyle=ls))
        labels.append(label)
    fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)


def _panels(rows: list, ylabel: str, title: str, row_labels: tuple = ("",)):
    """A figure with one panel per case ``(inputs, mode)`` of ``rows`` (columns) and per entry of
    ``row_labels`` (rows, each prefixed to ``ylabel``), batch size on a log2 axis.

    Returns:
        ``(figure, {(row label, inputs, mode): axes})``.
    """
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r.get("inputs", "photos"), r["mode"]) for r in rows))
    fig, grid = plt.subplots(len(row_labels), len(cases), figsize=(4.2 * len(cases) + 3.2, 4.4 * len(row_labels)), squeeze=False,
                             layout="constrained")
    batches = sorted({r["batch_size"] for r in rows})
    axes = {}
    for i, label in enumerate(row_labels):
        for j, (inputs, mode) in enumerate(cases):
            ax = axes[(label, inputs, mode)] = grid[i][j]
            ax.set_xscale("log", base=2)
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.minorticks_off()
            ax.set_xlim(batches[0] / 1.4, batches[-1] * 1.4)  # the same batch axis in every panel
            ax.set(xlabel="batch size", ylabel=f"{label}{ylabel}" if j == 0 else "", title=f"{mode}, {inputs}")
            ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(title)
    return fig, axes


def _inprocess_figures(data: dict) -> dict:
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    rows = [r for r in data["results"] if r.get("reportable", True)]
    styles = contender_styles(r["contender"] for r in data["results"])
    series: dict = {}
    for r in rows:
        series.setdefault((r.get("inputs", "photos"), r["mode"], r["contender"]), []).append(r)
    figures = {}
    if rows:
        fig, axes = _panels(rows, "latency per batch (ms, log scale)", "Latency percentiles against batch size")
        for (inputs, mode, name), rs in series.items():
            for key in ("p50_ms", "p99_ms"):
                axes[("", inputs, mode)].plot([r["batch_size"] for r in rs], [r[key] for r in rs], linestyle=PERCENTILE_STYLES[key],
                                          **styles[name])
        for ax in axes.values():
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
        _legend_outside(fig, {n: styles[n] for n in dict.fromkeys(k[2] for k in series)}, {"p50": "-", "p99": "--"})
        figures["latency.png"] = fig
        fig, axes = _panels(rows, "samples/s (batch / p50)", "Throughput against batch size")
        for (inputs, mode, name), rs in series.items():
            axes[("", inputs, mode)].plot([r["batch_size"] for r in rs], [r["throughput_per_s"] for r in rs], **styles[name])
        _legend_outside(fig, {n: styles[n] for n in dict.fromkeys(k[2] for k in series)})
        figures["throughput.png"] = fig
    labels = {"speedup_vs_baseline": "x PyTorch eager FP32: ", "speedup_vs_peer": "x peer (OpenVINO default, as users write it): "}
    present = tuple(k for k in labels if any(r.get(k) is not None for r in rows))
    if present:
        # one row of panels per reference, whose own rows are the line at 1
        fig, axes = _panels(rows, "speed ratio", "Speed against the references (median of paired rounds; > 1 is faster)",
                            tuple(labels[k] for k in present))
        shown = {}
        for (inputs, mode, name), rs in series.items():
            for key in present:
                points = [(r["batch_size"], r[key]) for r in rs if r.get(key) is not None
                          and not (r["baseline"] if key == "speedup_vs_baseline" else r.get("reference_peer"))]
                if points:
                    axes[(labels[key], inputs, mode)].plot(*zip(*points), **styles[name])
                    shown[name] = styles[name]
        for ax in axes.values():
            ax.axhline(1.0, color="k", linewidth=0.8)
        _legend_outside(fig, shown)
        figures["speedup.png"] = fig
    breakdown = _breakdown_figure(data)
    if breakdown is not None:
        figures["breakdown.png"] = breakdown
    return figures


def _breakdown_figure(data: dict):
    """Stacked stage times per contender and batch, the measured pipeline p50 marked; ``None``
    without a breakdown."""
    import matplotlib.pyplot as plt

    entries = [(f"{n} b{b}", t) for n, per in data["breakdown_ms"].items() for b, t in per.items()]
    if not entries:
        return None
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * len(entries) + 5), 5.5), layout="constrained")
    bottoms = np.zeros(len(entries))
    for part in _PARTS:
        vals = np.array([t.get(part, 0.0) for _, t in entries])
        ax.bar(range(len(entries)), vals, bottom=bottoms, label=part)
        bottoms += vals
    measured = [(i, t["pipeline_p50_ms"]) for i, (_, t) in enumerate(entries) if t.get("pipeline_p50_ms") is not None]
    if measured:
        ax.scatter([i for i, _ in measured], [v for _, v in measured], marker="_", s=400, color="k", zorder=3,
                   label="pipeline p50 (measured)")
    ax.set_xticks(range(len(entries)), [e[0] for e in entries], fontsize=8, rotation=45, ha="right")
    ax.set(ylabel="ms per batch", title="Where the time goes (stages of Engine.predict, small photographs)")
    fig.legend(loc="outside right center", fontsize=8, frameon=False)
    return fig


def _served_figures(data: dict) -> dict:
    import matplotlib.pyplot as plt

    from fusionrt.triton.repository import ENSEMBLE  # its own statistics sum its steps': the composing models are plotted

    closed = [(level["concurrency"], r, level) for r, level in zip(data["results"], data["levels"]) if "concurrency" in level]
    if not closed:
        return {}
    xs = [c for c, _, _ in closed]
    name = f"{data['protocol']} client, single-item requests"
    style = contender_styles([name])
    figures = {}
    fig, ax = plt.subplots(figsize=(8.5, 4.6), layout="constrained")
    ax.plot(xs, [r["throughput_per_s"] for _, r, _ in closed], **style[name])
    ax.set(xlabel="concurrency (requests in flight)", ylabel="requests/s (= items/s)", title="Served throughput (closed loop)")
    ax.set_xticks(xs)
    _legend_outside(fig, style)
    figures["throughput.png"] = fig
    fig, ax = plt.subplots(figsize=(8.5, 4.6), layout="constrained")
    for key, ls in PERCENTILE_STYLES.items():
        ax.plot(xs, [r[key] for _, r, _ in closed], linestyle=ls, **style[name])
    ax.set(xlabel="concurrency (requests in flight)", ylabel="latency per request (ms)", title="Served latency percentiles (client side)")
    ax.set_xticks(xs)
    _legend_outside(fig, style, {k.split("_")[0]: ls for k, ls in PERCENTILE_STYLES.items()})
    figures["latency.png"] = fig
    models = sorted({m for _, _, level in closed for m in level.get("server", {})} - {ENSEMBLE})
    if models:
        styles = contender_styles(models)
        fig, (queue, compute) = plt.subplots(1, 2, figsize=(13, 4.6), sharex=True, layout="constrained")
        for model in models:
            points = [(c, level["server"][model]) for c, _, level in closed if model in level.get("server", {})]
            queue.plot([c for c, _ in points], [st["queue_ms_per_request"] for _, st in points], label=model, **styles[model])
            compute.plot([c for c, _ in points], [st["compute_ms_per_request"] for _, st in points], label=model, **styles[model])
        queue.set(xlabel="concurrency (requests in flight)", ylabel="ms per request", title="Queue time per model (Triton statistics)")
        compute.set(xlabel="concurrency (requests in flight)", ylabel="ms per request", title="Compute time per model (Triton statistics)")
        queue.set_xticks(xs)
        _legend_outside(fig, styles)
        figures["server_time.png"] = fig
    return figures
