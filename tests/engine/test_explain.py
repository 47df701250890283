"""Engine.explain (issue 28): against PyTorch FP32 (the head's own explain on PyTorch features),
at every precision and runtime against the FP32 bundle, and never run by predict."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fusionrt import BundleError, Engine
from fusionrt.explanation import relevance
from fusionrt.export import ExportOptions, export_bundle
from fusionrt.model import load_checkpoint

TEXTS = ["what a lovely picture", "this scene looks awful to me, honestly", "", "great design here", "gloomy ugly poster",
         "such a cheerful view"]
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "logo.png")
# Variants of the photographs (flips, crops) so that the precision comparison has enough items.
ITEMS = 24


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    with Engine.from_bundle(tiny_bundle, intra_op_num_threads=1) as e:
        yield e


def _items(photo_dir):
    from PIL import Image

    images, texts = [], []
    for k in range(ITEMS):
        img = Image.open(photo_dir / PHOTOS[k % len(PHOTOS)]).convert("RGB")
        if k // len(PHOTOS) % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if k // len(PHOTOS) >= 2:
            img = img.crop((0, 0, img.width * 3 // 4, img.height))
        images.append(np.asarray(img))
        texts.append(TEXTS[(k * 5) % len(TEXTS)])
    return texts, images


def test_explain_fp32_matches_pytorch(engine, tiny_checkpoint, photo_dir):
    """FP32 on ONNX Runtime against FusionHead.explain in PyTorch on the same inputs: word and
    region relevance within 1e-5 (float32 rounding), the prediction is predict's."""
    texts, images = _items(photo_dir)
    texts, images = texts[:8], images[:8]
    got = engine.explain(texts, images, method="gradient")
    assert [e.prediction for e in got] == engine.predict(texts, images)
    model = load_checkpoint(tiny_checkpoint).model.eval()
    feed = engine.preprocess(texts, images)
    t = {k: torch.from_numpy(v) for k, v in feed.items()}
    if feed["pixel_values"].dtype == np.uint8:  # (B, H, W, 3): normalized as the image graph does
        scale, shift = (torch.from_numpy(np.asarray(a, np.float32)).view(1, 3, 1, 1) for a in engine.image_processor.affine)
        t["pixel_values"] = t["pixel_values"].permute(0, 3, 1, 2).float() * scale + shift
    with torch.inference_mode():
        ref = model.head.explain(model.encode_text(t["input_ids"], t["attention_mask"], t["token_type_ids"]),
                                 t["attention_mask"], model.encode_image(t["pixel_values"]))
    outputs = {k: v.numpy() for k, v in ref._asdict().items()}
    tokens, regions = relevance(outputs, feed["attention_mask"])
    encodings = engine.tokenizer.tokenizer.encode_batch(texts)
    for i, e in enumerate(got):
        np.testing.assert_allclose(e.region_relevance.ravel(), regions[i], atol=1e-5)
        expected = np.zeros(len(e.words))
        for k, w in enumerate(encodings[i].word_ids):
            if w is not None and feed["attention_mask"][i, k] and not encodings[i].special_tokens_mask[k]:
                expected[w] += tokens[i, k]
        if expected.sum() > 0:
            np.testing.assert_allclose(e.word_relevance, expected / expected.sum(), atol=1e-5)
        assert e.explained_label == engine.labels[int(outputs["logits"][i].argmax())]
        assert e.words == texts[i].replace(",", " ,").split()
        assert abs(sum(e.word_relevance) - 1) < 1e-9 or not e.words
        assert e.region_relevance.shape == (4, 4) and abs(float(e.region_relevance.sum()) - 1) < 1e-5
        assert e.modality_weights == e.prediction.modality_weights
        assert e.heat_map().shape == images[i].shape[:2]
    _, cam = relevance(outputs, feed["attention_mask"], "grad-cam")  # Grad-CAM computed in the graph
    for i, e in enumerate(engine.explain(texts, images)):  # the default method
        np.testing.assert_allclose(e.region_relevance.ravel(), cam[i], atol=1e-5)
        assert e.method == "grad-cam" and e.word_relevance == got[i].word_relevance


# (precision, target): every precision the CPU targets export, on both runtimes.
CASES = [("int8", "cpu"), ("fp16", "cpu"), ("fp32", "openvino"), ("bf16", "openvino"), ("int8", "openvino")]


