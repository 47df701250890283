import json
import subprocess
import sys

import pytest

from fusionrt.cli import main


def test_predict_json_on_a_real_photograph(tiny_bundle, photo_dir, capsys):
    code = main(["predict", str(tiny_bundle), "--text", "what a lovely cat", "--image", str(photo_dir / "chelsea.png"), "--json"])
    assert code == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["image"].endswith("chelsea.png") and row["label"] in row["probabilities"]
    assert abs(sum(row["probabilities"].values()) - 1) < 1e-6
    assert set(row["modality_weights"]) == {"text", "image"}


def test_predict_table_and_a_bad_item(tiny_bundle, photo_dir, tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    code = main([
        "predict", str(tiny_bundle),
        "--text", "a", "--image", str(photo_dir / "rocket.jpg"),
        "--text", "b", "--image", str(bad),
    ])
    out = capsys.readouterr().out
    assert code == 1  # one item failed
    lines = out.splitlines()
    assert "rocket.jpg" in lines[2] and "ERROR" not in lines[2]
    assert "notes.txt" in lines[3] and "ERROR" in lines[3] and "not a decodable image" in lines[3]


def test_predict_providers_list_falls_back_to_what_is_available(tiny_bundle, photo_dir, capsys, monkeypatch):
    import onnxruntime

    cpu_only = [p for p in onnxruntime.get_available_providers() if p not in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(cpu_only))
    args = ["predict", str(tiny_bundle), "--text", "a cat", "--image", str(photo_dir / "chelsea.png"), "--json"]
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider not available.*run on CPUExecutionProvider") as record:
        code = main(args + ["--providers", "CUDAExecutionProvider,CPUExecutionProvider"])
    assert code == 0 and len(record) == 1
    (row,) = json.loads(capsys.readouterr().out)
    assert main(args + ["--providers", "CPUExecutionProvider"]) == 0
    assert json.loads(capsys.readouterr().out) == [row]  # same answer as the CPU-only engine
    assert main(args + ["--providers", "CUDAExecutionProvider"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fusionrt predict: error: none of the requested execution providers") and "CPUExecutionProvider" in err


def test_errors_are_one_line_and_exit_1(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope"), "--text", "a", "--image", "x.png"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fusionrt predict: error: bundle directory not found")


def test_min_agreement_flag_reaches_the_options(tmp_path, capsys):
    from fusionrt.cli import build_parser
    from fusionrt.export import ExportOptions

    args = build_parser().parse_args(["export", "ckpt", "-o", "out"])
    assert args.min_agreement == ExportOptions().min_agreement == 0.99
    # checked before the checkpoint is read: a share, not a percentage
    assert main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "b"), "--min-agreement", "99"]) == 1
    assert "--min-agreement must be a share in [0, 1] (0.99 is 99%), got 99.0" in capsys.readouterr().err


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as exc:
        main(["export"])
    assert exc.value.code == 2


def test_console_script_export_then_predict(tiny_checkpoint, tmp_path, photo_dir):
    bundle = tmp_path / "bundle"
    exe = [sys.executable, "-m", "fusionrt.cli"]
    out = subprocess.run(exe + ["export", str(tiny_checkpoint), "-o", str(bundle)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "max abs logit error" in out.stdout and (bundle / "manifest.json").is_file()
    assert "top-1 agreement with FP32 100.0% (95% CI 80.6%-100.0%, n=16)" in out.stdout  # Wilson, 16 of 16
    out = subprocess.run(exe + ["predict", str(bundle), "--text", "great", "--image", str(photo_dir / "logo.png")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "logo.png" in out.stdout
