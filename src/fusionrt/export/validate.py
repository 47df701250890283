"""Validation of exported graphs against the PyTorch FP32 model.

Every output is checked on every case before raising; the error lists each failure with its max
difference (optimum's ``validate_model_outputs`` convention).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusionrt.errors import ExportValidationError


def _random_case(rng: np.random.Generator, batch: int, seq: int, vocab: int, type_vocab: int, hw: tuple):
    """Random inputs; row 0 has the full length, other rows random lengths in [1, seq]."""
    ids = rng.integers(0, vocab, (batch, seq), dtype=np.int64)
    lengths = np.concatenate([[seq], rng.integers(1, seq + 1, batch - 1)]) if batch > 1 else np.array([seq])
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    types = rng.integers(0, max(type_vocab, 1), (batch, seq), dtype=np.int64) * mask
    pixels = rng.standard_normal((batch, 3) + hw).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "pixel_values": pixels}


def _torch_outputs(model, feed: dict) -> dict[str, np.ndarray]:
    import torch

    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    return {"logits": out.logits.numpy(), "modality_weights": out.modality_weights.numpy()}


def _heldout_feeds(ckpt, batch_size: int = 8):
    from fusionrt.model.data import read_jsonl

    path = ckpt.split("heldout")
    if path is None:
        return None, None
    examples = read_jsonl(path)
    label_ids = {name: i for i, name in enumerate(ckpt.config.labels)}
    feeds = []
    for start in range(0, len(examples), batch_size):
        part = examples[start : start + batch_size]
        feed, _ = ckpt.tokenizer([ex.text for ex in part])
        feed["pixel_values"] = ckpt.image_processor([ex.image for ex in part])
        feeds.append(feed)
    labels = np.array([label_ids.get(ex.label, -1) for ex in examples])
    return feeds, labels


def validate_bundle_graphs(bundle_dir: Path, ckpt, graph_paths: dict, options, progress: bool = True) -> dict:
    """Run the graphs with ONNX Runtime (CPU) and PyTorch on the same inputs and compare.

    Cases: ``validation_batch_sizes`` x ``validation_seq_lens`` random inputs (lengths differ
    inside a batch), then the checkpoint's held-out set when it has one.

    Returns:
        The manifest's ``validation`` entry.

    Raises:
        ExportValidationError: an output exceeds its tolerance or is not finite (all listed).
    """
    from fusionrt.engine.session import GraphChain, SessionOptions, create_session

    chain = GraphChain(
        {name: create_session(path, ["CPUExecutionProvider"], SessionOptions()) for name, path in graph_paths.items()}
    )
    config = ckpt.config
    rng = np.random.default_rng(0)
    vocab = int(config.text_config.get("vocab_size", 100))
    type_vocab = int(config.text_config.get("type_vocab_size", 1))
    hw = ckpt.image_processor.output_hw
    failures: list[str] = []
    max_err = {name: 0.0 for name in options.tolerance}
    abs_errors: list[np.ndarray] = []
    cosines: list[np.ndarray] = []
    agree: list[np.ndarray] = []
    num_samples = 0

    def compare(case: str, feed: dict) -> tuple[np.ndarray, np.ndarray]:
        nonlocal num_samples
        ref = _torch_outputs(ckpt.model, feed)
        got = chain.run(feed)
        for name, tol in options.tolerance.items():
            if not np.isfinite(got[name]).all():
                failures.append(f"{name}: {case}: non-finite values (NaN or Inf)")
                continue
            err = float(np.abs(got[name] - ref[name]).max())
            max_err[name] = max(max_err[name], err)
            if err > tol:
                failures.append(f"{name}: {case}: max abs error {err:.3g} > tolerance {tol:g}")
        a, b = got["logits"].astype(np.float64), ref["logits"].astype(np.float64)
        abs_errors.append(np.abs(a - b).ravel())
        cosines.append((a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12))
        agree.append(a.argmax(-1) == b.argmax(-1))
        num_samples += len(a)
        return a.argmax(-1), b.argmax(-1)

    for batch in options.validation_batch_sizes:
        for seq in options.validation_seq_lens:
            seq = seq or config.max_seq_len
            compare(f"batch={batch} seq={seq}", _random_case(rng, batch, seq, vocab, type_vocab, hw))

    feeds, labels = _heldout_feeds(ckpt)
    accuracy = reference_accuracy = None
    if feeds:
        preds, refs = [], []
        for i, feed in enumerate(feeds):
            p, r = compare(f"heldout batch {i}", feed)
            preds.append(p)
            refs.append(r)
        pred, ref = np.concatenate(preds), np.concatenate(refs)
        accuracy = float((pred == labels).mean())
        reference_accuracy = float((ref == labels).mean())

    if failures:
        raise ExportValidationError(
            f"exported graphs in {bundle_dir} do not match the PyTorch model "
            f"({len(failures)} failed check(s)); nothing was written",
            failures,
        )
    return {
        "reference": "pytorch-fp32",
        "provider": "CPUExecutionProvider",
        "num_samples": num_samples,
        "max_abs_error": max_err.get("logits", 0.0),
        "max_abs_error_per_output": max_err,
        "mean_abs_error": float(np.concatenate(abs_errors).mean()),
        "cosine": float(np.concatenate(cosines).min()),
        "top1_agreement": float(np.concatenate(agree).mean()),
        "accuracy": accuracy,
        "reference_accuracy": reference_accuracy,
        "accuracy_delta": None if accuracy is None else round((accuracy - reference_accuracy) * 100, 4),
        "tolerance": dict(options.tolerance),
        "eval_data": "heldout.jsonl" if feeds else None,
    }
