"""The README's results table (issue 27.7): per contender, p50 and p99 at batch 1 and throughput
at the throughput batch (8 by default), model only and pipeline, on the small photographs and on
camera-size JPEGs, from the rows of :func:`fusionrt.bench.runner.time_case` over several runs,
as markdown with the CPU, date and commit of the run (``benchmarks/openvino_peers.py --markdown``).

A row the runner's rules deny (fewer than the minimum rounds, or a pipeline faster than its own
model: :func:`fusionrt.bench.runner.check_results`) keeps its times, marked, and gets no ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from fusionrt.bench.runner import Result
from fusionrt.errors import InputError

INPUT_TITLES = {"photos": "small photographs", "camera": "camera-size"}


@dataclass(frozen=True)
class TableMachine:
    """Where and when the table's numbers were measured.

    Attributes:
        cpu: the CPU (:func:`fusionrt.cpu.cpu_description`).
        date: UTC date of the run, ``YYYY-MM-DD``.
        commit: ``git rev-parse --short HEAD`` of the code that ran (with ``+changes`` for a
            working tree that differs from it).
        threads: inference threads of every contender.
        load_average: the 1-minute load average when the run ended (``os.getloadavg()[0]``).
        command: the command that made the table.
    """

    cpu: str
    date: str
    commit: str
    threads: int
    load_average: float
    command: str


def table_columns(throughput_batch: int, inputs: Sequence[str]) -> list[tuple[str, str, int]]:
    """The table's columns as ``(mode, inputs, batch_size)``: latency at batch 1, then throughput
    at ``throughput_batch``; model only on the small photographs, the pipeline on each input set."""
    cases = [("model", "photos")] + [("pipeline", name) for name in inputs]
    return [(mode, name, batch) for batch in (1, throughput_batch) for mode, name in cases]


def median_over_runs(runs: Sequence[Sequence[Result]]) -> list[Result]:
    """One row per (contender, mode, inputs, batch size) with the median over runs of its mean,
    p50, p90, p95, p99, throughput and ratios, and the fewest rounds of any run. A ratio that any
    run denied (``None``) is denied; a row that any run found not reportable is not reportable.

    Raises:
        InputError: no runs.
    """
    if not runs:
        raise InputError("no benchmark runs to take the median of (--runs must be >= 1)")
    groups: dict[tuple, list[Result]] = {}
    for rows in runs:
        for r in rows:
            groups.setdefault((r.contender, r.mode, r.inputs, r.batch_size), []).append(r)
    out = []
    for rows in groups.values():
        def med(attr: str):
            values = [getattr(r, attr) for r in rows]
            return None if any(v is None for v in values) else float(np.median(values))

        times = {a: med(a) for a in ("mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "throughput_per_s")}
        notes = sorted({n for r in rows for n in r.notes})
        out.append(replace(rows[0], iterations=min(r.iterations for r in rows), **times, notes=notes,
                           speedup_vs_baseline=med("speedup_vs_baseline"), speedup_vs_peer=med("speedup_vs_peer"),
                           reportable=all(r.reportable for r in rows)))
    return out


def markdown_table(rows: Sequence[Result], machine: TableMachine, runs: int, min_samples: int,
                   agreement: dict[str, float] | None = None, agreement_examples: int = 0) -> str:
    """The table as markdown: a line naming the machine, date, commit and command, the table (one
    line per contender, in the order of ``rows``), a line of notes, and a line naming the denied
    rows and why.

    Args:
        rows: :func:`median_over_runs` rows; the peer is the row with ``reference_peer``.
        machine: where and when they were measured.
        runs: how many runs the medians are over.
        min_samples: the rounds a row needs for a ratio (:data:`fusionrt.bench.runner.MIN_SAMPLES`).
        agreement: contender name -> top-1 agreement with PyTorch FP32 (fraction), or ``None``.
        agreement_examples: how many held-out examples the agreement is over.

    Raises:
        InputError: no rows at batch 1 or no row at a larger batch.
    """
    batches = sorted({r.batch_size for r in rows})
    if not rows or batches[0] != 1 or len(batches) < 2:
        raise InputError(f"the table needs rows at batch 1 and at a larger batch, got batch sizes {batches}")
    throughput_batch = batches[-1]
    inputs = [name for name in INPUT_TITLES if any(r.inputs == name and r.mode == "pipeline" for r in rows)]
    columns = table_columns(throughput_batch, inputs)
    cells = {(r.contender, r.mode, r.inputs, r.batch_size): r for r in rows}
    names = list(dict.fromkeys(r.contender for r in rows))
    peer = next((r.contender for r in rows if r.reference_peer), "the peer")
    titles = [f"{'model' if mode == 'model' else 'pipeline, ' + INPUT_TITLES[name]}" for mode, name, _ in columns]
    head = ([f"batch 1 p50 / p99 ms: {t}" if b == 1 else f"batch {b} samples/s (x peer): {t}" for (_, _, b), t in zip(columns, titles)]
            + (["top-1 agreement"] if agreement else []))
    lines = [
        f"Measured {machine.date} at commit {machine.commit} on {machine.cpu}, {machine.threads} threads, load average "
        f"{machine.load_average:.1f}; median over {runs} run(s) of interleaved rounds (>= {min(r.iterations for r in rows)} "
        f"per contender and column; a ratio needs {min_samples}); peer (x 1.00): {peer}. `{machine.command}`",
        "",
        "| contender | " + " | ".join(head) + " |",
        "|---" * (len(head) + 1) + "|",
    ]
    denied = []
    for name in names:
        row = [name]
        for mode, inp, batch in columns:
            r = cells.get((name, mode, inp, batch))
            row.append(_cell(r, batch == 1))
            if r is not None and not r.reportable:
                denied.append(f"{name} [{mode}, {INPUT_TITLES[inp]}, batch {batch}]: " + ", ".join(r.notes))
        if agreement:
            row.append(f"{agreement[name]:.1%}" if name in agreement else "-")
        lines.append("| " + " | ".join(row) + " |")
    notes = ["x peer: the median over rounds of the paired ratio peer ms / contender ms (not the ratio of the "
             "samples/s shown, which are batch / p50); p99 over few rounds is close to the slowest round."]
    if agreement:
        notes.append(f"Top-1 agreement with PyTorch FP32 on {agreement_examples} held-out examples.")
    lines += ["", " ".join(notes)]
    if denied:
        lines += ["", "Marked `*`, not a result (no ratio, no plot point): " + "; ".join(denied) + "."]
    return "\n".join(lines) + "\n"


def _cell(r: Result | None, latency: bool) -> str:
    """``p50 / p99`` ms at batch 1, ``samples/s (ratio x)`` at the throughput batch; ``-`` where
    the contender has no such mode, ``*`` after a row that is not a result."""
    if r is None or not r.iterations:
        return "-"
    mark = "" if r.reportable else " *"
    if latency:
        return f"{r.p50_ms:.1f} / {r.p99_ms:.1f}{mark}"
    ratio = "no ratio" if r.speedup_vs_peer is None else f"{r.speedup_vs_peer:.2f}x"
    return f"{r.throughput_per_s:.1f} ({ratio}){mark}"
