import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from fusionrt import Engine, InputError, ProviderError
from fusionrt.engine.session import resolve_providers
from fusionrt.model import load_checkpoint
from fusionrt.model.data import read_jsonl
from tests.conftest import random_feed, torch_feed

TEXTS = ["what a lovely picture", "this scene looks awful to me", "", "i find the poster gloomy", "great", "ugly view here"]


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return Engine.from_bundle(tiny_bundle, intra_op_num_threads=1)


def _torch_logits(ckpt, feed):
    with torch.inference_mode():
        out = ckpt.model(**torch_feed(ckpt, feed))
    return out.logits.numpy(), out.modality_weights.numpy()


def test_providers_auto_on_cpu(engine):
    assert engine.providers == {g: "CPUExecutionProvider" for g in ("text_encoder", "image_encoder", "fusion_head")}
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    assert resolve_providers(["auto"]) == resolve_providers(" auto ") == resolve_providers("auto")
    # a list of which none is available still raises, naming the available ones
    with pytest.raises(ProviderError, match=r"NoSuchExecutionProvider not available.*available: \[.*'CPUExecutionProvider'"):
        resolve_providers(["NoSuchExecutionProvider"])
    with pytest.raises(ProviderError, match="check the spelling"):
        resolve_providers("NoSuchExecutionProvider")


@pytest.fixture
def no_cuda(monkeypatch):
    """This onnxruntime without its GPU providers (as on a laptop), whatever the machine has."""
    import onnxruntime

    real = onnxruntime.get_available_providers()
    cpu_only = [p for p in real if p not in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(cpu_only))
    return cpu_only


def test_resolve_providers_keeps_the_available_ones_in_order(no_cuda):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
        # a comma-separated string is the same list (the CLI's --providers); spaces and duplicates ignored
        assert resolve_providers(" CUDAExecutionProvider , CPUExecutionProvider,CPUExecutionProvider,") == ["CPUExecutionProvider"]
    assert [w.category for w in caught] == [RuntimeWarning, RuntimeWarning]
    assert "CUDAExecutionProvider not available in this onnxruntime (available: [" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_providers("CPUExecutionProvider") == ["CPUExecutionProvider"]  # one name: no warning
    with pytest.raises(ProviderError, match="CUDAExecutionProvider not available.*strict"):
        resolve_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], strict=True)
    with pytest.raises(ProviderError, match=r"none of the requested.*TensorrtExecutionProvider, CUDAExecutionProvider not available.*CPUExecutionProvider"):
        resolve_providers("TensorrtExecutionProvider,CUDAExecutionProvider")


GRAPHS = ("text_encoder", "image_encoder", "fusion_head")


def test_missing_cuda_falls_back_to_cpu_with_one_warning(no_cuda, tiny_bundle):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = Engine.from_bundle(tiny_bundle, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], intra_op_num_threads=1)
    assert len(caught) == 1 and caught[0].category is RuntimeWarning  # one per from_bundle, not one per graph
    message = str(caught[0].message)
    assert message.startswith(f"CUDAExecutionProvider not available in this onnxruntime (available: {no_cuda})")
    assert message.endswith("; text_encoder, image_encoder, fusion_head run on CPUExecutionProvider")
    assert caught[0].filename == __file__  # points at the caller of from_bundle
    assert e.providers == {g: "CPUExecutionProvider" for g in GRAPHS}
    cpu = Engine.from_bundle(tiny_bundle, providers=["CPUExecutionProvider"], intra_op_num_threads=1)
    feed = random_feed(np.random.default_rng(3), 3, 13, 150)
    np.testing.assert_allclose(e.run(feed)["logits"], cpu.run(feed)["logits"], atol=1e-6, rtol=0)
    # the comma-separated string is the same list
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider not available") as record:
        same = Engine.from_bundle(tiny_bundle, providers="CUDAExecutionProvider, CPUExecutionProvider", intra_op_num_threads=1)
    assert len(record) == 1 and same.providers == e.providers


def test_missing_provider_strict_or_none_available_raises(no_cuda, tiny_bundle):
    with pytest.raises(ProviderError, match="CUDAExecutionProvider not available.*strict"):
        Engine.from_bundle(tiny_bundle, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], strict=True)
    with pytest.raises(ProviderError, match=r"none of the requested.*CUDAExecutionProvider not available in this onnxruntime \(available: \[.*'CPUExecutionProvider'"):
        Engine.from_bundle(tiny_bundle, providers=["CUDAExecutionProvider"])
    with pytest.raises(ProviderError, match="names no execution provider"):
        Engine.from_bundle(tiny_bundle, providers=[])


