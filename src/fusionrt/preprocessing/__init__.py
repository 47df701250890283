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
        images: one image, or a sequence of as many images as ``texts`` (a 1-D str or object
            numpy array of them too).

    Raises:
        InputError: a single image for a list of texts, a list of images for a single text, texts
            or images that are not sequences (``None``, bytes for texts), or the counts differ.
    """
    if isinstance(texts, str):
        if isinstance(images, (list, tuple)):
            raise InputError(f"a single text goes with a single image, got a list of {len(images)} images: pass texts as a list too")
        return [texts], [images]
    if isinstance(texts, (bytes, bytearray, memoryview)):
        raise InputError(f"texts is {type(texts).__name__}; expected a str or a sequence of str (decode bytes with .decode('utf-8'))")
    if isinstance(images, np.ndarray) and images.ndim == 1 and images.dtype.kind in "OU":
        images = images.tolist()  # paths (or images) in an array: a column as pandas' .to_numpy() gives it
    if isinstance(images, np.ndarray) and images.ndim == 4:
        raise InputError(f"images is one {images.shape} array; pass a list of (H, W, C) arrays (list(images)), one per text")
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, np.ndarray)) or hasattr(images, "getpixel"):
        raise InputError("images must be a sequence of images paired with texts (got a single image for a list of texts)")
    texts, images = _as_list(texts, "texts", "str"), _as_list(images, "images", "images")
    if len(texts) != len(images):
        raise InputError(f"got {len(texts)} texts and {len(images)} images; they are paired one to one")
    return texts, images


def _as_list(items: Any, name: str, of: str) -> list:
    if not hasattr(items, "__iter__"):
        raise InputError(f"{name} is {type(items).__name__}; expected a sequence (a list of {of})")
    return list(items)
