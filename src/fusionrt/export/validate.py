"""Validation of exported graphs against the PyTorch FP32 model.

Every output is checked on every case before raising; the error lists each failure with its max
difference (optimum's ``validate_model_outputs`` convention).
"""

from __future__ import annotations

import warnings
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


def _eval_feeds(ckpt, eval_data, batch_size: int = 8):
    from fusionrt.model.data import read_jsonl

    path = Path(eval_data) if eval_data else ckpt.split("heldout")
    if path is None:
        return None, None, None
    examples = read_jsonl(path)
    label_ids = {name: i for i, name in enumerate(ckpt.config.labels)}
    feeds = []
    for start in range(0, len(examples), batch_size):
        part = examples[start : start + batch_size]
        feed, _ = ckpt.tokenizer([ex.text for ex in part])
        feed["pixel_values"] = ckpt.image_processor([ex.image for ex in part])
        feeds.append(feed)
    labels = np.array([label_ids.get(ex.label, -1) for ex in examples])
    return feeds, labels, path


def validate_bundle_graphs(bundle_dir: Path, ckpt, graph_paths: dict, options, progress: bool = True) -> dict:
    """Run the graphs with ONNX Runtime (CPU) and PyTorch on the same inputs and compare.

    Cases: ``validation_batch_sizes`` x ``validation_seq_lens`` random inputs (lengths differ
    inside a batch), then the checkpoint's held-out set when it has one.

    Returns:
        The manifest's ``validation`` entry.

    Raises:
        ExportValidationError: an output exceeds its tolerance or is not finite, or accuracy on the
            evaluation set dropped more than ``options.max_accuracy_drop`` points (all listed).
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
    tolerance = options.tolerances
    random_tolerance = options.random_input_tolerances
    max_err = {name: 0.0 for name in tolerance}
    max_err_eval = {name: 0.0 for name in tolerance}
    # Agreement statistics come from the evaluation data when there is one (random inputs lie
    # outside INT8 calibration ranges: they check shapes, finiteness and FP32/FP16 error bounds).
    stats: dict[str, dict[str, list]] = {"random": {"abs": [], "cos": [], "agree": []}, "eval": {"abs": [], "cos": [], "agree": []}}
    num_samples = 0

    def compare(case: str, feed: dict, kind: str = "random") -> tuple[np.ndarray, np.ndarray]:
        nonlocal num_samples
        ref = _torch_outputs(ckpt.model, feed)
        got = chain.run(feed)
        for name, tol in (tolerance if kind == "eval" else random_tolerance).items():
            if not np.isfinite(got[name]).all():
                failures.append(f"{name}: {case}: non-finite values (NaN or Inf)")
                continue
            err = float(np.abs(got[name] - ref[name]).max())
            max_err[name] = max(max_err[name], err)
            if kind == "eval":
                max_err_eval[name] = max(max_err_eval[name], err)
            if tol is not None and err > tol:
                failures.append(f"{name}: {case}: max abs error {err:.3g} > tolerance {tol:g}")
        a, b = got["logits"].astype(np.float64), ref["logits"].astype(np.float64)
        st = stats[kind]
        st["abs"].append(np.abs(a - b).ravel())
        st["cos"].append((a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12))
        st["agree"].append(a.argmax(-1) == b.argmax(-1))
        num_samples += len(a)
        return a.argmax(-1), b.argmax(-1)

    for batch in options.validation_batch_sizes:
        for seq in options.validation_seq_lens:
            seq = seq or config.max_seq_len
            compare(f"batch={batch} seq={seq}", _random_case(rng, batch, seq, vocab, type_vocab, hw))

    feeds, labels, eval_path = _eval_feeds(ckpt, options.eval_data)
    accuracy = reference_accuracy = None
    if eval_path is not None and options.calibration and Path(options.calibration).resolve() == eval_path.resolve():
        warnings.warn(f"evaluation data {eval_path} is also the calibration data: the accuracy gate is optimistic", RuntimeWarning, stacklevel=3)
    if feeds:
        preds, refs = [], []
        for i, feed in enumerate(feeds):
            p, r = compare(f"{eval_path.name} batch {i}", feed, "eval")
            preds.append(p)
            refs.append(r)
        pred, ref = np.concatenate(preds), np.concatenate(refs)
        accuracy = float((pred == labels).mean())
        reference_accuracy = float((ref == labels).mean())
        drop = (reference_accuracy - accuracy) * 100
        if drop > options.max_accuracy_drop:
            failures.append(
                f"accuracy on {eval_path.name}: {accuracy:.2%} vs PyTorch FP32 {reference_accuracy:.2%}, a drop of "
                f"{drop:.2f} points > --max-accuracy-drop {options.max_accuracy_drop:g}"
            )

    if failures:
        raise ExportValidationError(
            f"exported graphs in {bundle_dir} do not match the PyTorch model "
            f"({len(failures)} failed check(s)); nothing was written",
            failures,
        )
    st = stats["eval"] if stats["eval"]["abs"] else stats["random"]
    return {
        "reference": "pytorch-fp32",
        "provider": "CPUExecutionProvider",
        "num_samples": num_samples,
        "max_abs_error": max_err.get("logits", 0.0),
        "max_abs_error_per_output": max_err,
        "max_abs_error_eval_data": max_err_eval if stats["eval"]["abs"] else None,
        "mean_abs_error": float(np.concatenate(st["abs"]).mean()),
        "cosine": float(np.concatenate(st["cos"]).mean()),
        "top1_agreement": float(np.concatenate(st["agree"]).mean()),
        "agreement_data": "eval_data" if st is stats["eval"] else "random inputs",
        "accuracy": accuracy,
        "reference_accuracy": reference_accuracy,
        "accuracy_delta": None if accuracy is None else round((accuracy - reference_accuracy) * 100, 4),
        "tolerance": tolerance,
        "random_input_tolerance": random_tolerance,
        "max_accuracy_drop": options.max_accuracy_drop,
        "eval_data": str(eval_path.name if eval_path.parent == ckpt.path else eval_path) if feeds else None,
    }