def test_missing_provider_and_target_mismatch_make_one_warning(no_cuda, tiny_bundle, tmp_path):
    import json
    import shutil

    bundle = shutil.copytree(tiny_bundle, tmp_path / "cuda_bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["target"] = "cuda"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Engine.from_bundle(bundle, providers="CUDAExecutionProvider,CPUExecutionProvider")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "CUDAExecutionProvider not available" in message and "fusion_head run on CPUExecutionProvider" in message
    assert f"CPUExecutionProvider. Bundle {bundle} was exported for target 'cuda' (CUDAExecutionProvider) but runs on CPUExecutionProvider" in message


@pytest.mark.parametrize("bad, match", [
    ([], "names no execution provider"),
    ("", "names no execution provider"),
    (" , ", "names no execution provider"),
    (["CPUExecutionProvider", ""], "names no execution provider"),
    ([("CUDAExecutionProvider", {"device_id": 0})], "must be strings"),
    (["CPUExecutionProvider", 3], "must be strings"),
    (None, "must be 'auto' or a list"),
    ("auto,CPUExecutionProvider", "'auto' cannot be combined"),
])
def test_resolve_providers_rejects_bad_lists(bad, match):
    with pytest.raises(ProviderError, match=match):
        resolve_providers(bad)


@pytest.mark.parametrize("batch, seq", [(1, 1), (3, 17), (8, 24)])
def test_run_matches_pytorch(engine, tiny_checkpoint, batch, seq):
    ckpt = load_checkpoint(tiny_checkpoint)
    feed = random_feed(np.random.default_rng(batch * 100 + seq), batch, seq, 150)
    out = engine.run(feed)
    ref_logits, ref_weights = _torch_logits(ckpt, feed)
    assert out["logits"].dtype == np.float32 and out["logits"].shape == (batch, 4)
    np.testing.assert_allclose(out["logits"], ref_logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["modality_weights"], ref_weights, atol=1e-4, rtol=0)


def test_pipeline_matches_pytorch_on_heldout_and_training_preprocessing(engine, tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    examples = read_jsonl(tiny_checkpoint / "heldout.jsonl")
    texts, images = [e.text for e in examples], [e.image for e in examples]
    feed = engine.preprocess(texts, images)
    # the engine's tensors equal the training preprocessing (same checkpoint tokenizer/processor)
    ref_feed, _ = ckpt.tokenizer(texts)
    ref_feed["pixel_values"] = ckpt.image_processor(images)
    for k in ref_feed:
        engine_values = ckpt.image_processor.normalize(feed[k]) if k == "pixel_values" else feed[k]  # uint8: the graph normalizes
        np.testing.assert_allclose(engine_values, ref_feed[k], atol=1e-6, rtol=0)
    logits = engine.logits(texts, images)  # 8 items, max_batch_size 4: two chunks
    np.testing.assert_allclose(logits, _torch_logits(ckpt, ref_feed)[0], atol=1e-4, rtol=0)


def test_predict_values(engine, photo_dir):
    images = [photo_dir / n for n in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "logo.png")]
    preds = engine.predict(TEXTS, images)
    logits = engine.logits(TEXTS, images)
    assert len(preds) == 6
    for p, row in zip(preds, logits):
        assert p.label == engine.labels[int(row.argmax())]
        assert abs(sum(p.probabilities.values()) - 1) < 1e-9 and p.score == max(p.probabilities.values())
        assert set(p.modality_weights) == {"text", "image"}
        assert abs(sum(p.modality_weights.values()) - 1) < 1e-5
        assert p.truncated is False


def test_chunking_gives_the_same_answers_as_single_calls(engine, photo_dir):
    images = [photo_dir / "chelsea.png"] * 6
    many = engine.logits(TEXTS, images)  # chunks of 4 + 2
    single = np.concatenate([engine.logits([t], [i]) for t, i in zip(TEXTS, images)])
    np.testing.assert_allclose(many, single, atol=1e-5, rtol=0)


def test_truncation_is_reported(engine, photo_dir):
    (p,) = engine.predict(["lovely " * 200], [photo_dir / "coffee.png"])
    assert p.truncated is True
    single = engine.predict("lovely", photo_dir / "coffee.png")
    assert len(single) == 1


def test_errors_return_answers_the_good_items(engine, photo_dir):
    images = [photo_dir / "coffee.png", b"not an image", photo_dir / "astronaut.png", np.zeros((4, 4), np.float64)]
    texts = ["a", "b", "c", "d"]
    results = engine.predict(texts, images, errors="return")
    assert isinstance(results[1], InputError) and "images[1]" in str(results[1])
    assert isinstance(results[3], InputError) and "float64" in str(results[3])
    assert (results[1].item, results[1].index, results[3].index) == (("images", 1), 1, 3)
    assert str(results[1].without_index()).startswith("image: ")
    bad_text = engine.predict(["a", 7], images[:1] * 2, errors="return")[1]
    assert (bad_text.item, str(bad_text), str(bad_text.without_index())) == (("texts", 1), "texts[1] is int; expected str", "text is int; expected str")
    good = engine.predict([texts[0], texts[2]], [images[0], images[2]])
    assert [r.probabilities for r in (results[0], results[2])] == [g.probabilities for g in good]
    with pytest.raises(InputError, match=r"images\[1\]"):
        engine.predict(texts, images)


def test_images_of_another_size_fail_alone(engine, photo_dir):
    # An image processor without center crop makes the image's own size; items that do not
    # match the bundle's pixel_values get an InputError, the others are answered.
    from dataclasses import replace

    side = engine.image_processor.output_hw[0]  # the tiny bundle's 32
    processor = replace(engine.image_processor, do_center_crop=False, size={"shortest_edge": side})
    uncropped = Engine(engine.bundle, engine.runtime, engine.tokenizer, processor, decode_threads=2)
    square = np.full((300, 300, 3), 90, np.uint8)
    wide = np.full((300, 600, 3), 90, np.uint8)
    results = uncropped.predict(["a", "b"], [square, wide], errors="return")
    assert isinstance(results[1], InputError) and f"images[1]: preprocessed to ({side}, {2 * side}, 3)" in str(results[1])
    (alone,) = uncropped.predict(["a"], [square])
    assert results[0].probabilities == alone.probabilities
    with pytest.raises(ValueError, match="out has 1 slots for 2 images"):
        engine.preprocessor.decode([square, wide], out=engine.preprocessor.pixel_buffer(1))


def test_count_mismatch_names_both_counts(engine, photo_dir):
    with pytest.raises(InputError, match="got 2 texts and 1 images"):
        engine.predict(["a", "b"], [photo_dir / "coffee.png"])


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda f: f.pop("pixel_values"), "lacks"),
        (lambda f: f.update(input_ids=f["input_ids"].astype(np.float32)), "input_ids has dtype float32"),
        (lambda f: f.update(attention_mask=f["attention_mask"][:, :2]), "attention_mask has shape"),
        (lambda f: f.update(pixel_values=f["pixel_values"][:, :, :16]), r"pixel_values has shape \(2, 32, 16, 3\)"),
        (lambda f: f.update(pixel_values=f["pixel_values"].astype(np.float32)), "dtype float32; this bundle's image encoder takes uint8"),
        (lambda f: f.update({k: np.ones((2, 30), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}), "max_seq_len"),
        # out of the embeddings: ONNX Runtime raised a RuntimeError, OpenVINO answered silently
        (lambda f: f["input_ids"].__iadd__(100_000), r"input_ids holds values 1000\d\d..1000\d\d; expected 0..\d+ \(the bundle tokenizer's vocabulary\)"),
        (lambda f: f["input_ids"].__setitem__((0, 0), -1), r"input_ids holds values -1\.\."),
        (lambda f: f.update(input_ids=f["input_ids"].astype(np.uint64) + np.uint64(2**63)), r"input_ids holds values 92233720368547758\d\d\.\.9223372036854775\d\d\d; expected 0\.\."),  # as given, not wrapped negative
        (lambda f: f["token_type_ids"].__setitem__((1, 2), 2), r"token_type_ids holds values 0..2; expected 0..1"),
        # a mask of 2 acted as 1, a negative one changed the answer without an error
        (lambda f: f["attention_mask"].__setitem__((1, 2), 2), r"attention_mask holds values \d..2; expected 0 \(padding\) or 1 \(token\)"),
        (lambda f: f["attention_mask"].__setitem__((0, 4), -1), r"attention_mask holds values -1..1"),
    ],
)
def test_run_checks_the_feed(engine, change, match):
    feed = random_feed(np.random.default_rng(0), 2, 5, 100)
    change(feed)
    with pytest.raises(InputError, match=match):
        engine.run(feed)


