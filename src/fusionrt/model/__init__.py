"""The PyTorch side: :class:`MultimodalClassifier`, its config, checkpoints, training and the
default checkpoint. Importing this package imports torch."""

from fusionrt.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fusionrt.model.config import MultimodalConfig
from fusionrt.model.modeling import MultimodalClassifier, MultimodalOutput

__all__ = [
    "Checkpoint",
    "MultimodalClassifier",
    "MultimodalConfig",
    "MultimodalOutput",
    "load_checkpoint",
    "save_checkpoint",
]
