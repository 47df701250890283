"""The README's results table (issue 27.7) from rows the runner measured on the tiny checkpoint:
latency at batch 1 and throughput at a larger batch, model and pipeline, small photographs and
(smaller) camera-like JPEGs, with the machine line; the minimum-sample rule still denies ratios."""

from __future__ import annotations

import copy

import pytest

from fusionrt.bench.runner import benchmark_cases, check_results, engine_contender, pytorch_contender, time_case
from fusionrt.bench.table import TableMachine, markdown_table, median_over_runs, table_columns
from fusionrt.cpu import CPUInfo, describe_cpu

ROUNDS = 3  # per case and run: enough for the table's shape, far below MIN_SAMPLES
MACHINE = TableMachine("Test CPU (family 6 model 207; amx_int8)", "2026-12-06", "abc1234", 1, 0.5, "python bench.py")


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, tiny_bundle, tmp_path_factory):
    """Two runs of every case at batch 1 and 2 with PyTorch eager (the baseline), OpenVINO's
    default (the peer) and the tiny bundle, ``ROUNDS`` rounds each."""
    from fusionrt import Engine
    from fusionrt.samples import make_camera_photos

    pytest.importorskip("openvino")
    from fusionrt.bench.peers import openvino_peer_contender

    camera = make_camera_photos(tmp_path_factory.mktemp("camera"), 2, size=(640, 480))
    engine = Engine.from_bundle(tiny_bundle, intra_op_num_threads=1)
    contenders = [pytorch_contender(tiny_checkpoint, 1), openvino_peer_contender(tiny_checkpoint, 1),
                  engine_contender("fusionrt fp32", engine, breakdown=False)]
    cases = benchmark_cases([1, 2], ["photos", "camera"], camera)
    yield [[row for case in cases for row in time_case(contenders, case, 0.0, ROUNDS)] for _ in range(2)]
    engine.close()


def _table(runs, min_samples: int) -> tuple[list, str]:
    runs = copy.deepcopy(runs)
    for rows in runs:
        check_results(rows, min_samples)
    median = median_over_runs(runs)
    return median, markdown_table(median, MACHINE, len(runs), min_samples, {"pytorch eager (fp32)": 1.0}, 16)


def test_table_has_latency_and_throughput_columns_and_a_row_per_contender(runs):
    median, text = _table(runs, ROUNDS)
    lines = text.splitlines()
    assert lines[0].startswith("Measured 2026-12-06 at commit abc1234 on Test CPU (family 6 model 207; amx_int8), 1 threads")
    assert "median over 2 run(s)" in lines[0] and "`python bench.py`" in lines[0]
    # the rounds the rows have, not the rounds a ratio needs (it said '>= 10' of rows with 3)
    fewest = min(r.iterations for r in median)
    assert f"interleaved rounds (>= {fewest} per contender and column; a ratio needs {ROUNDS})" in lines[0]
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header == ["contender",
                      "batch 1 p50 / p99 ms: model", "batch 1 p50 / p99 ms: pipeline, small photographs",
                      "batch 1 p50 / p99 ms: pipeline, camera-size",
                      "batch 2 samples/s (x peer): model", "batch 2 samples/s (x peer): pipeline, small photographs",
                      "batch 2 samples/s (x peer): pipeline, camera-size", "top-1 agreement"]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[4:7]]
    names = ["pytorch eager (fp32)", median[1].contender, "fusionrt fp32"]
    assert median[1].contender.startswith("openvino default (from pytorch")
    assert [row[0] for row in body] == names
    assert lines[7] == "" and lines[8].startswith("x peer: the median over rounds of the paired ratio")
    assert lines[8].endswith(" Top-1 agreement with PyTorch FP32 on 16 held-out examples.")
    rows = {(r.contender, r.mode, r.inputs, r.batch_size): r for r in median}
    for name, row in zip(names, body):
        for (mode, inputs, batch), cell in zip(table_columns(2, ["photos", "camera"]), row[1:7]):
            r = rows[(name, mode, inputs, batch)]
            if batch == 1:  # "p50 / p99", every sample real
                p50, p99 = (float(x) for x in cell.removesuffix(" *").split(" / "))
                assert 0 < p50 <= p99 and (p50, p99) == (round(r.p50_ms, 1), round(r.p99_ms, 1))
            else:  # "samples/s (ratio x)"
                assert float(cell.split(" (")[0]) == round(r.throughput_per_s, 1) > 0
            # a noisy tiny-model round can make a pipeline faster than its model: such a row is
            # marked and listed (check_results), never given a ratio
            if r.reportable:
                assert not cell.endswith("*") and (batch == 1 or cell.endswith(f"({r.speedup_vs_peer:.2f}x)"))
            else:
                assert cell.endswith(" *") and f"{name} [{mode}" in text and "below its model p50" in text
                assert batch == 1 or cell.endswith("(no ratio) *")
    assert body[1][4] == f"{rows[(names[1], 'model', 'photos', 2)].throughput_per_s:.1f} (1.00x)"  # the peer against itself
    assert body[0][7] == "100.0%" and body[1][7] == "-"


