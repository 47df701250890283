"""uint8 pixels into the image graph (ExportOptions.pixel_dtype, the default) against the float32
path of bundles made before: the graph's own normalization, the Engine's feed, and the answers at
every precision and runtime (ONNX Runtime fp32, fp16, static int8; OpenVINO fp32, bf16, int8)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from fusionrt import Engine, InputError
from fusionrt.bundle import Bundle
from fusionrt.cpu import cpu_info
from fusionrt.export.recipes import TOLERANCE
from tests.conftest import PHOTOS, cpu_session, ops_before_first_conv, random_feed

TEXTS = ["what a lovely picture", "this scene looks awful to me", "", "great", "gloomy view", "such a beautiful painting"]
CASES = {
    "fp32": ("fp32", "cpu"), "fp16": ("fp16", "cpu"), "int8": ("int8", "cpu"),
    "openvino-fp32": ("fp32", "openvino"), "openvino-bf16": ("bf16", "openvino"), "openvino-int8": ("int8", "openvino"),
}
# The same on a tiny EfficientNet-Lite0 with Lite0's own mean and std (raw pixel 127 is the
# normalized 0): its stem's Pad moves onto the uint8 pixels, and static INT8 dequantizes them.
LITE0_CASES = {f"lite0-{case}": CASES[case] for case in ("fp32", "int8", "openvino-fp32", "openvino-int8")}
# Max |logits(uint8 bundle) - logits(float32 bundle)| per case. fp32: the graph computes the
# normalization in the same two float32 roundings as numpy, so only kernel order differs. fp16 and
# bf16: the precision's tolerance against PyTorch. int8: both calibrated on the same images (uint8
# and its normalized float32); the uint8 graph quantizes the normalized pixels, which the float
# graph also does at its first Conv, so the answers agree.
MAX_LOGIT_DIFFERENCE = {
    "fp32": TOLERANCE["fp32"], "fp16": TOLERANCE["fp16"], "int8": 0.05,
    "openvino-fp32": TOLERANCE["fp32"], "openvino-bf16": TOLERANCE["bf16"], "openvino-int8": 0.05,
}
MAX_LOGIT_DIFFERENCE |= {case: MAX_LOGIT_DIFFERENCE[case.removeprefix("lite0-")] for case in LITE0_CASES}
# OpenVINO's FP32 and INT8 bundles are the cpu recipe's graphs: those cases run the cpu cases'
# bundles on OpenVINO (bf16, OpenVINO's alone, is exported)
REUSED = {case: case.replace("openvino-", "") for case in CASES | LITE0_CASES if "openvino-" in case and not case.endswith("bf16")}


@pytest.fixture(scope="module")
def lite0_checkpoint(tmp_path_factory, tiny_data):
    """A tiny BERT + EfficientNet-Lite0 pair trained briefly, with Lite0's preprocessor mean/std."""
    import json

    from fusionrt.model.efficientnet_lite import PREPROCESSOR_CONFIG
    from fusionrt.model.train import TrainOptions, train
    from tests.families import image_encoder_dir, text_encoder_dir

    root = tmp_path_factory.mktemp("lite0")
    image = image_encoder_dir(root, "efficientnet-lite0")
    config = json.loads((image / "preprocessor_config.json").read_text())
    (image / "preprocessor_config.json").write_text(json.dumps({**config, "image_mean": PREPROCESSOR_CONFIG["image_mean"],
                                                                "image_std": PREPROCESSOR_CONFIG["image_std"]}))
    train(tiny_data, root / "ckpt", options=TrainOptions(epochs=3, ablations=False), progress=False,
          text_encoder=text_encoder_dir(root, "bert"), image_encoder=image)
    return root / "ckpt"


