"""Shared fixtures: tiny random models built once per session, the real MiniLM default checkpoint
(built once per session), and real photographs from scikit-image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# Tests using these fixtures are marked ``slow`` (pytest_collection_modifyitems below): the real
# MiniLM checkpoint takes minutes to build, the shared Triton server tens of seconds to start.
SLOW_FIXTURES = frozenset({"default_checkpoint", "default_bundle", "default_int8_bundle", "triton_server"})
# The real default checkpoint and its bundles are built in a background process
# (tests/background_build.py: one thread, nice 10) while the tests that do not need them run, when
# at least this many of those are selected (the whole suite); their users run last.
# FUSIONRT_TEST_BACKGROUND_BUILD=0 builds them in the fixtures instead.
DEFAULT_FIXTURES = frozenset({"default_checkpoint", "default_bundle", "default_int8_bundle"})
BACKGROUND_MIN_OTHER_TESTS = 100
# The job's whole run (checkpoint, then its bundles) took 5-10 minutes beside the suite on the
# slowest CPU seen before the text bundles joined it; one still running after this is hung: it is
# stopped and its users fail.
BACKGROUND_TIMEOUT_S = 40 * 60
_background: dict = {}
ROOT = Path(__file__).resolve().parents[1]

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "logo.png")

WORDS = sorted(set(
    "what a lovely wonderful delightful beautiful cheerful great awful terrible dreadful ugly gloomy "
    "horrible picture scene design poster painting view pattern this looks to me honestly such really "
    "i find the here is".split()
))


def build_tiny_tokenizer(directory: Path):
    """A WordPiece tokenizer over a few words plus single characters (any ASCII text encodes)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    chars = [chr(c) for c in range(33, 127)]
    vocab_list = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + chars + ["##" + c for c in chars]
    vocab = {}
    for tok in vocab_list:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.decoder = decoders.WordPiece()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return len(vocab)


TINY_IMAGE_PROCESSOR = {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}}
TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic",
               "hidden_act": "relu", "downsample_in_first_stage": False}


def tiny_config(vocab_size: int, num_labels: int = 4, max_seq_len: int = 24, image_config=None):
    from fusionrt.model.config import MultimodalConfig

    text_config = {
        "vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64, "type_vocab_size": 2,
    }
    return MultimodalConfig(
        text_config=text_config,
        image_config=dict(image_config or TINY_RESNET),
        id2label={i: f"label_{i}" for i in range(num_labels)},
        d_model=32,
        num_heads=4,
        classifier_hidden=32,
        max_seq_len=max_seq_len,
    )


def ops_before_first_conv(model) -> list[str]:
    """Op types from the graph's input to its first Conv, following the pixels."""
    ops, name = [], model.graph.input[0].name
    while True:
        (node,) = [n for n in model.graph.node if name in n.input and n.op_type != "Shape"]  # ViT reads the size too
        if node.op_type == "Conv":
            return ops
        ops.append(node.op_type)
        name = node.output[0]


