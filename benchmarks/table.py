"""The README's performance table, from the files one run of benchmarks/run_all.sh writes.

Usage: python benchmarks/table.py DIR [--elapsed-s S]

Reads DIR/export.json (export_speedups.py), DIR/engine.json (engine_runtime.py),
DIR/served.json (served_vs_inprocess.py) and DIR/report/results.json (fusionrt bench); prints a
markdown table of the numbers the issues target, each with its target, and writes it to
DIR/table.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _result(results: list[dict], contender: str, mode: str, batch: int) -> dict:
    for r in results:
        if r["contender"].startswith(contender) and r["mode"] == mode and r["batch_size"] == batch:
            return r
    raise SystemExit(f"results.json has no {contender!r} {mode} at batch {batch}")


def table(folder: Path, elapsed_s: float | None = None) -> str:
    export = json.loads((folder / "export.json").read_text())
    engine = json.loads((folder / "engine.json").read_text())
    served = json.loads((folder / "served.json").read_text())
    bench = json.loads((folder / "report" / "results.json").read_text())
    m = bench["machine"]
    x, e, s = export["ratios"], engine["ratios"], served["ratios"]
    int8_1 = _result(bench["results"], "int8", "pipeline", 1)
    int8_1m = _result(bench["results"], "int8", "model", 1)
    roof = bench["roofline"]["fp32 (fp32)"]["8"]["image_encoder"]
    r = served["results"]
    conc, protocol = served["concurrency"], served["protocol"]
    other = "grpc" if protocol == "http" else "http"
    shown = {"http": "HTTP", "grpc": "gRPC"}
    on, off = r[f"served {protocol}, dynamic batching on (concurrency {conc})"], r[f"served {protocol}, dynamic batching off (concurrency {conc})"]
    on_other = r[f"served {other}, dynamic batching on (concurrency {conc})"]
    best_name = max((k for k in r if k.startswith("in-process")), key=lambda k: r[k]["items_per_s"])
    best = r[best_name]
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in bench.get("peak_gflops_by_kernel", {}).items())
    took = f"; the run took {elapsed_s / 60:.1f} min" if elapsed_s else ""
    rows = [
        ("INT8 vs PyTorch eager FP32, batch 8, model only (`Engine.run`)", f"{x['int8_model_vs_pytorch']:.2f}x", ">= 3.0x"),
        ("INT8 vs PyTorch eager FP32, batch 8, whole pipeline (decode to probabilities)", f"{x['int8_pipeline_vs_pytorch']:.2f}x", ">= 1.7x"),
        *([("INT8-dynamic (text encoder quantized per batch) vs PyTorch eager FP32, batch 8, model only / pipeline",
            f"{x['int8_dynamic_model_vs_pytorch']:.2f}x / {x['int8_dynamic_pipeline_vs_pytorch']:.2f}x", "")]
          if "int8_dynamic_model_vs_pytorch" in x else []),
        ("FP32 bundle vs PyTorch eager FP32, batch 8, model only", f"{x['fp32_model_vs_pytorch']:.2f}x", ""),
        ("INT8 batch 1, whole pipeline: p50 / p99 (p99/p50)",
         f"{int8_1['p50_ms']:.1f} / {int8_1['p99_ms']:.1f} ms ({int8_1['p99_ms'] / int8_1['p50_ms']:.2f})", ""),
        ("INT8 batch 1, model only: p50 / p99 (p99/p50)",
         f"{int8_1m['p50_ms']:.1f} / {int8_1m['p99_ms']:.1f} ms ({int8_1m['p99_ms'] / int8_1m['p50_ms']:.2f})", ""),
        ("FP32 image encoder, batch 8: share of the measured peak",
         f"{roof['percent_of_peak']:.0f}% ({roof['achieved_gflops']:.0f} of {bench['peak_gflops']:.0f} GFLOP/s)", ">= 70%"),
        (f"Served INT8 ensemble (python backend), {shown[protocol]} client, concurrency {conc}, vs best in-process",
         f"{s['served_vs_best_inprocess']:.3f}x ({on['items_per_s']:.1f} vs {best['items_per_s']:.1f} items/s; "
         f"served p50 {on['p50_ms']:.0f} ms, p99 {on['p99_ms']:.0f} ms)", ">= 0.8x"),
        (f"The same through the {shown[other]} client",
         f"{s[f'served_{other}_vs_best_inprocess']:.3f}x ({on_other['items_per_s']:.1f} items/s; "
         f"p50 {on_other['p50_ms']:.0f} ms, p99 {on_other['p99_ms']:.0f} ms)", ""),
        (f"Served, dynamic batching on vs off, concurrency {conc}",
         f"{s['batching_on_vs_off']:.3f}x (p99 {on['p99_ms']:.0f} vs {off['p99_ms']:.0f} ms)", ">= 0.95x"),
        ("FP32 text encoder, fused vs unfused graph, batch 8, seq 16 / 64",
         f"{x['text_fused_vs_unfused_seq16']:.2f}x / {x['text_fused_vs_unfused_seq64']:.2f}x", ">= 1.1x"),
        ("Engine overhead (glue, tokenization, crop/normalize) vs time in ONNX Runtime, batch 8",
         f"{100 * e['overhead_vs_ort']:.1f}% (resize, timed with decoding: {100 * e['resize_vs_ort']:.0f}%)", "<= 10%"),
        ("Decoding + resizing 8 photos, thread pool vs serial", f"{e['decode_pool_vs_serial']:.2f}x", ">= 1.5x"),
        ("`predict` on 8 photos, pooled vs serial decoding", f"{e['predict_pool_vs_serial']:.2f}x", ">= 1.2x"),
        ("BatchingEngine vs direct `predict`, 16 single-item callers", f"{e['batching_engine_vs_direct']:.2f}x", ">= 1.0x"),
    ]
    lines = [
        f"One run of `benchmarks/run_all.sh` on {m['date']}: {m['cpu']}, {m['cores']} cores, {m['threads']} threads, "
        f"CPU only (no GPU number here){took}. Peak for the roofline: best of ONNX Runtime float32 {peaks} GFLOP/s.",
        "",
        "| number | measured | target |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--elapsed-s", type=float, default=None)
    args = parser.parse_args()
    text = table(args.folder, args.elapsed_s)
    (args.folder / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