@pytest.fixture(scope="module")
def bundle_pairs(request, tiny_checkpoint, tmp_path_factory):
    """case -> (uint8 bundle, float32 bundle), exported on first use."""
    from fusionrt.export import ExportOptions, export_bundle

    root, made = tmp_path_factory.mktemp("pixel_dtype"), {}

    def get(case: str):
        if case not in made:
            precision, target = (CASES | LITE0_CASES)[case]
            checkpoint = request.getfixturevalue("lite0_checkpoint") if case in LITE0_CASES else tiny_checkpoint
            if target == "openvino":
                pytest.importorskip("openvino", reason="needs fusionrt[openvino]")
            if precision == "bf16" and not cpu_info().bf16:
                pytest.skip(f"this CPU ({cpu_info().model}) has no bf16")
            if case in REUSED:  # the cpu recipe's graphs (--target openvino exports them): run on OpenVINO
                made[case] = get(REUSED[case])
                return made[case]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the tiny checkpoint's 64 calibration samples
                made[case] = tuple(
                    export_bundle(checkpoint, root / f"{case}-{dtype}",
                                  ExportOptions(precision=precision, target=target, max_batch_size=8, pixel_dtype=dtype,
                                                accept_small_eval_set=True, image_float_front=False), progress=False)
                    for dtype in ("uint8", "float32")
                )
        return made[case]

    return get


def test_uint8_graph_normalizes_as_the_image_processor(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "image_encoder.onnx"))
    (pixels,) = model.graph.input
    assert pixels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    # before the first Conv: the layout change on the uint8 bytes, the cast, and the ImageNet mean
    # per channel (the scale is in the Conv's weights; the Conv pads the centered pixels with 0)
    assert ops_before_first_conv(model) == ["Transpose", "Cast", "Sub"]
    recipe = Bundle.load(tiny_bundle).manifest.graphs["image_encoder"].recipe
    assert recipe["pixel_normalization"] == "scale folded into the first Conv, per-channel mean subtracted before it"


def test_engine_feeds_uint8_and_float_bundles_the_same_pixels(bundle_pairs, photo_dir):
    uint8_bundle, float_bundle = bundle_pairs("fp32")
    assert Bundle.load(uint8_bundle).pixel_input == ("uint8", (32, 32, 3))
    assert Bundle.load(float_bundle).pixel_input == ("float32", (3, 32, 32))
    images = [photo_dir / name for name in PHOTOS]
    with Engine.from_bundle(uint8_bundle) as a, Engine.from_bundle(float_bundle) as b:
        raw = a.preprocess(TEXTS, images)["pixel_values"]
        normalized = b.preprocess(TEXTS, images)["pixel_values"]
        assert raw.dtype == np.uint8 and raw.shape == (6, 32, 32, 3)
        assert normalized.dtype == np.float32 and normalized.shape == (6, 3, 32, 32)
        np.testing.assert_array_equal(a.image_processor.normalize(raw), normalized)  # bit for bit
        with pytest.raises(InputError, match="pixel_values has dtype uint8; this bundle's image encoder takes float32"):
            b.run({**random_feed(np.random.default_rng(0), 2, 5, 100)})
        feed = random_feed(np.random.default_rng(0), 2, 5, 100, pixel_dtype="float32")
        feed["pixel_values"][0, 0, 0, 0] = np.nan
        with pytest.raises(InputError, match="NaN"):
            b.run(feed)


# OpenVINO's cases run in the whole suite only: the fast subset keeps the pixels' path on ONNX
# Runtime (uint8 pixels reach OpenVINO through the same graph input)
SLOW_CASES = ("lite0-openvino", "openvino")


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.startswith(SLOW_CASES) else c
                                  for c in CASES | LITE0_CASES])
