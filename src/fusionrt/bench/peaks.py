"""The roofline's peaks, per precision: the CPU's theoretical peak from the units it has (cores x
clock x operations per cycle), and a measured peak, the best of large GEMMs and convolutions in
ONNX Runtime and OpenVINO at that precision.

Operations count one multiply-add as 2, as FLOPs do (:mod:`fusionrt.bench.flops`). The per-cycle
figures are per core and name their source; the clock is the highest this machine reports
(``/sys/.../cpuinfo_max_freq``, the model name's ``@ X GHz``, ``/proc/cpuinfo``'s ``cpu MHz``).
A virtual machine often reports only its nominal clock: a core that runs faster (turbo) could
exceed a theoretical peak computed from it, which :func:`peak_used` then replaces by the measured
one, so that no roofline percentage exceeds 100%.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fusionrt.cpu import CPUInfo, cpu_info, usable_cores
from fusionrt.errors import ProviderError

PRECISIONS = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class UnitRate:
    """The fastest unit of one precision on a core.

    Attributes:
        unit: e.g. ``"AMX-INT8"``, ``"AVX-512 FMA (2 units)"``.
        ops_per_cycle: operations per cycle per core (a multiply-add is 2).
        source: where the per-cycle figure comes from.
    """

    unit: str
    ops_per_cycle: int
    source: str


_INTEL_OPT = "Intel 64 and IA-32 Architectures Optimization Reference Manual (two 512-bit FMA ports on Xeon Scalable)"
_INTEL_AMX = "Intel AMX overview (Sapphire Rapids): TMUL 1024 BF16 / 2048 INT8 ops per cycle per core"
_AMD_ZEN = "AMD Software Optimization Guide for family 19h (Zen 3/4): two 256-bit FMA pipes; Zen 4 splits 512-bit ops"

# (flag, precision) -> rate, best first within a precision. AVX-512 rates are Intel's two-port
# figures; on AMD family 19h (Zen 3/4) the datapath is 256 bits wide: half (see _rates).
_RATES = (
    ("amx_bf16", "bf16", UnitRate("AMX-BF16", 1024, _INTEL_AMX)),
    ("avx512_bf16", "bf16", UnitRate("AVX512-BF16 (VDPBF16PS, 2 ports)", 128, _INTEL_OPT)),
    ("amx_int8", "int8", UnitRate("AMX-INT8", 2048, _INTEL_AMX)),
    ("avx512_vnni", "int8", UnitRate("AVX-512 VNNI (VPDPBUSD, 2 ports)", 256, _INTEL_OPT)),
    ("avx_vnni", "int8", UnitRate("AVX-VNNI (256-bit VPDPBUSD, 2 ports)", 128, _INTEL_OPT)),
    ("avx2", "int8", UnitRate("AVX2 (VPMADDUBSW, 2 ports)", 128, _INTEL_OPT)),
    ("avx512f", "fp32", UnitRate("AVX-512 FMA (2 ports)", 64, _INTEL_OPT)),
    ("avx2", "fp32", UnitRate("AVX2 FMA (2 ports)", 32, _INTEL_OPT)),
)


def unit_rates(info: CPUInfo, vendor: str = "", family: int | None = None) -> dict[str, UnitRate]:
    """The fastest unit per precision that the CPU's flags give (``fusionrt.cpu``'s flags).

    Args:
        info: the CPU (its ``flags``).
        vendor: ``/proc/cpuinfo``'s ``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``).
        family: its ``cpu family``; AMD family 25 (Zen 3/4) runs 512-bit ops on 256-bit pipes.

    Returns:
        precision -> :class:`UnitRate`; a precision without a unit of its own (bf16 without
        AVX512-BF16 or AMX) is absent.
    """
    out: dict[str, UnitRate] = {}
    for flag, precision, rate in _RATES:
        if precision in out or flag not in info.flags:
            continue
        if vendor == "AuthenticAMD" and family == 25 and "512" in rate.unit:
            rate = UnitRate(f"{rate.unit}, 256-bit datapath", rate.ops_per_cycle // 2, _AMD_ZEN)
        out[precision] = rate
    return out


def clock_ghz(cpuinfo_text: str, max_freq_khz: str | None = None) -> float | None:
    """The highest clock the machine reports, in GHz: the cpufreq maximum, the model name's
    ``@ X GHz`` and ``cpu MHz``; ``None`` when none is there."""
    candidates = [float(v) / 1e3 for v in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo_text, re.M)]
    candidates += [float(v) for v in re.findall(r"@\s*([\d.]+)\s*GHz", cpuinfo_text)]
    if max_freq_khz and max_freq_khz.strip().isdigit():
        candidates.append(int(max_freq_khz) / 1e6)
    return max(candidates) if candidates else None


@dataclass
class Peak:
    """One precision's peaks, in G operations per second (GFLOP/s for float, GOP/s for int8).

    Attributes:
        precision: ``fp32``, ``bf16`` or ``int8``.
        unit, ops_per_cycle, source: see :class:`UnitRate` (``None`` when unknown).
        cores: cores counted (the benchmark's threads, at most the machine's CPUs).
        clock_ghz: see :func:`clock_ghz`.
        theoretical_gops: ``cores * clock_ghz * ops_per_cycle``, or ``None``.
        measured_gops: kernel name -> best G operations per second measured.
    """

    precision: str
    unit: str | None
    ops_per_cycle: int | None
    source: str | None
    cores: int
    clock_ghz: float | None
    theoretical_gops: float | None
    measured_gops: dict[str, float] = field(default_factory=dict)

    @property
    def best_measured_gops(self) -> float:
        return max(self.measured_gops.values(), default=0.0)

    def to_dict(self) -> dict:
        used, name = peak_used(self)
        return {**asdict(self), "best_measured_gops": self.best_measured_gops, "used_gops": used, "used": name}


def peak_used(peak: Peak) -> tuple[float, str]:
    """The peak the roofline divides by, and its name: the theoretical one, unless unknown or
    below a measured kernel (a clock above the reported one): then the best measured."""
    unit = "GOP/s" if peak.precision == "int8" else "GFLOP/s"
    measured = peak.best_measured_gops
    if peak.theoretical_gops and peak.theoretical_gops >= measured:
        return peak.theoretical_gops, f"{peak.precision} theoretical ({peak.unit}, {peak.theoretical_gops:.0f} {unit})"
    return measured, f"{peak.precision} measured ({measured:.0f} {unit})"


def theoretical_peaks(threads: int, info: CPUInfo | None = None, cpuinfo_text: str | None = None) -> dict[str, Peak]:
    """Per precision of :data:`PRECISIONS`, this machine's :class:`Peak` without measurements
    (fp32 always; bf16 and int8 with a unit of their own, else fp32's figures apply)."""
    info = info or cpu_info()
    if cpuinfo_text is None:
        try:
            cpuinfo_text = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo_text = ""
    try:
        max_khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
    except OSError:
        max_khz = None
    vendor = next(iter(re.findall(r"^vendor_id\s*:\s*(\S+)", cpuinfo_text, re.M)), "")
    family = next((int(v) for v in re.findall(r"^cpu family\s*:\s*(\d+)", cpuinfo_text, re.M)), None)
    rates = unit_rates(info, vendor, family)
    clock = clock_ghz(cpuinfo_text, max_khz)
    cores = max(1, min(threads, usable_cores()))
    out = {}
    for precision in PRECISIONS:
        rate = rates.get(precision) or rates.get("fp32")
        theoretical = cores * clock * rate.ops_per_cycle if (rate and clock) else None
        out[precision] = Peak(precision, rate.unit if rate else None, rate.ops_per_cycle if rate else None,
                              rate.source if rate else None, cores, clock, theoretical)
    return out


def measure_peaks(threads: int) -> dict[str, dict[str, float]]:
    """Measured G operations per second per precision and kernel: fp32, ONNX Runtime's MatMul
    and ResNet-shaped Convs; int8, ONNX Runtime's ``MatMulInteger`` and OpenVINO's INT8 MatMul
    (FakeQuantize on both inputs, constant weights); bf16, OpenVINO's MatMul at bf16 inference
    precision (two inputs, and constant weights), where the CPU has bf16. OpenVINO kernels are
    left out when openvino is not installed."""
    from fusionrt.bench.flops import measure_bf16_peak_gflops, measure_conv_peak_gflops, measure_int8_peak_gops, measure_peak_gflops

    out = {"fp32": {"onnxruntime matmul": measure_peak_gflops(threads), "onnxruntime conv": measure_conv_peak_gflops(threads)},
           "int8": {"onnxruntime matmulinteger": measure_int8_peak_gops(threads)}}
    try:
        out["int8"]["openvino int8 matmul"] = measure_openvino_matmul(threads, "f32", int8=True)
        if cpu_info().bf16:
            out["bf16"] = {"openvino bf16 matmul": measure_bf16_peak_gflops(threads),
                           "openvino bf16 matmul, constant weights": measure_openvino_matmul(threads, "bf16")}
    except (ImportError, ProviderError):  # openvino absent: its kernels are left out
        pass
    return out


def measure_openvino_matmul(threads: int, precision: str, int8: bool = False, size: int = 2048, iterations: int = 10) -> float:
    """G operations per second of OpenVINO's CPU plugin on a ``(size, size)`` float32 input times
    constant ``(size, size)`` weights (the fully connected kernels, weights packed once), compiled
    by :func:`fusionrt.engine.loaders.openvino_model` at inference precision ``precision``
    (``"f32"`` or ``"bf16"``), latency hint; with ``int8``, FakeQuantize (256 levels) on both
    operands, which the plugin runs as an INT8 GEMM. Best of ``iterations`` runs, 2 * size**3
    operations each.

    Raises:
        ImportError: openvino is not installed.
        ProviderError: bf16 on a CPU without AVX512-BF16/AMX-BF16.
    """
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    from fusionrt.engine.loaders import openvino_model
    from fusionrt.engine.openvino_runtime import OpenVINOOptions
    from fusionrt.timing import time_calls

    rng = np.random.default_rng(0)
    a = ops.parameter([size, size], ov.Type.f32, name="a")
    weights = ops.constant(rng.standard_normal((size, size)).astype(np.float32) * 0.05)
    x, w = a, weights
    if int8:
        lo, hi, wlo, whi = (ops.constant(np.float32(v)) for v in (-4, 4, -0.3, 0.3))
        x = ops.fake_quantize(a, lo, hi, lo, hi, 256)
        w = ops.fake_quantize(weights, wlo, whi, wlo, whi, 255)
    model = ov.Model([ops.matmul(x, w, False, False)], [a], "peak")
    compiled = openvino_model(model, precision, OpenVINOOptions(inference_precision=precision, inference_num_threads=threads))
    request = compiled.create_infer_request()
    feed = {"a": rng.standard_normal((size, size)).astype(np.float32)}
    seconds = float(time_calls(lambda: request.infer(feed, share_inputs=True), warmup=1, iterations=iterations).min())
    return 2 * size**3 / seconds / 1e9
