"""Checkpoint directories (Hugging Face convention).

``config.json``, ``model.safetensors``, ``tokenizer/`` files (``tokenizer.json`` plus the original
tokenizer files), ``preprocessor_config.json``; after training also ``metrics.json``,
``heldout.jsonl`` and ``calibration.jsonl`` with their images under ``data/``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from fusionrt.errors import CheckpointError
from fusionrt.preprocessing import ImageProcessor, TextTokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
PREPROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model with the tokenizer and image processor it was trained with."""

    path: Path
    model: "object"  # MultimodalClassifier; typed loosely to keep this module import-light
    tokenizer: TextTokenizer
    image_processor: ImageProcessor

    @property
    def config(self):
        return self.model.config

    def metrics(self) -> dict | None:
        path = self.path / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def split(self, name: str) -> Path | None:
        """Path of ``heldout.jsonl`` or ``calibration.jsonl`` when the checkpoint has it."""
        path = self.path / f"{name}.jsonl"
        return path if path.is_file() else None


def save_checkpoint(
    directory: str | os.PathLike,
    model,
    tokenizer: TextTokenizer,
    image_processor: ImageProcessor,
    tokenizer_source: str | os.PathLike | None = None,
) -> Path:
    """Write a checkpoint directory. ``tokenizer_source`` is a directory whose extra tokenizer
    files (vocab, configs) are copied alongside ``tokenizer.json``."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root)
    if tokenizer_source is not None:
        for name in TOKENIZER_FILES[1:]:
            src = Path(tokenizer_source) / name
            if src.is_file() and src.resolve() != (root / name).resolve():
                shutil.copyfile(src, root / name)
    tokenizer.save(root)
    (root / PREPROCESSOR_CONFIG).write_text(json.dumps(image_processor.to_dict(), indent=2))
    return root


def load_checkpoint(directory: str | os.PathLike, attn_implementation: str | None = None) -> Checkpoint:
    """Load a checkpoint directory (``attn_implementation``: see :class:`MultimodalClassifier`).

    Raises:
        CheckpointError: the directory, a file, or weights are missing or do not match.
    """
    from fusionrt.model.modeling import MultimodalClassifier

    root = Path(directory)
    if root.is_file():
        raise CheckpointError(f"checkpoint {root} is a file; give the checkpoint directory (the folder holding config.json and model.safetensors)")
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {root}")
    model = MultimodalClassifier.from_pretrained(root, attn_implementation)
    try:
        tokenizer = TextTokenizer.from_dir(root, model.config.max_seq_len, model.text_inputs)
    except FileNotFoundError as exc:
        raise CheckpointError(str(exc)) from None
    pp = root / PREPROCESSOR_CONFIG
    if not pp.is_file():
        raise CheckpointError(f"checkpoint preprocessor config missing: {pp}")
    return Checkpoint(root, model, tokenizer, ImageProcessor.from_file(pp))
