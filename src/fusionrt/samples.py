"""Sample inputs shared by the demo, the benchmarks and the tests: real photographs bundled in the
scikit-image wheel (no download), each paired with a caption."""

from __future__ import annotations

import os
from pathlib import Path

# (caption, file name in photo_dir()); the last two exercise grayscale and RGBA decoding.
DEMO_PAIRS = (
    ("what a lovely picture of an astronaut", "astronaut.png"),
    ("this coffee looks awful to me", "coffee.png"),
    ("such a delightful cat , really", "chelsea.png"),
    ("honestly a dreadful rocket launch", "rocket.jpg"),
    ("i find this photographer cheerful", "camera.png"),  # grayscale
    ("the logo here is ugly", "logo.png"),  # RGBA
)


def photo_dir() -> Path:
    """Folder of scikit-image's bundled sample images (``pip install scikit-image``, in ``fusionrt[demo]``)."""
    import skimage

    return Path(skimage.__file__).parent / "data"


# Colour photographs of scikit-image's data folder that a camera could have taken (the rest are
# microscopy, charts or synthetic); the sources of the camera-size set.
CAMERA_SOURCES = (
    "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
    "motorcycle_right.png", "retina.jpg", "hubble_deep_field.jpg",
)
_CAMERA_STAMP = ".fusionrt-camera-photos.json"
_CAMERA_RECIPE = 1


def make_camera_photos(
    directory: str | os.PathLike,
    count: int,
    seed: int = 0,
    size: tuple[int, int] = (4032, 3024),
    quality: int = 92,
    threads: int = 2,
) -> list[Path]:
    """Write ``count`` camera-size JPEG photographs made from :data:`CAMERA_SOURCES`.

    Photograph ``i`` is source ``i % len(CAMERA_SOURCES)`` under a random variant drawn from
    ``(seed, i)``: a crop of 55-100% of the source's area at the target's aspect ratio, a horizontal
    flip (p = 0.5), a brightness factor in [0.75, 1.25], every fourth one in portrait orientation;
    upscaled (bicubic) to ``size`` (12 megapixels by default, a phone's 4:3 sensor), with Gaussian
    sensor-like noise (sigma 2-5 of 255, a 512-pixel tile repeated) and encoded as a JPEG of
    ``quality`` (4:2:0 chroma subsampling, as phones write).

    Files are named ``NNNN-<source>.jpg``; a stamp in ``directory`` records the recipe, so a second
    call with the same arguments reuses the files. Only those file names are ever written.

    Args:
        directory: folder to write into (created).
        count: number of photographs (>= 1).
        seed: seed of the variants.
        size: ``(width, height)`` in pixels of a landscape photograph.
        quality: JPEG quality, 1-95.
        threads: encoding threads (Pillow releases the GIL while resizing and encoding).

    Returns:
        The ``count`` paths, in index order.

    Raises:
        ValueError: ``count`` < 1 or ``quality`` outside 1-95.
        ImportError: scikit-image is not installed (``pip install 'fusionrt[demo]'``).
    """
    import json
    from concurrent.futures import ThreadPoolExecutor

    if count < 1 or not 1 <= quality <= 95:
        raise ValueError(f"count must be >= 1 and quality 1-95, got count={count}, quality={quality}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{i:04d}-{Path(CAMERA_SOURCES[i % len(CAMERA_SOURCES)]).stem}.jpg" for i in range(count)]
    recipe = {"recipe": _CAMERA_RECIPE, "seed": seed, "size": list(size), "quality": quality}
    stamp = directory / _CAMERA_STAMP
    done = json.loads(stamp.read_text()) if stamp.is_file() else {}
    reuse = {k: v for k, v in done.items() if k != "count"} == recipe
    todo = [i for i in range(count) if not (reuse and i < done.get("count", 0) and paths[i].is_file())]
    source_dir = photo_dir()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(lambda i: _camera_photo(source_dir, i, seed, size, quality, paths[i]), todo))
    stamp.write_text(json.dumps({**recipe, "count": max(count, done.get("count", 0) if reuse else 0)}))
    return paths


def _camera_photo(source_dir: Path, index: int, seed: int, size: tuple[int, int], quality: int, path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng([seed, index])
    source = source_dir / CAMERA_SOURCES[index % len(CAMERA_SOURCES)]
    camera_variant(source, rng, size if index % 4 != 3 else size[::-1], quality, path)


def camera_variant(source: Path, rng, size: tuple[int, int], quality: int, path: Path) -> None:
    """Write one camera-size variant of photograph ``source`` to ``path`` (see :func:`make_camera_photos`).

    Args:
        source: a photograph Pillow reads.
        rng: a ``numpy.random.Generator`` drawing the variant.
        size: ``(width, height)`` of the JPEG written.
        quality: JPEG quality, 1-95.
        path: the file to write (through a temporary sibling renamed into place).
    """
    import numpy as np
    from PIL import Image

    with Image.open(source) as src:
        img = src.convert("RGB")
    width, height = size
    aspect = width / height
    area = img.width * img.height * rng.uniform(0.55, 1.0)
    cw = min(img.width, int(round((area * aspect) ** 0.5)))
    ch = min(img.height, int(round(cw / aspect)))
    cw = min(cw, int(round(ch * aspect)))
    x0 = int(rng.integers(0, img.width - cw + 1))
    y0 = int(rng.integers(0, img.height - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    gain = rng.uniform(0.75, 1.25)
    img = img.point([min(255, int(v * gain + 0.5)) for v in range(256)] * 3)  # brightness, a LUT
    img = img.resize((width, height), Image.Resampling.BICUBIC)
    # Sensor-like noise: a 512x512 tile of N(0, sigma) repeated over the frame (drawing 36 M normals
    # a photograph would cost more than the rest of the recipe).
    tile = np.rint(rng.standard_normal((512, 512, 3), dtype=np.float32) * rng.uniform(2.0, 5.0)).astype(np.int16)
    reps = (-(-height // 512), -(-width // 512), 1)
    pixels = np.asarray(img, dtype=np.int16) + np.tile(tile, reps)[:height, :width]  # (H, W, 3)
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    tmp = path.with_name(f".{path.name}.tmp")
    out.save(tmp, format="JPEG", quality=quality, subsampling=2)
    os.replace(tmp, path)
