"""Pictures of explanations (``fusionrt explain``): the photo with its heat map, the words coloured
by relevance, the label and the modality weights. Needs matplotlib (the ``bench`` extra)."""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from fusionrt.errors import FusionrtError
from fusionrt.explanation import Explanation
from fusionrt.preprocessing import ImageLike, load_image
from fusionrt.utils import atomic_write_bytes

# Words wrap at this many pixels of the figure's width (its width is 7 inches at 100 dpi).
_LINE_PX = 640
_BOTTOM_PX = 12.0  # the lowest baseline a line of words may have
_WORD_CHARS = 40  # a longer word is drawn cut, with an ellipsis: 40 wide glyphs at 13 points fill 520 of the line's pixels
# Photos are drawn at most this many pixels a side (twice the axes' 672: no visible loss).
_DISPLAY_PX = 1344


# Fonts matplotlib falls back to, glyph by glyph (matplotlib >= 3.6), for the characters its own
# DejaVu Sans lacks (CJK, Thai, Devanagari...), where installed: e.g. Debian's fonts-noto-cjk or
# fonts-wqy-microhei. Without one, such a character draws as a box (the JSON keeps every word).
FALLBACK_FONTS = (
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK KR", "Source Han Sans", "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei", "Droid Sans Fallback", "Noto Sans Thai", "Noto Sans Devanagari", "Noto Sans Arabic",
    "Noto Sans Hebrew", "Noto Sans",
)


def font_families() -> list[str]:
    """``font.family`` for the picture: DejaVu Sans (matplotlib's own), then the installed
    :data:`FALLBACK_FONTS` in that order."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return ["DejaVu Sans"] + [name for name in FALLBACK_FONTS if name in installed]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FusionrtError("drawing explanations needs matplotlib: pip install 'fusionrt[bench]'") from None
    return plt


def check_can_draw() -> None:
    """Raise :class:`FusionrtError` unless matplotlib is installed (``fusionrt explain -o`` checks
    before explaining, not at its first picture).

    Raises:
        FusionrtError: matplotlib is not installed.
    """
    _pyplot()


# The PNG's Software text (tEXt chunk): an explanation fusionrt drew.
SOFTWARE = "fusionrt explain"


def is_rendered_explanation(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG :func:`render_explanation` drew (its Software text); ``False`` for
    any other file, a missing or unreadable one."""
    try:
        with Image.open(path) as png:
            return png.format == "PNG" and png.info.get("Software") == SOFTWARE
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def render_explanation(explanation: Explanation, image: ImageLike, text: str, path: str | os.PathLike) -> Path:
    """Write a PNG: the photo with the heat map overlaid (``inferno``, 45% opaque where relevant),
    the words with backgrounds coloured by relevance (white 0 -> red the most relevant word), the
    label, its probability and the modality weights.

    Args:
        explanation: what :meth:`fusionrt.Engine.explain` returned for the pair.
        image: the pair's image (as given to ``explain``).
        text: the pair's text.
        path: the PNG to write.

    Returns:
        ``path``.

    Raises:
        FusionrtError: matplotlib is not installed.
        InputError: the image cannot be decoded.
    """
    plt = _pyplot()
    photo, heat = _display_size(load_image(image), explanation.heat_map())
    fonts = logging.getLogger("matplotlib.font_manager")
    level = fonts.level
    fonts.setLevel(logging.ERROR)  # "Failed to find font weight bold for <a fallback>": it draws regular
    try:
        with plt.rc_context({"font.family": font_families()}):
            _draw(plt, explanation, photo, heat, text, path)
    finally:
        fonts.setLevel(level)
    return Path(path)


def _draw(plt, explanation: Explanation, photo: np.ndarray, heat: np.ndarray, text: str, path: str | os.PathLike) -> None:
    fig = plt.figure(figsize=(7, 6.8), dpi=100)
    ax = fig.add_axes((0.02, 0.14, 0.96, 0.76))
    ax.imshow(photo)
    ax.imshow(heat, cmap="inferno", alpha=0.45 * heat + 0.1, vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    p = explanation.prediction
    w = explanation.modality_weights
    fig.text(0.02, 0.96, f"{p.label} ({p.score:.2f})   alpha text {w['text']:.2f} / image {w['image']:.2f}",
             fontsize=13, weight="bold", va="center")
    fig.text(0.02, 0.93, f"explained: {explanation.explained_label}; method: {explanation.method}; "
             "relevance is attribution, not causal proof", fontsize=8, color="0.35", va="center")
    with warnings.catch_warnings():  # a glyph the font lacks (emoji, control characters) draws as a box
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
        _draw_words(fig, explanation, text)
        png = io.BytesIO()
        fig.savefig(png, format="png", metadata={"Software": SOFTWARE})  # how `fusionrt explain` knows a PNG as its own
    plt.close(fig)
    atomic_write_bytes(path, png.getvalue())  # never half a PNG; a symbolic link there is replaced, not written through


def _display_size(photo: Image.Image, heat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The photo ``(h, w, 3) uint8`` and its heat map ``(h, w) float32`` scaled down (aspect kept)
    to at most :data:`_DISPLAY_PX` a side: the figure shows them in 672x517 pixels, and matplotlib
    turns what it is given into float64 RGBA (a 24-megapixel photo took 2.2 GB)."""
    scale = _DISPLAY_PX / max(photo.size)
    if scale >= 1:
        return np.asarray(photo), heat
    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    small = Image.fromarray(heat, "F").resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(photo.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)), np.asarray(small)


def _draw_words(fig, explanation: Explanation, text: str) -> int:
    """The words in reading order (one longer than :data:`_WORD_CHARS` cut with an ellipsis), each
    on a background of its relevance (scaled to the maximum), in as many lines as the figure has
    room for, then ``... +N words (all in the JSON)``; and, when the text was longer than the
    bundle's ``max_seq_len``, that the rest was not read.

    Returns:
        How many words were drawn.
    """
    from matplotlib import colormaps

    cmap = colormaps["Reds"]
    top = max(explanation.word_relevance, default=0.0) or 1.0
    renderer = fig.canvas.get_renderer()
    x, y = 14.0, 0.08 * fig.bbox.height
    if not explanation.words:
        fig.text(x / fig.bbox.width, y / fig.bbox.height, "(no words)" if not text.strip() else text, fontsize=12, color="0.4")
        return 0
    drawn = len(explanation.words)
    for k, (word, value) in enumerate(zip(explanation.words, explanation.word_relevance)):
        shown = word if len(word) <= _WORD_CHARS else word[: _WORD_CHARS - 1] + "\u2026"
        label = fig.text(x / fig.bbox.width, y / fig.bbox.height, shown, fontsize=13,
                         bbox={"facecolor": cmap(0.85 * value / top), "edgecolor": "none", "pad": 2})
        width = label.get_window_extent(renderer).width
        if x + width > _LINE_PX and x > 14.0:  # wrap
            if y - 30.0 < _BOTTOM_PX:  # no room for another line
                label.remove()
                drawn = k
                break
            x, y = 14.0, y - 30.0
            label.set_position((x / fig.bbox.width, y / fig.bbox.height))
        x += width + 10.0
    notes = [f"... +{len(explanation.words) - drawn} words (all in the JSON)"] if drawn < len(explanation.words) else []
    if explanation.prediction.truncated:  # the words past max_seq_len are in no explanation
        notes.append("the rest of the text was cut at the bundle's max_seq_len: not read")
    if notes:
        fig.text(1.0 - 14.0 / fig.bbox.width, 2.0 / fig.bbox.height, "; ".join(notes), ha="right", va="bottom", fontsize=8, color="0.35")
    return drawn