def test_median_over_runs_takes_each_rows_median_and_fewest_rounds(runs):
    median = median_over_runs(runs)
    assert len(median) == len(runs[0]) == 3 * 6  # 3 contenders x (model, pipeline, camera) x (batch 1, 2)
    for row in median:
        same = [r for rows in runs for r in rows if (r.contender, r.mode, r.inputs, r.batch_size)
                == (row.contender, row.mode, row.inputs, row.batch_size)]
        assert row.p50_ms == pytest.approx(sum(r.p50_ms for r in same) / 2)  # the median of two is their mean
        assert row.p99_ms >= row.p50_ms and row.iterations == ROUNDS
        assert row.throughput_per_s == pytest.approx(sum(r.throughput_per_s for r in same) / 2)


def test_min_sample_rule_denies_ratios_in_the_table(runs):
    median, text = _table(runs, ROUNDS + 1)
    assert all(not r.reportable and r.speedup_vs_peer is None and r.speedup_vs_baseline is None for r in median)
    body = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(body) == 3
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert all(c.endswith(" *") for c in cells[1:7])
        assert all("(no ratio)" in c and "x)" not in c for c in cells[4:7])
    assert f"{ROUNDS} samples < {ROUNDS + 1}: no ratio, not plotted" in text


def test_a_ratio_denied_in_one_run_is_denied_in_the_median(runs):
    runs = copy.deepcopy(runs)
    check_results(runs[0], ROUNDS)
    check_results(runs[1], ROUNDS + 1)
    median = median_over_runs(runs)
    assert all(r.speedup_vs_peer is None and not r.reportable for r in median)


def test_table_columns_put_latency_at_batch_1_then_throughput():
    assert table_columns(8, ["photos", "camera"]) == [
        ("model", "photos", 1), ("pipeline", "photos", 1), ("pipeline", "camera", 1),
        ("model", "photos", 8), ("pipeline", "photos", 8), ("pipeline", "camera", 8)]


def test_describe_cpu_names_family_model_and_units():
    info = CPUInfo("Intel(R) Xeon(R) Processor", "x86_64", ("amx_bf16", "amx_int8", "avx2", "avx512_vnni", "avx512f"))
    text = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\nmodel name\t: Intel(R) Xeon(R) Processor\n"
    assert describe_cpu(text, info) == "Intel(R) Xeon(R) Processor (family 6 model 207; amx_bf16, amx_int8, avx512_vnni)"
    assert describe_cpu("", CPUInfo("Some CPU", "aarch64", ())) == "Some CPU (no VNNI/BF16/AMX flags)"


@pytest.mark.slow
def test_openvino_peers_script_writes_the_table(tiny_checkpoint, tiny_bundle, tmp_path, monkeypatch, capsys):
    """The script end to end on the tiny checkpoint, one short run (in this process: its main()
    with its command line): the table names every contender of the README (PyTorch eager,
    OpenVINO's default, NNCF INT8, the bundle), and two rounds against a minimum of three deny
    every ratio."""
    import importlib.util
    import sys
    from pathlib import Path

    pytest.importorskip("nncf")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "openvino_peers.py"
    spec = importlib.util.spec_from_file_location("openvino_peers", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "table.md"
    monkeypatch.setattr(sys, "argv", [str(script), str(tiny_bundle), "--checkpoint", str(tiny_checkpoint), "--threads", "1",
                                      "--batch-size", "2", "--runs", "1", "--rounds", "2", "--duration-s", "0", "--min-samples", "3",
                                      "--agreement", "8", "--camera", "off", "--markdown", str(out)])
    module.main()
    assert f"wrote {out}" in capsys.readouterr().out
    text = out.read_text()
    names = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")][1:]
    assert [n.split(" (")[0] for n in names] == ["pytorch eager", "openvino default", "openvino nncf int8", "fusionrt fp32"]
    assert "batch 1 p50 / p99 ms: pipeline, small photographs" in text and "camera-size" not in text
    assert text.count("(no ratio) *") == 2 * 4 and "2 samples < 3: no ratio" in text
    assert "Top-1 agreement with PyTorch FP32 on 8 held-out examples." in text
