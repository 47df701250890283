"""The hostile inputs of the engine tests, through the Triton client and `fusionrt predict`:
each bad item fails alone with a clear error, good items are answered, the server keeps serving."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from fusionrt import InputError
from fusionrt.cli import main


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _good_images(photo_dir) -> dict:
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    buf = io.BytesIO()
    p.save(buf, format="PNG", transparency=0)
    return {
        "grayscale": (photo_dir / "camera.png").read_bytes(),
        "rgba": (photo_dir / "logo.png").read_bytes(),
        "la": _png(Image.new("LA", (9, 7), (30, 100))),
        "palette-transparency": buf.getvalue(),
        "16-bit": _png(Image.fromarray(np.array([[0, 65535], [1000, 40000]], dtype=np.uint16))),
        "1x1": _png(Image.new("RGB", (1, 1), (200, 10, 10))),
    }


def _bomb() -> bytes:
    """A 20000 x 10000 bilevel PNG: a few KB on the wire, 200 M pixels (over twice Pillow's
    decompression-bomb limit) once decoded."""
    return _png(Image.new("1", (20000, 10000)))


def _bad_images(photo_dir) -> dict:
    jpeg = (photo_dir / "rocket.jpg").read_bytes()
    return {
        "decompression-bomb": _bomb(),
        "truncated-jpeg": jpeg[: len(jpeg) // 3],
        "zero-bytes": b"",
        "random-bytes": np.random.default_rng(0).bytes(500),
        "text-file": b"just some text, not an image\n",
    }


TEXTS = ["", "   ", "word " * 10_000, "猫 😺 مرحبا", "ctrl\x00\x07\x1b"]


def test_client_answers_hostile_texts_and_images(client, photo_dir):
    good = _good_images(photo_dir)
    texts = TEXTS + ["caption"] * len(good)
    images = [photo_dir / "coffee.png"] * len(TEXTS) + list(good.values())
    preds = client.predict(texts, images)
    assert len(preds) == len(texts) and all(p.label in client.labels for p in preds)
    assert preds[2].truncated is True and preds[0].truncated is False


def test_client_bad_images_fail_alone_and_server_keeps_serving(client, photo_dir):
    bad = _bad_images(photo_dir)
    images = [photo_dir / "chelsea.png"] + list(bad.values()) + [photo_dir / "rocket.jpg"]
    results = client.predict(["x"] * len(images), images, errors="return")
    assert not isinstance(results[0], Exception) and not isinstance(results[-1], Exception)
    for name, r in zip(bad, results[1:-1]):
        assert isinstance(r, InputError), name
        assert "image" in str(r).lower(), (name, str(r))
    assert "MAX_IMAGE_PIXELS" in str(results[1])  # the bomb: the limit and how to raise it
    with pytest.raises(InputError, match="got 2 texts and 1 images"):
        client.predict(["a", "b"], [photo_dir / "coffee.png"])
    assert client.predict(["still serving"], [photo_dir / "coffee.png"])[0].label in client.labels


def test_cli_predict_hostile_inputs(tiny_bundle, photo_dir, tmp_path, capsys):
    args = ["predict", str(tiny_bundle), "--json"]
    for i, data in enumerate(list(_good_images(photo_dir).values()) + list(_bad_images(photo_dir).values())):
        path = tmp_path / f"img{i}.bin"
        path.write_bytes(data)
        args += ["--text", TEXTS[i % len(TEXTS)], "--image", str(path)]
    code = main(args)
    rows = json.loads(capsys.readouterr().out)
    assert code == 1  # some items failed
    assert [("error" in r) for r in rows] == [False] * 6 + [True] * 5
    assert "decompression-bomb limit" in rows[6]["error"]
    assert all("label" in r for r in rows[:6])
