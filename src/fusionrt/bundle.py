"""The bundle: the contract between export and everything downstream (engine, Triton, bench).

A bundle is one directory holding ``manifest.json``, three ONNX graphs, ``tokenizer/`` and
``preprocessor_config.json`` (docs/export.md, "The bundle"). This module reads and verifies it without
torch or onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionrt.errors import BundleError, InputError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
TOKENIZER_DIR = "tokenizer"

# Execution order; each graph's inputs are bundle inputs or outputs of earlier graphs.
GRAPHS = ("text_encoder", "image_encoder", "fusion_head")
# Component names of --precision text=P,image=P,head=P -> graph names.
COMPONENTS = {"text": "text_encoder", "image": "image_encoder", "head": "fusion_head"}
# Runtimes a graph is made for (``manifest.runtimes``): the OpenVINO target's graphs run on
# OpenVINO, every other target's on ONNX Runtime.
RUNTIMES = ("onnxruntime", "openvino")
BUNDLE_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
BUNDLE_OUTPUTS = ("logits", "modality_weights")
# The optional explanation graph (``manifest.explain``): the fusion head, unfused, in float32, with
# its attention probabilities and contributions as outputs; predict never runs it.
EXPLAIN_GRAPH = "fusion_head_explain"
EXPLAIN_INPUTS = ("text_features", "attention_mask", "image_features")
EXPLAIN_OUTPUTS = ("logits", "modality_weights", "cross_attention", "token_contributions", "region_contributions")
# Manifest keys every reader relies on (besides format_version and graphs).
REQUIRED_KEYS = ("labels", "max_seq_len", "max_batch_size", "precision")


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks of ``chunk_bytes``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``directory/manifest.json`` with this ``FORMAT_VERSION``: the writer side of
    :meth:`Bundle.load`, checked against the same contract.

    Args:
        manifest: every key but ``format_version``; ``graphs`` must describe each of ``GRAPHS``.

    Returns:
        The manifest's path.

    Raises:
        FusionrtInternalError: a required key or graph is missing (a bug in the exporter).
    """
    from fusionrt.errors import FusionrtInternalError

    missing = [k for k in (*REQUIRED_KEYS, "graphs") if k not in manifest]
    if missing or set(manifest["graphs"]) != set(GRAPHS):
        raise FusionrtInternalError(f"manifest lacks {missing or 'graphs ' + str(list(GRAPHS))}")
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps({"format_version": FORMAT_VERSION, **manifest}, indent=2))
    return path


