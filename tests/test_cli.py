import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from fusionrt.bundle import Bundle
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


def test_predict_says_where_each_graph_ran_and_in_which_precision(tiny_bundle, photo_dir, capsys):
    args = ["predict", str(tiny_bundle), "--text", "a cat", "--image", str(photo_dir / "chelsea.png"), "--providers", "CPUExecutionProvider"]
    assert main(args) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == ("ran on: text_encoder CPUExecutionProvider (fp32); image_encoder CPUExecutionProvider (fp32); "
                    "fusion_head CPUExecutionProvider (fp32)")
    assert main(args + ["--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["graphs"] == {g: {"runs_on": "CPUExecutionProvider", "precision": "fp32"}
                             for g in ("text_encoder", "image_encoder", "fusion_head")}


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

    from fusionrt.cli import export_budget

    args = build_parser().parse_args(["export", "ckpt", "-o", "out"])
    assert export_budget(args) == (ExportOptions().max_accuracy_drop, ExportOptions().min_agreement) == (1.0, 0.99)
    assert export_budget(build_parser().parse_args(["export", "ckpt", "-o", "out", "--precision", "auto"])) == (0.5, 0.99)
    assert export_budget(build_parser().parse_args(["export", "c", "-o", "o", "--precision", "auto", "--min-agreement", "0.9"]))[1] == 0.9
    # checked before the checkpoint is read: a share, not a percentage
    assert main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "b"), "--min-agreement", "99"]) == 1
    assert "--min-agreement must be a share in [0, 1] (0.99 is 99%), got 99.0" in capsys.readouterr().err


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as exc:
        main(["export"])
    assert exc.value.code == 2


