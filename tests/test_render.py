"""render_explanation: the picture ``fusionrt explain -o`` writes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from fusionrt.explanation import Explanation, ImageGeometry
from fusionrt.prediction import Prediction
from fusionrt.render import render_explanation


def test_a_large_photo_is_drawn_at_display_size(tmp_path, monkeypatch):
    # matplotlib turns what imshow gets into float64 RGBA: a 24-megapixel photo drawn whole took 2.2 GB.
    axes = pytest.importorskip("matplotlib.axes")
    drawn = []
    real_imshow = axes.Axes.imshow
    monkeypatch.setattr(axes.Axes, "imshow", lambda self, x, **kw: drawn.append(np.shape(x)) or real_imshow(self, x, **kw))
    photo = np.random.default_rng(0).integers(0, 256, (1500, 4000, 3), dtype=np.uint8)
    geometry = ImageGeometry.of(4000, 1500, {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}})
    prediction = Prediction("a", 1.0, {"a": 1.0}, {"text": 0.5, "image": 0.5}, False)
    grid = np.random.default_rng(1).random((4, 4)).astype(np.float32)
    explanation = Explanation(prediction, "a", ["x"], [(0, 1)], [1.0], grid / grid.sum(), prediction.modality_weights, geometry, "gradient")
    out = render_explanation(explanation, photo, "x", tmp_path / "why.png")
    assert drawn == [(504, 1344, 3), (504, 1344)]  # the photo, then its heat map: 4000x1500 scaled by 1344/4000
    with Image.open(out) as png:
        assert png.size == (700, 680)
    small = dataclasses.replace(explanation, geometry=ImageGeometry.of(50, 30, {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}}))
    drawn.clear()
    render_explanation(small, photo[:30, :50], "x", tmp_path / "small.png")
    assert drawn == [(30, 50, 3), (30, 50)]  # a small photo is drawn as it is


def test_a_long_caption_with_emoji_is_cut_with_a_count_and_warns_nothing(tmp_path, recwarn):
    """Words wrap onto the lines the figure has room for, then one line says how many are left; a
    glyph the font lacks draws without a warning per character."""
    pytest.importorskip("matplotlib")
    from fusionrt import render

    words = [f"word{i}" for i in range(60)] + ["\U0001f600", "\x07"]
    spans = [(0, 1)] * len(words)
    geometry = ImageGeometry.of(40, 40, {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}})
    prediction = Prediction("a", 1.0, {"a": 1.0}, {"text": 0.5, "image": 0.5}, False)
    relevance = [1.0 / len(words)] * len(words)
    explanation = Explanation(prediction, "a", words, spans, relevance, np.full((4, 4), 1 / 16, np.float32),
                              prediction.modality_weights, geometry, "gradient")
    out = render_explanation(explanation, np.zeros((40, 40, 3), np.uint8), " ".join(words), tmp_path / "long.png")
    assert out.is_file() and not [w for w in recwarn if "Glyph" in str(w.message)]
    plt = render._pyplot()
    fig = plt.figure(figsize=(7, 6.8), dpi=100)
    drawn = render._draw_words(fig, explanation, " ".join(words))
    shown = [t.get_text() for t in fig.texts]
    plt.close(fig)
    assert 10 < drawn < len(words) and shown[:drawn] == words[:drawn]
    assert shown[-1] == f"... +{len(words) - drawn} words (all in the JSON)" and len(shown) == drawn + 1
    short = dataclasses.replace(explanation, words=words[:3], word_spans=spans[:3], word_relevance=relevance[:3])
    fig = plt.figure(figsize=(7, 6.8), dpi=100)
    assert render._draw_words(fig, short, "word0 word1 word2") == 3 and [t.get_text() for t in fig.texts] == words[:3]
    plt.close(fig)


def test_a_text_cut_at_max_seq_len_says_so(tmp_path):
    """The words past the bundle's max_seq_len are in no explanation: the picture says the text was
    cut (the count of words not drawn alone read as if the JSON held the whole caption)."""
    pytest.importorskip("matplotlib")
    from fusionrt import render

    geometry = ImageGeometry.of(40, 40, {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}})
    cut = Prediction("a", 1.0, {"a": 1.0}, {"text": 0.5, "image": 0.5}, True)
    plt = render._pyplot()
    for n, note in ((3, "the rest of the text was cut at the bundle's max_seq_len: not read"),
                    (80, "(all in the JSON); the rest of the text was cut at the bundle's max_seq_len: not read")):
        words = [f"word{i}" for i in range(n)]
        explanation = Explanation(cut, "a", words, [(0, 1)] * n, [1.0 / n] * n, np.full((4, 4), 1 / 16, np.float32),
                                  cut.modality_weights, geometry, "gradient")
        fig = plt.figure(figsize=(7, 6.8), dpi=100)
        drawn = render._draw_words(fig, explanation, " ".join(words * 10))
        shown = [t.get_text() for t in fig.texts]
        plt.close(fig)
        assert shown[:drawn] == words[:drawn] and len(shown) == drawn + 1 and shown[-1].endswith(note)


def test_a_word_wider_than_a_line_is_shortened_to_fit(tmp_path):
    """A 20,000-letter word (a pasted blob, "soooo...") ran off the picture's right edge."""
    pytest.importorskip("matplotlib")
    from fusionrt import render

    words = ["look", "x" * 20000, "end"]
    geometry = ImageGeometry.of(40, 40, {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}})
    prediction = Prediction("a", 1.0, {"a": 1.0}, {"text": 0.5, "image": 0.5}, False)
    explanation = Explanation(prediction, "a", words, [(0, 4), (5, 20005), (20006, 20009)], [0.2, 0.5, 0.3],
                              np.full((4, 4), 1 / 16, np.float32), prediction.modality_weights, geometry, "gradient")
    plt = render._pyplot()
    fig = plt.figure(figsize=(7, 6.8), dpi=100)
    assert render._draw_words(fig, explanation, " ".join(words)) == 3
    renderer = fig.canvas.get_renderer()
    shown = [(t.get_text(), t.get_window_extent(renderer)) for t in fig.texts]
    plt.close(fig)
    assert [s for s, _ in shown] == ["look", "x" * 39 + "\u2026", "end"]
    assert all(box.x1 <= fig.bbox.width for _, box in shown)


