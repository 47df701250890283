"""A benchmark entry as data (:class:`Contender`): the runner and the peers build them, the runner
times them; kept apart so that neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Contender:
    """One entry of a benchmark: how to run it in each mode on a batch of (texts, images).

    Attributes:
        name: as reported.
        model: ``(texts, images) -> fn``: a zero-argument call on preprocessed tensors, or
            ``None`` (measured in pipeline mode only: a variant whose model is another entry's).
        pipeline: the same for decode-to-probabilities, or ``None`` (measured in model mode only).
        engine: the Engine behind it, whose stages are broken down and put on the roofline, or ``None``.
        baseline: the reference of the speedups and of the logit errors.
        reference_peer: the peer of the ``x peer`` ratios (OpenVINO's default conversion, its
            pipeline as users write it).
        logits: ``(texts, images) -> (batch, num_labels) float32`` logits of the model mode, or
            ``None``: compared with the baseline's into ``Result.max_abs_logit_error``.
        runs_on: what runs it and in which precision, as the report's "runs on" column says it
            (``"PyTorch eager CPU (fp32)"``, ``"OpenVINO CPU (bf16)"``); ``None`` for an entry
            with an engine, whose placement per graph is read from it.
    """

    name: str
    model: Callable[[list, list], Callable[[], object]] | None
    pipeline: Callable[[list, list], Callable[[], object]] | None = None
    engine: object | None = None
    baseline: bool = False
    reference_peer: bool = False
    logits: Callable[[list, list], np.ndarray] | None = None
    runs_on: str | None = None