def test_uint8_and_float_bundles_give_the_same_answers(case, bundle_pairs, photo_dir):
    uint8_bundle, float_bundle = bundle_pairs(case)
    images = [photo_dir / name for name in PHOTOS]
    run_on = {"providers": "OpenVINO"} if case in REUSED else {}
    with Engine.from_bundle(uint8_bundle, intra_op_num_threads=1, **run_on) as a, \
            Engine.from_bundle(float_bundle, intra_op_num_threads=1, **run_on) as b:
        assert a.providers == b.providers
        if (CASES | LITE0_CASES)[case][1] == "openvino":
            assert all(p.startswith("OpenVINO CPU") for p in a.providers.values())
        got, expected = a.logits(TEXTS, images), b.logits(TEXTS, images)
        answers, expected_answers = a.predict(TEXTS, images), b.predict(TEXTS, images)
    assert np.abs(got - expected).max() <= MAX_LOGIT_DIFFERENCE[case], (case, np.abs(got - expected).max())
    assert [p.label for p in answers] == [p.label for p in expected_answers]


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.startswith(SLOW_CASES) else c
                                  for c in ("int8", "lite0-int8")])  # OpenVINO's int8 bundles have these graphs
def test_static_int8_keeps_the_pixel_preamble_off_the_quantizer(case, bundle_pairs):
    """What is left of the normalization before the first Conv stays out of the QDQ graph's
    quantized ops (quantized, ONNX Runtime runs a Mul or Add as QLinearMul/QLinearAdd over whole
    images). ResNet's Sub is quantized after it, as the float graph's first Conv input; Lite0's
    padded uint8 pixels go into the first DequantizeLinear as they are."""
    from fusionrt.export.passes import pixel_preamble

    uint8_bundle, _ = bundle_pairs(case)
    model = onnx.load(str(uint8_bundle / "image_encoder.onnx"))
    names = pixel_preamble(model)
    nodes = {n.name: n for n in model.graph.node}
    lite0 = case in LITE0_CASES
    assert [nodes[n].op_type for n in names] == (["Transpose", "Pad"] if lite0 else ["Transpose", "Cast", "Sub"])
    consumers = [n.op_type for n in model.graph.node if nodes[names[-1]].output[0] in n.input]
    assert consumers == ["DequantizeLinear" if lite0 else "QuantizeLinear"]
    assert ops_before_first_conv(model) == (["Transpose", "Pad", "DequantizeLinear"] if lite0 else
                                             ["Transpose", "Cast", "Sub", "QuantizeLinear", "DequantizeLinear"])


# Synthetic image stems as the exporter traces them: uint8 (B, H, W, 3) -> Transpose -> Cast ->
# Mul by rescale/std -> Add -mean/std -> [Pad] -> Conv -> Relu. id -> (mean, std, Pad node's
# (top, left, bottom, right) or None, Conv kernel, stride, Conv pads, the ops left before the Conv).
LITE0_MEAN, LITE0_STD = (127 / 255,) * 3, (128 / 255,) * 3  # efficientnet_lite.PREPROCESSOR_CONFIG: raw 127 is 0
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STEMS = {
    "vit-patches": ((0.5,) * 3, (0.5,) * 3, None, 4, 4, 0, ["Transpose", "Cast"]),
    "lite0-same-pad": (LITE0_MEAN, LITE0_STD, (0, 0, 1, 1), 3, 2, 0, ["Transpose", "Pad", "Cast"]),
    "resnet-imagenet": (IMAGENET_MEAN, IMAGENET_STD, None, 7, 2, 3, ["Transpose", "Cast", "Sub"]),
    "half-mean-conv-pads": ((0.5,) * 3, (0.5,) * 3, None, 3, 1, 1, ["Transpose", "Cast", "Pad"]),
}