@pytest.mark.parametrize("precision,target", CASES, ids=[f"{p}-{t}" for p, t in CASES])
def test_explain_at_every_precision_and_runtime_against_fp32(precision, target, engine, tiny_checkpoint, photo_dir, tmp_path):
    """The explanation head runs in float32, so what moves is the encoders' features. Stated
    tolerances on the tiny model, for the gradient and grad-cam methods: region relevance within 0.05 (absolute, per cell of a 4x4 grid
    summing to 1) and the most relevant region equal to FP32's on >= 90% of 24 items (grad-cam at
    int8: 0.2 and 75%); word relevance within 0.1."""
    if target == "openvino":
        pytest.importorskip("openvino", reason="needs fusionrt[openvino]")
        from fusionrt.cpu import cpu_info

        if precision == "bf16" and not cpu_info().bf16:
            pytest.skip("bf16 needs AVX512-BF16 or AMX")
    # 8-bit INT8 weights on every CPU (loaded as u8 where the CPU has no INT8 dot product): these
    # tolerances are the 8-bit recipe's; the 7-bit one such a CPU exports by default moved grad-cam's
    # top region on 6-7 of the 24 items (an AVX2-only AMD EPYC), where 8-bit moved it on 4.
    options = ExportOptions(precision=precision, target=target, max_batch_size=8, validate=False, reduce_range=False)
    bundle = export_bundle(tiny_checkpoint, tmp_path / "b", options, progress=False)
    texts, images = _items(photo_dir)
    reference = engine.explain(texts, images, method="gradient")
    with Engine.from_bundle(bundle, intra_op_num_threads=1) as other:
        got = other.explain(texts, images, method="gradient")
        cams = [(a, b) for a, b in zip(other.explain(texts, images, method="grad-cam"), engine.explain(texts, images, method="grad-cam"))]
    # Grad-CAM's ReLU keeps few of the tiny model's 16 cells, so INT8's noise moves its
    # normalized map more (measured: up to 0.13 per cell, top region 19 and 20 of 24 items).
    loose = precision == "int8"
    for pairs, (most, top) in ((list(zip(got, reference)), (0.05, 0.9)), (cams, (0.2, 0.75) if loose else (0.05, 0.9))):
        regions = np.array([a.region_relevance.ravel() for a, _ in pairs])
        expected = np.array([b.region_relevance.ravel() for _, b in pairs])
        assert np.abs(regions - expected).max() <= most
        assert (regions.argmax(1) == expected.argmax(1)).mean() >= top
    for a, b in zip(got, reference):
        assert a.words == b.words
        assert np.abs(np.subtract(a.word_relevance, b.word_relevance)).max(initial=0) <= 0.1


def test_predict_never_runs_the_explanation_graph(tiny_bundle, photo_dir, tmp_path):
    """A bundle without the explanation graph (an older export) predicts as before and explains
    with a BundleError that says to re-export; an Engine that only predicts never loads it."""
    with Engine.from_bundle(tiny_bundle, intra_op_num_threads=1) as e:
        before = e.predict(["a lovely view"], [photo_dir / "coffee.png"])
        assert e._explainer is None
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / manifest.pop("explain")["file"]).unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    with Engine.from_bundle(old, intra_op_num_threads=1) as e:
        assert e.predict(["a lovely view"], [photo_dir / "coffee.png"]) == before
        with pytest.raises(BundleError, match="re-export"):
            e.explain(["a lovely view"], [photo_dir / "coffee.png"])
    # an explanation graph from before region_grad_cam: grad-cam is refused before the encoders run
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    manifest["explain"]["outputs"] = [o for o in manifest["explain"]["outputs"] if o["name"] != "region_grad_cam"]
    (old / manifest["explain"]["file"]).write_bytes((tiny_bundle / manifest["explain"]["file"]).read_bytes())
    (old / "manifest.json").write_text(json.dumps(manifest))
    with Engine.from_bundle(old, intra_op_num_threads=1) as e:
        with pytest.raises(BundleError, match="region_grad_cam"):
            e.explain(["a lovely view"], [photo_dir / "coffee.png"], method="grad-cam")
        assert e._explainer is None
        (fallback,) = e.explain(["a lovely view"], [photo_dir / "coffee.png"])  # no method given: what the graph has
        assert fallback.method == "gradient"


def test_explain_names_a_bad_item_and_method(engine, photo_dir):
    from fusionrt import InputError

    with pytest.raises(InputError, match=r"images\[1\]"):
        engine.explain(["a", "b"], [photo_dir / "coffee.png", photo_dir / "missing.png"])
    with pytest.raises(InputError, match="method"):
        engine.explain(["a"], [photo_dir / "coffee.png"], method="saliency")