def test_run_on_an_empty_batch_answers_nothing(engine):
    empty = engine.preprocess([], [])
    for feed in (empty, {**{k: np.zeros((0, 5), np.int64) for k in engine.bundle.text_inputs}, "pixel_values": empty["pixel_values"]}):
        out = engine.run(feed)
        assert out["logits"].shape == (0, len(engine.labels)) and out["modality_weights"].shape == (0, 2)


def test_engine_needs_neither_torch_nor_transformers(tiny_bundle, photo_dir):
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import fusionrt
        from fusionrt import CUDAOptions, Engine, EngineClosedError, EngineOptions, SessionOptions, TensorRTOptions
        assert EngineOptions(cpu=SessionOptions(intra_op_num_threads=1)).cpu.intra_op_num_threads == 1
        e = Engine.from_bundle({str(tiny_bundle)!r})
        (p,) = e.predict(["what a lovely picture"], [{str(photo_dir / "coffee.png")!r}])
        assert p.label in e.labels
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        try:
            fusionrt.MultimodalClassifier
        except ImportError:
            print("lazy-ok")
        print("ok", p.label)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "lazy-ok" in out.stdout and "ok " in out.stdout


def test_import_fusionrt_is_light():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, fusionrt; print(sorted(m for m in ('torch','transformers','onnxruntime') if m in sys.modules))"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.stdout.strip() == "[]", out.stderr
