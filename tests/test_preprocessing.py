import dataclasses
import io
import json
import re

import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fusionrt import InputError
from fusionrt.preprocessing import ImageProcessor, TextTokenizer, coalesce_png_idat, default_buckets, load_image


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"])
def test_pixels_match_transformers_image_processor(photo_dir, name):
    """Independent reference: transformers' BitImageProcessor with the same keys."""
    from transformers import BitImageProcessor

    ours = ImageProcessor(crop_resample=False)  # exact pixels (jpeg_draft only acts on large JPEGs)
    ref = BitImageProcessor(**{k: v for k, v in ours.to_dict().items() if k not in ("image_processor_type", "crop_resample")})
    expected = ref(Image.open(photo_dir / name).convert("RGB"), return_tensors="np")["pixel_values"][0]
    got = ours.process_one(photo_dir / name)
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the default resamples only the cropped pixels: one level of 255 at most, on few pixels
    fast = ImageProcessor().process_one(photo_dir / name)
    level = 1 / 255 / min(ours.image_std)
    np.testing.assert_allclose(fast, expected, atol=level + 1e-5)
    assert np.mean(np.abs(fast - expected) > 1e-5) < 1e-3


# Hugging Face's "fixed size, no crop" configuration: the whole image resized to H x W, the aspect
# ratio not kept (ViTImageProcessor; ConvNextImageProcessor from 384 pixels). A non-square size
# catches swapped axes.
SQUASH = {"size": {"height": 200, "width": 300}, "do_center_crop": False, "resample": 3,
          "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}


@pytest.mark.parametrize("name", ["coffee.png", "chelsea.png", "rocket.jpg", "page.png", "hubble_deep_field.jpg"])
def test_fixed_size_pixels_match_transformers_vit_image_processor(photo_dir, name):
    """A fixed size squashes the photograph as ViTImageProcessor does, bit for bit (within float32
    rounding) with jpeg_draft off; crop_resample has nothing to fold in, so the defaults give
    the same pixels but for a drafted JPEG (tests/test_draft_decoding.py)."""
    from transformers import ViTImageProcessor

    exact = ImageProcessor.from_dict({**SQUASH, "jpeg_draft": False})
    ref = ViTImageProcessor(**{k: v for k, v in SQUASH.items() if k != "do_center_crop"})
    expected = ref(Image.open(photo_dir / name).convert("RGB"), return_tensors="np")["pixel_values"][0]
    got = exact.process_one(photo_dir / name)
    assert got.shape == expected.shape == (3, 200, 300) and exact.output_hw == (200, 300)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    if name.endswith(".png"):
        np.testing.assert_array_equal(ImageProcessor.from_dict(SQUASH).process_one(photo_dir / name), got)


def test_a_fixed_size_round_trips_and_reads_as_hugging_face_reads_it(photo_dir, tmp_path):
    """to_dict -> from_dict is the same processor, and the preprocessor_config.json it writes (a
    bundle's) gives transformers' AutoImageProcessor the same pixels; pixels() in threads, uint8
    and the batch call all give H x W."""
    from transformers import AutoImageProcessor

    proc = ImageProcessor.from_dict({**SQUASH, "jpeg_draft": False, "crop_resample": False})
    assert ImageProcessor.from_dict(proc.to_dict()) == proc and ImageProcessor.from_dict(SQUASH).to_dict()["size"] == SQUASH["size"]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(proc.to_dict()))
    assert ImageProcessor.from_file(tmp_path / "preprocessor_config.json") == proc
    ref = AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)
    images = [photo_dir / n for n in ("coffee.png", "page.png", "rocket.jpg")]
    expected = ref([Image.open(p).convert("RGB") for p in images], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(proc(images), expected, atol=1e-5)
    np.testing.assert_array_equal(proc.pixels(images, threads=3), proc(images))
    uint8 = proc.pixels(images, "uint8", threads=2)
    assert uint8.shape == (3, 200, 300, 3) and proc.pixel_shape("uint8") == (200, 300, 3)
    np.testing.assert_array_equal(proc.normalize(uint8), proc(images))


@pytest.mark.parametrize("size,key", [({"height": 224}, "width"), ({"width": 0, "height": 5}, "width"), ({}, "height"),
                                      ({"shortest_edge": "x"}, "shortest_edge"), ({"longest_edge": 5}, "height")])
def test_a_bad_size_is_an_input_error_naming_the_key(size, key):
    with pytest.raises(InputError, match=re.escape(f"size['{key}'] is missing or < 1")):
        ImageProcessor(size=size)
    with pytest.raises(InputError, match="size must be a dict"):
        ImageProcessor(size=224)
    with pytest.raises(InputError, match="output size depends on the input"):
        ImageProcessor(size={"shortest_edge": 64}, do_center_crop=False).output_hw


@pytest.mark.parametrize("size", [(600, 400), (400, 600), (451, 300), (300, 451), (257, 1000), (224, 224), (1001, 513)])
def test_crop_resample_equals_resize_then_crop(size):
    """resize_crop against resize + center crop, uint8, on a textured image of odd sizes: equal
    within one level of 255 on landscape and square images; on portrait ones Pillow's two passes
    round differently (about a fifth of the pixels, by at most two levels)."""
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8)).filter(ImageFilter.SMOOTH)
    for resample in (2, 3):
        proc = ImageProcessor(resample=resample)
        whole = proc.crop(proc.resize(img))
        folded = proc.resize_crop(img)
        assert folded.size == (224, 224) and whole.shape == (224, 224, 3)
        diff = np.abs(np.asarray(folded).astype(int) - whole)
        portrait = size[1] > size[0]
        assert diff.max() <= (2 if portrait else 1), (size, resample, diff.max())
        assert np.mean(diff > 0) < (0.3 if portrait else 1e-3), (size, resample, np.mean(diff > 0))
        assert diff.mean() < (0.3 if portrait else 1e-3)


