"""What the Engine and the Triton client answer: :class:`Prediction` and the softmax behind it.

Torch-free and onnxruntime-free: the Triton client and the served postprocess model use it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Order of the two modality weights (alpha) in every output: (text, image).
MODALITIES = ("text", "image")


@dataclass(frozen=True)
class Prediction:
    """One answer of :meth:`fusionrt.Engine.predict` or :meth:`fusionrt.triton.Client.predict`.

    Attributes:
        label: the most probable label.
        score: its probability (softmax of the logits), in [0, 1].
        probabilities: label -> probability, summing to 1.
        modality_weights: ``{"text": alpha_text, "image": alpha_image}``, summing to 1: how much
            each modality contributed to the fused representation.
        truncated: the text was longer than the bundle's ``max_seq_len`` tokens and was cut.
    """

    label: str
    score: float
    probabilities: dict
    modality_weights: dict
    truncated: bool

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "score": self.score,
            "probabilities": self.probabilities,
            "modality_weights": self.modality_weights,
            "truncated": self.truncated,
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(batch, num_labels)`` logits, computed stably in float64."""
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
