"""The agreement gate: the 95% Wilson lower bound per data source, the refusal of an evaluation set
too small to resolve ``--min-agreement``, and the notice of an export without evaluation data."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from fusionrt import InputError
from fusionrt.cli import describe_validation, main
from fusionrt.export import ExportOptions, export_bundle
from fusionrt.export.validate import _agreement_failures, examples_needed, wilson_interval
from fusionrt.model.data import LABELS, Example, read_jsonl, write_jsonl
from tests.conftest import read_manifest


def test_examples_needed_is_the_smallest_set_whose_lower_bound_reaches_the_gate():
    assert [examples_needed(m) for m in (0.9, 0.99, 0.995)] == [35, 381, 765]  # m z^2 / (1 - m), rounded up
    for m in (0.9, 0.99, 0.995):
        n = examples_needed(m)
        assert wilson_interval(n, n)[0] >= m > wilson_interval(n - 1, n - 1)[0]
    assert examples_needed(0.0) == 0 and examples_needed(1.0) is None


def _examples(counts: dict) -> list:
    return [Example("t", Path("x.png"), "l", source) for source, n in counts.items() for _ in range(n)]


def test_each_source_is_gated_on_its_own_lower_bound():
    examples = _examples({"synthetic": 800, "camera-size": 400})
    agree = np.ones(1200, bool)
    agree[[800, 900, 1000, 1100, 1150, 1199]] = False  # 6 of the 400 camera-size photos change label
    options = ExportOptions(min_agreement=0.98)
    # all: 1194 of 1200 (lower bound 98.9%) passes; camera-size: 394 of 400 (lower bound 96.8%) fails
    assert wilson_interval(1194, 1200)[0] > 0.98 > wilson_interval(394, 400)[0]
    failures = _agreement_failures(examples, agree, "eval.jsonl", options)
    assert failures == [
        "top-1 agreement with PyTorch FP32 on eval.jsonl (camera-size): 98.50% (394 of 400, 95% Wilson interval "
        f"{wilson_interval(394, 400)[0]:.2%}-{wilson_interval(394, 400)[1]:.2%}); its 95% Wilson lower bound "
        f"{wilson_interval(394, 400)[0]:.2%} < --min-agreement 0.98"
    ]
    # a source too small to resolve the gate on its own (40 < 189 examples at 0.98) is reported, not
    # gated: 39 of 40 (point estimate 97.5% < 98%) fails nothing while the whole set's bound holds
    small = _examples({"synthetic": 800, "camera-size": 40})
    agree_small = np.ones(840, bool)
    agree_small[800] = False
    assert examples_needed(0.98) == 189
    for accept in (False, True):
        assert _agreement_failures(small, agree_small, "e", ExportOptions(min_agreement=0.98, accept_small_eval_set=accept)) == []
    # a whole set too small, accepted: its point estimate is gated instead of its lower bound
    tiny = _examples({"synthetic": 30, "camera-size": 10})
    agree_tiny = np.ones(40, bool)
    agree_tiny[[0, 35]] = False  # 38 of 40: 95% < 98%
    failures = _agreement_failures(tiny, agree_tiny, "e", ExportOptions(min_agreement=0.98, accept_small_eval_set=True))
    assert [f.split(":")[0] for f in failures] == ["top-1 agreement with PyTorch FP32 on e"]
    assert "its point estimate 95.00%" in failures[0]


def test_small_eval_set_is_refused_before_export_with_the_count_and_the_flag(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(InputError) as err:
        export_bundle(tiny_checkpoint, tmp_path / "b", progress=False)
    message = str(err.value)
    assert "too small to resolve --min-agreement 0.99 with 95% confidence (all: 16 examples" in message
    assert "at least 381 examples" in message and "--accept-small-eval-set" in message and "--eval-data" in message
    assert not (tmp_path / "b").exists()
    assert main(["export", str(tiny_checkpoint), "-o", str(tmp_path / "c"), "--min-agreement", "1"]) == 1
    assert "no finite set does" in capsys.readouterr().err


def test_manifest_reports_each_source_with_its_intervals(tiny_checkpoint, tmp_path):
    from fusionrt.samples import make_camera_photos

    heldout = read_jsonl(tiny_checkpoint / "heldout.jsonl")
    photos = make_camera_photos(tmp_path / "camera", 4)
    camera = [Example(f"photo {i}", p, LABELS[i % len(LABELS)], "camera-size") for i, p in enumerate(photos)]
    write_jsonl(tmp_path / "eval.jsonl", heldout + camera)
    options = ExportOptions(eval_data=str(tmp_path / "eval.jsonl"), accept_small_eval_set=True, min_agreement=0.9,
                            validation_batch_sizes=(2,), validation_seq_lens=(5,))
    v = read_manifest(export_bundle(tiny_checkpoint, tmp_path / "b", options, progress=False))["validation"]
    assert list(v["per_source"]) == ["synthetic", "camera-size"]
    for source, n in (("synthetic", 16), ("camera-size", 4)):
        s = v["per_source"][source]
        assert s["num_samples"] == n and s["top1_agreement"] == 1.0  # FP32 bundle: every label as PyTorch's
        assert s["top1_agreement_ci95"] == [round(wilson_interval(n, n)[0], 6), 1.0]
        k = round(s["accuracy"] * n)
        assert s["accuracy_ci95"] == [round(x, 6) for x in wilson_interval(k, n)]
    # 20 examples < 35: the whole set is gated on its point estimate; the sources only reported
    assert v["agreement_gate"] == {"min_agreement": 0.9, "examples_needed": 35,
                                   "statistic": {"all": "point estimate (small eval set accepted)"}}
    from fusionrt.bundle import Validation

    line = describe_validation(Validation.from_dict(v))
    assert "camera-size (n=4): agreement 100.0% (51.0%-100.0%)" in line and "gated on the point estimate" in line


def test_export_without_eval_data_says_so_on_the_command_line(tiny_checkpoint, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    (ckpt / "heldout.jsonl").unlink()
    assert main(["export", str(ckpt), "-o", str(tmp_path / "b")]) == 0
    out = capsys.readouterr()
    notice = "no evaluation data (no --eval-data, and the checkpoint has no heldout.jsonl): no accuracy or agreement gate ran"
    assert f"warning: {notice}" in out.out and notice in out.err
    assert read_manifest(tmp_path / "b")["validation"]["agreement_gate"] is None
