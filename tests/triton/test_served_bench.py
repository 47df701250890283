"""A short served benchmark against the test server."""

import json

from PIL import Image

from fusionrt.bench.served import run_served_benchmark


def test_short_served_benchmark(triton_server, tmp_path):
    data = run_served_benchmark(triton_server.grpc_url, str(tmp_path), concurrency=(1, 4), request_rate=20.0,
                                window_s=0.5, max_windows=4, admin_key=triton_server.admin_key)
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
    assert data["protocol"] == "grpc"
    # issue 19.2: plots against concurrency with data in them; none without data (no speedup, no breakdown)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["latency.png", "server_time.png", "throughput.png"]
    assert "Plots against the closed-loop concurrency: latency.png, server_time.png, throughput.png" in md
    for name in ("latency.png", "server_time.png", "throughput.png"):
        with Image.open(tmp_path / name) as img:
            img.verify()
    from fusionrt.bench.report import report_figures

    figures = report_figures(saved)
    closed = saved["results"][:2]  # the Poisson level has no concurrency
    (ax,) = figures["throughput.png"].axes
    assert "concurrency" in ax.get_xlabel()
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1, 4] and list(line.get_ydata()) == [r["throughput_per_s"] for r in closed]
    (ax,) = figures["latency.png"].axes
    assert "concurrency" in ax.get_xlabel()
    # one line per percentile (line style; the legend names them through proxy artists)
    assert [list(ln.get_ydata()) for ln in ax.get_lines()] == [[r[f"{p}_ms"] for r in closed] for p in ("p50", "p90", "p99")]
    queue, compute = figures["server_time.png"].axes
    assert "concurrency" in queue.get_xlabel() and "concurrency" in compute.get_xlabel()
    models = {ln.get_label(): ln for ln in compute.get_lines()}
    assert set(models) == {"preprocess", "text_encoder", "image_encoder", "fusion_head", "postprocess"}  # not the ensemble
    assert list(models["text_encoder"].get_xdata()) == [1, 4]
    assert list(models["text_encoder"].get_ydata()) == [saved["levels"][i]["server"]["text_encoder"]["compute_ms_per_request"] for i in (0, 1)]
    assert all(y > 0 for y in models["text_encoder"].get_ydata())
    assert [ln.get_label() for ln in queue.get_lines()] == list(models)
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
