"""Training of the fusion head (encoders frozen), with held-out split, calibration sample,
text-only / image-only ablations and metrics."""

from __future__ import annotations

import copy
import json
import os
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from fusionrt.errors import InputError
from fusionrt.model.checkpoint import load_checkpoint, save_checkpoint
from fusionrt.model.data import Example, read_jsonl, write_jsonl
from fusionrt.model.encoders import base_model
from fusionrt.model.hub import load_encoders
from fusionrt.model.modeling import MultimodalClassifier
from fusionrt.utils import OutputKind, atomic_directory, check_output_folder, progress_bar

# A checkpoint fusionrt wrote holds its weights and their config (save_checkpoint).
CHECKPOINT_OUTPUT = OutputKind("checkpoint", "-o/--output", InputError,
                               ours=lambda p: (p / "config.json").is_file() and (p / "model.safetensors").is_file())


@dataclass(frozen=True)
class TrainOptions:
    """Options of :func:`train`.

    Attributes:
        epochs: passes over the training split (the head is small; features are cached).
        batch_size: examples per optimizer step.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        heldout_fraction: share of each label kept out of training for evaluation.
        calibration_size: examples of the training split saved for INT8 calibration (0: none).
        seed: seeds the split, the head's initialization and the batch order.
        ablations: also train text-only and image-only heads and report their accuracy.
        label_smoothing: cross-entropy label smoothing (Szegedy et al., 2016, "Rethinking the
            Inception Architecture", sec. 7). 0.1 keeps the logits of a head trained to 100%
            training accuracy from growing without bound: without it the default checkpoint's
            logits made FP16 rounding exceed 1e-2 on some trainings.
    """

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    heldout_fraction: float = 0.2
    calibration_size: int = 128
    seed: int = 0
    ablations: bool = True
    label_smoothing: float = 0.1

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise InputError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.learning_rate > 0.0 or not self.weight_decay >= 0.0:
            raise InputError(f"learning_rate must be > 0 and weight_decay >= 0, got {self.learning_rate}, {self.weight_decay}")
        if self.calibration_size < 0:
            raise InputError(f"calibration_size must be >= 0 (0: no calibration.jsonl), got {self.calibration_size}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise InputError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


def split(examples: list[Example], heldout_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Stratified split: ``heldout_fraction`` of every label (at least one, and at least one left
    for training) is held out. Identical examples (duplicate lines) stay on one side, so none of
    the held-out examples is also trained on.

    Raises:
        InputError: a label has fewer than 2 distinct examples.
    """
    rng = random.Random(seed)
    by_label: dict[str, dict[Example, list[Example]]] = {}
    for ex in examples:
        by_label.setdefault(ex.label, {}).setdefault(ex, []).append(ex)
    train_set, heldout = [], []
    for label in sorted(by_label):
        groups = list(by_label[label].values())
        rng.shuffle(groups)
        if len(groups) < 2:
            n = sum(map(len, groups))
            same = f" ({n} identical lines)" if n > 1 else ""
            raise InputError(f"label {label!r} has {len(groups)} distinct example{same}; each label needs at least 2 "
                             "(one to train on, one held out): add examples of it or remove it from the data file")
        k = min(len(groups) - 1, max(1, round(len(groups) * heldout_fraction)))
        heldout += [ex for group in groups[:k] for ex in group]
        train_set += [ex for group in groups[k:] for ex in group]
    return train_set, heldout


@torch.inference_mode()
def extract_features(model: MultimodalClassifier, tokenizer, image_processor, examples, batch_size=16, progress=True):
    """Encoder outputs for every example: text_features (N, S, Ht), attention_mask (N, S),
    image_features (N, L, Hi), all padded to the data set's longest text."""
    model.eval()
    feed, _ = tokenizer([ex.text for ex in examples])
    seq = feed["input_ids"].shape[1]
    texts, images = [], []
    bar = progress_bar(total=len(examples), desc="encoding", unit="example", enabled=progress)
    image_encoder = _inference_copy(model.image_encoder)
    for start in range(0, len(examples), batch_size):
        part = slice(start, start + batch_size)
        t = {k: torch.from_numpy(v[part]) for k, v in feed.items()}
        texts.append(model.encode_text(**t))
        pixels = torch.from_numpy(image_processor([ex.image for ex in examples[part]]))
        encoded = image_encoder(pixel_values=pixels.contiguous(memory_format=torch.channels_last))
        images.append(model.image_family.features(encoded).contiguous())
        bar.update(len(examples[part]))
    bar.close()
    return torch.cat(texts), torch.from_numpy(feed["attention_mask"]).reshape(-1, seq), torch.cat(images)


def _inference_copy(encoder: torch.nn.Module) -> torch.nn.Module:
    """A copy of an image encoder for feature extraction: every ``Conv2d`` directly followed by a
    ``BatchNorm2d`` in an ``nn.Sequential`` folded into one conv (eval-mode statistics), and the
    weights channels-last (oneDNN's faster layout on CPU). The same features within float rounding;
    the trained model is not touched."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    encoder = copy.deepcopy(encoder).eval()
    for module in encoder.modules():
        if isinstance(module, torch.nn.Sequential):
            children = list(module._modules.items())
            for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
                if type(bn) is torch.nn.BatchNorm2d and isinstance(conv, torch.nn.Conv2d):
                    module._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                    module._modules[bn_name] = torch.nn.Identity()
    return encoder.to(memory_format=torch.channels_last)


def _fit_head(head, feats, labels, options: TrainOptions, blank: str | None, progress: bool, desc: str):
    text, mask, image = _blanked(feats, blank)
    gen = torch.Generator().manual_seed(options.seed)
    opt = torch.optim.AdamW(head.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=options.learning_rate, total_steps=options.epochs * -(-len(labels) // options.batch_size)
    )
    head.train()
    bar = progress_bar(range(options.epochs), desc=desc, unit="epoch", enabled=progress)
    for _ in bar:
        order = torch.randperm(len(labels), generator=gen)
        total = 0.0
        for start in range(0, len(labels), options.batch_size):
            idx = order[start : start + options.batch_size]
            logits = head(text[idx], mask[idx], image[idx]).logits
            loss = torch.nn.functional.cross_entropy(logits, labels[idx], label_smoothing=options.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total / len(labels):.4f}")
    head.eval()
    return head


def _blanked(feats, blank: str | None):
    text, mask, image = feats
    if blank == "image":
        image = torch.zeros_like(image)
    elif blank == "text":
        text = torch.zeros_like(text)
    return text, mask, image


@torch.inference_mode()
def _evaluate(head, feats, labels, num_labels: int, blank: str | None = None) -> dict:
    text, mask, image = _blanked(feats, blank)
    pred = head(text, mask, image).logits.argmax(-1)
    return classification_metrics(pred.numpy(), labels.numpy(), num_labels)


def classification_metrics(pred: np.ndarray, true: np.ndarray, num_labels: int) -> dict:
    """Accuracy and macro recall (mean over labels present in ``true`` of per-label recall)."""
    recalls = [float((pred[true == c] == c).mean()) for c in range(num_labels) if (true == c).any()]
    return {
        "accuracy": float((pred == true).mean()),
        "macro_recall": float(np.mean(recalls)),
        "num_samples": int(len(true)),
    }


def _start(labels: list[str], base, text_encoder, image_encoder, seed: int):
    """``(model, tokenizer, image_processor, tokenizer_source)`` training starts from: Hugging Face
    encoder directories, a base checkpoint (a new last layer when its labels differ) or the defaults."""
    if text_encoder is not None or image_encoder is not None:
        enc = load_encoders(text_encoder, image_encoder, labels, seed=seed)
        return enc.model, enc.tokenizer, enc.image_processor, enc.tokenizer_source
    if base is None:
        return base_model(labels)
    ckpt = load_checkpoint(base)
    model = ckpt.model
    if ckpt.config.labels != labels:
        model.config.id2label = dict(enumerate(labels))
        last = model.head.classifier[-1]
        model.head.classifier[-1] = torch.nn.Linear(last.in_features, len(labels))
    return model, ckpt.tokenizer, ckpt.image_processor, ckpt.path


def train(
    data: str | os.PathLike,
    output: str | os.PathLike,
    base: str | os.PathLike | None = None,
    options: TrainOptions = TrainOptions(),
    progress: bool = True,
    text_encoder: str | os.PathLike | None = None,
    image_encoder: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict:
    """Train a checkpoint's fusion head on a JSONL data set; the encoders stay frozen.

    Args:
        data: JSONL file of ``{"text", "image", "label"}`` (image relative to the file).
        output: checkpoint directory to write, atomically when training succeeds: absent or empty,
            or (with ``overwrite``) a checkpoint fusionrt wrote before; any other folder is refused.
        base: checkpoint whose encoders (and head, when its labels match) start training;
            ``None`` takes the default encoders (pretrained all-MiniLM-L6-v2, EfficientNet-Lite0).
        options: see :class:`TrainOptions`.
        text_encoder / image_encoder: Hugging Face encoder directories to start from instead of
            the defaults (see :func:`fusionrt.model.hub.load_encoders`); not with ``base``.
        overwrite: replace a checkpoint fusionrt wrote at ``output`` (checked before training).

    Returns:
        The metrics written to ``output/metrics.json``.

    Raises:
        InputError: bad data file or options; an unusable encoder directory, or ``base`` together
            with an encoder directory; ``output`` holds files fusionrt did not write, or an
            earlier checkpoint without ``overwrite``.
    """
    if base is not None and (text_encoder is not None or image_encoder is not None):
        raise InputError("--base takes a fusionrt checkpoint's encoders; give it or --text-encoder/--image-encoder, not both")
    started = time.perf_counter()
    check_output_folder(output, CHECKPOINT_OUTPUT, overwrite)
    examples = read_jsonl(data)
    labels = sorted({ex.label for ex in examples})
    if len(labels) < 2:
        raise InputError(f"{data} has a single label {labels}; a classifier needs at least 2")
    train_set, heldout = split(examples, options.heldout_fraction, options.seed)
    torch.manual_seed(options.seed)

    model, tokenizer, image_processor, tokenizer_source = _start(labels, base, text_encoder, image_encoder, options.seed)
    label_ids = {name: i for i, name in enumerate(labels)}
    for p in list(model.text_encoder.parameters()) + list(model.image_encoder.parameters()):
        p.requires_grad_(False)

    feats_train = extract_features(model, tokenizer, image_processor, train_set, progress=progress)
    feats_held = extract_features(model, tokenizer, image_processor, heldout, progress=progress)
    y_train = torch.tensor([label_ids[ex.label] for ex in train_set])
    y_held = torch.tensor([label_ids[ex.label] for ex in heldout])

    initial_head = copy.deepcopy(model.head)
    _fit_head(model.head, feats_train, y_train, options, None, progress, "training head")
    metrics = {
        "labels": labels,
        "num_train": len(train_set),
        "heldout": _evaluate(model.head, feats_held, y_held, len(labels)),
        "train": _evaluate(model.head, feats_train, y_train, len(labels)),
        "options": asdict(options),
    }
    if options.ablations:
        metrics["ablations"] = {}
        for name, blank in (("text_only", "image"), ("image_only", "text")):
            head = _fit_head(copy.deepcopy(initial_head), feats_train, y_train, options, blank, progress, name)
            metrics["ablations"][name] = _evaluate(head, feats_held, y_held, len(labels), blank)
    metrics["train_seconds"] = round(time.perf_counter() - started, 1)

    model.eval()
    with atomic_directory(output, CHECKPOINT_OUTPUT, overwrite) as tmp:
        save_checkpoint(tmp, model, tokenizer, image_processor, tokenizer_source)
        write_jsonl(tmp / "heldout.jsonl", heldout)
        if options.calibration_size:  # none: an INT8 export then asks for --calibration
            rng = random.Random(options.seed + 1)
            calibration = rng.sample(train_set, min(options.calibration_size, len(train_set)))
            write_jsonl(tmp / "calibration.jsonl", calibration)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
