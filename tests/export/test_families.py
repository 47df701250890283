"""Every encoder family through every export path: a tiny random encoder directory per row,
trained with ``train(text_encoder=DIR, image_encoder=DIR)``, exported FP32, static INT8, for
OpenVINO (FP32 and bf16) and ``--precision auto``; the bundle's encoder graphs checked against the
transformers models (EfficientNet-Lite0: fusionrt's module), left-padded and holed masks against
PyTorch, fusion counts per family; one non-BERT pair through the CLI's ``train`` and ``export
--precision auto``."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from fusionrt import Engine
from fusionrt.bundle import GRAPHS
from fusionrt.export import ExportOptions, export_bundle
from fusionrt.export.auto import SearchOptions, search_precision
from fusionrt.export.recipes import TOLERANCE, default_tolerance
from fusionrt.model.families import FAMILIES
from tests.conftest import ops_before_first_conv
from tests.families import PAIRS, image_encoder_dir, text_encoder_dir

# Max |logit - PyTorch FP32| of the bundle on the masks below: FP32 graphs on ONNX Runtime
# (measured <= 2e-6 on the Intel Xeon of this session), OpenVINO FP32.
FP32_TOLERANCE = 1e-4
# Attention ops the optimizer leaves per text family (layers of the tiny configs: 2), image family.
FUSED_ATTENTION = {"bert": 2, "electra": 2, "roberta": 2, "xlm-roberta": 2, "distilbert": 0, "resnet": 0, "convnext": 0, "vit": 0,
                   "efficientnet-lite0": 0}
# --precision auto as the CLI runs it (every candidate this machine has: cpu and openvino; fp32,
# bf16, int8, int8-dynamic) with a small timing budget: 3 rounds at batch 4.
AUTO_SEARCH = SearchOptions(batch_size=4, rounds=3)
AUTO_BUDGET = ExportOptions.auto_budget(max_batch_size=4, accept_small_eval_set=True)
IDS = [f"{t}+{i}" for t, i in PAIRS]
# What is left of the uint8 graph's normalization before the first Conv (mean and std 0.5, so the
# normalized zero is the raw pixel 127.5: a float Pad where the stem pads, nothing where it does not).
STEM_OPS = {"resnet": ["Transpose", "Cast", "Pad"], "efficientnet-lite0": ["Transpose", "Cast", "Pad"],
            "vit": ["Transpose", "Cast"], "convnext": ["Transpose", "Cast"]}


@pytest.fixture(scope="module", params=PAIRS, ids=IDS)
def family_checkpoint(request, tmp_path_factory, tiny_data):
    from fusionrt.model.train import TrainOptions, train

    text, image = request.param
    root = tmp_path_factory.mktemp(f"{text}-{image}")
    train(tiny_data, root / "ckpt", options=TrainOptions(epochs=3, ablations=False), progress=False,
          text_encoder=text_encoder_dir(root, text), image_encoder=image_encoder_dir(root, image))
    return request.param, root / "ckpt"


@pytest.fixture(scope="module")
def family_bundle(family_checkpoint, tmp_path_factory):
    (text, image), ckpt = family_checkpoint
    return export_bundle(ckpt, tmp_path_factory.mktemp("bundle") / "fp32", ExportOptions(max_batch_size=4, accept_small_eval_set=True),
                         progress=False)


def test_fp32_bundle_is_the_transformers_models(family_checkpoint, family_bundle):
    (text, image), _ = family_checkpoint
    manifest = json.loads((family_bundle / "manifest.json").read_text())
    reference = manifest["validation"]["encoder_reference"]
    for stage in ("traced", "bundle"):
        assert reference[stage]["text_encoder"]["reference"].startswith("transformers.")
        assert reference[stage]["text_encoder"]["max_error"] <= 1e-4
        assert reference[stage]["image_encoder"]["max_error"] <= 1e-4
    names = [t["name"] for t in manifest["graphs"]["text_encoder"]["inputs"]]
    takes_types = text in ("bert", "electra")
    assert names == ["input_ids", "attention_mask"] + (["token_type_ids"] if takes_types else [])
    fused = manifest["graphs"]["text_encoder"]["fused_ops"].get("Attention", 0)
    assert fused == FUSED_ATTENTION[text]
    assert manifest["graphs"]["image_encoder"]["fused_ops"].get("Attention", 0) == FUSED_ATTENTION[image]
    assert manifest["graphs"]["text_encoder"]["recipe"]["fusion"]["model_type"] == "bert"
    if image == "vit":
        assert manifest["graphs"]["image_encoder"]["recipe"]["fusion"]["model_type"] == "vit"
        assert manifest["graphs"]["image_encoder"]["fused_ops"]["SkipLayerNormalization"] == 4
    assert manifest["graphs"]["image_encoder"]["recipe"]["pixel_normalization"].startswith("folded into the first Conv")
    assert ops_before_first_conv(onnx.load(str(family_bundle / "image_encoder.onnx"))) == STEM_OPS[image]


def _mask_feeds(tokenizer, seq: int) -> dict[str, dict]:
    texts = ["what a lovely picture", "honestly a dreadful view", "gloomy", "such a cheerful design really"]
    feed, _ = tokenizer(texts, pad_to=seq)
    ids, mask = feed["input_ids"], feed["attention_mask"]
    left_ids, left_mask = np.full_like(ids, tokenizer.pad_id), np.zeros_like(mask)
    for i, n in enumerate(mask.sum(1)):
        left_ids[i, seq - n :], left_mask[i, seq - n :] = ids[i, :n], 1
    hole = mask.copy()
    hole[:, 2:4] = 0  # tokens present under the zeros
    out = {"right": {"input_ids": ids, "attention_mask": mask}, "left": {"input_ids": left_ids, "attention_mask": left_mask},
           "hole": {"input_ids": ids, "attention_mask": hole}}
    if "token_type_ids" in tokenizer.inputs:
        for f in out.values():
            f["token_type_ids"] = np.zeros_like(f["input_ids"])
    return out


def test_masks_equal_pytorch(family_checkpoint, family_bundle):
    import torch

    from fusionrt.model.checkpoint import load_checkpoint

    (text, image), ckpt_dir = family_checkpoint
    ckpt = load_checkpoint(ckpt_dir)
    rng = np.random.default_rng(3)
    with Engine.from_bundle(family_bundle) as engine:
        assert engine.tokenizer.inputs == ckpt.model.text_inputs
        for name, feed in _mask_feeds(engine.tokenizer, 12).items():
            pixels = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)  # the bundle's uint8 image input
            got = engine.run({**feed, "pixel_values": pixels})["logits"]
            torch_feed = {**feed, "pixel_values": ckpt.image_processor.normalize(pixels)}
            with torch.inference_mode():
                ref = ckpt.model(**{k: torch.from_numpy(v) for k, v in torch_feed.items()}).logits.numpy()
            assert np.abs(got - ref).max() <= FP32_TOLERANCE, name


@pytest.mark.parametrize("precision,target", [("int8", "cpu"), ("fp32", "openvino"), ("bf16", "openvino")])
def test_every_path_exports_and_validates(family_checkpoint, tmp_path, precision, target):
    """Static INT8 on ONNX Runtime, FP32 and bf16 on OpenVINO (this Xeon has AMX-BF16): export
    validates each against PyTorch FP32 (tolerances of the precision) and the engine runs it."""
    (text, image), ckpt = family_checkpoint
    if target == "openvino":
        pytest.importorskip("openvino")
    options = ExportOptions(precision=precision, target=target, max_batch_size=4, min_agreement=0.0, max_accuracy_drop=100.0)
    bundle = export_bundle(ckpt, tmp_path / "b", options, progress=False)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["validation"]["top1_agreement"] >= 0.5
    with Engine.from_bundle(bundle) as engine:
        [p] = engine.predict(["what a lovely picture"], [np.full((40, 40, 3), 120, np.uint8)])
    assert abs(sum(p.probabilities.values()) - 1) < 1e-4


@pytest.fixture(scope="module")
def family_auto(family_checkpoint, family_bundle, tmp_path_factory):
    """The search's bundle and result; its FP32 candidates are ``family_bundle``'s graphs (the same
    files its own unvalidated FP32 export would make)."""
    _, ckpt = family_checkpoint
    out = tmp_path_factory.mktemp("auto") / "auto"
    result = search_precision(ckpt, out, AUTO_BUDGET, AUTO_SEARCH, progress=False, echo=lambda _: None, sources={"fp32": family_bundle})
    return result, out


@pytest.mark.slow
def test_auto_picks_a_recipe_that_holds_the_gate(family_checkpoint, family_auto):
    (text, image), _ = family_checkpoint
    result, bundle = family_auto
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["precision"]) == set(GRAPHS) and set(manifest["precision"].values()) <= set(TOLERANCE)
    assert {g: c.precision for g, c in result.choice.items()} == manifest["precision"]
    assert manifest["target"] == result.target and manifest["runtimes"] == {g: c.runtime for g, c in result.choice.items()}
    *failed, chosen = result.tried
    assert chosen["passed"] and not any(t.get("passed") for t in failed)
    assert chosen["agreement"] >= AUTO_BUDGET.min_agreement and -chosen["accuracy_delta"] <= AUTO_BUDGET.max_accuracy_drop
    assert all(c.agreement >= AUTO_BUDGET.min_agreement and c.skipped is None for c in result.choice.values())
    # every encoder recipe runs on the family's graphs, on both runtimes; OpenVINO 2026.4.1 cannot
    # compile the static-INT8 head (its MatMul low-precision transformation fails on the quantized Concat)
    assert {c.name for c in result.candidates if c.skipped} <= {"head=int8@openvino"}
    assert all(c.ms > 0 and 0 <= c.agreement <= 1 for c in result.candidates if c.skipped is None)
    names = [t["name"] for t in manifest["graphs"]["text_encoder"]["inputs"]]
    assert names == list(FAMILIES[text].inputs)
    assert ("token_type_ids" in names) == (text in ("bert", "electra"))


@pytest.mark.slow
def test_auto_bundle_agrees_with_pytorch_on_the_eval_examples(family_checkpoint, family_auto):
    """The Engine on the held-out examples against the family's PyTorch model: within the chosen
    plan's stated tolerance where it states one (int8 states none), and top-1 agreement >= the gate."""
    import torch

    from fusionrt.model.checkpoint import load_checkpoint
    from fusionrt.model.data import read_jsonl

    (text, _), ckpt_dir = family_checkpoint
    result, bundle = family_auto
    ckpt = load_checkpoint(ckpt_dir)
    examples = read_jsonl(ckpt.split("heldout"))
    texts, images = [ex.text for ex in examples], [ex.image for ex in examples]
    with Engine.from_bundle(bundle) as engine:
        assert engine.tokenizer.inputs == FAMILIES[text].inputs
        got = engine.logits(texts, images)
    feed, _ = ckpt.tokenizer(texts)
    feed["pixel_values"] = ckpt.image_processor.normalize(ckpt.image_processor.pixels(images, "uint8"))
    with torch.inference_mode():
        ref = ckpt.model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    tolerance = default_tolerance({g: c.precision for g, c in result.choice.items()})["logits"]
    if tolerance is not None:
        assert np.abs(got - ref).max() <= tolerance
    agreement = (got.argmax(-1) == ref.argmax(-1)).mean()
    # int8-dynamic quantizes activations per batch: its answers move with batch-mates and padding
    # (docs/export.md), and the Engine's batches here are not the validation's; on a random tiny
    # model's near-ties one held-out item may then flip.
    dynamic = any(c.precision == "int8-dynamic" for c in result.choice.values())
    floor = AUTO_BUDGET.min_agreement - (1 / len(examples) if dynamic else 0.0)
    assert agreement >= floor, (result.precision, result.target, agreement)


