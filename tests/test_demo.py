import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_reduced_mode(tmp_path):
    """`fusionrt demo` end to end on fewer samples: trains, exports, validates, predicts 6 photos,
    serves the bundle with Triton and compares."""
    out = subprocess.run(
        [sys.executable, "-m", "fusionrt.cli", "demo", "--workdir", str(tmp_path), "--num-samples", "96", "--precisions", "fp32",
         "--peers", "off"],  # peers in a benchmark run: tests/bench/test_peers.py
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "logo.png"):
        assert name in text
    assert "samples/s @8" in text and "fused ops" in text and str(tmp_path / "bundles" / "fp32") in text
    assert "7 attention" in text  # 6 MiniLM layers + the head's cross-attention
    served = text[text.index("served (Triton)"):]
    assert served.count("ERROR") == 0 and "server stopped" in served
    for line in served.splitlines()[2:8]:  # FP32 bundle: in-process and served answers agree
        image, local_label, local_score, served_label, served_score = line.split()
        assert local_label == served_label and abs(float(local_score) - float(served_score)) <= 1e-3, line
    assert (tmp_path / "bundles" / "fp32" / "manifest.json").is_file()
    assert (tmp_path / "checkpoint" / "metrics.json").is_file()
    assert (tmp_path / "report" / "report.md").is_file() and "x PyTorch" in text
    timed = {r["contender"] for r in json.loads((tmp_path / "report" / "results.json").read_text())["results"]}
    assert timed == {"fp32 (fp32)", "fp32 (fp32, ORT optimizations off)", "pytorch eager (fp32)"}, timed  # --peers off
    # the glimpse: rows of the report (interleaved rounds), PyTorch is its own reference in both modes
    glimpse = [line.split() for line in text.splitlines() if line.startswith("pytorch eager (fp32) ")]  # name is 3 words
    # (or its row is flagged: a pipeline p50 below the model's on a busy machine, runner.check_results)
    assert sorted(row[3] for row in glimpse) == ["model", "pipeline"], glimpse
    assert all(row[-1] == "1.00" or row[4:] == ["flagged", "-", "-"] for row in glimpse), glimpse
    assert "done in " in text and int(text.split("done in ")[1].split()[0]) < 600
    assert "timed in interleaved rounds, at least" in text
    # progress on a pipe is plain lines (issue 19.7): training's epochs, no carriage returns
    assert "\r" not in out.stderr and "training head: 30/30 epoch" in out.stderr

    # a re-run reuses the checkpoint and the bundle built by the same recipe (issue 19.8)
    manifest = tmp_path / "bundles" / "fp32" / "manifest.json"
    built = manifest.stat().st_mtime_ns
    again = subprocess.run(
        [sys.executable, "-m", "fusionrt.cli", "demo", "--workdir", str(tmp_path), "--num-samples", "96", "--precisions", "fp32",
         "--benchmark", "off", "--triton", "off"],
        capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "reused (same recipe)" in again.stdout
    assert f"fp32: reused {tmp_path / 'bundles' / 'fp32'} (same recipe" in again.stdout
    assert manifest.stat().st_mtime_ns == built


def _code_blocks(md: str) -> list[str]:
    blocks, inside, cur = [], False, []
    for line in md.splitlines():
        if line.startswith("```"):
            if inside:
                blocks.append("\n".join(cur).strip())
                cur = []
            inside = not inside
        elif inside:
            cur.append(line)
    return blocks


def test_readme_opens_with_demo_and_test_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    demo, tests = _code_blocks(readme)[:2]
    assert demo.rstrip().endswith("fusionrt demo") and "torch==2.13.0" in demo and "constraints.txt" in demo
    assert "pytest" in tests and "torch==2.13.0" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests.splitlines()[-1] in ci


def test_demo_flags_reach_run_demo(monkeypatch):
    """--benchmark, --peers and --triton as run_demo's switches (on by default)."""
    import fusionrt.demo
    from fusionrt.cli import main

    seen = []
    monkeypatch.setattr(fusionrt.demo, "run_demo", lambda workdir, **kwargs: seen.append(kwargs))
    assert main(["demo"]) == 0 and main(["demo", "--peers", "off", "--triton", "off", "--precisions", "fp32"]) == 0
    assert [(k["benchmark"], k["peers"], k["triton"], k["precisions"]) for k in seen] == [
        (True, True, True, ("fp32", "fp16", "int8")), (True, False, False, ("fp32",))]
