"""Sample inputs shared by the demo, the benchmarks and the tests: real photographs bundled in the
scikit-image wheel (no download), each paired with a caption."""

from __future__ import annotations

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
