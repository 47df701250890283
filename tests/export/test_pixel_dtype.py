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
from tests.conftest import PHOTOS, random_feed

TEXTS = ["what a lovely picture", "this scene looks awful to me", "", "great", "gloomy view", "such a beautiful painting"]
CASES = {
    "fp32": ("fp32", "cpu"), "fp16": ("fp16", "cpu"), "int8": ("int8", "cpu"),
    "openvino-fp32": ("fp32", "openvino"), "openvino-bf16": ("bf16", "openvino"), "openvino-int8": ("int8", "openvino"),
}
# Max |logits(uint8 bundle) - logits(float32 bundle)| per case. fp32: the graph computes the
# normalization in the same two float32 roundings as numpy, so only kernel order differs. fp16 and
# bf16: the precision's tolerance against PyTorch. int8: both calibrated on the same images (uint8
# and its normalized float32); the uint8 graph quantizes the normalized pixels, which the float
# graph also does at its first Conv, so the answers agree.
MAX_LOGIT_DIFFERENCE = {
    "fp32": TOLERANCE["fp32"], "fp16": TOLERANCE["fp16"], "int8": 0.05,
    "openvino-fp32": TOLERANCE["fp32"], "openvino-bf16": TOLERANCE["bf16"], "openvino-int8": 0.05,
}


@pytest.fixture(scope="module")
def bundle_pairs(tiny_checkpoint, tmp_path_factory):
    """case -> (uint8 bundle, float32 bundle), exported on first use."""
    from fusionrt.export import ExportOptions, export_bundle

    root, made = tmp_path_factory.mktemp("pixel_dtype"), {}

    def get(case: str):
        if case not in made:
            precision, target = CASES[case]
            if target == "openvino":
                pytest.importorskip("openvino", reason="needs fusionrt[openvino]")
            if precision == "bf16" and not cpu_info().bf16:
                pytest.skip(f"this CPU ({cpu_info().model}) has no bf16")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the tiny checkpoint's 64 calibration samples
                made[case] = tuple(
                    export_bundle(tiny_checkpoint, root / f"{case}-{dtype}",
                                  ExportOptions(precision=precision, target=target, max_batch_size=8, pixel_dtype=dtype,
                                                accept_small_eval_set=True), progress=False)
                    for dtype in ("uint8", "float32")
                )
        return made[case]

    return get


def test_uint8_graph_normalizes_as_the_image_processor(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "image_encoder.onnx"))
    (pixels,) = model.graph.input
    assert pixels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    # before the first Conv: the layout change on the uint8 bytes, then the cast and the affine map
    ops = [n.op_type for n in model.graph.node if n.op_type not in ("Identity", "Constant")]
    assert ops[: ops.index("Conv")] == ["Transpose", "Cast", "Mul", "Add"], ops[:8]


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


@pytest.mark.parametrize("case", list(CASES))
def test_uint8_and_float_bundles_give_the_same_answers(case, bundle_pairs, photo_dir):
    uint8_bundle, float_bundle = bundle_pairs(case)
    images = [photo_dir / name for name in PHOTOS]
    with Engine.from_bundle(uint8_bundle, intra_op_num_threads=1) as a, Engine.from_bundle(float_bundle, intra_op_num_threads=1) as b:
        assert a.providers == b.providers
        if CASES[case][1] == "openvino":
            assert all(p.startswith("OpenVINO CPU") for p in a.providers.values())
        got, expected = a.logits(TEXTS, images), b.logits(TEXTS, images)
        answers, expected_answers = a.predict(TEXTS, images), b.predict(TEXTS, images)
    assert np.abs(got - expected).max() <= MAX_LOGIT_DIFFERENCE[case], (case, np.abs(got - expected).max())
    assert [p.label for p in answers] == [p.label for p in expected_answers]


@pytest.mark.parametrize("case", ["int8", "openvino-int8"])
def test_static_int8_keeps_the_pixel_normalization_in_float(case, bundle_pairs):
    """The uint8 graph's Transpose, Cast, Mul and Add stay float in the QDQ graph (quantized, ONNX
    Runtime runs the Mul and Add as QLinearMul/QLinearAdd over whole images); the first Conv's
    input is quantized after them."""
    from fusionrt.export.passes import pixel_preamble

    uint8_bundle, _ = bundle_pairs(case)
    model = onnx.load(str(uint8_bundle / "image_encoder.onnx"))
    names = pixel_preamble(model)
    nodes = {n.name: n for n in model.graph.node}
    assert [nodes[n].op_type for n in names] == ["Transpose", "Cast", "Mul", "Add"]
    consumers = [n.op_type for n in model.graph.node if nodes[names[-1]].output[0] in n.input]
    assert consumers == ["QuantizeLinear"]
    assert not any(n.op_type == "DequantizeLinear" and n.output[0] in nodes[m].input for n in model.graph.node for m in names)
