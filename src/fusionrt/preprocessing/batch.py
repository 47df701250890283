"""One batch preprocessor for the Engine, the BatchingEngine and the Triton ``preprocess`` model:
texts and images in, the bundle's input tensors out, with per-item errors.

A bad item never fails its batch: it gets an exception in its slot (an :class:`InputError` that
names it by index, or the unexpected exception a bug raised) and the batch is made of the others.
Images are decoded in a thread pool, biggest first (Pillow releases the GIL while decoding and
resizing), straight into one preallocated buffer of what the image graph takes (``(batch, H, W, 3)
uint8`` or ``(batch, 3, H, W) float32``, see :data:`~fusionrt.preprocessing.image.PIXEL_LAYOUTS`)
when the processor's output size is the graph's, so the batch needs no stacking copy.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import numpy as np

from fusionrt.errors import EngineClosedError, InputError
from fusionrt.preprocessing.image import PIXEL_LAYOUTS, ImageLike, ImageProcessor, default_decode_threads, map_costliest_first
from fusionrt.preprocessing.text import TextTokenizer, check_text
from fusionrt.threads import LazyPool


ENGINE_CLOSED = "the Engine is closed; load the bundle again to run it"


@dataclasses.dataclass
class PreparedBatch:
    """A preprocessed batch.

    Attributes:
        items: per item of the call, ``None`` when it is in ``feed``, else the exception it raised
            (an :class:`InputError` naming it, or an unexpected exception).
        rows: indices (into ``items``) of the items in ``feed``, in order.
        feed: the tokenizer's inputs (``input_ids``, ``attention_mask``[, ``token_type_ids``])
            ``(len(rows), seq) int64`` and ``pixel_values`` ``(len(rows), *pixel_shape)`` of
            ``pixel_dtype`` (the image graph's input); ``None`` when no item is good.
        truncated: ``(len(rows),) bool``, the text was cut at ``max_seq_len`` tokens; ``None``
            with ``feed``.
    """

    items: list[Exception | None]
    rows: list[int]
    feed: dict[str, np.ndarray] | None
    truncated: np.ndarray | None

    def first_error(self) -> Exception | None:
        """The first item's exception, or ``None`` when every item is good."""
        return next((e for e in self.items if e is not None), None)


class BatchPreprocessor:
    """Tokenizes texts and decodes images of a batch.

    Args:
        tokenizer: the bundle's tokenizer.
        image_processor: the bundle's image transform.
        pixel_shape: one image's pixels as the image encoder takes them: ``(3, H, W)`` for
            float32, ``(H, W, 3)`` for uint8; an image that preprocesses to another shape
            (possible without center crop) is a bad item.
        decode_threads: threads decoding a batch's images (``None``: two per core, at most 16,
            see :func:`~fusionrt.preprocessing.default_decode_threads`; 0 or 1 decodes serially in
            the calling thread).
        pixel_dtype: the image encoder's ``pixel_values`` dtype, ``"float32"`` (normalized) or
            ``"uint8"`` (the graph normalizes).

    Raises:
        InputError: ``decode_threads`` is negative, or ``pixel_dtype`` unknown.

    Thread-safe: the tokenizer is used read-only and every call allocates its own buffers.
    """

    def __init__(
        self,
        tokenizer: TextTokenizer,
        image_processor: ImageProcessor,
        pixel_shape: Sequence[int],
        decode_threads: int | None = None,
        pixel_dtype: str = "float32",
    ):
        if pixel_dtype not in PIXEL_LAYOUTS:
            raise InputError(f"pixel_dtype {pixel_dtype!r} is not one of {list(PIXEL_LAYOUTS)}")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.pixel_shape = tuple(int(d) for d in pixel_shape)
        self.pixel_dtype = pixel_dtype
        workers = decode_threads if decode_threads is not None else default_decode_threads()
        if workers < 0:
            raise InputError(f"decode_threads must be >= 0, got {decode_threads}")
        # made on first use, again in a forked child (the parent's threads are not there)
        self._pool = LazyPool(workers, "fusionrt-decode", lambda: EngineClosedError(ENGINE_CLOSED))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (then every call raises :class:`~fusionrt.EngineClosedError`)."""
        return self._pool.closed

    def close(self) -> None:
        """Refuse new batches, let the decoding in progress finish, stop the decoding threads
        (idempotent); later calls raise :class:`~fusionrt.EngineClosedError`."""
        self._pool.close()

    def pixel_buffer(self, n: int) -> np.ndarray | None:
        """An uninitialized ``(n, *pixel_shape)`` batch of ``pixel_dtype`` for :meth:`decode` to
        fill, or ``None`` when the image processor's output size is not the graph's (or follows
        the input: no center crop, no fixed-size resize): then images are decoded into arrays of
        their own and stacked."""
        processor = self.image_processor
        if processor.fixed_hw is None or processor.pixel_shape(self.pixel_dtype) != self.pixel_shape:
            return None
        return np.empty((n,) + self.pixel_shape, self.pixel_dtype)

    def decode(
        self, images: Sequence[ImageLike], offset: int = 0, out: np.ndarray | None = None, name: str = "images"
    ) -> list:
        """Decode and transform images, in the thread pool when there is one.

        Args:
            images: the images (paths, encoded bytes, PIL images or HxWxC uint8 arrays).
            offset: index of ``images[0]`` in the caller's list (used in error messages).
            out: optional ``(len(images), *pixel_shape)`` array of ``pixel_dtype``; image ``k``
                is written into ``out[k]``. See :meth:`pixel_buffer`.
            name: what error messages call the list (``images[3]: ...``).

        Returns:
            One ``pixel_shape`` array per image (a view of ``out`` when given), or, in its
            slot, the :class:`InputError` of a bad image (named by index; also when it
            preprocesses to another shape than ``pixel_shape``) or the unexpected exception
            decoding it raised.

        Raises:
            ValueError: ``out`` has fewer slots than there are images.
            EngineClosedError: after :meth:`close`.
        """
        if out is not None and len(out) < len(images):
            raise ValueError(f"out has {len(out)} slots for {len(images)} images")
        return self._decode(images, range(offset, offset + len(images)), out, name)

    def _decode(self, images: Sequence[ImageLike], labels: Sequence[int], out: np.ndarray | None, name: str) -> list:
        """:meth:`decode`, image ``k`` named ``name[labels[k]]`` in errors and written to ``out[k]``."""

        def one(item):
            k, image = item
            try:
                pixels = self.image_processor.process_one(image, None if out is None else out[k], self.pixel_dtype)
            except InputError as exc:
                return InputError.of_item(name, labels[k], f": {exc}")
            except Exception as exc:  # a bug fails this item only
                return exc
            if pixels.shape != self.pixel_shape:
                return InputError.of_item(
                    name, labels[k], f": preprocessed to {pixels.shape}; the bundle's image encoder takes {self.pixel_shape} "
                    "(its preprocessor_config.json has no center crop to that size)"
                )
            return pixels

        items = list(enumerate(images))
        with self._pool.use() as pool:
            if pool is None or len(items) < 2:
                return [one(item) for item in items]
            return map_costliest_first(pool, one, images, items)  # big images first: threads finish together

    def prepare(
        self,
        texts: Sequence[str],
        images: Sequence[ImageLike],
        offset: int = 0,
        errors: Literal["raise", "return"] = "return",
        buckets: Sequence[int] | None = None,
    ) -> PreparedBatch:
        """Preprocess one batch of text+image pairs.

        Args:
            texts: ``batch`` strings.
            images: ``batch`` images, paired one to one with ``texts``.
            offset: index of the first pair in the caller's list (used in error messages).
            errors: ``"return"`` keeps each bad item's exception in its slot of
                :attr:`PreparedBatch.items`; ``"raise"`` raises the first one.
            buckets: pad texts to the smallest of these lengths that holds the longest (see
                :class:`~fusionrt.preprocessing.TextTokenizer`); ``None`` pads to the longest.

        Raises:
            InputError: the counts differ; or, with ``errors="raise"``, the first bad item.
            EngineClosedError: after :meth:`close`.
        """
        if len(texts) != len(images):
            raise InputError(f"got {len(texts)} texts and {len(images)} images; they are paired one to one")
        return self.prepare_groups([(texts, images)], offset, errors, buckets)[0]

    def prepare_groups(
        self,
        groups: Sequence[tuple[Sequence[str], Sequence[ImageLike]]],
        offset: int = 0,
        errors: Literal["raise", "return"] = "return",
        buckets: Sequence[int] | None = None,
        names: tuple[str, str] = ("texts", "images"),
    ) -> list[PreparedBatch]:
        """Preprocess several batches at once (Triton's requests of one ``execute``): the images
        of all groups are decoded together in the pool, each group is tokenized on its own (its
        own sequence length) and gets its own :class:`PreparedBatch`, its items indexed from
        ``offset`` in error messages, which call texts and images ``names``.

        Raises:
            InputError: a group's counts differ; or, with ``errors="raise"``, the first bad item.
            EngineClosedError: after :meth:`close`.
        """
        if errors not in ("raise", "return"):
            raise InputError(f"errors must be 'raise' or 'return', got {errors!r}")
        text_name, image_name = names
        for texts, images in groups:
            if len(texts) != len(images):
                raise InputError(f"got {len(texts)} {text_name} and {len(images)} {image_name}; they are paired one to one")
        total = sum(len(images) for _, images in groups)
        buffer = self.pixel_buffer(total)
        spans, labels, start = [], [], 0
        for _, images in groups:  # one pool pass over every group's images; names restart per group
            spans.append((start, len(images)))
            labels.extend(range(offset, offset + len(images)))
            start += len(images)
        pixels_all = self._decode([image for _, images in groups for image in images], labels, buffer, image_name)
        out = []
        for (texts, _images), (start, n) in zip(groups, spans):
            pixels = pixels_all[start : start + n]
            items: list = [None] * n
            for i, text in enumerate(texts):
                try:
                    check_text(text, offset + i, text_name)
                except InputError as exc:
                    items[i] = exc
            for i, p in enumerate(pixels):
                if items[i] is None and isinstance(p, Exception):
                    items[i] = p
            if errors == "raise":
                bad = next((e for e in items if e is not None), None)
                if bad is not None:
                    raise bad
            rows = [i for i, e in enumerate(items) if e is None]
            feed = truncated = None
            if rows:
                feed, truncated = self.tokenizer([texts[i] for i in rows], buckets=buckets)
                if buffer is not None:
                    group = buffer[start : start + n]
                    feed["pixel_values"] = group if len(rows) == n else group[rows]  # bad slots dropped
                else:
                    feed["pixel_values"] = np.stack([pixels[i] for i in rows])
            out.append(PreparedBatch(items, rows, feed, truncated))
        return out
