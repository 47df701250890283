import json
import shutil

import pytest

from fusionrt import BundleError, Engine
from fusionrt.bundle import Bundle


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "b")


def test_modified_graph_is_named(bundle_copy):
    path = bundle_copy / "fusion_head.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"fusion_head.onnx does not match its sha256"):
        Engine.from_bundle(bundle_copy)


def test_truncated_graph_is_named(bundle_copy):
    path = bundle_copy / "text_encoder.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match="text_encoder.onnx"):
        Bundle.load(bundle_copy)
    with pytest.raises(BundleError, match="text_encoder.onnx"):
        Engine.from_bundle(bundle_copy, verify=False)  # onnxruntime's parse error, wrapped


def test_unknown_format_version(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["format_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format_version 99"):
        Bundle.load(bundle_copy)


def test_missing_tokenizer(bundle_copy):
    (bundle_copy / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json"):
        Bundle.load(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.load(tmp_path)
    with pytest.raises(BundleError, match="not found"):
        Bundle.load(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(tmp_path)


def test_manifest_round_trips_and_keeps_fields_it_does_not_know(bundle_copy):
    from fusionrt.bundle import GraphInfo, Manifest, Validation, read_manifest, write_manifest

    raw = json.loads((bundle_copy / "manifest.json").read_text())
    manifest = read_manifest(bundle_copy)
    assert isinstance(manifest.graphs["text_encoder"], GraphInfo) and isinstance(manifest.validation, Validation)
    assert manifest.to_dict() == raw  # the JSON format, key for key
    assert manifest.graphs["image_encoder"].input("pixel_values").shape == ["batch", 32, 32, 3]  # uint8 pixels, NHWC
    assert manifest.validation.top1_agreement == raw["validation"]["top1_agreement"]
    # a newer fusionrt's fields, at every level, survive a read and a rewrite
    raw["graph_input_dtypes"] = {"pixel_values": "uint8"}
    raw["graphs"]["fusion_head"]["new_graph_field"] = [1, 2]
    raw["validation"]["per_source"] = {"photos": 0.9}
    (bundle_copy / "manifest.json").write_text(json.dumps(raw))
    write_manifest(bundle_copy, read_manifest(bundle_copy))
    assert json.loads((bundle_copy / "manifest.json").read_text()) == raw
    # an older manifest without the optional keys still loads, with their defaults
    old = {k: v for k, v in raw.items() if k in ("format_version", "labels", "max_seq_len", "max_batch_size", "precision", "graphs")}
    loaded = Manifest.from_dict(old)
    assert loaded.validation is None and loaded.target == "cpu" and loaded.labels == raw["labels"]


def test_manifest_without_a_required_key_is_named(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    del m["max_seq_len"]
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"manifest.json lacks required key 'max_seq_len'"):
        Bundle.load(bundle_copy)