@pytest.mark.slow
def test_cli_trains_a_roberta_vit_pair_and_exports_it_auto(tmp_path, tiny_data, capsys):
    """``fusionrt train --text-encoder DIR --image-encoder DIR`` then ``fusionrt export --precision
    auto`` (ONNX Runtime's fp32 and int8 candidates, for time): a bundle without token_type_ids."""
    from fusionrt.cli import main

    ckpt, out = tmp_path / "ckpt", tmp_path / "auto"
    assert main(["train", str(tiny_data), "-o", str(ckpt), "--epochs", "2", "--text-encoder", str(text_encoder_dir(tmp_path, "roberta")),
                 "--image-encoder", str(image_encoder_dir(tmp_path, "vit"))]) == 0
    assert main(["export", str(ckpt), "-o", str(out), "--precision", "auto", "--target", "cpu", "--candidates", "fp32,int8",
                 "--batch-size", "4", "--max-batch-size", "4", "--accept-small-eval-set"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert f"--precision {manifest['precision_search']['precision']} --target cpu" in printed
    assert set(manifest["precision"].values()) <= {"fp32", "int8"} and manifest["precision_search"]["tried"][-1]["passed"]
    assert [t["name"] for t in manifest["graphs"]["text_encoder"]["inputs"]] == ["input_ids", "attention_mask"]
    with Engine.from_bundle(out) as engine:
        [p] = engine.predict(["what a lovely picture"], [np.full((40, 40, 3), 120, np.uint8)])
    assert abs(sum(p.probabilities.values()) - 1) < 1e-4 and p.label in manifest["labels"]
