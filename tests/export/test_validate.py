"""Wilson intervals and the cache of PyTorch reference outputs (tiny checkpoint)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from fusionrt import InputError
from fusionrt.export import ExportOptions, export_bundle, validate
from fusionrt.export.validate import REFERENCE_CACHE_PREFIX, wilson_interval
from tests.conftest import read_manifest

# One random case (batch 2, seq 5) besides the held-out set: the fewest PyTorch calls to count.
ONE_RANDOM_CASE = dict(validation_batch_sizes=(2,), validation_seq_lens=(5,), accept_small_eval_set=True)


def test_wilson_interval_hand_computed():
    # 126 of 128, z = 1.959964: p = 0.984375, z^2 = 3.841459, denominator 1 + z^2/n = 1.030011,
    # centre (p + z^2/2n) / 1.030011 = 0.999381 / 1.030011 = 0.970262,
    # half width z * sqrt(p(1-p)/n + z^2/4n^2) / 1.030011 = 1.959964 * 0.0133709 / 1.030011 = 0.025443.
    low, high = wilson_interval(126, 128, z=1.959964)
    assert low == pytest.approx(0.944819, abs=2e-6) and high == pytest.approx(0.995705, abs=2e-6)
    assert wilson_interval(126, 128) == (low, high)  # z defaults to the two-sided 95% quantile


def test_wilson_interval_edges_and_bad_counts():
    low, high = wilson_interval(128, 128)
    assert high == 1.0 and low == pytest.approx(128 / (128 + 1.959964**2), abs=1e-12)  # k = n: n / (n + z^2)
    assert wilson_interval(0, 128) == pytest.approx((0.0, 1 - low), abs=1e-12)
    for k, n in ((3, 2), (-1, 5), (0, 0)):
        with pytest.raises(InputError, match="successes"):
            wilson_interval(k, n)


def _counting_reference(monkeypatch) -> list[int]:
    """Replace the PyTorch reference with one that records each call's batch size; empty memo."""
    calls: list[int] = []
    real = validate._torch_outputs

    def counted(ckpt, feed):
        calls.append(len(feed["input_ids"]))
        return real(ckpt, feed)

    monkeypatch.setattr(validate, "_torch_outputs", counted)
    monkeypatch.setattr(validate, "_reference_memo", {})
    return calls


def _copy(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt, ignore=shutil.ignore_patterns(f"{REFERENCE_CACHE_PREFIX}*"))
    return ckpt


def _caches(ckpt) -> list:
    return sorted(ckpt.glob(f"{REFERENCE_CACHE_PREFIX}*"))


def test_reference_cache_gives_the_uncached_numbers(tiny_checkpoint, tmp_path, monkeypatch):
    """The export's validation step (validate_bundle_graphs, on one unvalidated export's graphs,
    the checkpoint loaded anew each time) counted in PyTorch calls."""
    from dataclasses import asdict

    from fusionrt.bundle import GRAPHS
    from fusionrt.model.checkpoint import load_checkpoint

    ckpt = _copy(tiny_checkpoint, tmp_path)
    bundle = export_bundle(ckpt, tmp_path / "bundle", ExportOptions(validate=False), progress=False)
    calls = _counting_reference(monkeypatch)

    def export(name: str, **kwargs) -> dict:
        options = ExportOptions(**ONE_RANDOM_CASE, **kwargs)
        graphs = {g: bundle / f"{g}.onnx" for g in GRAPHS}
        return asdict(validate.validate_bundle_graphs(bundle, load_checkpoint(ckpt), graphs, options, progress=False))

    uncached = export("a")
    assert uncached["top1_agreement"] == 1.0 and uncached["eval_num_samples"] == 16
    assert calls == [2, 8, 8]  # the random case, then the 16 held-out examples in batches of 8
    files = _caches(ckpt)
    assert len(files) == 2 and all(f.suffix == ".npz" for f in files)  # random inputs, held-out set

    validate._reference_memo.clear()  # as in a new process: only the files remain
    calls.clear()
    assert export("b") == uncached and calls == []

    for f in files:  # the same process: the memo answers, and the files are written again
        f.unlink()
    assert export("c") == uncached and calls == [] and _caches(ckpt) == files

    validate._reference_memo.clear()
    eval_file = max(files, key=lambda f: f.stat().st_size)
    eval_file.write_bytes(b"PK\x03\x04 not a whole npz")  # a damaged file is recomputed and replaced
    assert export("d") == uncached and calls == [8, 8]
    assert np.load(eval_file)["logits"].shape == (16, 4)

    # An image changed under the same JSONL: only its batch is recomputed.
    first_image = ckpt / json.loads((ckpt / "heldout.jsonl").read_text().splitlines()[0])["image"]
    Image.new("RGB", (48, 48), (250, 10, 10)).save(first_image)
    calls.clear()
    export("e")
    assert calls == [8]

    # Other evaluation data is another file: the first 8 held-out examples are computed anew.
    first8 = ckpt / "first8.jsonl"
    first8.write_text("\n".join((ckpt / "heldout.jsonl").read_text().splitlines()[:8]) + "\n")
    calls.clear()
    v = export("f", eval_data=str(first8))
    assert calls == [8] and v["eval_num_samples"] == 8 and len(_caches(ckpt)) == 3


def test_unwritable_checkpoint_skips_the_cache_file(tiny_checkpoint, tmp_path, monkeypatch):
    ckpt = _copy(tiny_checkpoint, tmp_path)
    _counting_reference(monkeypatch)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(ckpt))

    monkeypatch.setattr(validate, "atomic_write_bytes", read_only)  # as root, chmod would not stop writes
    v = read_manifest(export_bundle(ckpt, tmp_path / "b", ExportOptions(**ONE_RANDOM_CASE), progress=False))["validation"]
    assert v["eval_num_samples"] == 16 and _caches(ckpt) == []


def test_eval_labels_the_checkpoint_does_not_know_are_named(tmp_path):
    from types import SimpleNamespace

    from fusionrt.export.validate import _eval_examples

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"text": "t", "image": "a.png", "label": label}) + "\n" for label in ("Cat", "dog", "cat")))
    ckpt = SimpleNamespace(config=SimpleNamespace(labels=["cat", "dog"]))
    with pytest.warns(RuntimeWarning, match=r"1 of 3 examples in .*eval.jsonl have labels the checkpoint does not know \('Cat'\)"):
        _, labels, _ = _eval_examples(ckpt, data)
    assert labels.tolist() == [-1, 1, 0]
