"""uint8 pixels served (issue 27.2): preprocess hands the image encoder uint8 (batch, H, W, 3), a
client may send uint8 pixels to the image encoder itself, and the served answers equal the
in-process ones of the same checkpoint exported with float32 pixels."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import PHOTOS
from tests.triton.conftest import parse_config

pytest.importorskip("tritonclient", reason="needs fusionrt[serve]")
pytestmark = pytest.mark.slow

TEXTS = ["what a lovely picture", "this scene looks awful to me", "", "great", "gloomy view", "such a beautiful painting"]


@pytest.fixture(scope="module")
def float_bundle(tiny_checkpoint, tmp_path_factory):
    from fusionrt.export import ExportOptions, export_bundle

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("float_pixels") / "fp32",
                         ExportOptions(max_batch_size=4, pixel_dtype="float32", accept_small_eval_set=True), progress=False)


def test_repository_passes_uint8_between_preprocess_and_image_encoder(served_repository):
    pre = parse_config(served_repository / "preprocess" / "config.pbtxt")
    image = parse_config(served_repository / "image_encoder" / "config.pbtxt")
    (sent,) = [t for t in pre.output if t.name == "pixel_values"]
    (taken,) = image.input
    assert (sent.data_type, list(sent.dims)) == (taken.data_type, list(taken.dims)) == (2, [32, 32, 3])  # TYPE_UINT8


def test_served_uint8_answers_equal_in_process_float(client, tiny_bundle, float_bundle, photo_dir):
    from fusionrt import Engine

    images = [(photo_dir / name).read_bytes() for name in PHOTOS]
    served = client.predict(TEXTS, images)
    with Engine.from_bundle(float_bundle, intra_op_num_threads=1) as engine:
        expected = engine.predict(TEXTS, images)
    for s, e in zip(served, expected):
        assert s.label == e.label
        np.testing.assert_allclose(list(s.probabilities.values()), list(e.probabilities.values()), atol=1e-5, rtol=0)


def test_client_sends_uint8_pixels_to_the_image_encoder(client, tiny_bundle, photo_dir):
    """A client that decodes itself sends (batch, H, W, 3) uint8: a quarter of the float32 bytes."""
    import tritonclient.grpc as grpcclient

    from fusionrt import Engine

    with Engine.from_bundle(tiny_bundle, intra_op_num_threads=1) as engine:
        feed = engine.preprocess(TEXTS[:4], [photo_dir / name for name in PHOTOS[:4]])
        expected = engine.runtime.infer_graph("image_encoder", {"pixel_values": feed["pixel_values"]})["image_features"]
    pixels = feed["pixel_values"]
    assert pixels.dtype == np.uint8 and pixels.nbytes * 4 == pixels.size * np.dtype(np.float32).itemsize
    request = grpcclient.InferInput("pixel_values", list(pixels.shape), "UINT8")
    request.set_data_from_numpy(pixels)
    answer = client._connection().infer("image_encoder", [request], outputs=[grpcclient.InferRequestedOutput("image_features")])
    np.testing.assert_allclose(answer.as_numpy("image_features"), expected, atol=1e-5, rtol=0)