def _needs_default(item) -> bool:
    return bool(DEFAULT_FIXTURES.intersection(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config, items):
    """Marks ``slow`` every test that needs a fixture of SLOW_FIXTURES, directly or through another,
    and moves the test files that use the default checkpoint to the end (in their order)."""
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    late = {item.path for item in items if _needs_default(item)}
    items[:] = [i for i in items if i.path not in late] + [i for i in items if i.path in late]


def pytest_collection_finish(session):
    """Starts the default checkpoint's background job (tests/background_build.py: the checkpoint,
    then its fp32 and int8 bundles) when the selection is large (see BACKGROUND_MIN_OTHER_TESTS)."""
    users = sum(_needs_default(item) for item in session.items)
    if not users or len(session.items) - users < BACKGROUND_MIN_OTHER_TESTS or os.environ.get("FUSIONRT_TEST_BACKGROUND_BUILD") == "0":
        return
    root = session.config._tmp_path_factory.mktemp("default")
    log = open(root / "build.log", "wb")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    # -m from the project's root (a script's own folder would come first on sys.path: tests/ has
    # packages named like transformers' imports)
    process = subprocess.Popen(nice + [sys.executable, "-m", "tests.background_build", str(root)], stdout=log,
                               stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    _background.update(process=process, root=root, log=log, deadline=time.monotonic() + BACKGROUND_TIMEOUT_S)


def _background_step(step: str) -> Path | None:
    """Waits for the background job's ``step`` (tests/background_build.py) and returns the job's
    folder; ``None`` when no job was started. Fails the test when the job ended without it."""
    if "process" not in _background:
        return None
    root, process = _background["root"], _background["process"]
    while not (root / f"{step}.done").exists():
        if process.poll() is None and time.monotonic() > _background["deadline"]:
            process.kill()  # hung: its users fail now rather than at CI's limit
            process.wait()
            _background["timed_out"] = True
        if process.poll() is not None and not (root / f"{step}.done").exists():
            tail = (root / "build.log").read_text(errors="replace")[-3000:]
            why = f"was stopped after {BACKGROUND_TIMEOUT_S} s" if _background.get("timed_out") else f"stopped (exit {process.returncode})"
            pytest.fail(f"the background job {why} before its step {step!r}:\n{tail}")
        time.sleep(0.5)
    return root


def pytest_sessionfinish(session):
    """Stops a background build still running (a failed or interrupted session)."""
    process = _background.get("process")
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()
    if "log" in _background:
        _background["log"].close()


@pytest.fixture
def fixed_peaks(monkeypatch):
    """Fixed roofline peaks in place of their measurement, for tests of something else in a
    benchmark run: measure_peaks runs before and after the contenders (about 8 s of each run on 2
    cores). The kernels are the ones measure_peaks names on a CPU without bf16; the measurement
    itself is tested by tests/bench/test_peers.py's benchmark run."""
    from fusionrt.bench import runner

    def peaks(threads: int) -> dict:
        return {"fp32": {"onnxruntime matmul": 50.0 * threads, "onnxruntime conv": 40.0 * threads},
                "int8": {"onnxruntime matmulinteger": 150.0 * threads}}

    monkeypatch.setattr(runner, "_measure_peaks", peaks)


@pytest.fixture(scope="session")
def photo_dir() -> Path:
    from fusionrt.samples import photo_dir

    return photo_dir()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """An untrained tiny checkpoint (BERT 2 layers hidden 32, ResNet 2 stages)."""
    import torch

    from fusionrt.model import MultimodalClassifier, save_checkpoint
    from fusionrt.model.data import LABELS
    from fusionrt.preprocessing import ImageProcessor, TextTokenizer

    root = tmp_path_factory.mktemp("tiny_base")
    vocab_size = build_tiny_tokenizer(root / "tok")
    config = tiny_config(vocab_size)
    config.id2label = dict(enumerate(LABELS))
    torch.manual_seed(0)
    model = MultimodalClassifier(config).eval()
    tokenizer = TextTokenizer.from_dir(root / "tok", config.max_seq_len)
    save_checkpoint(root / "ckpt", model, tokenizer, ImageProcessor.from_dict(TINY_IMAGE_PROCESSOR), root / "tok")
    return root / "ckpt"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from fusionrt.model.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("tiny_data"), num_samples=80, seed=1, image_size=48)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_base, tiny_data) -> Path:
    """The tiny checkpoint after a short training run (has heldout/calibration splits)."""
    from fusionrt.model.train import TrainOptions, train

    out = tmp_path_factory.mktemp("tiny_trained") / "ckpt"
    train(tiny_data, out, base=tiny_base, options=TrainOptions(epochs=30, ablations=False), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    from fusionrt.export import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("tiny_bundle") / "fp32"
    return export_bundle(tiny_checkpoint, out, ExportOptions(max_batch_size=4, accept_small_eval_set=True), progress=False)


@pytest.fixture(scope="session")
def default_checkpoint(tmp_path_factory) -> Path:
    """The real default checkpoint (pretrained MiniLM + EfficientNet-Lite0), full recipe, once per session."""
    from fusionrt.model.default import build_default_checkpoint

    root = _background_step("checkpoint")
    if root is not None:  # built by the background job started at collection (pytest_collection_finish)
        path, reused = build_default_checkpoint(root / "checkpoint", root / "data", progress=False)
        assert reused, "the background build left no checkpoint of the current recipe"
        return path
    root = tmp_path_factory.mktemp("default")
    path, _ = build_default_checkpoint(root / "checkpoint", root / "data", progress=False)
    return path


def default_export(tmp_path_factory, checkpoint: Path, step: str) -> Path:
    """The default checkpoint's bundle of the background job's ``step`` (tests/background_build.py's
    STEPS: ``fp32``, ``int8``, ``text-fp16``, ...): the job's, else exported here with its options."""
    from fusionrt.export import export_bundle
    from tests.background_build import export_options

    root = _background_step(step)
    if root is not None:
        return root / "bundles" / step
    return export_bundle(checkpoint, tmp_path_factory.mktemp(f"default_{step}") / step, export_options(step), progress=False)


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory, default_checkpoint) -> Path:
    """The default checkpoint's fp32 bundle, default export options."""
    return default_export(tmp_path_factory, default_checkpoint, "fp32")


