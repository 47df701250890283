"""The bundle's encoder graphs against the transformers models they claim to be.

fusionrt's own module is the reference of the bundle as a whole (:mod:`fusionrt.export.validate`);
this check closes the gap below it: a text config built as the wrong class (RoBERTa weights in a
``BertModel`` load with "All keys matched" and answer up to 3 off) would pass a comparison with
fusionrt's module and fail this one. The reference is ``transformers.AutoModel`` of the config's
``model_type`` (fresh from the config, the checkpoint's encoder weights loaded into it), its output
turned into the head's input by the family row's ``features``; rows that are fusionrt's own modules
(no ``transformers_class``) are checked against that module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusionrt.errors import ExportValidationError

# FP32 graph vs the transformers model: max abs error over max(1, max |reference|).
ENCODER_TOLERANCE = 1e-4


def reference_encoder(row, config: dict, encoder):
    """The transformers model a family row claims (``AutoModel`` of ``config``) holding
    ``encoder``'s weights, in eval mode; ``encoder`` itself for fusionrt's own modules.

    Raises:
        ExportValidationError: the weights do not fit the transformers model (beyond its pooler).
    """
    if row.transformers_class is None:
        return encoder.eval(), "fusionrt." + type(encoder).__name__
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.for_model(row.model_type, **{k: v for k, v in config.items() if k != "model_type"})
    model = AutoModel.from_config(cfg)
    result = model.load_state_dict(encoder.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("pooler.")]
    if missing or result.unexpected_keys:
        raise ExportValidationError(
            f"the {row.model_type} encoder's weights do not fit transformers.{type(model).__name__}",
            [f"missing: {missing}", f"unexpected: {result.unexpected_keys}"],
        )
    return model.eval(), "transformers." + type(model).__name__


def text_cases(rng: np.random.Generator, vocab: int, pad_id: int, seq: int) -> list[dict]:
    """Random ids with right-padded, left-padded and holed masks (pad ids under the mask's zeros).

    Returns:
        Feeds of ``input_ids``, ``attention_mask``, ``token_type_ids`` ``(4, seq) int64``.
    """
    ids = rng.integers(3, vocab, (4, seq), dtype=np.int64)
    mask = np.ones((4, seq), np.int64)
    mask[1, seq // 2 :] = 0  # right padding
    mask[2, : seq // 3] = 0  # left padding
    mask[3, 1 : 1 + seq // 4] = 0  # a hole
    ids = np.where(mask == 1, ids, pad_id)
    types = np.zeros_like(ids)
    types[:, seq // 2 :] = 1
    return [{"input_ids": ids, "attention_mask": mask, "token_type_ids": types * mask}]


def check_encoders(graph_paths: dict, ckpt, hw: tuple[int, int]) -> dict:
    """Run the ``text_encoder`` and ``image_encoder`` graphs among ``graph_paths`` (FP32) with ONNX
    Runtime (CPU) and the transformers models on the same random inputs; every check runs before
    raising.

    Text features are compared where ``attention_mask`` is 1 (the head never reads the others).

    Returns:
        The manifest's ``encoder_reference`` entry: per graph the reference class, the max abs
        error and the tolerance.

    Raises:
        ExportValidationError: a graph is off by more than ``ENCODER_TOLERANCE`` (each listed).
    """
    import torch

    from fusionrt.engine.loaders import ort_session
    from fusionrt.engine.session import SessionOptions

    model, config = ckpt.model, ckpt.config
    rng = np.random.default_rng(0)
    text_ref, text_name = reference_encoder(model.text_family, config.text_config, model.text_encoder)
    image_ref, image_name = reference_encoder(model.image_family, config.image_config, model.image_encoder)
    vocab = int(config.text_config.get("vocab_size", 100))
    cases = {
        "text_encoder": (model.text_family, text_ref, text_name,
                         text_cases(rng, vocab, ckpt.tokenizer.pad_id, min(16, config.max_seq_len))),
        "image_encoder": (model.image_family, image_ref, image_name,
                          [{"pixel_values": rng.standard_normal((2, 3) + tuple(hw)).astype(np.float32)}]),
    }
    failures, report = [], {}
    for name, (row, reference, ref_name, feeds) in cases.items():
        if name not in graph_paths:
            continue
        session = ort_session(graph_paths[name], SessionOptions())
        wanted = [i.name for i in session.get_inputs()]
        worst = 0.0
        for feed in feeds:
            got = session.run(None, {k: feed[k] for k in wanted})[0]
            with torch.inference_mode():
                ref = row.features(reference(**{k: torch.from_numpy(feed[k]) for k in wanted})).numpy()
            where = feed["attention_mask"][..., None].astype(bool) if "attention_mask" in feed else np.ones_like(ref, bool)
            diff = np.where(where, np.abs(got - ref), 0.0)
            worst = max(worst, float(diff.max()) / max(1.0, float(np.abs(ref).max())))
        report[name] = {"reference": ref_name, "max_error": worst, "tolerance": ENCODER_TOLERANCE,
                        "error": "max abs error / max(1, max |reference|)"}
        if not worst <= ENCODER_TOLERANCE:
            failures.append(f"{name}: {worst:.3g} > {ENCODER_TOLERANCE:g} against {ref_name}")
    if failures:
        raise ExportValidationError(
            f"the encoder graphs in {Path(next(iter(graph_paths.values()))).parent} are not the transformers models "
            "their configs name", failures,
        )
    return report
