"""The PyTorch side: :class:`MultimodalClassifier`, its config, checkpoints, training and the
default checkpoint. Importing this package imports torch."""

from fusionrt.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fusionrt.model.config import MultimodalConfig
from fusionrt.model.families import FAMILIES, EncoderFamily
from fusionrt.model.hub import Encoders, load_encoders
from fusionrt.model.modeling import MultimodalClassifier, MultimodalOutput

__all__ = [
    "Checkpoint",
    "EncoderFamily",
    "Encoders",
    "FAMILIES",
    "MultimodalClassifier",
    "MultimodalConfig",
    "MultimodalOutput",
    "load_checkpoint",
    "load_encoders",
    "save_checkpoint",
]
