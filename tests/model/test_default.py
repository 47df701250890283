"""The real path: pretrained MiniLM + EfficientNet-Lite0, the full default recipe (built once per session)."""

import json

import numpy as np
import pytest

from fusionrt import Engine
from fusionrt.export.validate import wilson_interval
from fusionrt.model.default import build_default_checkpoint
from tests.conftest import read_manifest


def test_default_checkpoint_needs_both_modalities(default_checkpoint):
    m = json.loads((default_checkpoint / "metrics.json").read_text())
    fused = m["heldout"]["accuracy"]
    assert fused >= 0.90, m["heldout"]
    chance = 1 / len(m["labels"])
    for name in ("text_only", "image_only"):
        # each modality alone carries half of the label: above chance, well below the fused head
        assert chance + 0.1 <= m["ablations"][name]["accuracy"] <= fused - 0.15, m["ablations"]
    assert m["heldout"]["macro_recall"] >= 0.90


def test_default_checkpoint_is_cached(default_checkpoint):
    before = (default_checkpoint / "model.safetensors").stat().st_mtime_ns
    path, reused = build_default_checkpoint(default_checkpoint, progress=False)
    assert reused and (path / "model.safetensors").stat().st_mtime_ns == before


def test_minilm_bundle_validates_and_predicts_photos(default_bundle, photo_dir):
    m = read_manifest(default_bundle)
    v = m["validation"]
    assert v["max_abs_error"] <= 1e-4 and v["top1_agreement"] == 1.0
    assert v["accuracy"] >= 0.90
    assert m["max_seq_len"] == 128
    assert m["graphs"]["image_encoder"]["outputs"][0]["shape"] == ["batch", 49, 1280]  # EfficientNet-Lite0 regions
    tok = json.loads((default_bundle / "tokenizer" / "tokenizer.json").read_text())
    assert tok["padding"]["strategy"] == "BatchLongest" and tok["truncation"]["max_length"] == 128
    engine = Engine.from_bundle(default_bundle)
    feed = engine.preprocess(["short", "a somewhat longer caption here"], [photo_dir / "camera.png", photo_dir / "logo.png"])
    # padded to the longest text, not to 128
    assert feed["input_ids"].shape[1] == feed["attention_mask"].sum(1).max() < 128
    preds = engine.predict(["what a lovely picture", "honestly a dreadful view"], [photo_dir / "astronaut.png", photo_dir / "rocket.jpg"])
    assert [p.label.split("-")[0] for p in preds] == ["positive", "negative"]  # sentiment from the real text encoder
    assert np.isclose(sum(preds[0].modality_weights.values()), 1.0, atol=1e-5)


def test_minilm_int8_agrees_with_fp32(default_checkpoint, default_bundle, default_int8_bundle):
    """INT8 on the real path: text and image static INT8 (QDQ; attention, LayerNorm and GELU fused
    and float), head FP32; the issue's targets: agreement >= 99.5%, accuracy drop <= 0.5 points.
    The text encoder's MatMuls read SmoothQuant-scaled LayerNorm outputs, write float outputs and
    have GPTQ-rounded weights: its last hidden state is within 20% (relative L2, real tokens) of
    FP32's on held-out captions (measured 11% on an Intel Xeon with AMX; 41% with ONNX Runtime's
    plain QDQ recipe)."""
    from fusionrt.model.data import read_jsonl, spread

    b = default_int8_bundle
    m = read_manifest(b)
    text = m["graphs"]["text_encoder"]
    assert text["fused_ops"]["Attention"] == 6 and text["recipe"]["int8"]["mode"] == "static"
    assert text["fused_ops"]["QuantizeLinear"] >= 6 * 3  # per layer: attention output and the two FFN MatMuls
    int8 = text["recipe"]["int8"]
    assert int8["weight_rounding"] == "gptq (18 matmuls)" and int8["matmul_outputs"] == "float"
    assert int8["smoothquant"].startswith("6 LayerNorm outputs")  # each layer's FFN input
    heldout = read_jsonl(default_checkpoint / "heldout.jsonl")
    pairs = [heldout[i] for i in spread(len(heldout), 64)]
    states = {}
    for name, path in (("fp32", default_bundle), ("int8", b)):
        engine = Engine.from_bundle(path)
        feed = engine.preprocess([e.text for e in pairs], [e.image for e in pairs])
        states[name] = engine.runtime.infer(feed, outputs=("text_features",))["text_features"]
    mask = feed["attention_mask"].astype(bool)
    error = np.linalg.norm((states["int8"] - states["fp32"])[mask]) / np.linalg.norm(states["fp32"][mask])
    assert error < 0.2, error
    assert m["graphs"]["fusion_head"]["fused_ops"]["MultiHeadAttention"] == 1
    v = m["validation"]
    assert v["eval_data"] == "heldout.jsonl" and v["agreement_data"] == "eval_data"
    assert v["eval_num_samples"] == v["agreement_num_samples"] == 1024
    # Measured 99.8% (1022 of 1024) on an AMD EPYC with AVX-512 VNNI (8-bit weights); training
    # differs slightly between CPUs, and one of the 1024 held-out examples is 0.1 point.
    assert v["top1_agreement"] >= 0.995, v
    agreeing = round(v["top1_agreement"] * 1024)  # the Wilson score interval of those counts, narrow at n=1024
    assert v["top1_agreement_ci95"] == pytest.approx(list(wilson_interval(agreeing, 1024))), v
    assert v["top1_agreement_ci95"][1] - v["top1_agreement_ci95"][0] < 0.01, v
    assert v["accuracy_delta"] >= -0.5, v
    # the explanations' top region as PyTorch FP32's, measured on the same 1024 pairs: 86.8% on an
    # AMD EPYC (docs/export.md); the FP32 bundle's graphs give PyTorch's own
    assert 0.8 <= v["region_agreement"] < 1.0 and v["min_region_agreement"] == 0.0, v
    assert read_manifest(default_bundle)["validation"]["region_agreement"] >= 0.99
    assert "float_front" not in m["graphs"]["image_encoder"]["recipe"]["int8"]  # no floor asked: nothing tried
