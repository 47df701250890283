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
