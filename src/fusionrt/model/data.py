"""Data sets as JSON lines, and the deterministic synthetic set behind the default checkpoint.

A data file holds one object a line: ``{"text": str, "image": path relative to the file,
"label": str}``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, UnidentifiedImageError

from fusionrt.errors import InputError
from fusionrt.preprocessing.image import not_an_image_file_reason


@dataclass(frozen=True)
class Example:
    text: str
    image: Path  # absolute
    label: str
    source: str = ""  # where the image comes from ("synthetic", "photographs", "camera-size"); "" unknown


def read_jsonl(path: str | os.PathLike) -> list[Example]:
    """Read a JSONL data file; image paths are resolved relative to it.

    Raises:
        InputError: the file is missing or not UTF-8, a line is not a JSON object, lacks a key, has
            an empty label, or names a missing or unidentifiable image (line number given).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    try:  # utf-8-sig: a leading byte order mark (Windows editors write one) is no part of line 1
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc}); save it as UTF-8") from None
    examples = []
    # Lines end at "\n" only: str.splitlines would also split inside JSON strings holding U+2028 or U+0085.
    for lineno, line in enumerate(content.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{lineno}: not valid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise InputError(f'{path}:{lineno}: expected an object {{"text", "image", "label"}}, got {type(row).__name__}')
        for key, kinds in (("text", (str, int)), ("image", str), ("label", (str, int))):
            if not isinstance(row.get(key), kinds) or isinstance(row.get(key), bool):
                raise InputError(f"{path}:{lineno}: key {key!r} missing or not a string")
        if not str(row["label"]).strip():
            raise InputError(f"{path}:{lineno}: key 'label' is empty; give every example its class name")
        image = path.parent / row["image"]
        try:
            image = image.resolve()
            found = image.is_file()
        except (OSError, ValueError):  # a NUL byte, a symlink loop
            found = False
        if not found:  # the decoder's own words: a folder, a special file, a URL, not found
            raise InputError(f"{path}:{lineno}: {not_an_image_file_reason(image)}")
        _check_image_header(image, f"{path}:{lineno}")
        source = row.get("source", "")
        if not isinstance(source, str):
            raise InputError(f"{path}:{lineno}: key 'source' must be a string, got {source!r}")
        examples.append(Example(str(row["text"]), image, str(row["label"]), source))
    if not examples:
        raise InputError(f"data file {path} holds no examples")
    return examples


def spread(n: int, k: int) -> np.ndarray:
    """Indices of ``min(k, n)`` items spread evenly over ``n`` (first and last included, in
    order): a subset of an evaluation file that covers all of it, where its first ``k`` lines may
    hold one label only (a held-out split is written label by label).

    Returns:
        ``(min(k, n),) int64``, increasing, distinct.

    Raises:
        InputError: ``k < 1``.
    """
    if k < 1:
        raise InputError(f"a subset needs at least 1 example, got {k}")
    if k >= n:
        return np.arange(n)
    return np.round(np.linspace(0, n - 1, k)).astype(np.int64)  # distinct: the step (n-1)/(k-1) is >= 1


def _check_image_header(image: Path, where: str) -> None:
    """Refuse a file Pillow cannot identify (a page saved as .jpg, an empty file) before any
    encoding work: reads the header only, so a damaged file body is found when decoding."""
    try:
        Image.open(image).close()
    except UnidentifiedImageError:
        raise InputError(f"{where}: {image} is not an image Pillow can identify (unknown or corrupt format)") from None
    except Image.DecompressionBombError:
        pass  # the preprocessor refuses it, saying how to raise the limit
    except OSError as exc:
        raise InputError(f"{where}: image {image} cannot be read: {exc}") from None


def write_jsonl(path: str | os.PathLike, examples: list[Example], image_dir: str = "data") -> None:
    """Write examples to ``path``, their images to ``<path's folder>/<image_dir>/`` (hard links where
    the file system allows and the source has the mode a new file would get: a camera-size
    photograph is megabytes; copies elsewhere)."""
    path = Path(path)
    target = path.parent / image_dir
    target.mkdir(parents=True, exist_ok=True)
    lines = []
    for ex in examples:
        dest = target / ex.image.name
        if dest.resolve() != ex.image.resolve():
            n = len(lines)
            while dest.exists() and dest.read_bytes() != ex.image.read_bytes():  # another image of that name
                dest, n = target / f"{n:05d}_{ex.image.name}", n + 1
            _link_or_copy(ex.image, dest)
        row = {"text": ex.text, "image": f"{image_dir}/{dest.name}", "label": ex.label}
        lines.append(json.dumps(row | ({"source": ex.source} if ex.source else {})))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _link_or_copy(source: Path, dest: Path) -> None:
    if dest.exists():
        return  # same bytes (checked by the caller)
    # A hard link shares the source's mode: link only when it is the mode a new file gets here.
    if source.stat().st_mode & 0o777 == 0o666 & ~_umask():
        try:
            os.link(source, dest)
            return
        except OSError:
            pass
    shutil.copyfile(source, dest)


def _umask() -> int:
    """The process's umask, read without changing it (Linux /proc; elsewhere 0o777: always copy)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o777


# --- the synthetic set ---------------------------------------------------------------------------
# The label needs BOTH modalities: sentiment comes only from the caption, colour tone only from
# the picture, and the label is their combination (4 classes). A text-only or image-only model
# can at best get half of each class right (50% accuracy).

SENTIMENT_WORDS = {
    "positive": ["lovely", "wonderful", "delightful", "beautiful", "cheerful", "great"],
    "negative": ["awful", "terrible", "dreadful", "ugly", "gloomy", "horrible"],
}
TEMPLATES = [
    "what a {w} {n}",
    "this {n} looks {w} to me",
    "honestly a {w} {n}",
    "i find this {n} {w}",
    "such a {w} {n} , really",
    "the {n} here is {w}",
]
NOUNS = ["picture", "scene", "design", "poster", "painting", "view", "pattern"]
TONES = {
    "warm": [(220, 40, 30), (240, 130, 20), (235, 200, 30), (200, 60, 90)],
    "cool": [(30, 80, 220), (20, 170, 200), (40, 160, 70), (110, 60, 190)],
}
LABELS = [f"{s}-{t}" for s in SENTIMENT_WORDS for t in TONES]


def _draw(rng: random.Random, tone: str, size: int) -> Image.Image:
    base = rng.randint(90, 200)
    img = Image.new("RGB", (size, size), (base, base, base))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 5)):
        r, g, b = rng.choice(TONES[tone])
        color = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in (r, g, b))
        lo = max(4, size // 6)  # shape extent: a sixth to a half of the image side
        x0, y0 = rng.randint(0, size - lo), rng.randint(0, size - lo)
        x1, y1 = x0 + rng.randint(lo, max(lo, size // 2)), y0 + rng.randint(lo, max(lo, size // 2))
        shape = rng.choice(("ellipse", "rectangle", "polygon"))
        if shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=color)
        elif shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=color)
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=color)
    noise = np.random.default_rng(rng.randint(0, 2**31)).integers(-12, 13, (size, size, 3))
    array = np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(array).filter(ImageFilter.GaussianBlur(0.6))


def make_synthetic_dataset(
    directory: str | os.PathLike, num_samples: int = 640, seed: int = 0, image_size: int = 256
) -> Path:
    """Draw the synthetic data set deterministically and write ``directory/data.jsonl``.

    Args:
        directory: output folder (created); images go to ``directory/images/``.
        num_samples: number of examples, balanced over the 4 labels.
        seed: the same seed gives byte-identical files.
        image_size: side of the square PNG images in pixels.

    Returns:
        The path of ``data.jsonl``.
    """
    root = Path(directory)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for i in range(num_samples):
        label = LABELS[i % len(LABELS)]
        sentiment, tone = label.split("-")
        text = rng.choice(TEMPLATES).format(w=rng.choice(SENTIMENT_WORDS[sentiment]), n=rng.choice(NOUNS))
        name = f"images/{i:05d}.png"
        _draw(rng, tone, image_size).save(root / name, optimize=False, compress_level=1)
        lines.append(json.dumps({"text": text, "image": name, "label": label, "source": "synthetic"}))
    out = root / "data.jsonl"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


# --- the photograph set --------------------------------------------------------------------------
# The default checkpoint's task. As in the synthetic set the label needs BOTH modalities: sentiment
# comes only from the caption (its nouns never name the subject), the subject only from the
# photograph, and the label is their combination. The photographs are scikit-image's bundled ones
# (no download), as users send them: crops, flips, colour changes, JPEG or PNG at 256-768 pixels,
# and a share re-encoded at camera size (12 megapixels, JPEG).

PHOTO_SUBJECTS = {
    "living": ("astronaut.png", "chelsea.png", "camera.png"),  # a person, a cat, a man (grayscale)
    "object": ("coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png"),
}
PHOTO_LABELS = [f"{s}-{t}" for s in SENTIMENT_WORDS for t in PHOTO_SUBJECTS]
CAMERA_SIZE = (4032, 3024)


def make_photo_dataset(
    directory: str | os.PathLike, num_samples: int = 1536, seed: int = 0, camera_fraction: float = 1 / 6,
    camera_size: tuple[int, int] = CAMERA_SIZE,
) -> Path:
    """Draw the photograph set deterministically and write ``directory/data.jsonl``.

    Example ``i`` has label ``PHOTO_LABELS[i % 4]``; its photograph is a random variant of one of
    that subject's :data:`PHOTO_SUBJECTS` (a crop of 35-100% of the area at an aspect ratio of 3:4
    to 4:3, a horizontal flip with p = 0.5, brightness x0.7-1.3, saturation x0.6-1.4), written
    with its short side 256-768 pixels as a JPEG (quality 70-95; three in four) or PNG, with
    ``source`` "photographs"; or, for ``camera_fraction`` of the examples (spread evenly), a
    camera-size JPEG of ``camera_size`` (:func:`fusionrt.samples.camera_variant`; one in four
    portrait) with ``source`` "camera-size"; camera-size examples come in groups of the 4 labels.

    Args:
        directory: output folder (created); images go to ``directory/photos/``.
        num_samples: number of examples, balanced over the 4 labels.
        seed: the same seed gives the same files.
        camera_fraction: share of camera-size photographs, in [0, 1].
        camera_size: ``(width, height)`` of the camera-size photographs.

    Returns:
        The path of ``data.jsonl``.

    Raises:
        InputError: ``num_samples`` < 4 or ``camera_fraction`` outside [0, 1].
        ImportError: scikit-image is not installed (``pip install 'fusionrt[demo]'``).
    """
    from concurrent.futures import ThreadPoolExecutor

    from fusionrt.samples import photo_dir

    if num_samples < 4 or not 0.0 <= camera_fraction <= 1.0:
        raise InputError(f"num_samples must be >= 4 and camera_fraction in [0, 1], got {num_samples}, {camera_fraction}")
    root = Path(directory)
    (root / "photos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    camera_every = round(1 / camera_fraction) if camera_fraction else 0
    jobs, lines = [], []
    for i in range(num_samples):
        label = PHOTO_LABELS[i % len(PHOTO_LABELS)]
        sentiment, subject = label.split("-")
        text = rng.choice(TEMPLATES).format(w=rng.choice(SENTIMENT_WORDS[sentiment]), n=rng.choice(NOUNS))
        source = photo_dir() / rng.choice(PHOTO_SUBJECTS[subject])
        camera = bool(camera_every) and (i // 4) % camera_every == camera_every - 1  # all 4 labels alike
        suffix = ".jpg" if camera or rng.random() < 0.75 else ".png"
        name = f"photos/{i:05d}{suffix}"
        jobs.append((source, root / name, camera, rng.randint(0, 2**31)))
        lines.append(json.dumps({"text": text, "image": name, "label": label,
                                 "source": "camera-size" if camera else "photographs"}))
    with ThreadPoolExecutor(2) as pool:  # Pillow releases the GIL while resizing and encoding
        list(pool.map(lambda job: _photo_variant(*job, camera_size), jobs))
    out = root / "data.jsonl"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _photo_variant(source: Path, path: Path, camera: bool, seed: int, camera_size: tuple[int, int]) -> None:
    from PIL import ImageEnhance

    from fusionrt.samples import camera_variant

    rng = np.random.default_rng(seed)
    if camera:
        size = camera_size if rng.random() < 0.75 else camera_size[::-1]
        camera_variant(source, rng, size, 92, path)
        return
    with Image.open(source) as src:
        img = src.convert("RGB")
    aspect = rng.uniform(3 / 4, 4 / 3)
    area = img.width * img.height * rng.uniform(0.35, 1.0)
    cw = min(img.width, int(round((area * aspect) ** 0.5)))
    ch = min(img.height, int(round(cw / aspect)))
    x0, y0 = int(rng.integers(0, img.width - cw + 1)), int(rng.integers(0, img.height - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    short = int(rng.integers(256, 769))
    k = short / min(img.size)
    img = img.resize((max(1, round(img.width * k)), max(1, round(img.height * k))), Image.Resampling.BICUBIC)
    if path.suffix == ".jpg":
        img.save(path, format="JPEG", quality=int(rng.integers(70, 96)))
    else:
        img.save(path, format="PNG", compress_level=1)
