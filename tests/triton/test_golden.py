"""triton_repo/ (generated from the default checkpoint's INT8 bundle with --device gpu) is what the
generator still writes: regenerate it from the tiny bundle with the same options and compare every
committed file, sizes that depend on the model (dims, labels) aside."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fusionrt.triton import RepositoryOptions, build_repository
from fusionrt.utils import OUTPUT_MARKER
from tests.triton.conftest import parse_config

pytest.importorskip("tritonclient", reason="needs fusionrt[serve]")

GOLDEN = Path(__file__).parents[2] / "triton_repo"
# The options triton_repo/README.md states (max_batch_size: the default bundle's). The default
# sequence buckets of max_seq_len 128 are 16,32,64,128; the tiny bundle (24) gets four as well.
OPTIONS = {"backend": "onnxruntime", "device": "gpu", "max_batch_size": 32, "seq_buckets": (3, 6, 12, 24)}
# Tensors whose dims do not depend on the model's sizes.
FIXED_DIMS = {"TEXT", "IMAGE", "LABEL", "TRUNCATED", "MODALITY_WEIGHTS", "modality_weights", "EXPLANATION"}


def committed(root: Path) -> list[str]:
    """Files triton_repo commits (see triton_repo/.gitignore): no graphs, tokenizer, preprocessor config."""
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel in ("README.md", ".gitignore", OUTPUT_MARKER) or p.suffix in (".onnx", ".pyc"):
            continue
        if any(rel.startswith(f"{m}/1/tokenizer/") or rel == f"{m}/1/preprocessor_config.json" for m in ("preprocess", "explain")):
            continue
        out.append(rel)
    return sorted(out)


def normalized(path: Path) -> dict:
    """The config as a dict; size-dependent dims replaced by their rank, labels by a placeholder."""
    from google.protobuf.json_format import MessageToDict

    config = MessageToDict(parse_config(path), preserving_proto_field_name=True)

    def walk(node, tensor=None):
        if isinstance(node, dict):
            name = node.get("name", node.get("key", tensor))
            return {
                k: (f"rank {len(v)}" if k == "dims" and name not in FIXED_DIMS else walk(v, name))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v, tensor) for v in node]
        return node

    config = walk(config)
    for key in ("labels", "max_seq_len", "seq_buckets", "pixel_hw"):
        if key in config.get("parameters", {}):
            config["parameters"][key] = f"<{key}>"
    for warmup in config.get("model_warmup", []):
        warmup["name"] = re.sub(r"_seq_\d+$", "_seq_<bucket>", warmup["name"])
    return config


def test_triton_repo_is_what_the_generator_writes(tiny_bundle, tmp_path):
    fresh = build_repository(tiny_bundle, tmp_path / "repo", RepositoryOptions(**OPTIONS))
    files = committed(GOLDEN)
    assert files == committed(fresh)
    assert "preprocess/warmup/IMAGE" in files and "fusionrt/1/.gitkeep" in files
    for rel in files:
        if rel.endswith("config.pbtxt"):
            assert normalized(GOLDEN / rel) == normalized(fresh / rel), rel
        elif rel.endswith("labels.txt"):  # the model's labels: one per line, as many
            assert len((GOLDEN / rel).read_text().splitlines()) == len((fresh / rel).read_text().splitlines()), rel
        else:
            assert (GOLDEN / rel).read_bytes() == (fresh / rel).read_bytes(), rel


def test_triton_repo_can_be_regenerated_in_place():
    """triton_repo/README.md's command rebuilds it with --overwrite: its marker (written by that
    command from the default bundle) lists every committed file, and README.md and .gitignore,
    which fusionrt did not write, stay."""
    from fusionrt.triton.repository import REPOSITORY_OUTPUT
    from fusionrt.utils import output_folder_problem

    assert output_folder_problem(GOLDEN, REPOSITORY_OUTPUT, overwrite=True, merge=True) is None
    marker = (GOLDEN / OUTPUT_MARKER).read_text()
    assert "README.md" not in marker and ".gitignore" not in marker
    assert all(f'"{rel}"' in marker for rel in committed(GOLDEN)), [rel for rel in committed(GOLDEN) if f'"{rel}"' not in marker]


def test_triton_repo_serves_the_default_bundle_sizes():
    """Spot-check that triton_repo was generated from the default (MiniLM, ResNet-18) INT8 bundle."""
    text = parse_config(GOLDEN / "text_encoder" / "config.pbtxt")
    image = parse_config(GOLDEN / "image_encoder" / "config.pbtxt")
    assert [list(t.dims) for t in text.output] == [[-1, 384]]  # a sequence bucket, MiniLM hidden 384
    assert [w.name for w in text.model_warmup] == [f"warmup_batch_1_seq_{n}" for n in (16, 32, 64, 128)]
    pre = parse_config(GOLDEN / "preprocess" / "config.pbtxt")
    assert pre.parameters["max_seq_len"].string_value == "128" and pre.parameters["seq_buckets"].string_value == "16,32,64,128"
    assert [list(t.dims) for t in image.input] == [[224, 224, 3]]  # uint8 pixels as decoded: the graph normalizes
    assert [t.data_type for t in image.input] == [2]  # TYPE_UINT8
    assert [t.data_type for t in pre.output if t.name == "pixel_values"] == [2]
    assert text.max_batch_size == 32 and text.instance_group[0].kind == 1  # KIND_GPU
