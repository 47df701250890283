"""benchmarks/table.py: the README's table from the result files of one run_all.sh run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "table.py"


def load_table():
    spec = importlib.util.spec_from_file_location("benchmarks_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.table


def result(contender, mode, batch, p50, p99):
    return {"contender": contender, "mode": mode, "batch_size": batch, "p50_ms": p50, "p99_ms": p99}


def test_table_reads_the_four_result_files(tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "export.json").write_text(json.dumps({"ratios": {
        "int8_model_vs_pytorch": 4.0, "int8_pipeline_vs_pytorch": 3.0, "fp32_model_vs_pytorch": 1.5,
        "fp16_model_vs_pytorch": 1.0, "text_fused_vs_unfused_seq16": 1.03, "text_fused_vs_unfused_seq64": 0.95}}))
    (tmp_path / "engine.json").write_text(json.dumps({"ratios": {
        "overhead_vs_ort": 0.08, "resize_vs_ort": 0.25, "decode_pool_vs_serial": 1.6,
        "predict_pool_vs_serial": 1.25, "batching_engine_vs_direct": 1.1}}))
    results = {
        "in-process direct (16 callers)": {"items_per_s": 70.0, "p50_ms": 200.0, "p99_ms": 400.0},
        "in-process BatchingEngine (16 callers)": {"items_per_s": 80.0, "p50_ms": 190.0, "p99_ms": 230.0},
        "served http, dynamic batching on (concurrency 8)": {"items_per_s": 64.0, "p50_ms": 120.0, "p99_ms": 180.0},
        "served grpc, dynamic batching on (concurrency 8)": {"items_per_s": 62.0, "p50_ms": 125.0, "p99_ms": 190.0},
        "served http, dynamic batching off (concurrency 8)": {"items_per_s": 60.0, "p50_ms": 130.0, "p99_ms": 170.0},
    }
    (tmp_path / "served.json").write_text(json.dumps({"concurrency": 8, "protocol": "http", "results": results, "ratios": {
        "served_vs_best_inprocess": 0.795, "batching_on_vs_off": 64 / 60, "served_grpc_vs_best_inprocess": 0.775}}))
    (tmp_path / "report" / "results.json").write_text(json.dumps({
        "machine": {"date": "2026-11-30", "cpu": "AMD EPYC", "cores": 2, "threads": 2},
        "peak_gflops": 200.0, "peak_gflops_by_kernel": {"matmul": 150.0, "conv": 200.0},
        "results": [result("int8 (fp32/int8)", "pipeline", 1, 20.0, 30.0), result("int8 (fp32/int8)", "model", 1, 10.0, 12.0)],
        "roofline": {"fp32 (fp32)": {"8": {"image_encoder": {"percent_of_peak": 90.0, "achieved_gflops": 180.0}}}},
    }))
    text = load_table()(tmp_path, elapsed_s=300)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["INT8 vs PyTorch eager FP32, batch 8, model only (`Engine.run`)"] == "4.00x"
    assert rows["INT8 batch 1, whole pipeline: p50 / p99 (p99/p50)"] == "20.0 / 30.0 ms (1.50)"
    assert rows["FP32 image encoder, batch 8: share of the measured peak"] == "90% (180 of 200 GFLOP/s)"
    assert rows["Served INT8 ensemble (python backend), HTTP client, concurrency 8, vs best in-process"].startswith("0.795x (64.0 vs 80.0 items/s")  # not "0.80x": a miss must not read as the target
    assert rows["The same through the gRPC client"] == "0.775x (62.0 items/s; p50 125 ms, p99 190 ms)"
    assert rows["Served, dynamic batching on vs off, concurrency 8"] == "1.067x (p99 180 vs 170 ms)"
    assert rows["Engine overhead (glue, tokenization, crop/normalize) vs time in ONNX Runtime, batch 8"].startswith("8.0%")
    assert "the run took 5.0 min" in text and "matmul 150, conv 200 GFLOP/s" in text
