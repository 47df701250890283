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
from PIL import Image, ImageDraw, ImageFilter

from fusionrt.errors import InputError


@dataclass(frozen=True)
class Example:
    text: str
    image: Path  # absolute
    label: str


def read_jsonl(path: str | os.PathLike) -> list[Example]:
    """Read a JSONL data file; image paths are resolved relative to it.

    Raises:
        InputError: the file is missing, a line is not JSON, lacks a key, or names a missing image
            (line number given).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    examples = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{lineno}: not valid JSON ({exc})") from None
        for key in ("text", "image", "label"):
            if not isinstance(row.get(key), (str, int)) or isinstance(row.get(key), bool):
                raise InputError(f"{path}:{lineno}: key {key!r} missing or not a string")
        image = (path.parent / row["image"]).resolve()
        if not image.is_file():
            raise InputError(f"{path}:{lineno}: image not found: {image}")
        examples.append(Example(str(row["text"]), image, str(row["label"])))
    if not examples:
        raise InputError(f"data file {path} holds no examples")
    return examples


def write_jsonl(path: str | os.PathLike, examples: list[Example], image_dir: str = "data") -> None:
    """Write examples to ``path``, copying their images to ``<path's folder>/<image_dir>/``."""
    path = Path(path)
    target = path.parent / image_dir
    target.mkdir(parents=True, exist_ok=True)
    lines = []
    for ex in examples:
        dest = target / ex.image.name
        if dest.resolve() != ex.image.resolve():
            if dest.exists() and dest.read_bytes() != ex.image.read_bytes():
                dest = target / f"{len(lines):05d}_{ex.image.name}"
            shutil.copyfile(ex.image, dest)
        lines.append(json.dumps({"text": ex.text, "image": f"{image_dir}/{dest.name}", "label": ex.label}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


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
        lines.append(json.dumps({"text": text, "image": name, "label": label}))
    out = root / "data.jsonl"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
