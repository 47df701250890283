"""Every attention mask the PyTorch model accepts gives the PyTorch answer, for every precision.

The fused text encoder used to take the mask as per-row lengths (ONNX Runtime's mask index), which
assumes right padding: left padding and holes answered wrongly (ONNX Runtime #18945). These tests
run the default checkpoint (real MiniLM, where the error was 0.3-2.6 in logits) through
``Engine.run`` with right, left, holed and fully masked rows, against PyTorch FP32.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusionrt import Engine
from tests.background_build import TEXT_PRECISIONS
from tests.conftest import default_export, random_pixels, torch_feed

CAPTIONS = ["what a lovely picture", "honestly a dreadful view of the harbour at night", "gloomy", "such a cheerful design , really"]

# Max |logit - PyTorch FP32| per text-encoder precision (image encoder and head FP32), over these
# patterns with random pixels, measured on an AMD EPYC: FP32 6e-6, FP16 1e-3, static INT8 0.59,
# dynamic INT8 0.69. The INT8 bounds are of the size of the bug itself (the mask-index graph: 2.2 on
# left padding, 1.7 with holes), so the masked-token check below carries the mask's correctness
# for INT8.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1.0, "int8-dynamic": 1.0}
# Max |logit change| when the token ids under the zeros of the mask are replaced by other tokens.
# PyTorch's answer does not change; FP32, FP16 and static INT8 measured 0.0; dynamic INT8 0.27
# (its activation scales span every position of the batch, masked ones included: the price of that
# recipe); the mask-index graph 1.5 (left padding) and 3.0 (holes).
MASKED_TOKENS_TOLERANCE = {"fp32": 1e-5, "fp16": 1e-5, "int8": 1e-5, "int8-dynamic": 0.5}


def mask_patterns(tokenizer, seq: int) -> dict[str, dict[str, np.ndarray]]:
    """(batch, seq) feeds of CAPTIONS with their padding on the right, on the left, with a hole in
    the middle of the mask, and with one fully masked row."""
    feed, _ = tokenizer(CAPTIONS, pad_to=seq)
    ids, mask = feed["input_ids"], feed["attention_mask"]
    lengths = mask.sum(1)
    left_ids, left_mask = np.zeros_like(ids), np.zeros_like(mask)
    for i, n in enumerate(lengths):
        left_ids[i, seq - n :], left_mask[i, seq - n :] = ids[i, :n], 1
    hole = mask.copy()
    for i, n in enumerate(lengths):
        if n >= 4:
            hole[i, 1 + n // 3 : 1 + 2 * n // 3] = 0  # tokens present but masked out
    full = mask.copy()
    full[2] = 0
    types = np.zeros_like(ids)
    return {
        "right": {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
        "left": {"input_ids": left_ids, "attention_mask": left_mask, "token_type_ids": types},
        "hole": {"input_ids": ids, "attention_mask": hole, "token_type_ids": types},
        "fully_masked_row": {"input_ids": ids, "attention_mask": full, "token_type_ids": types},
    }


def torch_logits(ckpt, feed: dict) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return ckpt.model(**torch_feed(ckpt, feed)).logits.numpy()


@pytest.fixture(scope="module")
def text_bundles(default_checkpoint, default_bundle, tmp_path_factory):
    """The default checkpoint with its text encoder in each precision (image and head FP32; 8-bit
    INT8 weights on every CPU: the bounds above are theirs, where an AVX2-only CPU's default 7-bit
    weights give int8-dynamic 1.29), exported by the background job (tests/background_build.py)."""
    bundles = {"fp32": default_bundle}
    for precision in TEXT_PRECISIONS:
        bundles[precision] = default_export(tmp_path_factory, default_checkpoint, f"text-{precision}")
    return bundles


@pytest.fixture(scope="module")
def reference(default_checkpoint):
    from fusionrt.model.checkpoint import load_checkpoint

    return load_checkpoint(default_checkpoint)


def with_other_masked_tokens(feed: dict, rng: np.random.Generator, low: int = 1000, high: int = 20000) -> dict:
    """The same feed with random token ids in [low, high) wherever the mask is 0 (the model must
    ignore them)."""
    ids = np.where(feed["attention_mask"] == 0, rng.integers(low, high, feed["input_ids"].shape), feed["input_ids"])
    return {**feed, "input_ids": ids.astype(np.int64)}


def mask_errors(run, ckpt, pixels: np.ndarray, tokenizer, patterns=None) -> tuple[dict, dict]:
    """Per mask pattern: max |logits - PyTorch FP32| and max |logit change| under other masked tokens."""
    rng = np.random.default_rng(11)
    to_torch, masked = {}, {}
    for name, feed in mask_patterns(tokenizer, 24).items():
        if patterns and name not in patterns:
            continue
        feed = {**feed, "pixel_values": pixels}
        got = run(feed)
        to_torch[name] = float(np.abs(got - torch_logits(ckpt, feed)).max())
        # A fully masked row attends uniformly to every position (PyTorch too): its tokens count.
        rows = feed["attention_mask"].any(1)
        masked[name] = float(np.abs(run(with_other_masked_tokens(feed, rng)) - got)[rows].max())
    return to_torch, masked


@pytest.mark.parametrize("precision", list(TOLERANCE))
def test_every_mask_pattern_matches_pytorch(text_bundles, reference, precision):
    engine = Engine.from_bundle(text_bundles[precision])
    pixels = random_pixels(np.random.default_rng(7), len(CAPTIONS), engine.preprocessor.pixel_shape[:2])
    to_torch, masked = mask_errors(lambda f: engine.run(f)["logits"], reference, pixels, engine.tokenizer)
    assert all(e <= TOLERANCE[precision] for e in to_torch.values()), (precision, to_torch)
    assert all(e <= MASKED_TOKENS_TOLERANCE[precision] for e in masked.values()), (precision, masked)


def test_a_mask_index_graph_fails_this_check(default_checkpoint, default_bundle, reference, tmp_path):
    """The checks above can fail: the text encoder fused the old way (mask index, right padding
    assumed) is off by more than the FP32 tolerance on left padding and holes, and its answer moves
    with the tokens under the mask by more than even the dynamic-INT8 bound."""
    import torch
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from fusionrt.engine.loaders import ort_session
    from fusionrt.engine.session import GraphChain, SessionOptions
    from fusionrt.export.exporter import GRAPH_SPECS, _export_graph, _graph_modules
    from fusionrt.model.checkpoint import load_checkpoint

    model = load_checkpoint(default_checkpoint, attn_implementation="eager").model.eval()
    ids, mask = torch.randint(0, 1000, (2, 8)), torch.ones(2, 8, dtype=torch.int64)
    raw = tmp_path / "raw.onnx"
    with torch.no_grad():
        _export_graph(_graph_modules(model)["text_encoder"], (ids, mask, torch.zeros_like(mask)), GRAPH_SPECS["text_encoder"], raw, 17)
    options = FusionOptions("bert")
    options.use_raw_attention_mask(False)
    cfg = reference.config.text_config
    optimize_model(str(raw), model_type="bert", num_heads=int(cfg["num_attention_heads"]), hidden_size=int(cfg["hidden_size"]),
                   opt_level=0, optimization_options=options).save_model_to_file(str(tmp_path / "text_encoder.onnx"))
    paths = {"text_encoder": tmp_path / "text_encoder.onnx", "image_encoder": default_bundle / "image_encoder.onnx",
             "fusion_head": default_bundle / "fusion_head.onnx"}
    chain = GraphChain({n: ort_session(p, SessionOptions()) for n, p in paths.items()})
    engine = Engine.from_bundle(default_bundle)
    pixels = random_pixels(np.random.default_rng(7), len(CAPTIONS), engine.preprocessor.pixel_shape[:2])
    run = lambda feed: chain.run(feed)["logits"]  # noqa: E731
    to_torch, masked = mask_errors(run, reference, pixels, engine.tokenizer, ("right", "left", "hole"))
    assert to_torch["right"] <= TOLERANCE["fp32"], to_torch
    assert min(to_torch["left"], to_torch["hole"]) > 10 * TOLERANCE["fp32"], to_torch
    assert min(masked["left"], masked["hole"]) > MASKED_TOKENS_TOLERANCE["int8-dynamic"], masked


def _probabilities(engine: Engine, texts: list[str], pad_to: int | None = None) -> np.ndarray:
    feed, _ = engine.tokenizer(texts, pad_to=pad_to)
    pixels = random_pixels(np.random.default_rng(3), 1, engine.preprocessor.pixel_shape[:2])
    feed["pixel_values"] = np.repeat(pixels, len(texts), 0)
    logits = engine.run(feed)["logits"].astype(np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_int8_answers_do_not_depend_on_padding_or_batch_mates(text_bundles):
    """Static INT8 (the default ``int8``): a short caption's probabilities are the same, within
    1e-3, alone, padded to 16/32/64/128, and batched with long texts."""
    engine = Engine.from_bundle(text_bundles["int8"])
    short, long_text = "gloomy", " ".join(["what a lovely wonderful picture"] * 20)
    alone = _probabilities(engine, [short])[0]
    variants = {f"padded to {n}": _probabilities(engine, [short], pad_to=n)[0] for n in (16, 32, 64, 128)}
    variants["with one long text"] = _probabilities(engine, [short, long_text])[0]
    variants["with seven long texts"] = _probabilities(engine, [short] + [long_text] * 7)[0]
    deviation = {k: float(np.abs(v - alone).max()) for k, v in variants.items()}
    assert max(deviation.values()) <= 1e-3, deviation


# The same patterns on OpenVINO (the FP32 and static-INT8 text graphs; bf16 where the CPU has it):
# (bundle, inference precision) -> max |logit - PyTorch FP32|, and masked-token change. bf16
# measured 0.02 here (AMD EPYC, AVX512-BF16); its bound is the bundle tolerance (recipes.TOLERANCE).
OPENVINO_CASES = {("fp32", "f32"): (1e-4, 1e-5), ("fp32", "bf16"): (0.25, 1e-5), ("int8", "auto"): (1.0, 1e-5)}


@pytest.mark.parametrize("bundle_precision,inference_precision", list(OPENVINO_CASES))
def test_every_mask_pattern_matches_pytorch_on_openvino(text_bundles, reference, bundle_precision, inference_precision):
    pytest.importorskip("openvino", reason="needs fusionrt[openvino]")
    from fusionrt.cpu import cpu_info
    from fusionrt.engine import EngineOptions
    from fusionrt.engine.openvino_runtime import OpenVINOOptions

    if inference_precision == "bf16" and not cpu_info().bf16:
        pytest.skip(f"this CPU ({cpu_info().model}) has no bf16")
    options = EngineOptions(openvino=OpenVINOOptions(inference_precision=inference_precision))
    with pytest.warns(RuntimeWarning, match="exported for target 'cpu'"):  # a cpu bundle, run on OpenVINO on purpose
        engine = Engine.from_bundle(text_bundles[bundle_precision], providers="OpenVINO", options=options)
    assert engine.providers["text_encoder"].startswith("OpenVINO CPU")
    pixels = random_pixels(np.random.default_rng(7), len(CAPTIONS), engine.preprocessor.pixel_shape[:2])
    to_torch, masked = mask_errors(lambda f: engine.run(f)["logits"], reference, pixels, engine.tokenizer)
    bound, masked_bound = OPENVINO_CASES[(bundle_precision, inference_precision)]
    assert all(e <= bound for e in to_torch.values()), (bundle_precision, inference_precision, to_torch)
    assert all(e <= masked_bound for e in masked.values()), (bundle_precision, inference_precision, masked)
