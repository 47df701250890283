"""Loaders (Polygraphy's): every ONNX Runtime session and every OpenVINO compiled model fusionrt
runs is created here, from a graph (an ONNX file, or ONNX bytes / an ``openvino.Model`` built in
memory), its precision and typed options. The Engine, export validation, the precision search,
the Triton runner and the benchmarks' peak measurements all come through these two functions, so a
session option or a compile property is set in one place (tests/test_layers.py checks it).

Where a graph runs is a :class:`Placement`: structured for code, :meth:`Placement.describe` for
people.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

from fusionrt.errors import BundleError, ProviderError


def writable_cache_dir(path: str | os.PathLike, what: str) -> str | None:
    """``path`` as a string when it is (or can be made) a folder this process can write, else
    ``None`` after a ``RuntimeWarning`` naming ``what`` and why: a compile cache only saves time,
    so a read-only bundle or home folder costs its cache, never the load."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".fusionrt-write-test-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        import warnings

        warnings.warn(f"{what} {path} is not writable ({exc.strerror or exc}): running without that cache", RuntimeWarning, stacklevel=4)
        return None
    return str(path)

log = logging.getLogger("fusionrt.engine")

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
# Bundle precisions whose graphs hold quantized ops (the rest of their ops run in float).
QUANTIZED = frozenset({"int8", "int8-dynamic"})


@dataclass(frozen=True)
class Placement:
    """Where one graph runs.

    Attributes:
        runtime: ``"onnxruntime"`` or ``"openvino"``.
        device: ONNX Runtime: the execution provider the session runs on
            (``"CPUExecutionProvider"``); OpenVINO: its device (``"CPU"``).
        precision: the graph's bundle precision (``"fp32"``, ``"int8"``, ...).
        inference_precision: OpenVINO: the precision its float ops run at (``"bf16"``,
            ``"f32"``); ``None`` on ONNX Runtime, which runs the graph's own types.
    """

    runtime: str
    device: str
    precision: str = "fp32"
    inference_precision: str | None = None

    def describe(self) -> str:
        """For people: ``"CPUExecutionProvider"``, ``"OpenVINO CPU (bf16)"``,
        ``"OpenVINO CPU (int8, float ops bf16)"``."""
        if self.runtime != OPENVINO:
            return self.device
        floats = self.inference_precision or "default"
        return f"OpenVINO {self.device} ({'int8, float ops ' + floats if self.precision in QUANTIZED else floats})"


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise ProviderError(
            "onnxruntime is not installed: pip install 'fusionrt[cpu]' (or 'fusionrt[gpu]' on NVIDIA GPUs)"
        ) from None
    return onnxruntime


def _ov():
    try:
        import openvino
    except ImportError:
        raise ProviderError("the OpenVINO runtime needs the openvino package: pip install 'fusionrt[openvino]'") from None
    return openvino


@functools.lru_cache(maxsize=1)
def _openvino_core():
    """One ``openvino.Core`` per process, as OpenVINO recommends (its ``compile_model`` is thread-safe)."""
    return _ov().Core()


