"""A short served benchmark against the test server."""

import json

from PIL import Image

from fusionrt.bench.served import run_served_benchmark


def test_short_served_benchmark(triton_server, tmp_path):
    data = run_served_benchmark(triton_server.grpc_url, str(tmp_path), concurrency=(1, 4), request_rate=20.0,
                                window_s=0.5, max_windows=4)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["contender"] for r in saved["results"]] == ["served (concurrency 1)", "served (concurrency 4)", "served (Poisson 20/s)"]
    for r, level in zip(saved["results"], saved["levels"]):
        assert r["iterations"] > 0 and r["throughput_per_s"] > 0 and level["failures"] == 0
        assert r["p50_ms"] <= r["p99_ms"]
        assert "text_encoder" in level["server"] or any("encoder" in m for m in level["server"])
    closed = saved["levels"][1]
    assert 1 <= closed["windows"] <= 4 and len(closed["window_throughputs"]) == closed["windows"]
    enc = next(v for k, v in closed["server"].items() if k == "text_encoder")
    assert enc["inference_count"] >= enc["execution_count"] > 0 and enc["compute_ms_per_request"] > 0
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# fusionrt served benchmark") and f"at {triton_server.grpc_url} (grpc)" in md
    assert "| served (concurrency 4) | text_encoder |" in md and "GFLOP" not in md and "Roofline" not in md
    with Image.open(tmp_path / "throughput.png") as img:
        img.verify()
    assert data["protocol"] == "grpc"
