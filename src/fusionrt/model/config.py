"""Configuration of :class:`fusionrt.MultimodalClassifier` (``config.json`` in a checkpoint)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fusionrt.errors import CheckpointError
from fusionrt.model.families import IMAGE, TEXT, family

MODEL_TYPE = "fusionrt-multimodal"


@dataclass
class MultimodalConfig:
    """Sub-configs of the encoders plus the fusion head's sizes and the labels.

    Attributes:
        text_config: the text encoder's transformers config as a dict; its ``model_type`` picks
            the row of :mod:`fusionrt.model.families` (``bert``, ``roberta``, ``xlm-roberta``,
            ``distilbert``, ``electra``; none given means ``bert``).
        image_config: the same for the image encoder (``resnet``, ``convnext``, ``vit``; none
            given means ``resnet``).
        id2label: class index -> label name; its length is ``num_labels``.
        d_model: width of the fusion head (text and image features are projected to it).
        num_heads: heads of the cross-attention (text tokens attend to image regions).
        classifier_hidden: hidden width of the MLP classifier.
        dropout: dropout of the head during training (inactive at inference).
        max_seq_len: tokens per text after truncation, special tokens included. 128 covers
            captions and short posts; longer costs quadratic attention time.
    """

    text_config: dict = field(default_factory=dict)
    image_config: dict = field(default_factory=dict)
    id2label: dict = field(default_factory=lambda: {0: "negative", 1: "positive"})
    d_model: int = 256
    num_heads: int = 4
    classifier_hidden: int = 256
    dropout: float = 0.1
    max_seq_len: int = 128

    def __post_init__(self):
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if sorted(self.id2label) != list(range(len(self.id2label))) or len(self.id2label) < 2:
            raise CheckpointError(f"id2label must map 0..N-1 (N >= 2) to names, got {self.id2label}")
        if self.d_model % self.num_heads:
            raise CheckpointError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
        if self.max_seq_len < 2:
            raise CheckpointError(f"max_seq_len must be >= 2, got {self.max_seq_len}")
        text = family(self.text_config, TEXT)  # refuses a model_type without a row
        family(self.image_config, IMAGE)
        limit = text.max_positions(self.text_config)
        if limit is not None and self.max_seq_len > limit:
            raise CheckpointError(
                f"max_seq_len={self.max_seq_len} exceeds the {text.model_type} text encoder's {limit} positions "
                "(max_position_embeddings, less pad_token_id + 1 for RoBERTa-style models)"
            )

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        d["label2id"] = {v: k for k, v in self.id2label.items()}
        d["model_type"] = MODEL_TYPE
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MultimodalConfig":
        if d.get("model_type") not in (None, MODEL_TYPE):
            raise CheckpointError(f"config model_type is {d.get('model_type')!r}, expected {MODEL_TYPE!r}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, directory: str | os.PathLike) -> None:
        Path(directory, "config.json").write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "MultimodalConfig":
        path = Path(directory, "config.json")
        if not path.is_file():
            raise CheckpointError(f"checkpoint config missing: {path}")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