@pytest.fixture(scope="session")
def default_int8_bundle(tmp_path_factory, default_checkpoint) -> Path:
    """The default checkpoint's int8 bundle (``--precision int8``), default export options."""
    return default_export(tmp_path_factory, default_checkpoint, "int8")


def random_feed(rng: np.random.Generator, batch: int, seq: int, vocab: int, hw=(32, 32), pixel_dtype: str = "uint8") -> dict:
    """Fresh random inputs (never zeros); row 0 full length, others random lengths. Pixels as a
    bundle's image encoder takes them (:func:`random_pixels`)."""
    lengths = np.concatenate([[seq], rng.integers(1, seq + 1, batch - 1)])
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)
    return {
        "input_ids": rng.integers(5, vocab, (batch, seq)).astype(np.int64),
        "attention_mask": mask,
        "token_type_ids": np.zeros((batch, seq), np.int64),
        "pixel_values": random_pixels(rng, batch, hw, pixel_dtype),
    }


def random_pixels(rng: np.random.Generator, batch: int, hw=(32, 32), pixel_dtype: str = "uint8") -> np.ndarray:
    """``(batch, H, W, 3)`` uniform uint8, or ``(batch, 3, H, W)`` standard normal float32."""
    if pixel_dtype == "uint8":
        return rng.integers(0, 256, (batch,) + tuple(hw) + (3,), dtype=np.uint8)
    return rng.standard_normal((batch, 3) + tuple(hw)).astype(np.float32)


def torch_feed(ckpt, feed: dict) -> dict:
    """A bundle feed as the PyTorch model takes it: uint8 pixels normalized by the checkpoint's
    image processor (what the uint8 image graphs compute inside)."""
    import torch

    pixels = feed["pixel_values"]
    if pixels.dtype == np.uint8:
        feed = {**feed, "pixel_values": ckpt.image_processor.normalize(pixels)}
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}


def cpu_session(source):
    """An ONNX Runtime CPU session as the engine makes it (``source``: a path or ONNX bytes): where
    this CPU would saturate 8-bit INT8 weights (x86 without VNNI), they are loaded as u8
    (fusionrt.engine.int8_weights), so an error measured through it is the recipe's, not the CPU's."""
    from fusionrt.engine.loaders import ort_session
    from fusionrt.engine.session import SessionOptions

    return ort_session(source, SessionOptions())


def read_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def answers_and_pixels(engine, texts, images) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(labels, (N, num_labels) probabilities in label order, pixel_values as int16) of a batch,
    for comparing two ways of preprocessing the same images."""
    predictions = engine.predict(texts, images)
    probabilities = np.array([[p.probabilities[k] for k in sorted(p.probabilities)] for p in predictions])
    pixels = engine.preprocess(texts, images)["pixel_values"].astype(np.int16)
    return [p.label for p in predictions], probabilities, pixels
