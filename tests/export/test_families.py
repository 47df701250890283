"""Every encoder family through every export path: a tiny random Hugging Face directory per row,
trained with ``train(text_encoder=DIR, image_encoder=DIR)``, exported FP32, static INT8, for
OpenVINO (FP32 and bf16); the bundle's encoder graphs checked against the transformers models,
left-padded and holed masks against PyTorch, fusion counts per family."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusionrt import Engine
from fusionrt.export import ExportOptions, export_bundle
from tests.families import PAIRS, image_encoder_dir, text_encoder_dir

# Max |logit - PyTorch FP32| of the bundle on the masks below: FP32 graphs on ONNX Runtime
# (measured <= 2e-6 on the Intel Xeon of this session), OpenVINO FP32.
FP32_TOLERANCE = 1e-4
# Attention ops the optimizer leaves per text family (layers of the tiny configs: 2), image family.
FUSED_ATTENTION = {"bert": 2, "electra": 2, "roberta": 2, "xlm-roberta": 2, "distilbert": 0, "resnet": 0, "convnext": 0, "vit": 0}
IDS = [f"{t}+{i}" for t, i in PAIRS]


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
