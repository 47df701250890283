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


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# A hand edit that loaded and then answered wrongly, or failed each item (or the whole batch) with a
# raw Python error at run time, is refused at load, naming the file and the key (JSON path).
MANIFEST_EDITS = [
    (lambda m: m.update(labels=m["labels"][:-1]), r"\$\.labels: 3 labels, but the fusion head's logits have 4 classes"),
    (lambda m: m.update(labels=[]), r"\$\.labels: \[\] should be non-empty|\$\.labels: \[\] is too short"),
    (lambda m: m.update(labels="abcd"), r"\$\.labels: 'abcd' is not of type 'array'"),
    (lambda m: m.update(labels=[1, 2, 3, 4]), r"\$\.labels\[\d\]: \d is not of type 'string'"),
    (lambda m: m.update(labels=["a", "a", "b", "c"]), r"\$\.labels: .* has non-unique elements"),
    (lambda m: m.update(max_batch_size=0), r"\$\.max_batch_size: 0 is less than the minimum of 1"),
    (lambda m: m.update(max_seq_len="128"), r"\$\.max_seq_len: '128' is not of type 'integer'"),
    (lambda m: m.update(precision="fp32"), r"\$\.precision: 'fp32' is not of type 'object'"),
    (lambda m: m["precision"].update(text_encoder="int4"), r"\$\.precision\.text_encoder: 'int4' is not one of"),
    (lambda m: m.update(target="gpu"), r"\$\.target: 'gpu' is not one of \['cpu'"),
    (lambda m: m["graphs"]["text_encoder"].update(file="../other/text_encoder.onnx"),
     r"\$\.graphs\.text_encoder\.file: '\.\./other/text_encoder\.onnx' is not a file inside the bundle"),
    (lambda m: m["graphs"]["fusion_head"].update(file="/tmp/fusion_head.onnx"), r"\$\.graphs\.fusion_head\.file: .* not a file inside"),
    (lambda m: m["graphs"]["fusion_head"].update(sha256="abc"), r"\$\.graphs\.fusion_head\.sha256: 'abc' does not match"),
    (lambda m: m.update(runtimes={"text_encoder": "tensorflow"}), r"\$\.runtimes\.text_encoder: 'tensorflow' is not one of"),
]


@pytest.mark.parametrize("change, message", MANIFEST_EDITS)
def test_a_hand_edited_manifest_is_refused_at_load_naming_the_key(bundle_copy, change, message):
    _edit(bundle_copy / "manifest.json", change)
    with pytest.raises(BundleError, match=rf"{bundle_copy / 'manifest.json'} ({message})"):
        Engine.from_bundle(bundle_copy, verify=False)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(crop_size={"height": "64", "width": 64}), r"\$\.crop_size\.height: '64' is not of type 'integer'"),
    (lambda c: c.update(size=256), r"\$\.size: 256 is not of type 'object'"),
    (lambda c: c.update(size={"longest_edge": 256}), r"\$\.size: .* is not valid under any of the given schemas"),
    (lambda c: c.update(resample=99), r"\$\.resample: 99 is not one of \[0, 1, 2, 3, 4, 5\]"),
    (lambda c: c.update(image_std=[0.5, 0.0, 0.5]), r"\$\.image_std\[1\]: 0\.0 is less than or equal to the minimum of 0"),
    (lambda c: c.update(image_mean=[0.5, 0.5]), r"\$\.image_mean: \[0\.5, 0\.5\] is too short"),
    (lambda c: c.update(do_center_crop="yes"), r"\$\.do_center_crop: 'yes' is not of type 'boolean'"),
])
def test_a_hand_edited_preprocessor_config_is_refused_at_load_naming_the_key(bundle_copy, change, message):
    _edit(bundle_copy / "preprocessor_config.json", change)
    with pytest.raises(BundleError, match=rf"{bundle_copy / 'preprocessor_config.json'} {message}"):
        Engine.from_bundle(bundle_copy)


def test_a_preprocessor_that_gives_another_size_than_the_encoder_takes_is_refused_at_load(bundle_copy):
    """Every item failed at run time (each with the size error) instead."""
    (h, w) = Bundle.load(bundle_copy).pixel_input[1][:2]
    _edit(bundle_copy / "preprocessor_config.json", lambda c: c.update(crop_size={"height": h + 8, "width": w}))
    with pytest.raises(BundleError, match=rf"gives {h + 8}x{w} images but the image encoder takes {h}x{w} \(graphs\.image_encoder pixel_values\)"):
        Engine.from_bundle(bundle_copy)
