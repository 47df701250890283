"""Resident memory levels off under varied traffic (issue 23): random (batch, seq) shapes through
Engine.run and varied-caption Engine.predict calls, on OpenVINO (where every new input shape
compiles kernels that the CPU plugin keeps: fusionrt buckets the shapes and caps its cache) and on
ONNX Runtime. A tiny model with sequences up to 64 tokens: about a thousand distinct shapes."""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fusionrt
from fusionrt import Engine
from tests.conftest import TINY_IMAGE_PROCESSOR, build_tiny_tokenizer, random_feed, tiny_config

MAX_SEQ_LEN = 64
STEPS = 400  # each: one Engine.run of a random shape; every other one also an Engine.predict
GROWTH = 0.05  # RSS may grow by less than this share over the second half
WORDS = "the a lovely dreadful picture of cat rocket coffee camera sky bright dull grey warm".split()


def rss_mib() -> float:
    """This process's resident set size (VmRSS of /proc/self/status), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.fixture(scope="module")
def long_checkpoint(tmp_path_factory) -> Path:
    """The tiny model with sequences up to 64 tokens (untrained: memory does not depend on it)."""
    import torch

    from fusionrt.model import MultimodalClassifier, save_checkpoint
    from fusionrt.model.data import LABELS
    from fusionrt.preprocessing import ImageProcessor, TextTokenizer

    root = tmp_path_factory.mktemp("long")
    vocab_size = build_tiny_tokenizer(root / "tok")
    config = tiny_config(vocab_size, max_seq_len=MAX_SEQ_LEN)
    config.id2label = dict(enumerate(LABELS))
    torch.manual_seed(0)
    model = MultimodalClassifier(config).eval()
    tokenizer = TextTokenizer.from_dir(root / "tok", MAX_SEQ_LEN)
    save_checkpoint(root / "ckpt", model, tokenizer, ImageProcessor.from_dict(TINY_IMAGE_PROCESSOR), root / "tok")
    return root / "ckpt"


def _png(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def soak(bundle: str, vocab: int, steps: int = STEPS, seed: int = 0) -> dict:
    """``steps`` random (batch 1-16, seq 2-64) shapes through ``Engine.run`` and, every other step,
    an ``Engine.predict`` of 1-8 captions of 1-80 words: ``{"rss_mib": {step: MiB}, "shapes": n}``
    at half and at the end. Run in a fresh process (no torch beside it), as a service would be."""
    engine = Engine.from_bundle(bundle, intra_op_num_threads=1)
    rng = np.random.default_rng(seed)
    images = [_png(rng) for _ in range(8)]
    rss, shapes = {}, set()
    for step in range(1, steps + 1):
        batch, seq = int(rng.integers(1, 17)), int(rng.integers(2, MAX_SEQ_LEN + 1))
        shapes.add((batch, seq))
        out = engine.run(random_feed(rng, batch, seq, vocab, hw=(32, 32)))
        assert out["logits"].shape[0] == batch and np.isfinite(out["logits"]).all()
        if step % 2 == 0:
            n = int(rng.integers(1, 9))
            texts = [" ".join(rng.choice(WORDS, int(rng.integers(1, 80)))) for _ in range(n)]
            assert len(engine.predict(texts, [images[i % len(images)] for i in range(n)])) == n
        if step in (steps // 2, steps):
            gc.collect()
            rss[step] = rss_mib()
    return {"rss_mib": rss, "shapes": len(shapes), "runtime": engine.runtime.name}


@pytest.mark.slow
@pytest.mark.parametrize("target", ["openvino", "cpu"])
def test_rss_levels_off_under_varied_shapes(long_checkpoint, tmp_path, target):
    if target == "openvino":
        pytest.importorskip("openvino")
    from fusionrt.export import ExportOptions, export_bundle

    bundle = export_bundle(long_checkpoint, tmp_path / target, ExportOptions(target=target, max_batch_size=16, validate=False),
                           progress=False)
    vocab = len((long_checkpoint / "vocab.txt").read_text().split())
    root = Path(__file__).parents[2]
    code = f"import json; from tests.engine.test_memory import soak; print(json.dumps(soak({str(bundle)!r}, {vocab})))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(fusionrt.__file__).parents[1]), str(root)]))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["runtime"] == ("openvino" if target == "openvino" else "onnxruntime")
    assert result["shapes"] > 300  # the traffic is varied: hundreds of distinct shapes
    half, end = result["rss_mib"][str(STEPS // 2)], result["rss_mib"][str(STEPS)]
    assert end / half - 1 < GROWTH, f"{target}: RSS {half:.0f} -> {end:.0f} MiB over the second half (+{end / half - 1:.1%})"


def test_buckets_keep_the_answers(long_checkpoint, tmp_path):
    """OpenVINO's sequence buckets (default) and batch buckets (on request) pad with the mask and
    drop the padding: the same answers as unpadded calls (float32), the shapes of the call."""
    pytest.importorskip("openvino")
    from fusionrt.engine import EngineOptions
    from fusionrt.engine.openvino_runtime import OpenVINOOptions
    from fusionrt.export import ExportOptions, export_bundle

    bundle = export_bundle(long_checkpoint, tmp_path / "ov", ExportOptions(target="openvino", max_batch_size=16, validate=False),
                           progress=False)
    defaults = Engine.from_bundle(bundle, intra_op_num_threads=1).runtime.options
    assert (defaults.max_seq_len, defaults.seq_bucket, defaults.batch_buckets) == (MAX_SEQ_LEN, 16, False)
    bucketed = Engine.from_bundle(bundle, options=EngineOptions(openvino=OpenVINOOptions(batch_buckets=True, inference_num_threads=1)))
    assert bucketed.runtime.options.max_seq_len == MAX_SEQ_LEN  # the Engine sizes the sequence buckets to the bundle
    plain = Engine.from_bundle(bundle, options=EngineOptions(openvino=OpenVINOOptions(
        seq_bucket=None, batch_buckets=False, inference_num_threads=1)))
    rng = np.random.default_rng(1)
    vocab = len((long_checkpoint / "vocab.txt").read_text().split())
    for batch, seq in [(3, 5), (5, 17), (1, 2), (7, 33), (16, 64), (9, 50)]:
        feed = random_feed(rng, batch, seq, vocab, hw=(32, 32))
        a, b = bucketed.run(feed), plain.run(feed)
        assert set(a) == set(b)
        for name in a:
            assert a[name].shape == b[name].shape and a[name].shape[0] == batch
            np.testing.assert_allclose(a[name], b[name], atol=1e-5, err_msg=f"{name} at batch {batch} seq {seq}")
    text = bucketed.runtime.infer_graph("text_encoder", {k: feed[k] for k in bucketed.runtime.input_names["text_encoder"]})
    assert text["text_features"].shape[:2] == (9, 50)  # the padding's rows and positions are dropped
