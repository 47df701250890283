"""The repository generator: every config parses into Triton's ModelConfig, for both backends and
both devices; TensorRT settings come from the manifest; output is deterministic."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fusionrt import InputError
from fusionrt.preprocessing import ImageProcessor
from fusionrt.triton import RepositoryOptions, build_repository
from fusionrt.triton.repository import MODELS
from fusionrt.utils import OUTPUT_MARKER
from tests.conftest import read_manifest
from tests.triton.conftest import parse_config

pytest.importorskip("tritonclient", reason="needs fusionrt[serve]")

ENCODERS = ("text_encoder", "image_encoder", "fusion_head")
ENSEMBLE_FIELDS = ["name", "platform", "max_batch_size", "input", "output", "ensemble_scheduling"]


def configs(repo: Path) -> dict:
    return {m: parse_config(repo / m / "config.pbtxt") for m in MODELS}


@pytest.mark.parametrize("device", ["cpu", "gpu"])
@pytest.mark.parametrize("backend", ["onnxruntime", "python"])
def test_configs_parse_into_model_config(tiny_bundle, tmp_path, backend, device):
    from tritonclient.grpc import model_config_pb2 as pb

    repo = build_repository(tiny_bundle, tmp_path / "repo", RepositoryOptions(backend=backend, device=device, max_batch_size=8,
                            preferred_batch_size=(2, 8), max_queue_delay_microseconds=500, instances=2, threads_per_instance=3))
    manifest = read_manifest(tiny_bundle)
    seq = manifest["max_seq_len"]
    buckets = [16, seq]  # the tiny bundle's max_seq_len is 24: powers of two from 16, then 24
    assert seq == 24
    parsed = configs(repo)
    assert sorted(p.name for p in repo.iterdir()) == sorted(list(MODELS) + ["requirements.txt", OUTPUT_MARKER])
    ensemble = parsed.pop("fusionrt")
    assert [f.name for f, _ in ensemble.ListFields()] == ENSEMBLE_FIELDS
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 8
    assert [o.name for o in ensemble.output] == ["PROBABILITIES", "LABEL", "MODALITY_WEIGHTS", "TRUNCATED", "EXPLANATION"]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["preprocess", *ENCODERS, "postprocess", "explain"]
    assert (repo / "fusionrt" / "1").is_dir()
    for name, c in parsed.items():
        assert c.name == name and c.max_batch_size == 8
        assert list(c.dynamic_batching.preferred_batch_size) == [2, 8]
        assert c.dynamic_batching.max_queue_delay_microseconds == 500
        (group,) = c.instance_group
        gpu = device == "gpu" and name in ENCODERS
        assert group.count == 2 and group.kind == (pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU)
        has_sequence = name in ("text_encoder", "fusion_head", "explain")
        # One batch-1 warm-up per sequence bucket where an input has a sequence axis, with the
        # -1 of that axis made concrete; otherwise one.
        assert [w.name for w in c.model_warmup] == ([f"warmup_batch_1_seq_{n}" for n in buckets] if has_sequence else ["warmup_batch_1"])
        for warmup, n in zip(c.model_warmup, buckets):
            assert warmup.batch_size == 1 and set(warmup.inputs) == {i.name for i in c.input}
            for i in c.input:
                w = warmup.inputs[i.name]
                assert list(w.dims) == [n if d == -1 else d for d in i.dims] and w.data_type == i.data_type
                source = w.WhichOneof("input_data_type")
                if i.data_type == pb.TYPE_STRING:
                    assert source == "input_data_file" and (repo / name / "warmup" / w.input_data_file).is_file()
                else:
                    assert source == ("random_data" if i.data_type == pb.TYPE_FP32 else "zero_data")
        expected_backend = "python" if name not in ENCODERS else backend
        assert c.backend == expected_backend
        assert (repo / name / "1" / "model.py").is_file() == (expected_backend == "python")
    for name in ENCODERS:
        c = parsed[name]
        assert (repo / name / "1" / "model.onnx").read_bytes() == (tiny_bundle / f"{name}.onnx").read_bytes()
        assert c.parameters["intra_op_thread_count"].string_value == "3"
        graph = manifest["graphs"][name]
        for tensors, entries in ((c.input, graph["inputs"]), (c.output, graph["outputs"])):
            assert [t.name for t in tensors] == [e["name"] for e in entries]
            for t, e in zip(tensors, entries):  # the batch axis is never in dims
                assert list(t.dims) == [-1 if d == "sequence" else d for d in e["shape"][1:]]
        assert not c.HasField("optimization")  # the tiny bundle's target is cpu: no TensorRT
    pre = parsed["preprocess"]
    assert {o.name: list(o.dims) for o in pre.output}["input_ids"] == [-1]  # a length bucket per request
    assert pre.parameters["max_seq_len"].string_value == "24" and pre.parameters["seq_buckets"].string_value == "16,24"
    post = parsed["postprocess"]
    assert json.loads(post.parameters["labels"].string_value) == manifest["labels"]
    assert {o.name: list(o.dims) for o in post.output} == {"PROBABILITIES": [len(manifest["labels"])], "LABEL": [1], "MODALITY_WEIGHTS": [2]}
    requirements = (repo / "requirements.txt").read_text()
    for package in ("fusionrt==", "numpy", "Pillow", "tokenizers"):
        assert package in requirements
    assert "onnxruntime" in requirements  # the explain model runs onnxruntime in Python, whatever the backend
    explain = parsed["explain"]
    assert [i.name for i in explain.input] == ["TEXT", "IMAGE", "text_features", "attention_mask", "image_features"]
    assert explain.parameters["pixel_hw"].string_value == "32,32" and explain.parameters["method"].string_value == "grad-cam"
    assert (repo / "explain" / "1" / "model.onnx").read_bytes() == (tiny_bundle / "fusion_head_explain.onnx").read_bytes()


def test_warmup_inputs_are_serialized_strings(tiny_bundle, tmp_path):
    repo = build_repository(tiny_bundle, tmp_path / "repo", RepositoryOptions(max_batch_size=8))
    data = (repo / "preprocess" / "warmup" / "IMAGE").read_bytes()
    (length,) = struct.unpack("<I", data[:4])
    assert length == len(data) - 4
    pixels = ImageProcessor.from_file(repo / "preprocess" / "1" / "preprocessor_config.json").process_one(data[4:])
    assert pixels.shape == (3, 32, 32)
    text = (repo / "preprocess" / "warmup" / "TEXT").read_bytes()
    assert text[4:].decode() == "what a lovely picture" and struct.unpack("<I", text[:4])[0] == len(text) - 4


def test_tensorrt_accelerator_from_the_manifest(tiny_bundle, tmp_path):
    bundle = tmp_path / "trt_bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = read_manifest(bundle)
    manifest["target"] = "tensorrt"
    manifest["precision"] = {"text_encoder": "fp16", "image_encoder": "int8", "fusion_head": "fp32"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    gpu = configs(build_repository(bundle, tmp_path / "gpu", RepositoryOptions(device="gpu", max_batch_size=8)))
    for name, mode in (("text_encoder", "FP16"), ("image_encoder", "INT8"), ("fusion_head", "FP32")):
        (accelerator,) = gpu[name].optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == mode
    for device, backend in (("cpu", "onnxruntime"), ("gpu", "python")):
        other = configs(build_repository(bundle, tmp_path / f"{device}_{backend}", RepositoryOptions(device=device, backend=backend, max_batch_size=8)))
        assert not any(other[n].HasField("optimization") for n in ENCODERS)


def test_the_generator_is_deterministic(tiny_bundle, tmp_path):
    a = build_repository(tiny_bundle, tmp_path / "a", RepositoryOptions(backend="python", max_batch_size=8))
    b = build_repository(tiny_bundle, tmp_path / "b", RepositoryOptions(backend="python", max_batch_size=8))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_an_existing_output_is_replaced_only_when_asked(tiny_bundle, tmp_path):
    repo = build_repository(tiny_bundle, tmp_path / "repo", RepositoryOptions(max_batch_size=8))
    (repo / "README.md").write_text("kept")
    with pytest.raises(InputError, match="holds an earlier fusionrt model repository .*; pass --overwrite"):
        build_repository(tiny_bundle, repo, RepositoryOptions(max_batch_size=8))
    build_repository(tiny_bundle, repo, RepositoryOptions(backend="python", max_batch_size=8), overwrite=True)
    assert (repo / "README.md").read_text() == "kept"
    assert 'backend: "python"' in (repo / "text_encoder" / "config.pbtxt").read_text()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "x.txt").write_text("mine")
    with pytest.raises(InputError, match=r"\(x.txt\); it is not a fusionrt model repository"):
        build_repository(tiny_bundle, other, RepositoryOptions(max_batch_size=8), overwrite=True)
    assert (other / "x.txt").read_text() == "mine" and not list(tmp_path.glob(".*tmp-*"))


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"max_batch_size": 4, "preferred_batch_size": (4, 8)}, r"preferred_batch_size \[4, 8\] exceeds max_batch_size 4"),
        ({"preferred_batch_size": (8, 4)}, "distinct increasing"),
        ({"max_queue_delay_microseconds": -1}, "max_queue_delay_microseconds must be an integer >= 0"),
        ({"instances": 0}, "instances must be an integer >= 1, got 0"),
        ({"instances": 2.5}, "instances must be an integer >= 1, got 2.5"),
        ({"instances": True}, "instances must be an integer >= 1, got True"),
        ({"threads_per_instance": 0}, "threads_per_instance must be an integer >= 1"),
        ({"device": "tpu"}, "device 'tpu' is not one of"),
        ({"backend": "tensorrt"}, "backend 'tensorrt' is not one of"),
        ({"seq_buckets": (32, 16)}, "distinct increasing"),
        ({"seq_buckets": "16,128"}, "sequence of integers such as"),
        ({"seq_buckets": (16.5, 128)}, "must be integers, got 16.5"),
        ({"model_instances": {"fusionrt": 2}}, "names 'fusionrt'; the models with instances are"),
        ({"model_instances": {"image_encoder": 0}}, r"model_instances\['image_encoder'\] must be an integer >= 1, got 0"),
        ({"model_instances": 2}, "must map model names to counts"),
        ({"model_instances": [("image_encoder", 3), ("image_encoder", 1)]}, "names 'image_encoder' twice"),
        ({"explain_method": "saliency"}, "explain_method must be one of"),
    ],
)
def test_options_are_checked(fields, match):
    with pytest.raises(InputError, match=match):
        RepositoryOptions(**fields)


def test_instance_counts_per_model():
    # On CPU the image encoder, the heaviest step, gets a second single-threaded instance.
    cpu = RepositoryOptions()
    assert {m: cpu.instance_count(m) for m in MODELS[:-1]} == {
        "preprocess": 1, "text_encoder": 1, "image_encoder": 2, "fusion_head": 1, "postprocess": 1, "explain": 1}
    assert RepositoryOptions(instances=3).instance_count("image_encoder") == 3
    assert RepositoryOptions(instances=3).instance_count("preprocess") == 3
    assert {RepositoryOptions(device="gpu").instance_count(m) for m in MODELS[:-1]} == {1}
    explicit = RepositoryOptions(model_instances={"text_encoder": 2})
    assert (explicit.instance_count("text_encoder"), explicit.instance_count("image_encoder")) == (2, 1)
    # The default is resolved when asked, so that dataclasses.replace sees the new fields.
    assert replace(RepositoryOptions(), instances=4).instance_count("image_encoder") == 4
    assert replace(RepositoryOptions(), device="gpu").instance_count("image_encoder") == 1
    assert RepositoryOptions(instances=np.int64(3), model_instances=[("preprocess", np.int64(2))]).instance_count("preprocess") == 2


def test_the_served_explanation_method_is_chosen_and_checked_against_the_bundle(tiny_bundle, tmp_path):
    """--explain-method reaches the explain model's parameters; grad-cam on a bundle whose
    explanation graph lacks region_grad_cam (an older export) is refused, and nothing is written;
    without a method, such a bundle is served with gradient."""
    import shutil

    from fusionrt import BundleError

    repo = build_repository(tiny_bundle, tmp_path / "repo", RepositoryOptions(max_batch_size=8, explain_method="rollout"))
    assert configs(repo)["explain"].parameters["method"].string_value == "rollout"
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["explain"]["outputs"] = [o for o in manifest["explain"]["outputs"] if o["name"] != "region_grad_cam"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="region_grad_cam"):
        build_repository(old, tmp_path / "old_repo", RepositoryOptions(max_batch_size=8, explain_method="grad-cam"))
    assert not (tmp_path / "old_repo").exists()
    assert configs(build_repository(old, tmp_path / "old_repo", RepositoryOptions(max_batch_size=8)))["explain"].parameters["method"].string_value == "gradient"


def test_seq_buckets_end_at_the_bundles_max_seq_len(tiny_bundle, tmp_path):
    with pytest.raises(InputError, match=r"last sequence bucket must be max_seq_len=24, got \[8, 16\]"):
        build_repository(tiny_bundle, tmp_path / "repo", RepositoryOptions(max_batch_size=8, seq_buckets=(8, 16)))
    repo = build_repository(tiny_bundle, tmp_path / "repo", RepositoryOptions(max_batch_size=8, seq_buckets=(24,)))
    parsed = configs(repo)
    assert parsed["preprocess"].parameters["seq_buckets"].string_value == "24"
    assert [w.name for w in parsed["text_encoder"].model_warmup] == ["warmup_batch_1_seq_24"]


def test_preferred_sizes_are_checked_against_the_bundle_and_the_default_fits_it(tiny_bundle, tmp_path):
    """The tiny bundle's max_batch_size is 4. Sizes given above it are refused; the default (4 and
    8) keeps those within it: `triton build BUNDLE` of a bundle exported with --max-batch-size 4
    was refused until the user found --preferred-batch-size."""
    with pytest.raises(InputError, match=r"exceeds max_batch_size 4 \(the bundle's\)"):
        build_repository(tiny_bundle, tmp_path / "repo", RepositoryOptions(preferred_batch_size=(4, 8)))
    assert not (tmp_path / "repo").exists()
    parsed = configs(build_repository(tiny_bundle, tmp_path / "repo"))
    assert list(parsed["image_encoder"].dynamic_batching.preferred_batch_size) == [4]
    parsed = configs(build_repository(tiny_bundle, tmp_path / "two", RepositoryOptions(max_batch_size=2)))
    assert list(parsed["image_encoder"].dynamic_batching.preferred_batch_size) == [2]
    parsed = configs(build_repository(tiny_bundle, tmp_path / "big", RepositoryOptions(max_batch_size=16)))
    assert list(parsed["image_encoder"].dynamic_batching.preferred_batch_size) == [4, 8]


def test_triton_package_imports_neither_torch_nor_transformers():
    root = Path(__file__).parents[2] / "src" / "fusionrt" / "triton"
    heavy = re.compile(r"^\s*(import|from)\s+(torch|transformers)\b", re.MULTILINE)
    for source in root.rglob("*.py"):
        assert not heavy.search(source.read_text()), source
    code = (
        "import sys; import fusionrt.triton.cli; "
        "print(sorted(m for m in ('torch', 'transformers', 'tritonclient', 'numpy') if m in sys.modules)); "
        "from fusionrt.triton import Client, TritonServer, build_repository; "
        "print(sorted(m for m in ('torch', 'transformers', 'tritonclient') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["[]", "[]"], out.stderr  # the CLI module is light; the API needs no torch


def test_dynamic_batching_can_be_turned_off(tiny_bundle, tmp_path):
    from fusionrt.triton import RepositoryOptions, build_repository
    from tests.triton.conftest import parse_config

    repo = build_repository(tiny_bundle, tmp_path / "r", RepositoryOptions(backend="python", max_batch_size=8, dynamic_batching=False))
    for model in ("preprocess", "text_encoder", "image_encoder", "fusion_head", "postprocess"):
        config = parse_config(repo / model / "config.pbtxt")
        assert not config.HasField("dynamic_batching"), model
        assert config.max_batch_size > 0


@pytest.mark.parametrize("backend", ["onnxruntime", "python"])
def test_the_config_reader_reads_back_what_the_writer_wrote(tiny_bundle, tmp_path, backend):
    from fusionrt.triton import RepositoryOptions, build_repository
    from fusionrt.triton.pbtxt import parse, read_config

    repo = build_repository(tiny_bundle, tmp_path / "r", RepositoryOptions(backend=backend, device="gpu", max_batch_size=8,
                            preferred_batch_size=(4, 8), max_queue_delay_microseconds=700))
    configs = sorted(repo.glob("*/config.pbtxt"))
    assert len(configs) == 7  # preprocess, 3 graphs, postprocess, explain, the ensemble
    for path in configs:
        text = path.read_text(encoding="utf-8")
        assert "\n".join(read_config(path).lines(0)) + "\n" == text, path
    encoder = read_config(repo / "text_encoder" / "config.pbtxt")
    assert encoder.get("max_batch_size") == 8 and encoder.get("name") == "text_encoder"
    assert [str(k) for k in encoder.find("kind")] == ["KIND_GPU"]
    assert list(encoder.find("preferred_batch_size")) == [4, 8]
    assert list(encoder.find("max_queue_delay_microseconds")) == [700]
    with pytest.raises(ValueError, match="bad.pbtxt"):
        parse('name: "x"\ninput [ { name: "a" ', "bad.pbtxt")


@pytest.mark.parametrize("folder", ["my models", "modèles"])
def test_a_repository_path_triton_cannot_serve_warns_at_build_and_is_refused_at_serve(folder, tiny_bundle, tmp_path):
    """Triton's python backend stubs abort on such a path (std::invalid_argument: stol with a
    space, tritonserver 2.51 here) and `fusionrt serve` waited its whole startup timeout to report
    'not ready'. The repository is still written (it may be served from another path)."""
    from fusionrt.triton import TritonServer

    target = tmp_path / folder / "repo"
    with pytest.warns(RuntimeWarning, match=r"Triton's python backend cannot load models from .*: serve a copy of it from another path"):
        build_repository(tiny_bundle, target, RepositoryOptions(backend="python", max_batch_size=8))
    assert (target / "fusionrt" / "config.pbtxt").is_file()
    with pytest.raises(InputError, match=r"a path with whitespace or non-ASCII characters: its stubs fail to start\): copy or move it"):
        TritonServer(target, http_port=None, grpc_port=None, metrics_port=None).start()

