import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusionrt import CheckpointError, InputError
from fusionrt.model.efficientnet_lite import (
    PREPROCESSOR_CONFIG,
    EfficientNetLite,
    EfficientNetLiteConfig,
    SameConv2d,
    efficientnet_lite0,
    load_reference_weights,
)
from fusionrt.preprocessing import ImageProcessor
from tests.families import TINY_LITE

# ImageNet-1k class indices a person can check on each photograph (the top-5 must hold one).
CLEAR_PHOTOS = {
    "chelsea.png": {281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat", 285: "Egyptian cat"},
    "coffee.png": {967: "espresso", 968: "cup", 504: "coffee mug"},
    "motorcycle_left.png": {665: "moped", 670: "motor scooter"},
    "rocket.jpg": {657: "missile", 744: "projectile", 812: "space shuttle"},
}
TINY = EfficientNetLiteConfig.from_dict(TINY_LITE)


def test_pretrained_lite0_recognizes_the_bundled_photographs(photo_dir):
    model = efficientnet_lite0(num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # Lite0: 4.65 M with the classifier
    processor = ImageProcessor.from_dict(PREPROCESSOR_CONFIG)
    pixels = torch.from_numpy(processor([photo_dir / name for name in CLEAR_PHOTOS]))
    with torch.inference_mode():
        top5 = model.logits(pixels).topk(5, dim=-1).indices.tolist()
    misses = {name: top for (name, classes), top in zip(CLEAR_PHOTOS.items(), top5) if not set(classes) & set(top)}
    assert not misses, misses


def test_encoder_returns_the_last_feature_map_without_classifier():
    model = efficientnet_lite0()
    assert model.classifier is None and model.hidden_size == 1280
    with torch.inference_mode():
        fmap = model(torch.randn(2, 3, 224, 224))
    assert fmap.shape == (2, 1280, 7, 7) and fmap.dtype == torch.float32
    assert 0.0 <= float(fmap.min()) and float(fmap.max()) <= 6.0  # after the head's ReLU6
    with pytest.raises(CheckpointError, match="no classifier"):
        model.logits(torch.randn(1, 3, 224, 224))


@pytest.mark.parametrize("kernel,stride", [(3, 1), (5, 1), (3, 2), (5, 2)])
def test_same_padding_is_tensorflows(kernel, stride):
    """TensorFlow "SAME": total padding max((ceil(n/s) - 1) * s + k - n, 0), the extra pixel after."""
    torch.manual_seed(0)
    conv = SameConv2d(4, 4, kernel, stride, groups=4)
    x = torch.randn(1, 4, 28, 28)
    total = max((-(-28 // stride) - 1) * stride + kernel - 28, 0)
    before, after = total // 2, total - total // 2
    expected = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, None, stride, 0, 1, 4)
    with torch.inference_mode():
        torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-6)


def test_sizes_not_a_multiple_of_32_are_refused():
    with pytest.raises(InputError, match=r"multiples of 32, got \(224, 200\)"):
        EfficientNetLite(TINY).eval()(torch.randn(1, 3, 224, 200))


def test_onnx_export_has_one_constant_pad_per_stride_2_conv_and_matches_eager():
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = EfficientNetLite(TINY).eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), buffer, input_names=["pixel_values"], output_names=["fmap"],
                      dynamic_axes={"pixel_values": {0: "batch"}, "fmap": {0: "batch"}}, opset_version=17, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue()).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("Pad") == 3 and not {"Slice", "Transpose", "ConstantOfShape"} & set(ops)  # stem + 2 stride-2 stages
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64), dtype=np.float32)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"pixel_values": x})[0], expected, rtol=0, atol=1e-5)  # FP32


def test_weights_of_another_architecture_are_refused():
    with pytest.raises(CheckpointError, match="does not match"):
        load_reference_weights(EfficientNetLite(TINY))


def test_config_round_trips_through_json():
    import json

    assert EfficientNetLiteConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    with pytest.raises(CheckpointError, match="stages"):
        EfficientNetLiteConfig(stages=((1, 3, 0, 1, 8),))


def test_family_row_builds_it_and_its_regions_feed_the_head():
    from fusionrt.model import MultimodalClassifier
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    model = MultimodalClassifier(tiny_config(100, image_config=TINY.to_dict())).eval()
    assert isinstance(model.image_encoder, EfficientNetLite) and model.image_family.model_type == "efficientnet-lite0"
    with torch.inference_mode():
        pixels = torch.randn(2, 3, 64, 64)
        regions, fmap = model.encode_image(pixels), model.image_encoder(pixels)
    assert regions.shape == (2, 64, 24) and fmap.shape == (2, 24, 8, 8)  # TINY strides by 8: (B, h*w, head_channels)
    torch.testing.assert_close(regions, fmap.flatten(2).transpose(1, 2), rtol=0, atol=0)


def test_image_encoder_flag_names_the_packaged_lite0(tmp_path):
    from fusionrt.model.hub import load_image_encoder

    encoder, config, processor = load_image_encoder("efficientnet-lite0")
    assert config["model_type"] == "efficientnet-lite0" and config["head_channels"] == 1280
    assert processor == ImageProcessor.from_dict(PREPROCESSOR_CONFIG) and processor.resample == 3
    reference = efficientnet_lite0()
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), reference.state_dict().values()))
    with pytest.raises(InputError, match=r"--image-encoder efficientnet-lite9: no such directory.*efficientnet-lite0"):
        load_image_encoder("efficientnet-lite9")


def test_checkpoint_with_it_exports_and_matches_its_own_module(tmp_path):
    from fusionrt.export import export_bundle
    from fusionrt.model import MultimodalClassifier, save_checkpoint
    from fusionrt.model.data import LABELS
    from fusionrt.preprocessing import TextTokenizer
    from tests.conftest import build_tiny_tokenizer, read_manifest, tiny_config

    config = tiny_config(build_tiny_tokenizer(tmp_path / "tok"), image_config=TINY.to_dict())
    config.id2label = dict(enumerate(LABELS))
    torch.manual_seed(0)
    model = MultimodalClassifier(config).eval()
    processor = ImageProcessor.from_dict({**PREPROCESSOR_CONFIG, "size": {"shortest_edge": 72}, "crop_size": {"height": 64, "width": 64}})
    save_checkpoint(tmp_path / "ckpt", model, TextTokenizer.from_dir(tmp_path / "tok", config.max_seq_len), processor, tmp_path / "tok")
    manifest = read_manifest(export_bundle(tmp_path / "ckpt", tmp_path / "bundle", progress=False))
    checked = manifest["validation"]["encoder_reference"]["traced"]["image_encoder"]
    assert checked["reference"] == "fusionrt.EfficientNetLite" and checked["max_error"] <= checked["tolerance"]
    assert manifest["validation"]["max_abs_error"] <= 1e-4  # FP32 graphs against PyTorch FP32
