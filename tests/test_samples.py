"""The camera-size photograph set built at test time from scikit-image's photographs."""

from __future__ import annotations

import numpy as np
from PIL import Image

from fusionrt.samples import CAMERA_SOURCES, make_camera_photos


def test_camera_photos_are_camera_size_jpegs_and_reused(tmp_path):
    paths = make_camera_photos(tmp_path / "cam", 5, seed=3, size=(1600, 1200))
    assert [p.name for p in paths] == [f"{i:04d}-{CAMERA_SOURCES[i].rsplit('.', 1)[0]}.jpg" for i in range(5)]
    sizes = [Image.open(p).size for p in paths]
    assert sizes == [(1600, 1200)] * 3 + [(1200, 1600)] + [(1600, 1200)]  # every fourth is portrait
    assert all(Image.open(p).format == "JPEG" for p in paths)
    before = [p.stat().st_mtime_ns for p in paths]
    again = make_camera_photos(tmp_path / "cam", 5, seed=3, size=(1600, 1200))
    assert again == paths and [p.stat().st_mtime_ns for p in paths] == before
    other = make_camera_photos(tmp_path / "other", 2, seed=4, size=(1600, 1200))
    a, b = (np.asarray(Image.open(p), dtype=np.int16) for p in (paths[0], other[0]))
    assert a.shape == b.shape and np.abs(a - b).mean() > 5  # another seed, another variant