def test_a_bad_item_fails_alone_and_the_others_equal_explaining_them_alone(engine, photo_dir):
    from fusionrt import InputError

    texts = ["what a lovely picture", "awful", "", "great design here", "gloomy ugly poster", None]
    images = [photo_dir / "coffee.png", photo_dir / "rocket.jpg", b"not an image", photo_dir / "chelsea.png",
              photo_dir / "missing.png", photo_dir / "logo.png"]  # 6 > the bundle's max_batch_size 4
    got = engine.explain(texts, images, errors="return")
    assert [type(g).__name__ for g in got] == ["Explanation"] * 2 + ["InputError"] + ["Explanation"] + ["InputError"] * 2
    assert "images[2]" in str(got[2]) and "images[4]" in str(got[4]) and "texts[5]" in str(got[5])
    for k in (0, 1, 3):
        (alone,) = engine.explain([texts[k]], [images[k]])
        assert got[k].prediction.label == alone.prediction.label
        assert got[k].words == alone.words
        np.testing.assert_allclose(got[k].word_relevance, alone.word_relevance, atol=1e-6)
        np.testing.assert_allclose(got[k].heat_map(), alone.heat_map(), atol=1e-6)
    with pytest.raises(InputError, match=r"images\[2\]"):
        engine.explain(texts, images)  # errors="raise", the default
    with pytest.raises(InputError, match="errors must be"):
        engine.explain(texts, images, errors="skip")


def test_an_unknown_method_is_refused_before_any_work(engine, photo_dir, monkeypatch):
    """It was refused only once a good pair had run through the encoders: an empty batch, or one of
    bad pairs with errors="return", took "saliency" silently."""
    from fusionrt import InputError

    monkeypatch.setattr(type(engine), "prepare", lambda *a, **k: pytest.fail("prepared a batch for an unknown method"))
    for texts, images in (([], []), (["a"], [photo_dir / "missing.png"]), (["a"], [photo_dir / "coffee.png"])):
        with pytest.raises(InputError, match=r"explanation method must be one of \['gradient', .*\], got 'saliency'"):
            engine.explain(texts, images, method="saliency", errors="return")


def test_an_image_gone_after_decoding_fails_alone(engine, photo_dir, tmp_path, monkeypatch):
    """The heat map's geometry reads each image's header again after the batch was decoded: a file
    removed in between fails its own item (errors="return") or the call (errors="raise"), and the
    batch's other items are explained."""
    from fusionrt import InputError

    images = [tmp_path / name for name in ("coffee.png", "chelsea.png", "rocket.jpg")]
    real = type(engine).prepare

    def prepare_then_remove(self, *args, **kwargs):
        prepared = real(self, *args, **kwargs)
        images[1].unlink(missing_ok=True)  # after decoding, before the geometry
        return prepared

    monkeypatch.setattr(type(engine), "prepare", prepare_then_remove)
    texts = ["a lovely view", "an awful scene", "great design"]
    for errors in ("return", "raise"):
        for path in images:
            shutil.copy(photo_dir / path.name, path)
        if errors == "raise":
            with pytest.raises(InputError, match=r"images\[1\]"):
                engine.explain(texts, images)
            continue
        got = engine.explain(texts, images, errors=errors)
        assert [type(g).__name__ for g in got] == ["Explanation", "InputError", "Explanation"]
        assert "images[1]" in str(got[1])
        from fusionrt.preprocessing import load_image

        assert got[2].heat_map().shape == load_image(photo_dir / "rocket.jpg").size[::-1]


def test_the_explanation_graph_equals_the_heads_explain_on_every_mask_pattern(engine, tiny_checkpoint):
    """The exported explanation graph (ONNX Runtime, float32) against FusionHead.explain in
    PyTorch on right-padded, left-padded, holed and fully masked rows: every output, region_grad_cam
    included, within 1e-5 of its range."""
    from fusionrt.bundle import EXPLAIN_GRAPH

    head = load_checkpoint(tiny_checkpoint).model.eval().head
    rng = np.random.default_rng(5)
    text = rng.standard_normal((4, 10, head.text_proj.in_features)).astype(np.float32)
    image = np.abs(rng.standard_normal((4, 16, head.image_proj.in_features))).astype(np.float32)
    mask = np.ones((4, 10), np.int64)
    mask[0, 6:], mask[1, :4], mask[2, 3:6], mask[3] = 0, 0, 0, 0  # right, left, hole, fully masked
    got = engine._explainer_runtime().infer_graph(EXPLAIN_GRAPH, {"text_features": text, "attention_mask": mask, "image_features": image})
    with torch.inference_mode():
        want = head.explain(torch.from_numpy(text), torch.from_numpy(mask), torch.from_numpy(image))._asdict()
    for name, value in want.items():
        value = value.numpy()
        scale = max(float(np.abs(value).max()), 1e-6)
        np.testing.assert_allclose(got[name], value, atol=1e-5 * scale, err_msg=name)