@pytest.mark.slow  # the console script in subprocesses; the API paths are in the fast subset
def test_console_script_export_then_predict(tiny_checkpoint, tmp_path, photo_dir):
    bundle = tmp_path / "bundle"
    script = Path(sys.executable).with_name("fusionrt")  # the [project.scripts] entry point, as installed
    assert script.is_file(), f"no fusionrt console script beside {sys.executable}: pip install -e ."
    exe = [str(script)]
    out = subprocess.run(exe + ["export", str(tiny_checkpoint), "-o", str(bundle), "--accept-small-eval-set"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "max abs logit error" in out.stdout and (bundle / "manifest.json").is_file()
    # every step says itself on stderr
    assert "export [" in out.stderr and "tracing the PyTorch model" in out.stderr and "validating against" in out.stderr
    assert "top-1 agreement with FP32 100.0% (95% CI 80.6%-100.0%, n=16)" in out.stdout  # Wilson, 16 of 16
    out = subprocess.run(exe + ["predict", str(bundle), "--text", "great", "--image", str(photo_dir / "logo.png")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "logo.png" in out.stdout


@pytest.mark.slow  # two INT8 exports
def test_int8_exports_print_no_quantization_preprocessing_warning(tiny_checkpoint, tmp_path, capsys, caplog):
    """ONNX Runtime's quantizer logs "Please consider to run pre-processing" (root logger) on a
    graph quant_pre_process has not run on; fusionrt runs it first, so no export says it."""
    caplog.set_level(logging.WARNING)
    for precision in ("int8", "int8-dynamic"):
        assert main(["export", str(tiny_checkpoint), "-o", str(tmp_path / precision), "--precision", precision, "--accept-small-eval-set"]) == 0
        printed = capsys.readouterr()
        assert "quantizing to " in printed.err, precision
        logged = [record.getMessage() for record in caplog.records]
        assert not [m for m in logged + [printed.out, printed.err] if "pre-processing" in m], precision


def test_a_file_given_as_the_checkpoint_is_named_as_a_file(tmp_path, capsys):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights")
    assert main(["export", str(ckpt), "-o", str(tmp_path / "b")]) == 1
    assert f"checkpoint {ckpt} is a file; give the checkpoint directory" in capsys.readouterr().err


def test_export_overwrite_and_dry_run_flags(tiny_bundle, tmp_path, capsys):
    assert main(["export", "ckpt", "-o", str(tiny_bundle)]) == 1
    assert "holds an earlier fusionrt bundle (" in capsys.readouterr().err
    assert main(["export", "ckpt", "-o", str(tmp_path / "new"), "--dry-run"]) == 1
    assert "--dry-run goes with --precision auto" in capsys.readouterr().err
    assert main(["export", "ckpt", "-o", str(tmp_path / "new"), "--target", "auto"]) == 1
    assert "--target auto goes with --precision auto" in capsys.readouterr().err


def test_bench_url_passes_the_p99_bound(monkeypatch, tmp_path, capsys):
    from fusionrt.bench import served

    seen = {}

    def fake(url, report, **kwargs):
        seen.update(kwargs, url=url)
        (tmp_path / "report.md").write_text("served report")
        return {"results": [], "capacity": None}

    monkeypatch.setattr(served, "run_served_benchmark", fake)
    assert main(["bench", "--url", "127.0.0.1:1", "--report", str(tmp_path), "--p99-bound-ms", "150"]) == 0
    assert seen["url"] == "127.0.0.1:1" and seen["p99_bound_ms"] == 150.0
    assert "served report" in capsys.readouterr().out


def test_explain_writes_a_png_and_json_per_pair(tiny_bundle, photo_dir, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "why"
    args = ["explain", str(tiny_bundle), "--text", "what a lovely picture", "--image", str(photo_dir / "chelsea.png"),
            "--text", "awful rocket", "--image", str(photo_dir / "rocket.jpg"), "-o", str(out), "--json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == [str(photo_dir / "chelsea.png"), str(photo_dir / "rocket.jpg")]
    for k, row in enumerate(rows):
        assert json.loads((out / f"explanation-{k}.json").read_text()) == row
        assert [w["word"] for w in row["words"]] == row["text"].split()
        assert abs(sum(w["relevance"] for w in row["words"]) - 1) < 1e-9
        assert abs(sum(map(sum, row["region_relevance"])) - 1) < 1e-5
        with Image.open(out / f"explanation-{k}.png") as png:
            assert png.format == "PNG" and png.size == (700, 680)
    assert main(args) == 1  # refuses to overwrite its earlier files
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_explain_overwrite_replaces_a_link_in_the_output_folder_not_the_file_it_points_to(tiny_bundle, photo_dir, tmp_path, capsys):
    """A symbolic link named like an explanation file: --overwrite wrote the heat map through it
    into the user's file outside -o. Each file is now written beside and renamed into place."""
    out, precious = tmp_path / "why", tmp_path / "precious.png"
    out.mkdir()
    precious.write_bytes(b"my photo")
    (out / "explanation-0.png").symlink_to(precious)
    (out / "explanation-0.json").symlink_to(precious)
    args = ["explain", str(tiny_bundle), "--text", "a cat", "--image", str(photo_dir / "chelsea.png"), "-o", str(out), "--overwrite"]
    assert main(args) == 0
    capsys.readouterr()
    assert precious.read_bytes() == b"my photo"
    assert not (out / "explanation-0.png").is_symlink() and (out / "explanation-0.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "explanation-0.json").read_text())["text"] == "a cat"
    assert sorted(p.name for p in out.iterdir()) == ["explanation-0.json", "explanation-0.png"]  # no temporary left
    # an earlier run of more pairs: its files stay (fusionrt cannot tell them from the user's), named
    (out / "explanation-1.png").write_bytes(b"earlier")
    (out / "explanation-11.json").write_text("{}")
    assert main(args) == 0
    assert capsys.readouterr().err.endswith(
        f"note: {out} also holds 2 file(s) of an earlier run, left as they were: explanation-1.png, explanation-11.json\n")


def test_explain_a_bad_pair_fails_alone_and_a_file_as_output_is_refused(tiny_bundle, photo_dir, tmp_path, capsys):
    out = tmp_path / "why"
    args = ["explain", str(tiny_bundle), "--text", "what a lovely picture", "--image", str(photo_dir / "chelsea.png"),
            "--text", "awful", "--image", str(tmp_path / "missing.png"), "-o", str(out), "--json"]
    assert main(args) == 1
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["prediction"]["label"] and "error" not in rows[0]
    assert rows[1] == {"text": "awful", "image": str(tmp_path / "missing.png"), "error": f"images[1]: image file not found: {tmp_path / 'missing.png'}"}
    assert sorted(p.name for p in out.iterdir()) == ["explanation-0.json", "explanation-0.png", "explanation-1.json"]
    assert json.loads((out / "explanation-1.json").read_text()) == rows[1]  # the bad pair's account
    # --overwrite over an earlier run that explained pair 1: its picture goes, its JSON says the error
    good = args[:6] + ["--text", "awful", "--image", str(photo_dir / "rocket.jpg"), "-o", str(out), "--overwrite"]
    assert main(good) == 0 and (out / "explanation-1.png").is_file()
    assert main(args + ["--overwrite"]) == 1
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["explanation-0.json", "explanation-0.png", "explanation-1.json"]
    assert "error" in json.loads((out / "explanation-1.json").read_text())
    # a PNG of that name that fusionrt did not draw is never deleted
    from PIL import Image

    Image.new("RGB", (4, 4)).save(out / "explanation-1.png")
    mine = (out / "explanation-1.png").read_bytes()
    assert main(args + ["--overwrite"]) == 1
    capsys.readouterr()
    assert (out / "explanation-1.png").read_bytes() == mine
    (tmp_path / "a-file").write_text("mine")
    assert main(args[:-3] + ["-o", str(tmp_path / "a-file")]) == 1
    assert "is not a folder" in capsys.readouterr().err and (tmp_path / "a-file").read_text() == "mine"


def test_explain_says_when_the_text_was_cut_at_max_seq_len(tiny_bundle, photo_dir, capsys):
    long = " ".join(["lovely picture"] * 40)  # 80 words, the tiny bundle reads 24 tokens
    args = ["explain", str(tiny_bundle), "--text", long, "--image", str(photo_dir / "chelsea.png"),
            "--text", "lovely picture", "--image", str(photo_dir / "chelsea.png"), "--text", " ", "--image", str(photo_dir / "chelsea.png")]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    first, second, third = lines[:3]
    assert "the rest of the text was cut at the bundle's max_seq_len: not read" in first and "cut" not in second
    assert "; words (no words); top region" in third
    # the bundle's measured explanation fidelity, from its manifest (an FP32 bundle: PyTorch's top region)
    validation = Bundle.load(tiny_bundle).manifest.validation
    assert lines[3] == (f"(this bundle's Grad-CAM top region is PyTorch FP32's on {validation.region_agreement:.1%} of its "
                        f"{validation.eval_num_samples} evaluation items: manifest validation.region_agreement)")
    assert validation.region_agreement >= 0.97
    assert main(args + ["--method", "gradient"]) == 0  # measured for Grad-CAM only: not said of another method
    assert "Grad-CAM top region" not in capsys.readouterr().out
    assert main(args + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["prediction"]["truncated"] and len(rows[0]["words"]) == 22 and not rows[1]["prediction"]["truncated"]


def test_explain_output_that_cannot_be_a_folder_is_an_error_before_explaining(tiny_bundle, photo_dir, tmp_path, capsys, monkeypatch):
    """-o under a file, or where fusionrt may not write, was a traceback (NotADirectoryError,
    PermissionError) after every pair had been explained; it is exit 1 naming -o, and no file is made."""
    from fusionrt.engine import Engine

    (tmp_path / "a-file").write_text("mine")
    args = ["explain", str(tiny_bundle), "--text", "lovely picture", "--image", str(photo_dir / "chelsea.png"), "-o"]
    monkeypatch.setattr(Engine, "explain", lambda *a, **k: pytest.fail("explained before checking -o"))
    assert main(args + [str(tmp_path / "a-file" / "why")]) == 1
    err = capsys.readouterr().err
    assert "-o/--output" in err and "a-file" in err and "not a folder" in err
    monkeypatch.setattr("os.access", lambda path, mode, **kw: False)  # an unwritable folder (tests may run as root)
    assert main(args + [str(tmp_path / "new" / "why")]) == 1
    assert "-o/--output" in capsys.readouterr().err and not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and (tmp_path / "a-file").read_text() == "mine"


def test_explain_output_without_matplotlib_is_an_error_before_explaining(tiny_bundle, photo_dir, tmp_path, capsys, monkeypatch):
    """Without the bench extra, -o explained every pair and wrote the first JSON before failing on
    the first PNG: the folder was left half written."""
    from fusionrt.engine import Engine

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.setattr(Engine, "explain", lambda *a, **k: pytest.fail("explained before checking for matplotlib"))
    args = ["explain", str(tiny_bundle), "--text", "lovely picture", "--image", str(photo_dir / "chelsea.png")]
    assert main(args + ["-o", str(tmp_path / "why")]) == 1
    assert "pip install 'fusionrt[bench]'" in capsys.readouterr().err and not (tmp_path / "why").exists()


def test_explain_a_png_that_cannot_be_written_leaves_no_json_saying_the_pair_is_done(tiny_bundle, photo_dir, tmp_path, capsys, monkeypatch):
    """The JSON is written after the PNG: a disk that fills while drawing (OSError) is exit 1 naming
    -o, and no JSON stands without its picture."""
    import fusionrt.render

    def full_disk(explanation, image, text, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fusionrt.render, "render_explanation", full_disk)
    args = ["explain", str(tiny_bundle), "--text", "lovely picture", "--image", str(photo_dir / "chelsea.png"), "-o", str(tmp_path / "why")]
    assert main(args) == 1
    assert "cannot write the explanation files" in capsys.readouterr().err
    assert list((tmp_path / "why").iterdir()) == []


def test_explain_an_image_whose_file_name_is_not_utf8(tiny_bundle, photo_dir, tmp_path, capsys):
    """A Latin-1 file name (b"caf\\xe9.png", as old archives unpack on Linux) reaches Python as a
    lone surrogate: writing explanation-0.json raised UnicodeEncodeError and left it empty. The
    JSON escapes it (\\udce9), which json.loads reads back to the same path."""
    import os
    import shutil

    image = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png")
    shutil.copy(photo_dir / "chelsea.png", image)
    out = tmp_path / "why"
    assert main(["explain", str(tiny_bundle), "--text", "lovely picture", "--image", image, "-o", str(out), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["image"] == image and json.loads((out / "explanation-0.json").read_text()) == row
    assert main(["predict", str(tiny_bundle), "--text", "lovely picture", "--image", image, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["image"] == image


def test_tables_print_a_file_name_that_is_not_utf8_escaped(tiny_bundle, photo_dir, tmp_path, capsys):
    """Where stdout is strict UTF-8 (PYTHONIOENCODING=utf-8, a UTF-8 locale other than C; pytest's
    capture too), the table of predict and the lines of explain were a UnicodeEncodeError traceback
    after every pair had been answered: the lone surrogate of a Latin-1 file name cannot be written.
    It is printed escaped (\\udce9), as in the JSON and on stderr."""
    import os
    import shutil

    image = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png")
    shutil.copy(photo_dir / "chelsea.png", image)
    assert main(["predict", str(tiny_bundle), "--text", "lovely picture", "--image", image]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if "caf" in line]
    label = Bundle.load(tiny_bundle).labels
    assert str(tmp_path) + "/caf\\udce9.png" in row and any(f" {name} " in row for name in label)
    out = os.fsdecode(os.fsencode(tmp_path) + b"/wh\xff")
    assert main(["explain", str(tiny_bundle), "--text", "lovely picture", "--image", image, "-o", out]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(str(tmp_path) + "/caf\\udce9.png: ") and lines[1] == f"wrote 1 PNG and JSON files to {tmp_path}/wh\\udcff"
    assert sorted(os.listdir(os.fsencode(tmp_path) + b"/wh\xff")) == [b"explanation-0.json", b"explanation-0.png"]


def test_export_into_the_current_empty_folder(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """`mkdir b && cd b && fusionrt export CKPT -o .` wrote the bundle, then said "error:
    manifest.json is missing: . is not a fusionrt bundle" and exited 1: the current folder had been
    replaced under the process (see tests/test_output_folders.py)."""
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    assert main(["export", str(tiny_checkpoint), "-o", ".", "--accept-small-eval-set"]) == 0
    assert f"bundle written to {tmp_path / 'b'}" in capsys.readouterr().out
    assert Bundle.load(tmp_path / "b").labels == Bundle.load(".").labels and len(Bundle.load(".").labels) == 4


def test_explain_an_empty_output_path_is_an_error(tiny_bundle, photo_dir, tmp_path, capsys, monkeypatch):
    """-o "" (an unset shell variable: -o "$OUT") explained the pairs, wrote no file and exited 0."""
    from fusionrt.engine import Engine

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Engine, "explain", lambda *a, **k: pytest.fail("explained before checking -o"))
    assert main(["explain", str(tiny_bundle), "--text", "lovely picture", "--image", str(photo_dir / "chelsea.png"), "-o", ""]) == 1
    assert capsys.readouterr().err == "fusionrt explain: error: -o/--output is an empty path; give a folder\n"
    assert list(tmp_path.iterdir()) == []
    # every folder option: export named "." and refused it as a folder of other files
    (tmp_path / "mine.txt").write_text("mine")
    for argv, flag in ((["export", str(tiny_bundle), "-o", ""], "-o/--output"), (["train", "data.jsonl", "-o", ""], "-o/--output"),
                       (["bench", str(tiny_bundle), "--report", ""], "--report"), (["demo", "--workdir", ""], "--workdir"),
                       (["triton", "build", str(tiny_bundle), "-o", ""], "-o/--output")):
        assert main(argv) == 1
        assert capsys.readouterr().err == f"fusionrt {argv[0]}: error: {flag} is an empty path; give a folder\n"
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