@dataclass(frozen=True)
class Bundle:
    """A verified bundle directory.

    Attributes:
        path: the bundle directory.
        manifest: the parsed ``manifest.json``.
    """

    path: Path
    manifest: dict

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        """Read and check a bundle.

        Args:
            path: the bundle directory.
            verify: also check every graph file's sha256 against the manifest.

        Raises:
            BundleError: the directory, the manifest, a graph, the tokenizer or the preprocessor
                config is missing or corrupt, or ``format_version`` is unknown. The message names
                the file.
        """
        root = Path(path)
        manifest_path = root / MANIFEST
        if not root.is_dir():
            raise BundleError(f"bundle directory not found: {root}")
        if not manifest_path.is_file():
            raise BundleError(f"{manifest_path} is missing: {root} is not a fusionrt bundle (run `fusionrt export`)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise BundleError(f"{manifest_path} must hold a JSON object")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{manifest_path} has format_version {version!r}; this fusionrt reads format_version "
                f"{FORMAT_VERSION}. Re-export the bundle with this fusionrt version"
            )
        graphs = manifest.get("graphs")
        if not isinstance(graphs, dict) or set(graphs) != set(GRAPHS):
            got = sorted(graphs) if isinstance(graphs, dict) else graphs
            raise BundleError(f"{manifest_path}: 'graphs' must describe {list(GRAPHS)}, got {got}")
        explain = manifest.get("explain")
        if explain is not None and not isinstance(explain, dict):
            raise BundleError(f"{manifest_path}: 'explain' must describe the {EXPLAIN_GRAPH} graph, got {explain!r}")
        for name, entry in [(g, graphs[g]) for g in GRAPHS] + ([(EXPLAIN_GRAPH, explain)] if explain else []):
            file = root / entry.get("file", "")
            if not file.is_file():
                raise BundleError(f"bundle graph {name!r} file missing: {file}")
            if verify:
                actual = sha256_file(file)
                if actual != entry.get("sha256"):
                    raise BundleError(
                        f"bundle graph file {file} does not match its sha256 in {manifest_path} "
                        f"(manifest {entry.get('sha256')}, file {actual}): the file was modified or "
                        "truncated; re-export the bundle"
                    )
        if not (root / TOKENIZER_DIR / "tokenizer.json").is_file():
            raise BundleError(f"bundle tokenizer missing: {root / TOKENIZER_DIR / 'tokenizer.json'}")
        if not (root / PREPROCESSOR_CONFIG).is_file():
            raise BundleError(f"bundle preprocessor config missing: {root / PREPROCESSOR_CONFIG}")
        for key in REQUIRED_KEYS:
            if key not in manifest:
                raise BundleError(f"{manifest_path} lacks required key {key!r}")
        return cls(root, manifest)

    def graph_path(self, name: str) -> Path:
        return self.path / self.manifest["graphs"][name]["file"]

    @property
    def explain_path(self) -> Path | None:
        """The explanation graph's file (``fusion_head_explain.onnx``), or ``None`` for a bundle
        exported before fusionrt wrote one."""
        entry = self.manifest.get("explain")
        return self.path / entry["file"] if entry else None

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def max_seq_len(self) -> int:
        return int(self.manifest["max_seq_len"])

    @property
    def max_batch_size(self) -> int:
        return int(self.manifest["max_batch_size"])

    @property
    def precision(self) -> dict[str, str]:
        return dict(self.manifest["precision"])

    @property
    def target(self) -> str:
        """The ``--target`` it was exported with: one name (``cpu``) or per component
        (``text=openvino,image=openvino,head=cpu``)."""
        return str(self.manifest.get("target", "cpu"))

    @property
    def targets(self) -> dict[str, str]:
        """Graph -> the target it was made for (see :func:`split_components`)."""
        return split_components(self.target, "target")

    @property
    def runtimes(self) -> dict[str, str]:
        """Graph -> the runtime it was made and validated for: ``onnxruntime`` or ``openvino``."""
        recorded = self.manifest.get("runtimes")
        if isinstance(recorded, dict) and set(recorded) == set(GRAPHS) and set(recorded.values()) <= set(RUNTIMES):
            return {g: str(recorded[g]) for g in GRAPHS}
        return {g: "openvino" if t == "openvino" else "onnxruntime" for g, t in self.targets.items()}

    def preprocessor_config(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / PREPROCESSOR_CONFIG).read_text())
        except json.JSONDecodeError as exc:
            raise BundleError(f"{self.path / PREPROCESSOR_CONFIG} is not valid JSON: {exc}") from None


def split_components(spec: str, what: str, default: str | None = None) -> dict[str, str]:
    """``"cpu"`` -> that value for every graph; ``"text=a,image=b,head=c"`` -> graph -> value.

    Args:
        spec: one word, or ``component=value`` pairs (components ``text``, ``image``, ``head``).
        what: the option's name, for error messages (``precision``, ``target``).
        default: the value of components a per-component spec omits (``None``: all required).

    Raises:
        InputError: an unknown or missing component, or an empty value.
    """
    spec = spec.strip()
    if "=" not in spec:
        if not spec:
            raise InputError(f"--{what} is empty")
        return {g: spec for g in GRAPHS}
    out: dict[str, str] = {}
    for part in spec.split(","):
        component, _, value = part.partition("=")
        component, value = component.strip(), value.strip()
        if component not in COMPONENTS:
            raise InputError(f"--{what} component {component!r} is not one of {list(COMPONENTS)}")
        if not value:
            raise InputError(f"--{what} {component}= has no value")
        out[COMPONENTS[component]] = value
    missing = [c for c, g in COMPONENTS.items() if g not in out]
    if missing and default is None:
        raise InputError(f"--{what} {spec!r} lacks {missing}: give every component, or one word for all")
    return {g: out.get(g, default) for g in GRAPHS}


def join_components(values: dict[str, str]) -> str:
    """The inverse of :func:`split_components`: one word when every graph has the same value."""
    if len(set(values.values())) == 1:
        return next(iter(values.values()))
    return ",".join(f"{c}={values[g]}" for c, g in COMPONENTS.items())
