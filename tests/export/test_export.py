import json
import os

import onnx
import pytest

from fusionrt import ExportValidationError, InputError
from fusionrt.bundle import GRAPHS, Bundle
from fusionrt.export import ExportOptions, export_bundle
from tests.conftest import read_manifest


def test_manifest_describes_the_bundle(tiny_bundle):
    m = read_manifest(tiny_bundle)
    assert m["format_version"] == 1
    assert m["precision"] == {g: "fp32" for g in GRAPHS}
    assert m["target"] == "cpu" and m["opset"] == 17 and m["ir_version"] <= 10
    assert m["max_batch_size"] == 4 and m["max_seq_len"] == 24
    assert m["labels"] == ["negative-cool", "negative-warm", "positive-cool", "positive-warm"]
    assert m["preprocessor"]["crop_size"] == {"height": 32, "width": 32}
    assert set(m["versions"]) == {"fusionrt", "torch", "transformers", "onnx", "onnxruntime"}
    io = {g: ([i["name"] for i in m["graphs"][g]["inputs"]], [o["name"] for o in m["graphs"][g]["outputs"]]) for g in GRAPHS}
    assert io == {
        "text_encoder": (["input_ids", "attention_mask", "token_type_ids"], ["text_features"]),
        "image_encoder": (["pixel_values"], ["image_features"]),
        "fusion_head": (["text_features", "attention_mask", "image_features"], ["logits", "modality_weights"]),
    }
    text_in = m["graphs"]["text_encoder"]["inputs"][0]
    assert text_in == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}
    assert m["graphs"]["fusion_head"]["outputs"][0] == {"name": "logits", "dtype": "float32", "shape": ["batch", 4]}
    assert m["graphs"]["image_encoder"]["outputs"][0]["shape"] == ["batch", 16, 16]
    # uint8 pixels as decoded, (batch, H, W, 3): the graph normalizes them (ExportOptions.pixel_dtype)
    assert m["graphs"]["image_encoder"]["inputs"] == [{"name": "pixel_values", "dtype": "uint8", "shape": ["batch", 32, 32, 3]}]
    assert Bundle.load(tiny_bundle).pixel_input == ("uint8", (32, 32, 3))


def test_validation_recorded_within_tolerance(tiny_bundle):
    v = read_manifest(tiny_bundle)["validation"]
    assert v["reference"] == "pytorch-fp32"
    assert v["max_abs_error"] <= 1e-4 and v["tolerance"]["logits"] == 1e-4
    assert v["max_abs_error_per_output"]["modality_weights"] <= 1e-4
    assert v["top1_agreement"] == 1.0 and v["cosine"] > 0.99999
    # 3 lengths x batch sizes 1, 3, 8 + 16 held-out samples
    assert v["num_samples"] == 3 * 12 + 16
    assert v["eval_data"] == "heldout.jsonl" and v["accuracy"] == v["reference_accuracy"]
    assert v["eval_num_samples"] == 16 and v["agreement_num_samples"] == 16 and v["min_agreement"] == 0.99
    for name in ("top1_agreement", "accuracy", "reference_accuracy"):
        low, high = v[f"{name}_ci95"]
        assert 0 <= low <= v[name] <= high <= 1 and high - low > 0.1, (name, v)  # 16 examples: wide
    assert v["top1_agreement_ci95"][1] == 1.0


def test_graphs_are_valid_onnx_with_standard_names(tiny_bundle):
    for g in GRAPHS:
        model = onnx.load(str(tiny_bundle / f"{g}.onnx"))
        onnx.checker.check_model(model)
        names = [i.name for i in model.graph.input] + [o.name for o in model.graph.output]
        assert not any(n.startswith(("input.", "onnx::")) for n in names)
        assert model.ir_version <= 10


def test_bundle_tokenizer_rewritten_to_max_seq_len(tiny_bundle):
    tok = json.loads((tiny_bundle / "tokenizer" / "tokenizer.json").read_text())
    assert tok["truncation"]["max_length"] == 24
    assert tok["padding"]["strategy"] == "BatchLongest"
    assert (tiny_bundle / "tokenizer" / "vocab.txt").is_file()
    Bundle.load(tiny_bundle)  # sha256 verified


def test_validation_failure_lists_every_failure_and_leaves_nothing(tiny_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    opts = ExportOptions(tolerance={"logits": 0.0, "modality_weights": 0.0}, validation_batch_sizes=(3, 8), validation_seq_lens=(5,), accept_small_eval_set=True)
    with pytest.raises(ExportValidationError) as err:
        export_bundle(tiny_checkpoint, out, opts, progress=False)
    text = str(err.value)
    # every case is checked before raising: both random cases are named
    assert "batch=3 seq=5" in text and "batch=8 seq=5" in text
    assert len(err.value.failures) >= 2 and all("max abs error" in f for f in err.value.failures)
    assert not out.exists()
    assert os.listdir(tmp_path) == []  # no stray temporary directory


def test_interrupted_export_leaves_previous_bundle_intact(tiny_checkpoint, tiny_bundle, tmp_path, monkeypatch):
    import shutil

    from fusionrt.export import exporter

    target = tmp_path / "b"
    shutil.copytree(tiny_bundle, target)
    before = (target / "manifest.json").read_text()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter, "describe_graph", boom)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(tiny_checkpoint, target, ExportOptions(accept_small_eval_set=True), progress=False, overwrite=True)
    assert (target / "manifest.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["b"]


def test_refuses_to_overwrite_a_non_bundle(tiny_checkpoint, tmp_path):
    (tmp_path / "precious.txt").write_text("x")
    with pytest.raises(InputError, match="precious.txt.*not a fusionrt bundle"):
        export_bundle(tiny_checkpoint, tmp_path, progress=False, overwrite=True)
    assert (tmp_path / "precious.txt").read_text() == "x"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"precision": "fp64"}, "precision"), ({"target": "tpu"}, "target"), ({"opset": 9}, "opset"),
        ({"max_batch_size": 0}, "max-batch-size"), ({"min_agreement": 99.0}, "--min-agreement .*99.0"),
        ({"min_agreement": -0.1}, "--min-agreement"), ({"min_agreement": float("nan")}, "--min-agreement"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(InputError, match=match):
        ExportOptions(**kwargs)
