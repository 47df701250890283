"""Text and image preprocessing shared by training, export validation, the engine and Triton:
:mod:`.image` (decoding, PNG handling, transforms, the decode pool), :mod:`.text` (tokenizer,
sequence buckets) and :mod:`.batch` (the batch preprocessor of the Engine and Triton, per-item
errors). Torch-free on purpose: the same code turns raw inputs into tensors everywhere."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from fusionrt.errors import InputError
from fusionrt.preprocessing.image import (
    PIXEL_LAYOUTS,
    ImageLike,
    ImageProcessor,
    coalesce_png_idat,
    costliest_first,
    default_decode_threads,
    image_size,
    load_image,
    map_costliest_first,
)
from fusionrt.preprocessing.batch import BatchPreprocessor, PreparedBatch
from fusionrt.preprocessing.text import TEXT_INPUTS, TextTokenizer, check_buckets, check_text, default_buckets

__all__ = [
    "BatchPreprocessor", "ImageLike", "PIXEL_LAYOUTS", "ImageProcessor", "TEXT_INPUTS", "TextTokenizer", "as_pairs", "check_buckets", "check_text",
    "coalesce_png_idat", "costliest_first", "default_buckets", "default_decode_threads", "image_size", "load_image",
    "map_costliest_first", "PreparedBatch",
]


def as_pairs(texts: Any, images: Any) -> tuple[list, list]:
    """Texts and images as two lists paired one to one: one string goes with one image.

    Args:
        texts: a ``str`` (then ``images`` is one image) or a sequence of them.
        images: one image, or a sequence of as many images as ``texts``.

    Raises:
        InputError: a single image for a list of texts, or the counts differ (both named).
    """
    if isinstance(texts, str):
        return [texts], [images]
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, np.ndarray)) or hasattr(images, "getpixel"):
        raise InputError("images must be a sequence of images paired with texts (got a single image for a list of texts)")
    texts, images = list(texts), list(images)
    if len(texts) != len(images):
        raise InputError(f"got {len(texts)} texts and {len(images)} images; they are paired one to one")
    return texts, images
