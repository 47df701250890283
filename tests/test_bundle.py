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