def _stem_graph(stem: str, path, hw: int = 16, seed: int = 0):
    """Writes the synthetic uint8 stem ``stem`` to ``path``; returns its float32 twin (the same
    Conv on normalized (B, 3, H, W) pixels) as an ``onnx.ModelProto``."""
    from onnx import TensorProto, helper, numpy_helper

    mean, std, pad, kernel, stride, conv_pads, _ = STEMS[stem]
    rng = np.random.default_rng(seed)
    scale = (np.float64(1 / 255) / np.asarray(std)).astype(np.float32).reshape(1, 3, 1, 1)
    shift = (-np.asarray(mean) / np.asarray(std)).astype(np.float32).reshape(1, 3, 1, 1)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, kernel, kernel)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "B"),
             numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(shift, "shift")]
    conv_in, body = "normalized", []
    if pad is not None:
        top, left, bottom, right = pad
        inits.append(numpy_helper.from_array(np.array([0, 0, top, left, 0, 0, bottom, right], np.int64), "pads"))
        body.append(helper.make_node("Pad", ["normalized", "pads"], ["padded"], name="pad", mode="constant"))
        conv_in = "padded"
    body += [helper.make_node("Conv", [conv_in, "W", "B"], ["conv"], name="conv", kernel_shape=[kernel] * 2, strides=[stride] * 2,
                              pads=[conv_pads] * 4),
             helper.make_node("Relu", ["conv"], ["features"], name="relu")]
    out = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8, "h", "w"])
    wrapper = [helper.make_node("Transpose", ["pixel_values"], ["nchw"], name="transpose", perm=[0, 3, 1, 2]),
               helper.make_node("Cast", ["nchw"], ["float"], name="cast", to=TensorProto.FLOAT),
               helper.make_node("Mul", ["float", "scale"], ["scaled"], name="mul"),
               helper.make_node("Add", ["scaled", "shift"], ["normalized"], name="add")]
    uint8 = helper.make_model(helper.make_graph(wrapper + body, "stem", [helper.make_tensor_value_info(
        "pixel_values", TensorProto.UINT8, ["batch", hw, hw, 3])], [out], inits), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(uint8, str(path))
    float_graph = helper.make_graph(body, "stem", [helper.make_tensor_value_info("normalized", TensorProto.FLOAT, ["batch", 3, hw, hw])],
                                    [out], inits[:2] + inits[4:])
    return helper.make_model(float_graph, opset_imports=[helper.make_opsetid("", 17)])


def _normalize(pixels: np.ndarray, stem: str) -> np.ndarray:
    """``(B, H, W, 3) uint8`` -> ``(B, 3, H, W) float32`` as ImageProcessor.normalize (two roundings)."""
    from fusionrt.preprocessing import ImageProcessor

    mean, std = STEMS[stem][:2]
    return ImageProcessor(image_mean=mean, image_std=std).normalize(pixels)


def _ort(model_or_path, feed: np.ndarray) -> np.ndarray:
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    session = cpu_session(source)
    return session.run(None, {session.get_inputs()[0].name: feed})[0]


@pytest.mark.parametrize("stem", list(STEMS))
def test_fold_leaves_no_mul_or_add_over_the_image_and_the_same_features(stem, tmp_path):
    from fusionrt.export.passes import fold_pixel_normalization

    float_model = _stem_graph(stem, tmp_path / "stem.onnx")
    done = fold_pixel_normalization(tmp_path / "stem.onnx", tmp_path / "folded.onnx")
    folded = onnx.load(str(tmp_path / "folded.onnx"))
    onnx.checker.check_model(folded, full_check=True)
    assert ops_before_first_conv(folded) == STEMS[stem][-1]
    assert set(ops_before_first_conv(folded)).isdisjoint({"Mul", "Add", "Div"})
    assert done["pixel_normalization"].startswith("scale folded" if stem == "resnet-imagenet" else "folded")
    pixels = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    pixels[0, -1, :, :], pixels[1, :, -1, :] = 0, 255  # extremes along the padded border
    expected = _ort(float_model, _normalize(pixels, stem))
    np.testing.assert_allclose(_ort(tmp_path / "folded.onnx", pixels), expected, rtol=0, atol=TOLERANCE["fp32"])
    np.testing.assert_allclose(_ort(tmp_path / "stem.onnx", pixels), expected, rtol=0, atol=TOLERANCE["fp32"])


@pytest.mark.parametrize("stem", ["lite0-same-pad", "resnet-imagenet"])
def test_fold_runs_on_openvino_with_the_same_features(stem, tmp_path):
    ov = pytest.importorskip("openvino", reason="needs fusionrt[openvino]")
    from fusionrt.export.passes import fold_pixel_normalization

    float_model = _stem_graph(stem, tmp_path / "stem.onnx")
    fold_pixel_normalization(tmp_path / "stem.onnx", tmp_path / "folded.onnx")
    pixels = np.random.default_rng(2).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    compiled = ov.Core().compile_model(str(tmp_path / "folded.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(pixels)[0]
    np.testing.assert_allclose(got, _ort(float_model, _normalize(pixels, stem)), rtol=0, atol=TOLERANCE["fp32"])


def test_fold_leaves_graphs_without_the_wrapper_unchanged(tmp_path):
    from fusionrt.export.passes import fold_pixel_normalization

    float_model = _stem_graph("vit-patches", tmp_path / "stem.onnx")
    onnx.save(float_model, str(tmp_path / "float.onnx"))
    assert fold_pixel_normalization(tmp_path / "float.onnx", tmp_path / "same.onnx") == {}
    assert onnx.load(str(tmp_path / "same.onnx")).graph == float_model.graph


def test_static_int8_dequantizes_the_uint8_pixels_exactly(tmp_path):
    """After the fold, the Lite0 stem's QDQ graph reads the padded uint8 pixels with one
    DequantizeLinear of scale 1 and zero point 0 (the Cast it replaces, exactly), not a
    QuantizeLinear of a calibrated float range."""
    from onnx import numpy_helper

    from fusionrt.export.passes import fold_pixel_normalization, quantize_static_int8

    float_model = _stem_graph("lite0-same-pad", tmp_path / "stem.onnx")
    fold_pixel_normalization(tmp_path / "stem.onnx", tmp_path / "folded.onnx")
    rng = np.random.default_rng(3)
    feeds = [{"pixel_values": rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)} for _ in range(4)]
    recipe = quantize_static_int8(tmp_path / "folded.onnx", tmp_path / "int8.onnx", feeds, "minmax", reduce_range=False)
    assert recipe["pixels"] == "uint8 into the first DequantizeLinear (scale 1, zero point 0)"
    model = onnx.load(str(tmp_path / "int8.onnx"))
    assert ops_before_first_conv(model) == ["Transpose", "Pad", "DequantizeLinear"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    (dequantize,) = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == pad.output[0]]
    assert inits[dequantize.input[1]] == 1.0 and inits[dequantize.input[2]] == 0 and inits[dequantize.input[2]].dtype == np.uint8
    assert not any(n.op_type == "Cast" for n in model.graph.node)
    pixels = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    expected = _ort(float_model, _normalize(pixels, "lite0-same-pad"))
    # INT8 weights (per channel) and features: within 2% of their range
    assert np.abs(_ort(tmp_path / "int8.onnx", pixels) - expected).max() <= 0.02 * np.abs(expected).max()


def test_image_int8_front_flag_reaches_the_recipe(lite0_checkpoint, tmp_path, capsys):
    """`fusionrt export --image-int8-front float` leaves the depthwise encoder's front in float;
    the default quantizes it (both round the weights by GPTQ); the manifest says which."""
    from fusionrt.cli import main
    from tests.conftest import read_manifest

    recipes = {}
    for front in ("int8", "float"):
        out = tmp_path / front
        code = main(["export", str(lite0_checkpoint), "-o", str(out), "--precision", "int8", "--image-int8-front", front,
                     "--accept-small-eval-set"])
        assert code == 0, capsys.readouterr().err
        recipes[front] = read_manifest(out)["graphs"]["image_encoder"]["recipe"]["int8"]
    assert all(r["weight_rounding"].startswith("gptq (") for r in recipes.values()), recipes
    assert "float_nodes" not in recipes["int8"] and recipes["float"]["float_nodes"].split()[0].isdigit(), recipes
    assert int(recipes["float"]["float_nodes"].split()[0]) > 0


@pytest.mark.slow  # six exports (8 s): the fast subset keeps the region measurement in test_auto
def test_image_int8_front_auto_follows_the_region_agreement(lite0_checkpoint, tmp_path, monkeypatch):
    """By default (``image_float_front=None``) the front of a depthwise INT8 image encoder stays
    INT8 while the explanations' top region agrees with PyTorch FP32's on at least
    ``min_region_agreement`` of the evaluation data; below it the encoder is quantized again with
    its front float, kept only if that reaches the floor; the manifest records the measurements and
    the decision. FP32 graphs give PyTorch's top region."""
    from dataclasses import replace

    from fusionrt.export import ExportOptions, export_bundle
    from fusionrt.export import validate
    from tests.conftest import read_manifest

    def export(name: str, **fields) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the tiny checkpoint's 64 calibration samples
            export_bundle(lite0_checkpoint, tmp_path / name, ExportOptions(accept_small_eval_set=True, **fields), progress=False)
        return read_manifest(tmp_path / name)

    fp32 = export("fp32", precision="fp32")["validation"]
    assert fp32["region_agreement"] >= 0.97, fp32["region_agreement"]
    kept = export("kept", precision="int8")  # no floor by default: measured, nothing decided
    first = kept["validation"]["region_agreement"]
    assert 0.0 < first < 1.0 and kept["validation"]["min_region_agreement"] == 0.0
    assert not {"float_nodes", "float_front"} & set(kept["graphs"]["image_encoder"]["recipe"]["int8"])
    held = export("held", precision="int8", min_region_agreement=round(first - 0.005, 3))["graphs"]["image_encoder"]["recipe"]["int8"]
    assert "float_nodes" not in held and held["float_front"].startswith(f"not needed: top region agreement {first:.1%} >= ")
    # a floor nothing reaches: the float front is tried, measured, and not kept (the all-INT8 graph stays)
    tried = export("tried", precision="int8", min_region_agreement=1.0)
    tried_int8 = tried["graphs"]["image_encoder"]["recipe"]["int8"]
    assert "float_nodes" not in tried_int8 and tried["validation"]["region_agreement"] == first
    assert tried_int8["float_front"].startswith(f"top region agreement {first:.1%} with every conv INT8 < --min-region-agreement 1; ")
    assert tried_int8["float_front"].endswith("with the front float, also below: not kept"), tried_int8
    assert {g: v["sha256"] for g, v in tried["graphs"].items()} == {g: v["sha256"] for g, v in kept["graphs"].items()}
    # the float front reaching the floor is kept (its measurement stands in for a checkpoint where it does)
    real, calls = validate.validate_bundle_graphs, []

    def second_reaches(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1] if len(calls) == 1 else replace(calls[-1], region_agreement=0.995)
    monkeypatch.setattr(validate, "validate_bundle_graphs", second_reaches)
    floated = export("floated", precision="int8", min_region_agreement=0.99)
    floated_int8 = floated["graphs"]["image_encoder"]["recipe"]["int8"]
    assert len(calls) == 2 and int(floated_int8["float_nodes"].split()[0]) > 0, floated_int8
    assert floated_int8["float_front"] == f"top region agreement {first:.1%} with every conv INT8 < --min-region-agreement 0.99; 99.5% with the front float"
    assert floated["graphs"]["text_encoder"]["sha256"] == kept["graphs"]["text_encoder"]["sha256"]  # only the image encoder again
    assert floated["graphs"]["image_encoder"]["sha256"] != kept["graphs"]["image_encoder"]["sha256"]
    # a float front that fails validation is not kept either: the all-INT8 graph, which passed, stays
    from fusionrt import ExportValidationError

    def second_fails(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        if len(calls) == 4:
            raise ExportValidationError("gate", ["logits: eval batch 0: max abs error 9 > tolerance 1"])
        return calls[-1]
    monkeypatch.setattr(validate, "validate_bundle_graphs", second_fails)
    failed = export("failed", precision="int8", min_region_agreement=0.99)
    failed_int8 = failed["graphs"]["image_encoder"]["recipe"]["int8"]
    assert len(calls) == 4 and "float_nodes" not in failed_int8
    assert failed_int8["float_front"].endswith("the front float failed validation (logits: eval batch 0: max abs error 9 > tolerance 1): not kept")
    assert failed["graphs"]["image_encoder"]["sha256"] == kept["graphs"]["image_encoder"]["sha256"]
