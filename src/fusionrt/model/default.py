"""The embedded default checkpoint: the default encoders of :mod:`fusionrt.model.encoders`
(pretrained all-MiniLM-L6-v2, pretrained EfficientNet-Lite0) and a fusion head trained on the
photograph set of :mod:`fusionrt.model.data` (caption sentiment x photographed subject, with a
share of camera-size JPEGs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

RECIPE_FILE = ".fusionrt-recipe.json"
# Bump when the data, the split or the training of the default checkpoint change: cached
# checkpoints of an older recipe are rebuilt.
RECIPE_VERSION = 6  # 5: EfficientNet-Lite0 image encoder (was a random ResNet-18); 6: the photograph set
# 512 training and 1024 held-out examples: one held-out example is then 0.1 point, so an
# agreement target of 99.5% can be told apart from 99% (a 95% Wilson interval of about +-0.4 points
# near 99.5%). Drawing the extra examples is cheap; their features are extracted once in training.
DEFAULT_NUM_SAMPLES = 1536
DEFAULT_HELDOUT_FRACTION = 2 / 3


def build_default_checkpoint(
    directory: str | os.PathLike,
    data_directory: str | os.PathLike | None = None,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Path, bool]:
    """Build (or reuse, when built by the same recipe) the default checkpoint.

    Args:
        directory: checkpoint directory.
        data_directory: where the photograph set is drawn (default: ``directory``'s sibling
            ``data``).
        num_samples: size of the photograph set; ``DEFAULT_HELDOUT_FRACTION`` of it is held out
            (stratified by label), the rest trains (calibration samples come from the training split).
        seed: seed of the data, the split and the head.

    Returns:
        ``(path, reused)``.
    """
    from fusionrt import __version__
    from fusionrt.model.data import make_photo_dataset
    from fusionrt.model.train import TrainOptions, train

    directory = Path(directory)
    recipe = {"fusionrt": __version__, "recipe": RECIPE_VERSION, "num_samples": num_samples, "seed": seed,
              "heldout_fraction": DEFAULT_HELDOUT_FRACTION}
    stamp = directory / RECIPE_FILE
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe and (directory / "model.safetensors").is_file():
        return directory, True
    data_directory = Path(data_directory) if data_directory else directory.parent / "data"
    data = make_photo_dataset(data_directory, num_samples=num_samples, seed=seed)
    train(data, directory, base=None, options=TrainOptions(seed=seed, heldout_fraction=DEFAULT_HELDOUT_FRACTION), progress=progress,
          overwrite=True)  # an outdated default checkpoint; a folder fusionrt did not write is still refused
    stamp.write_text(json.dumps(recipe))
    return directory, False
