"""JPEG draft decoding (DCT-domain scaling while decoding, ImageProcessor.jpeg_draft, on by
default) on camera-size photographs: the scale it picks, agreement of the answers with full
decoding, PNG never drafted, decompression bombs still refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fusionrt import Engine, InputError
from fusionrt.preprocessing import BatchPreprocessor, ImageProcessor, load_image
from tests.conftest import answers_and_pixels

TEXTS = ["what a lovely picture", "this scene looks awful to me", "a great design", "gloomy view",
         "such a beautiful painting", "horrible poster", "cheerful pattern", "dreadful scene"]


@pytest.fixture(scope="module")
def camera_photos(tmp_path_factory):
    """8 camera-size JPEGs (4032x3024 or 3024x4032, quality 92, 4:2:0), made from the bundled photographs."""
    from fusionrt.samples import make_camera_photos

    return make_camera_photos(tmp_path_factory.mktemp("camera"), 8, seed=0)


@pytest.mark.parametrize("target", [40, 224, 256, 300, 378, 500, 1000, 1600])
def test_draft_picks_the_smallest_scale_keeping_the_short_side(camera_photos, target):
    path = camera_photos[3]  # every fourth photograph is a portrait: 3024x4032
    full = Image.open(path).size
    short = min(full)
    drafted = load_image(path, draft_short_side=target).size
    scale = full[0] / drafted[0]
    assert min(drafted) >= target
    assert scale in (1, 2, 4, 8)
    assert drafted == tuple(-(-side // int(scale)) for side in full)  # libjpeg rounds up
    # the next smaller scale would cut the short side below the target (or 1/8 is the limit)
    assert scale == 8 or -(-short // int(2 * scale)) < target
    assert (scale > 1) == (short > 2 * target)


@pytest.mark.parametrize("target", [(224, 224), (1000, 400), (400, 1000), (1600, 300)])
@pytest.mark.parametrize("photo", [0, 3])  # 4032x3024, 3024x4032
def test_a_fixed_size_draft_keeps_both_sides(camera_photos, photo, target):
    """A fixed-size resize (size {"height", "width"}) needs the width and the height each >= the
    target's: the largest scale that keeps both, even where the short side alone would allow more."""
    full = Image.open(camera_photos[photo]).size
    drafted = load_image(camera_photos[photo], draft_size=target).size
    scale = full[0] // drafted[0]
    assert drafted == tuple(-(-side // scale) for side in full) and scale in (1, 2, 4, 8)
    assert drafted[0] >= target[0] and drafted[1] >= target[1]
    assert scale == 8 or any(-(-side // (2 * scale)) < t for side, t in zip(full, target))
    processor = ImageProcessor(size={"height": target[1], "width": target[0]}, do_center_crop=False)
    assert processor.process_one(camera_photos[photo], dtype="uint8").shape == (target[1], target[0], 3)


def test_a_fixed_size_draft_reads_the_exif_orientation():
    """A JPEG stored 2400x1600 with EXIF orientation 6 (rotated a quarter turn) is 1600x2400: a
    1100-pixel width needs the stored height whole (scale 1), where the stored width would allow 2."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (2400, 1600), (90, 140, 200)).save(buffer, format="JPEG", exif=exif.tobytes())
    assert load_image(buffer.getvalue()).size == (1600, 2400)
    assert load_image(buffer.getvalue(), draft_size=(1100, 300)).size == (1600, 2400)
    assert load_image(buffer.getvalue(), draft_size=(300, 1100)).size == (800, 1200)


def test_draft_answers_agree_with_full_decoding_on_camera_photos(tiny_bundle, camera_photos):
    with Engine.from_bundle(tiny_bundle, intra_op_num_threads=1) as drafted, \
            Engine.from_bundle(tiny_bundle, intra_op_num_threads=1, jpeg_draft=False) as exact:
        assert drafted.image_processor.jpeg_draft and not exact.image_processor.jpeg_draft
        labels_a, top, pixels_a = answers_and_pixels(drafted, TEXTS, camera_photos)
        labels_b, ref, pixels_b = answers_and_pixels(exact, TEXTS, camera_photos)
    assert labels_a == labels_b
    assert np.abs(top - ref).max() < 0.02
    # the tiny bundle's 32x32 crop of a 40-pixel resize: draft (1/8 scale) vs full decode
    difference = np.abs(pixels_a - pixels_b)
    assert 0 < difference.mean() < 1.0 and difference.max() <= 40


@pytest.mark.parametrize("keys", [{}, {"size": {"height": 224, "width": 224}, "do_center_crop": False}], ids=["crop", "squash"])
def test_draft_pixels_are_close_at_the_default_size(camera_photos, keys):
    """The default 256 resize and 224 crop, and a 224x224 fixed size (ViT's): mean difference
    under 1 of 255."""
    drafted, exact = ImageProcessor(**keys), ImageProcessor(**keys, jpeg_draft=False)
    for path in camera_photos[:4]:
        a = drafted.process_one(path, dtype="uint8").astype(np.int16)
        b = exact.process_one(path, dtype="uint8").astype(np.int16)
        assert a.shape == b.shape == (224, 224, 3)
        assert 0 < np.abs(a - b).mean() < 1.0


def test_draft_never_used_for_png():
    rng = np.random.default_rng(0)
    image = np.kron(rng.integers(0, 256, (30, 40, 3)), np.ones((50, 50, 1))).astype(np.uint8)  # 1500x2000
    image = (image.astype(np.int16) + rng.integers(-8, 9, image.shape)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert load_image(data, draft_short_side=40).size == (2000, 1500)
    np.testing.assert_array_equal(np.asarray(load_image(data, draft_short_side=40)), image)
    for dtype in ("uint8", "float32"):
        np.testing.assert_array_equal(ImageProcessor().process_one(data, dtype=dtype),
                                      ImageProcessor(jpeg_draft=False).process_one(data, dtype=dtype))


def test_draft_decodes_in_the_pool_as_serially(camera_photos):
    processor = ImageProcessor()
    pooled = BatchPreprocessor(None, processor, (224, 224, 3), decode_threads=4, pixel_dtype="uint8")
    serial = BatchPreprocessor(None, processor, (224, 224, 3), decode_threads=0, pixel_dtype="uint8")
    try:
        a = pooled.decode(camera_photos, out=pooled.pixel_buffer(len(camera_photos)))
        b = serial.decode(camera_photos)
    finally:
        pooled.close()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Image.open's own, before fusionrt refuses
def test_decompression_bombs_stay_refused_with_draft(camera_photos, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4032 * 3024 - 1)
    with pytest.raises(InputError, match="decompression-bomb limit"):
        ImageProcessor().process_one(camera_photos[0])
    with pytest.raises(InputError, match="decompression-bomb limit"):
        load_image(camera_photos[0].read_bytes(), draft_short_side=256)