def test_crop_resample_falls_back_where_the_crop_pads():
    proc = ImageProcessor(size={"shortest_edge": 200})  # resized short side 200 < crop 224: zero-padded
    img = Image.new("RGB", (300, 400), (10, 200, 30))
    assert proc.resize_crop(img).size == proc.resize(img).size == (200, 266)
    np.testing.assert_array_equal(proc.crop(proc.resize_crop(img)), proc.crop(proc.resize(img)))


def test_crop_resample_is_written_only_when_off():
    assert "crop_resample" not in ImageProcessor().to_dict()
    off = ImageProcessor(crop_resample=False)
    assert off.to_dict()["crop_resample"] is False
    assert ImageProcessor.from_dict(off.to_dict()) == off


def test_all_input_kinds_decode_identically(photo_dir):
    path = photo_dir / "coffee.png"
    proc = ImageProcessor()
    ref = proc.process_one(path)
    pil = Image.open(path)
    for variant in (str(path), path.read_bytes(), bytearray(path.read_bytes()), pil, np.asarray(pil.convert("RGB"))):
        np.testing.assert_array_equal(proc.process_one(variant), ref)


def test_process_one_writes_into_out(photo_dir):
    proc = ImageProcessor()
    batch = np.full((2, 3, 224, 224), np.nan, np.float32)
    got = proc.process_one(photo_dir / "coffee.png", out=batch[1])
    assert got is batch[1] or np.shares_memory(got, batch)
    np.testing.assert_array_equal(batch[1], proc.process_one(photo_dir / "coffee.png"))
    assert np.isnan(batch[0]).all()  # the other slot is untouched
    with pytest.raises(ValueError, match=r"out has shape \(3, 100, 100\) and dtype float32; expected a \(3, 224, 224\) float32 array"):
        proc.process_one(photo_dir / "coffee.png", out=np.empty((3, 100, 100), np.float32))
    with pytest.raises(ValueError, match="dtype float64"):
        proc.crop_normalize(np.zeros((224, 224, 3), np.uint8), out=np.empty((3, 224, 224)))
    with pytest.raises(ValueError, match="out has type list"):
        proc.crop_normalize(np.zeros((224, 224, 3), np.uint8), out=[])


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_pixels_in_threads_equal_pixels_in_one(photo_dir, dtype):
    """``pixels(threads=4)`` gives the serial batch's bytes, and a bad image fails the batch naming
    the first bad index, as the serial loop does."""
    proc = ImageProcessor()
    images = [photo_dir / n for n in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png")]
    np.testing.assert_array_equal(proc.pixels(images, dtype, threads=4), proc.pixels(images, dtype))
    bad = images[:2] + [b"not an image", images[3], b"nor this"]
    for threads in (1, 4):
        with pytest.raises(InputError, match=r"^images\[2\]: "):
            proc.pixels(bad, dtype, threads=threads)


def test_pool_takes_the_costliest_images_first(photo_dir, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from fusionrt.preprocessing import costliest_first, map_costliest_first

    big = np.zeros((40, 40, 3), np.uint8)
    missing = tmp_path / "missing.png"
    images = [b"x" * 10, photo_dir / "coffee.png", b"y" * 30, big, missing, Image.new("RGB", (2, 2))]
    size = (photo_dir / "coffee.png").stat().st_size
    assert size > 40 * 40 * 3 > 30
    assert costliest_first(images) == [1, 3, 2, 5, 0, 4]  # file size, array pixels, bytes, PIL 2x2x3, bytes, unknown 0
    released = memoryview(b"abc")
    released.release()
    odd = [released, None, 3, memoryview(bytes(100)).cast("B", (10, 10)), b"x" * 50]
    assert costliest_first(odd) == [3, 4, 0, 1, 2]  # a 2-D memoryview counts its bytes; odd objects cost 0
    with pytest.raises(ValueError, match="got 2 items for 3 images"):
        map_costliest_first(None, str, [b"a", b"b", b"c"], items=[1, 2])
    seen = []
    with ThreadPoolExecutor(1) as pool:  # one thread: the order of the calls is the pool's order
        out = map_costliest_first(pool, lambda x: seen.append(x) or f"r{x}", [b"a", b"ccc", b"bb"], items=[0, 1, 2])
    assert seen == [1, 2, 0] and out == ["r0", "r1", "r2"]  # results in the given order


def test_released_memoryview_is_an_input_error():
    view = memoryview(b"not an image")
    view.release()
    with pytest.raises(InputError, match="image bytes cannot be read"):
        load_image(view)


def test_one_lazy_pil_image_in_many_threads(photo_dir):
    # Pillow's lazy load() is not thread-safe: the same opened image in several pool slots
    # must decode identically in each (it failed intermittently with an AssertionError).
    from concurrent.futures import ThreadPoolExecutor

    proc = ImageProcessor()
    expected = proc.process_one(photo_dir / "rocket.jpg")
    for _ in range(5):
        lazy = Image.open(photo_dir / "rocket.jpg")
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(proc.process_one, [lazy] * 8))
        for out in outs:
            np.testing.assert_array_equal(out, expected)


def test_grayscale_becomes_three_equal_channels(photo_dir):
    img = load_image(photo_dir / "camera.png")
    assert img.mode == "RGB"
    a = np.asarray(img)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()


def test_alpha_compositing_equals_pillows_alpha_composite_on_white():
    # Every 8-bit value under every alpha: the same bytes as Image.alpha_composite on opaque white.
    value, alpha = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    rgba = np.stack([value, 255 - value, value // 2, alpha], axis=-1)  # (256, 256, 4)
    img = Image.fromarray(rgba, "RGBA")
    reference = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img).convert("RGB")
    np.testing.assert_array_equal(np.asarray(load_image(img)), np.asarray(reference))


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = np.asarray(load_image(_png(rgba)))
    assert tuple(out[1, 1]) == (255, 255, 255)
    assert tuple(out[0, 0]) == (0, 0, 255)
    la = Image.new("LA", (2, 2), (0, 128))  # black at half alpha -> mid gray
    assert abs(int(np.asarray(load_image(_png(la)))[0, 0, 0]) - 127) <= 1


def test_every_alpha_mode_is_composited_on_white():
    # PIL images a caller hands in may be in any alpha mode; Pillow converts premultiplied La to LA only.
    la = Image.fromarray(np.dstack([np.arange(16, dtype=np.uint8).reshape(4, 4) * 16, np.full((4, 4), 128, np.uint8)]), "LA")
    rgba = la.convert("RGBA")
    for mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = rgba.convert(mode) if mode != "La" else la.convert("La")
        straight = img.convert("LA" if mode == "La" else "RGBA")
        assert np.array_equal(np.asarray(load_image(img)), np.asarray(load_image(straight))), mode


def test_palette_with_transparency():
    p = Image.new("P", (3, 3), 0)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.putpixel((1, 1), 1)
    data = _png(p, transparency=0)
    out = np.asarray(load_image(data))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (10, 200, 30)


@pytest.mark.parametrize("mode, key, other", [("RGB", (10, 20, 30), (200, 100, 50)), ("L", 7, 100)])
def test_an_rgb_or_grey_png_with_a_transparent_colour_is_composited_on_white(mode, key, other):
    """A tRNS chunk in an RGB or greyscale PNG makes one colour transparent (as browsers show it):
    those pixels become white, the others keep their colour; without the chunk nothing changes."""
    img = Image.new(mode, (3, 3), key)
    img.putpixel((1, 1), other)
    grey = (lambda v: (v, v, v)) if mode == "L" else tuple
    out = np.asarray(load_image(_png(img, transparency=key)))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == grey(other)
    plain = np.asarray(load_image(_png(img)))
    assert tuple(plain[0, 0]) == grey(key) and tuple(plain[1, 1]) == grey(other)


def test_a_palette_with_alpha_is_composited_on_white_as_its_png_is():
    """A PIL image in mode P whose palette holds the alpha (what Image.quantize and convert("P")
    make of an RGBA image) has no "transparency" key: it was converted to RGB as if opaque, so a
    transparent pixel took its colour (red here) in-process and white from the same image saved."""
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    for p in (rgba.quantize(), rgba.convert("P")):
        assert p.mode == "P" and p.palette.mode == "RGBA" and "transparency" not in p.info
        out = np.asarray(load_image(p))
        assert tuple(out[1, 1]) == (255, 255, 255) and tuple(out[0, 0]) == (0, 0, 255)
        np.testing.assert_array_equal(out, np.asarray(load_image(_png(p))))


def test_16bit_is_scaled_not_clipped():
    arr = np.array([[0, 65535], [32896, 1000]], dtype=np.uint16)
    data = _png(Image.fromarray(arr))
    out = np.asarray(load_image(data))[..., 0]
    assert out.tolist() == [[0, 255], [128, 4]]


def test_a_16bit_grey_png_with_a_transparent_level_is_composited_on_white():
    """A 16-bit greyscale PNG's tRNS chunk names one 16-bit level: those pixels become white, the
    others keep their scaled grey (they kept the keyed level's grey before)."""
    arr = np.array([[1000, 30000], [1000, 65535]], dtype=np.uint16)
    data = _png(Image.fromarray(arr), transparency=1000)
    assert Image.open(io.BytesIO(data)).info["transparency"] == 1000  # the chunk is really there
    out = np.asarray(load_image(data))[..., 0]
    assert out.tolist() == [[255, 117], [255, 255]]
    assert np.asarray(load_image(_png(Image.fromarray(arr))))[..., 0].tolist() == [[4, 117], [4, 255]]


def test_float_image_scaled_by_data_range():
    arr = np.array([[-1.0, 0.0], [1.0, 3.0]], dtype=np.float32)
    out = np.asarray(load_image(Image.fromarray(arr, "F")))[..., 0]
    assert out.tolist() == [[0, 64], [128, 255]]


@pytest.mark.parametrize("values", [[[np.nan, np.nan]], [[np.nan, 1.0]], [[np.inf, 0.0]], [[-np.inf, 2.0]]])
def test_float_image_with_nan_or_inf_is_input_error_without_a_warning(values):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "All-NaN slice encountered" came first
        with pytest.raises(InputError, match="NaN or Inf"):
            load_image(Image.fromarray(np.array(values, np.float32), "F"))


def test_exif_orientation_applied():
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif.tobytes())
    out = load_image(buf.getvalue())
    assert out.size == (2, 4)


@pytest.mark.parametrize("fmt", ["TIFF", "PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_image_size_is_the_decoded_size_for_every_orientation(fmt, orientation):
    # The explanation's heat map takes this size; Pillow's TIFF plugin reports the oriented size
    # before loading (it rotates the image itself), so swapping it again gave a transposed map.
    from fusionrt.preprocessing import image_size

    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.new("RGB", (6, 3), (200, 30, 60)).save(buf, format=fmt, exif=exif)
    data = buf.getvalue()
    decoded = load_image(data).size
    assert decoded == ((3, 6) if orientation >= 5 else (6, 3))
    assert image_size(data) == decoded
    assert image_size(Image.open(io.BytesIO(data))) == decoded  # a lazily opened PIL image
    loaded = Image.open(io.BytesIO(data))
    loaded.load()
    assert image_size(loaded) == load_image(loaded).size


def test_animation_uses_first_frame():
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = np.asarray(load_image(buf.getvalue()))
    assert out[0, 0, 0] > 200 and out[0, 0, 1] < 50


def test_a_damaged_later_frame_does_not_fail_the_first_one_that_is_read():
    """Counting the frames (to go back to the first) parsed every later frame: a GIF whose second
    frame is cut short raised struct.error, a TIFF whose second page lacks its width TypeError, not
    an InputError, so Engine.predict raised for the whole batch, errors="return" or not. The first
    frame, which is all fusionrt reads, decodes; a PIL image moved to a later frame still goes back."""
    import struct

    first = Image.new("RGB", (8, 6), (250, 10, 10))
    buf = io.BytesIO()
    first.save(buf, format="GIF")
    gif = buf.getvalue()[:-1] + b"," + bytes(6)  # the trailer replaced by half an image descriptor
    buf = io.BytesIO()
    first.save(buf, format="TIFF", save_all=True, append_images=[Image.new("RGB", (8, 6), (0, 0, 255))])
    tiff = bytearray(buf.getvalue())
    ifd = struct.unpack_from("<I", tiff, 4)[0]
    second = struct.unpack_from("<I", tiff, ifd + 2 + 12 * struct.unpack_from("<H", tiff, ifd)[0])[0]
    for k in range(struct.unpack_from("<H", tiff, second)[0]):
        if struct.unpack_from("<H", tiff, second + 2 + 12 * k)[0] == 256:  # ImageWidth -> an unknown tag
            struct.pack_into("<H", tiff, second + 2 + 12 * k, 0x7FFF)
    for data in (gif, bytes(tiff)):
        with pytest.raises(Exception) as damaged:
            Image.open(io.BytesIO(data)).n_frames
        assert not isinstance(damaged.value, InputError)
        out = np.asarray(load_image(data))
        assert out.shape == (6, 8, 3) and (np.abs(out.astype(int) - (250, 10, 10)) <= 8).all()
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    moved = Image.open(io.BytesIO(buf.getvalue()))
    moved.seek(1)
    assert tuple(np.asarray(load_image(moved))[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (b"", "0 bytes"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 10, "could not be decoded|not a decodable"),
        (np.random.default_rng(0).bytes(300), "not a decodable"),
        (b"hello, this is a text file\n", "not a decodable"),
        (np.zeros((4, 4, 3), np.float32), "dtype float32"),
        (np.zeros((4, 4, 2), np.uint8), "C in"),
        ("/nonexistent/x.png", "not found"),
        (12, "unsupported image type int"),
    ],
)
def test_bad_images_raise_input_error(bad, match):
    with pytest.raises(InputError, match=match):
        load_image(bad)


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, checking each CRC-32."""
    out, pos = [], 8
    while pos < len(png):
        n = int.from_bytes(png[pos : pos + 4], "big")
        kind, payload = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + n]
        assert int.from_bytes(png[pos + 8 + n : pos + 12 + n], "big") == zlib.crc32(kind + payload), kind
        out.append((kind, payload))
        pos += 12 + n
    return out


def _chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def _rechunk(png: bytes, size: int) -> bytes:
    """The same PNG with its image data split into IDAT chunks of ``size`` bytes."""
    chunks = _chunks(png)
    data = b"".join(p for k, p in chunks if k == b"IDAT")
    out, written = [png[:8]], False
    for kind, payload in chunks:
        if kind != b"IDAT":
            out.append(_chunk(kind, payload))
        elif not written:
            out += [_chunk(b"IDAT", data[i : i + size]) for i in range(0, len(data), size)]
            written = True
    return b"".join(out)


def test_coalesced_png_decodes_to_the_same_pixels(photo_dir):
    # astronaut.png as scikit-image ships it: 97 IDAT chunks of 8 KiB
    original = (photo_dir / "astronaut.png").read_bytes()
    assert sum(k == b"IDAT" for k, _ in _chunks(original)) == 97
    merged = coalesce_png_idat(original)
    kinds = [k for k, _ in _chunks(merged)]  # every CRC valid
    assert kinds.count(b"IDAT") == 1 and kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(merged))), np.asarray(Image.open(io.BytesIO(original))))
    # RGBA with tiny chunks, and an interlaced palette image
    rgba = np.random.default_rng(1).integers(0, 256, (37, 53, 4), dtype=np.uint8)
    for img, opts in ((Image.fromarray(rgba, "RGBA"), {}), (Image.fromarray(rgba[..., :3]).convert("P"), {"interlace": 1})):
        buf = io.BytesIO()
        img.save(buf, "PNG", **opts)
        split = _rechunk(buf.getvalue(), 100)
        assert sum(k == b"IDAT" for k, _ in _chunks(split)) > 10
        merged = coalesce_png_idat(split)
        assert [k for k, _ in _chunks(merged)].count(b"IDAT") == 1
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(merged))), np.asarray(img))
        assert np.array_equal(np.asarray(load_image(split)), np.asarray(load_image(buf.getvalue())))
    # APNG: the default image's IDAT run is merged, the frames' fdAT chunks stay where they are
    frames = [Image.fromarray(rgba[..., :3] // (k + 1)) for k in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    merged = coalesce_png_idat(_rechunk(buf.getvalue(), 50))
    kinds = [k for k, _ in _chunks(merged)]
    assert kinds.count(b"IDAT") == 1 and kinds.count(b"fdAT") == 2
    assert Image.open(io.BytesIO(merged)).n_frames == 3
    assert np.array_equal(np.asarray(load_image(merged)), np.asarray(frames[0]))


def test_coalescing_leaves_other_bytes_alone(photo_dir):
    jpeg = (photo_dir / "rocket.jpg").read_bytes()
    png = _rechunk(_png(Image.new("RGB", (40, 40), (10, 200, 30))), 20)
    chunks = _chunks(png)
    idats = [i for i, (k, _) in enumerate(chunks) if k == b"IDAT"]
    assert len(idats) > 2
    cut_mid_chunk = png[: len(png) - 30]
    # IDAT runs apart (invalid PNG): a tEXt chunk after the first and after the second IDAT
    apart = []
    for k in (1, 2):
        at = 8 + sum(12 + len(p) for _, p in chunks[: idats[k]])
        apart.append(png[:at] + _chunk(b"tEXt", b"k\x00v") + png[at:])
    single = _png(Image.new("RGB", (4, 4)))
    for data in (jpeg, cut_mid_chunk, *apart, single, b"\x89PNG\r\n\x1a\n"):
        assert coalesce_png_idat(data) is data
    with pytest.raises(InputError):
        load_image(cut_mid_chunk)
    # bytes after IEND are not read (by Pillow either): the IDAT run is still merged
    trailing = coalesce_png_idat(png + b"\x00\x01 junk")
    assert trailing.endswith(b"\x00\x01 junk") and trailing.count(b"IDAT") == 1
    assert coalesce_png_idat(memoryview(png)) == coalesce_png_idat(png)
    with pytest.raises(TypeError):
        coalesce_png_idat(3)


def test_damaged_zlib_tail_in_a_later_chunk_still_decodes():
    # Pillow stops inflating at the last row: a wrong zlib checksum alone in the last IDAT chunk
    # was never read unmerged, but fails once merged; load_image then decodes the unmerged bytes.
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    stream = bytearray(zlib.compress(b"".join(b"\x00" + row.tobytes() for row in rgb)))
    stream[-1] ^= 0xFF
    ihdr = _png(Image.fromarray(rgb))[8:33]
    split = b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", bytes(stream[:-4])) + _chunk(b"IDAT", bytes(stream[-4:])) + _chunk(b"IEND", b"")
    with pytest.raises(OSError):
        Image.open(io.BytesIO(coalesce_png_idat(split))).load()
    assert np.array_equal(np.asarray(load_image(split)), rgb)


def test_a_path_that_is_no_image_file_says_what_it_is(tmp_path):
    from fusionrt.preprocessing import image_size

    cases = {"": "image path is an empty string", tmp_path: f"image path {tmp_path} is a folder, not an image file",
             "/dev/null": "image path /dev/null is not a regular file", tmp_path / "x.png": "image file not found",
             "https://example.com/cat.jpg": "image path https://example.com/cat.jpg is a URL; fusionrt reads local files"}
    for path, message in cases.items():
        for read in (load_image, image_size):
            with pytest.raises(InputError, match="^" + re.escape(message)):
                read(path)


def test_empty_or_unreadable_image_file_is_input_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty.png is empty"):
        load_image(tmp_path / "empty.png")


def test_a_large_file_that_is_no_image_is_refused_from_its_header(tmp_path, monkeypatch, photo_dir):
    import pathlib

    from fusionrt.preprocessing import image as image_module

    monkeypatch.setattr(image_module, "_PROBE_FILE_BYTES", 1000)  # stands for 32 MiB: a video named .jpg
    video = tmp_path / "movie.jpg"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(5000))
    big_png = tmp_path / "big.png"
    big_png.write_bytes((photo_dir / "coffee.png").read_bytes())
    expected = np.asarray(load_image(big_png))
    read = []
    real_read_bytes = pathlib.Path.read_bytes
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda self: read.append(self.name) or real_read_bytes(self))
    with pytest.raises(InputError, match="movie.jpg is not a decodable image"):
        load_image(video)
    assert np.array_equal(np.asarray(load_image(big_png)), expected)  # a large image is read and decoded as before
    assert read == ["big.png"]


def test_truncated_jpeg(photo_dir):
    data = (photo_dir / "rocket.jpg").read_bytes()
    with pytest.raises(InputError):
        load_image(data[: len(data) // 3])


def test_decompression_bomb_is_input_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InputError, match="MAX_IMAGE_PIXELS"):
        load_image(_png(Image.new("RGB", (20, 20))))


def test_a_decompression_bomb_names_its_size_and_one_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for side in (12, 20):  # 144 pixels: fusionrt's own check; 400 (over twice the limit): Pillow's
        with warnings.catch_warnings(), pytest.raises(InputError) as caught:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Pillow's own, at open
            load_image(_png(Image.new("RGB", (side, side))))
        message = str(caught.value)
        assert re.match(rf"image <\d+ bytes> has ({side}x{side} = )?{side * side} pixels, over Pillow's decompression-bomb limit of 100 pixels;", message)
        assert "200" not in message  # Pillow's own threshold, twice the limit, is not named


def test_image_size_of_what_load_image_refuses_is_input_error(monkeypatch):
    from fusionrt.preprocessing import image_size

    released = memoryview(b"abc")
    released.release()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    cases = [(None, "unsupported image type NoneType"), (5, "unsupported image type int"), (np.zeros(3, np.uint8), r"shape \(3,\)"),
             (released, "released memoryview"), (_png(Image.new("RGB", (20, 20))), r"has 400 pixels, over .* limit of 100 pixels")]
    for image, match in cases:
        with pytest.raises(InputError, match=match):
            image_size(image)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG"])
def test_an_exif_block_that_is_no_tiff_counts_as_no_orientation_in_every_format(fmt, tmp_path):
    """Pillow's getexif raises SyntaxError on an EXIF block that is no TIFF structure in a PNG or
    WebP (it ignores one in a JPEG): load_image refused such a photograph whose pixels decode, and
    image_size raised the SyntaxError itself. It is read as upright, as a JPEG is."""
    from fusionrt.preprocessing import image_size

    buf = io.BytesIO()
    Image.new("RGB", (6, 3), (200, 10, 10)).save(buf, format=fmt, exif=b"Exif\x00\x00XY\x00*\x00\x00\x00\x08")
    (tmp_path / "bad").write_bytes(buf.getvalue())
    for source in (buf.getvalue(), tmp_path / "bad"):
        rgb = np.asarray(load_image(source))
        assert rgb.shape == (3, 6, 3) and image_size(source) == (6, 3)
        assert abs(int(rgb[1, 2, 0]) - 200) <= 8 and int(rgb[1, 2, 1]) <= 20  # the pixels, upright


def test_images_between_one_and_two_bomb_limits_are_refused_in_threads_too(monkeypatch):
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; fusionrt refuses, and must do so
    # without a (thread-unsafe) warnings filter: images are decoded in a thread pool.
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    big, small = _png(Image.new("RGB", (120, 120))), _png(Image.new("RGB", (8, 8)))  # 14,400 pixels: 1.44x

    def outcome(data):
        try:
            load_image(data)
            return "decoded"
        except InputError as exc:
            assert "14400 pixels" in str(exc) and "MAX_IMAGE_PIXELS" in str(exc)
            return "refused"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(outcome, [big, small, small, small] * 200))
    assert results == ["refused", "decoded", "decoded", "decoded"] * 200


def test_texts_that_utf8_cannot_encode_are_input_errors(tiny_checkpoint):
    tok = TextTokenizer.from_dir(tiny_checkpoint, max_seq_len=12)
    with pytest.raises(InputError, match=r"texts\[1\] is not valid Unicode text: surrogates not allowed at character 1"):
        tok(["fine", "a\ud800b"])
    feed, _ = tok(["zero\u200bwidth \U0010ffff emoji \U0001f600 nul \x00"])  # valid, if odd, Unicode
    assert feed["input_ids"].shape[0] == 1


def test_one_pixel_image_is_resized_and_cropped():
    out = ImageProcessor().process_one(np.full((1, 1, 3), 200, np.uint8))
    assert out.shape == (3, 224, 224) and np.isfinite(out).all()


def test_a_resize_over_the_bomb_limit_is_refused_and_the_crop_resample_needs_none(monkeypatch):
    # A 3000x1 strip is 120,000x40 after a 40-pixel shortest-edge resize: 1,600x its own pixels
    # (a 150 KB 1x50000 PNG took 760 MB with exact pixels; 9.8 GB at the default 256).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    strip = np.random.default_rng(0).integers(0, 256, (1, 3000, 3), dtype=np.uint8)
    exact = ImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, crop_resample=False)
    with pytest.raises(InputError, match=r"3000x1 pixels resizes to 120000x40 = 4800000 pixels, over .* limit of 100000"):
        exact.process_one(strip, dtype="uint8")
    cropped = dataclasses.replace(exact, crop_resample=True).process_one(strip, dtype="uint8")
    assert cropped.shape == (32, 32, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # no limit: the whole resize, the same pixels within a level
    whole = exact.process_one(strip, dtype="uint8")
    assert np.abs(whole.astype(int) - cropped).max() <= 1


def test_small_image_without_resize_is_padded():
    proc = ImageProcessor(do_resize=False)
    out = proc.process_one(np.full((10, 300, 3), 255, np.uint8))
    assert out.shape == (3, 224, 224)


def test_tokenizer_truncates_pads_longest_and_flags(tiny_checkpoint):
    tok = TextTokenizer.from_dir(tiny_checkpoint, max_seq_len=12)
    feed, truncated = tok(["a", "what a lovely picture", "x " * 50, ""])
    assert feed["input_ids"].shape == (4, 12) and feed["input_ids"].dtype == np.int64
    assert truncated.tolist() == [False, False, True, False]
    assert feed["attention_mask"].sum(1).tolist() == [3, 6, 12, 2]
    feed, _ = tok(["a", "b c"])
    assert feed["input_ids"].shape == (2, 4)  # padded to the longest
    feed, _ = tok(["a"], pad_to=12)
    assert feed["input_ids"].shape == (1, 12)
    with pytest.raises(InputError, match=r"texts\[1\] is int"):
        tok(["a", 3])


def test_tokenizer_pads_to_the_smallest_bucket_that_holds_the_batch(tiny_checkpoint):
    tok = TextTokenizer.from_dir(tiny_checkpoint, max_seq_len=12)
    assert default_buckets(128) == (16, 32, 64, 128) and default_buckets(24) == (16, 24) and default_buckets(8) == (8,)
    for texts, length in ((["a"], 4), (["a", "b c"], 4), (["what a lovely picture"], 8), (["x " * 50], 12)):
        feed, _ = tok(texts, buckets=(4, 8, 12))
        plain, _ = tok(texts)
        assert feed["input_ids"].shape == (len(texts), length)
        width = plain["input_ids"].shape[1]
        for name, value in feed.items():  # the same tokens, more padding
            assert (value[:, :width] == plain[name]).all() and (value[:, width:] == (tok.pad_id if name == "input_ids" else 0)).all()
    with pytest.raises(InputError, match="last sequence bucket must be max_seq_len=12"):
        tok(["a"], buckets=(4, 8))
    with pytest.raises(InputError, match="distinct increasing"):
        tok(["a"], buckets=(8, 4, 12))
    with pytest.raises(InputError, match="pad_to or buckets, not both"):
        tok(["a"], pad_to=12, buckets=(12,))
    for bad, match in (((16.5, 12), "must be integers, got 16.5"), ("4,12", "sequence of integers"),
                       ((True, 12), "must be integers, got True"), ((None,), "must be integers, got None")):
        with pytest.raises(InputError, match=match):
            tok(["a"], buckets=bad)


def test_exact_pixels_turns_off_draft_and_crop_resample_with_the_same_answers(tiny_bundle, photo_dir):
    """Engine.from_bundle(exact_pixels=True) against the default on the bundled photographs, as they
    are and turned to portrait (where Pillow's box resize rounds differently on about a fifth of the
    pixels, by one or two levels of 255)."""
    from fusionrt import Engine
    from tests.conftest import answers_and_pixels

    photos = [Image.open(p).convert("RGB") for p in sorted(photo_dir.iterdir()) if p.suffix in (".png", ".jpg")][:4]
    images = photos + [p.transpose(Image.Transpose.ROTATE_90) for p in photos]
    texts = ["a lovely picture", "an awful scene"] * 4
    with Engine.from_bundle(tiny_bundle, intra_op_num_threads=1) as fast, \
            Engine.from_bundle(tiny_bundle, intra_op_num_threads=1, exact_pixels=True) as exact:
        assert not exact.image_processor.jpeg_draft and not exact.image_processor.crop_resample
        assert fast.image_processor.jpeg_draft and fast.image_processor.crop_resample
        labels_a, top, pa = answers_and_pixels(fast, texts, images)
        labels_b, ref, pb = answers_and_pixels(exact, texts, images)
    assert labels_a == labels_b
    assert np.abs(top - ref).max() < 0.01
    assert np.abs(pa - pb).max() <= 2


@pytest.mark.parametrize(
    "texts, images, match",
    [
        (None, ["a.png"], "texts is NoneType; expected a sequence"),
        (["a"], None, "images is NoneType; expected a sequence"),
        (3, ["a.png"], "texts is int; expected a sequence"),
        (b"lovely", ["a.png"], r"texts is bytes; expected a str or a sequence of str \(decode"),
        ("lovely", ["a.png", "b.png"], "a single text goes with a single image, got a list of 2 images"),
        (["a", "b"], "a.png", "got a single image for a list of texts"),
        (["a", "b"], ["a.png"], "got 2 texts and 1 images"),
        (["a", "b"], np.zeros((2, 4, 4, 3), np.uint8), r"images is one \(2, 4, 4, 3\) array; pass a list of \(H, W, C\) arrays"),
    ],
)
def test_texts_and_images_that_do_not_pair_are_named(texts, images, match):
    from fusionrt.preprocessing import as_pairs

    with pytest.raises(InputError, match=match):
        as_pairs(texts, images)


def test_pairs_of_any_sequence():
    from fusionrt.preprocessing import as_pairs

    assert as_pairs("a", "a.png") == (["a"], ["a.png"])
    assert as_pairs(("a", "b"), iter(["a.png", "b.png"])) == (["a", "b"], ["a.png", "b.png"])


def test_images_as_a_numpy_array_of_paths_pair_with_texts():
    """A column of paths as pandas' .to_numpy() or np.array(list_of_paths) gives it (1-D, str or
    object) was refused as "got a single image for a list of texts"."""
    from fusionrt.preprocessing import as_pairs

    for images in (np.array(["a.png", "b.png"]), np.array([Path("a.png"), "b.png"], dtype=object)):
        texts, paths = as_pairs(np.array(["x", "y"]), images)
        assert texts == ["x", "y"] and [str(p) for p in paths] == ["a.png", "b.png"]
        assert all(type(p) in (str, type(Path("a.png"))) for p in paths)  # Python objects, not numpy scalars
    with pytest.raises(InputError, match="got 2 texts and 1 images"):
        as_pairs(["x", "y"], np.array(["a.png"]))
    with pytest.raises(InputError, match="got a single image for a list of texts"):
        as_pairs(["x"], np.zeros((4, 4), np.uint8))  # one grayscale image is not a list


def test_image_size_of_a_png_reads_no_pixels_unless_it_has_an_exif_chunk(tmp_path, monkeypatch):
    """Pillow's getexif decodes a whole PNG to look for an eXIf chunk after its pixels (17 ms for a
    750x650 photo): image_size skips that when the file holds none, and still finds one there."""
    import struct
    import zlib

    from PIL import PngImagePlugin

    from fusionrt.preprocessing import image_size

    plain = tmp_path / "plain.png"
    Image.new("RGB", (6, 3), (200, 30, 60)).save(plain)
    exif = Image.Exif()
    exif[0x0112] = 6
    payload = exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif\0\0") else exif.tobytes()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    data = plain.read_bytes()
    late = tmp_path / "late.png"  # an eXIf chunk after IDAT, before IEND (the PNG spec allows it)
    late.write_bytes(data[:-12] + chunk + data[-12:])
    with Image.open(late) as img:
        assert "exif" not in img.info  # not seen before the pixels are read
    assert load_image(late).size == (3, 6) == image_size(late) == image_size(late.read_bytes())

    def no_decoding(self):
        raise AssertionError("decoded the pixels")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    assert image_size(plain) == (6, 3) == image_size(plain.read_bytes())


def test_image_size_of_a_png_oriented_by_xmp_or_a_raw_exif_profile(tmp_path):
    """Pillow's getexif (so load_image) also reads a PNG's orientation from XMP (tiff:Orientation in
    an iTXt "XML:com.adobe.xmp" chunk, before or after the pixels) and from ImageMagick's "Raw
    profile type exif" text chunk; image_size looked for an eXIf chunk only and gave the stored
    size, so the explanation's heat map was transposed against the photo it is drawn on."""
    from PIL import PngImagePlugin

    from fusionrt.explanation import Explanation, ImageGeometry
    from fusionrt.prediction import Prediction
    from fusionrt.preprocessing import image_size

    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    exif = Image.Exif()
    exif[0x0112] = 6
    hexed = exif.tobytes().hex()
    profile = f"\nexif\n{len(exif.tobytes()):8d}\n" + "\n".join(hexed[i : i + 72] for i in range(0, len(hexed), 72)) + "\n"
    pixels = Image.new("RGB", (6, 3), (200, 30, 60))
    variants = {}
    for name, add in (("xmp", lambda info: info.add_itxt("XML:com.adobe.xmp", xmp)),
                      ("raw-profile", lambda info: info.add_text("Raw profile type exif", profile, zip=True))):
        info = PngImagePlugin.PngInfo()
        add(info)
        variants[name] = _png(pixels, pnginfo=info)
    plain = _png(pixels)
    itxt = _chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp.encode())
    variants["xmp-after-the-pixels"] = plain[:-12] + itxt + plain[-12:]
    for name, data in variants.items():
        (tmp_path / f"{name}.png").write_bytes(data)
        assert load_image(data).size == (3, 6), name
        assert image_size(data) == image_size(tmp_path / f"{name}.png") == (3, 6), name
    assert image_size(plain) == load_image(plain).size == (6, 3)
    # the heat map has the decoded photo's shape: (height 6, width 3)
    geometry = ImageGeometry.of(*image_size(variants["xmp"]), {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}})
    prediction = Prediction("a", 1.0, {"a": 1.0}, {"text": 0.5, "image": 0.5}, False)
    explanation = Explanation(prediction, "a", [], [], [], np.full((4, 4), 1 / 16, np.float32), prediction.modality_weights, geometry, "gradient")
    assert explanation.heat_map().shape == (6, 3)


def test_decode_threads_follow_the_cpus_this_process_may_run_on():
    """Two per CPU of the affinity mask (taskset -c 0: 2 threads); it counted every CPU of the machine."""
    import os
    import subprocess
    import sys

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity on this platform")
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from fusionrt.preprocessing import default_decode_threads; print(default_decode_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "2"