def test_the_fallback_fonts_are_the_installed_ones_in_order(monkeypatch):
    font_manager = pytest.importorskip("matplotlib.font_manager")
    from fusionrt import render

    fake = [font_manager.FontEntry(name=n) for n in ("DejaVu Sans", "Noto Sans", "WenQuanYi Micro Hei", "Comic Neue")]
    monkeypatch.setattr(font_manager.fontManager, "ttflist", fake)
    assert render.font_families() == ["DejaVu Sans", "WenQuanYi Micro Hei", "Noto Sans"]


def test_cjk_words_draw_in_an_installed_fallback_font(tmp_path):
    """With a CJK font installed (here: Debian's fonts-wqy-microhei), CJK words draw in it, not as
    boxes: matplotlib warns of no missing glyph. Without the fallback the same words do."""
    pytest.importorskip("matplotlib")
    import warnings

    from fusionrt import render

    families = render.font_families()
    if len(families) == 1:
        pytest.skip("no fallback font installed (e.g. apt-get install fonts-wqy-microhei)")
    plt = render._pyplot()
    words = ["一只", "可爱的", "猫"]
    geometry = ImageGeometry.of(40, 40, {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}})
    prediction = Prediction("a", 1.0, {"a": 1.0}, {"text": 0.5, "image": 0.5}, False)
    explanation = Explanation(prediction, "a", words, [(0, 2), (2, 5), (5, 6)], [0.2, 0.5, 0.3],
                              np.full((4, 4), 1 / 16, np.float32), prediction.modality_weights, geometry, "gradient")

    def missing(font_family):
        with plt.rc_context({"font.family": font_family}), warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            fig = plt.figure(figsize=(7, 6.8), dpi=100)
            render._draw_words(fig, explanation, "一只可爱的猫")
            fig.savefig(tmp_path / "words.png")
            plt.close(fig)
        return [w for w in seen if "missing from" in str(w.message)]

    assert missing(["DejaVu Sans"])
    assert not missing(families)