def ort_session(
    graph: str | os.PathLike | bytes,
    options,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    provider_options: Mapping[str, dict] | None = None,
    strict: bool = False,
    precision: str | None = None,
):
    """An ``onnxruntime.InferenceSession``, falling back along ``providers`` when one fails to
    initialize. On the CPU provider of an x86 CPU without an INT8 dot product, 8-bit INT8 weights
    are loaded as u8 (:mod:`fusionrt.engine.int8_weights`: the same numbers, without saturating).

    Args:
        graph: an ONNX file, or a serialized ONNX model (bytes).
        options: :class:`~fusionrt.engine.session.SessionOptions` (its ``build()`` makes ORT's).
        providers: execution providers to try, in order (already resolved against this build).
        provider_options: provider name -> its ONNX Runtime options.
        strict: raise when the first provider fails instead of falling back.
        precision: the graph's bundle precision (an unquantized one is not inspected for INT8
            weights); ``None``: unknown.

    Raises:
        BundleError: the file itself cannot be parsed (no provider would load it).
        ProviderError: ``strict`` and the first provider failed, or every provider failed.
    """
    ort = _ort()
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    source = graph if isinstance(graph, bytes) else str(graph)
    name = "an in-memory ONNX model" if isinstance(graph, bytes) else str(graph)
    provider_options = provider_options or {}
    errors = []
    for i, provider in enumerate(providers):
        chain = list(providers[i:])
        try:
            return ort.InferenceSession(
                _widened(source, name, precision) if provider == "CPUExecutionProvider" else source,
                sess_options=options.build(), providers=chain,
                provider_options=[provider_options.get(p, {}) for p in chain],
            )
        except (state.InvalidProtobuf, state.InvalidGraph, state.NoSuchFile) as exc:
            # The file itself is bad: no other provider would read it either.
            raise BundleError(f"graph file {name} cannot be loaded: {exc}") from None
        except Exception as exc:  # onnxruntime raises its own untyped errors
            errors.append(f"{provider}: {exc}")
            if strict:
                raise ProviderError(f"{provider} failed to create a session for {name}: {exc}") from exc
            log.warning("%s failed for %s (%s); falling back to %s", provider, name, exc, providers[i + 1 : i + 2])
    raise ProviderError(f"no execution provider could load {name}: " + "; ".join(errors))


def _widened(source: str | bytes, name: str, precision: str | None) -> str | bytes:
    """``source``, or its bytes with 8-bit INT8 weights stored as u8 where this CPU would saturate
    them (:func:`fusionrt.engine.int8_weights.for_this_cpu`); says so once per load."""
    from fusionrt.engine.int8_weights import for_this_cpu

    try:
        widened, count = for_this_cpu(source, None if precision is None else precision in QUANTIZED)
    except Exception:  # an unreadable file: the runtime's own loader names the problem
        return source
    if count:
        log.warning("%s: this CPU has no INT8 dot product (AVX-512 VNNI, AVX-VNNI or AMX), so %d of its 8-bit INT8 weight "
                    "tensors run as u8 (the same numbers, without the int16 saturation, somewhat slower); a bundle exported "
                    "on this CPU (--reduce-range auto) has 7-bit weights instead", name, count)
    return widened


def openvino_model(graph, precision: str | None, options):
    """An OpenVINO compiled model.

    Args:
        graph: an ONNX (or OpenVINO IR ``.xml``) file, or an ``openvino.Model`` built in memory.
        precision: the graph's bundle precision, which sets its inference precision under
            ``options.inference_precision="auto"``; ``None``: the plugin's default.
        options: :class:`~fusionrt.engine.openvino_runtime.OpenVINOOptions` (its ``config()``
            makes the compile properties).

    Raises:
        ProviderError: the openvino package is not installed, or bf16 is asked for on a CPU
            without AVX512-BF16/AMX-BF16.
        BundleError: OpenVINO cannot compile the graph (names the file and OpenVINO's reason).
    """
    ov = _ov()
    config = options.config(precision)
    if "CACHE_DIR" in config and writable_cache_dir(config["CACHE_DIR"], "OpenVINO's cache_dir") is None:
        del config["CACHE_DIR"]
    source = graph if isinstance(graph, ov.Model) else str(graph)
    try:
        if options.device == "CPU" and not isinstance(graph, ov.Model) and str(graph).endswith(".onnx"):
            widened = _widened(source, str(graph), precision)
            source = _openvino_core().read_model(widened) if isinstance(widened, bytes) else source
        return _openvino_core().compile_model(source, options.device, config)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        hint = ("; int8-dynamic graphs (DynamicQuantizeLinear/MatMulInteger) do not run on OpenVINO: export "
                "with --target openvino") if precision == "int8-dynamic" else ""
        raise BundleError(f"OpenVINO cannot compile {graph} ({precision}): {first[-1] if first else exc}{hint}") from None


def openvino_inference_precision(compiled) -> str:
    """``"bf16"``, ``"f32"``: the inference precision a compiled model's float ops run at."""
    element_type = compiled.get_property("INFERENCE_PRECISION_HINT")
    to_string = getattr(element_type, "to_string", None)
    return to_string() if callable(to_string) else str(element_type)
