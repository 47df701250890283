"""What this machine's CPU can do, read from the machine (no third-party dependency).

Recipes that depend on a CPU feature (INT8 weight range, bfloat16) read it here and record it in
the manifest, so a bundle says which CPU it was made for.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

# x86 flags (Linux /proc/cpuinfo names) that give an INT8 dot product without the int16
# saturation of AVX2's vpmaddubsw: AVX-512 VNNI, AVX-VNNI, AMX-INT8.
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
REPORTED_FLAGS = ("avx2", "avx512f", *INT8_DOT_PRODUCT_FLAGS, *BF16_FLAGS)


@dataclass(frozen=True)
class CPUInfo:
    """The CPU as the manifest records it.

    Attributes:
        model: the model name (``/proc/cpuinfo``'s ``model name``, else ``platform.processor()``).
        machine: ``platform.machine()``, e.g. ``x86_64``.
        flags: those of ``REPORTED_FLAGS`` that the CPU has, sorted.
    """

    model: str
    machine: str
    flags: tuple

    @property
    def int8_dot_product(self) -> bool:
        """VNNI or AMX-INT8: u8 x s8 products accumulate in int32 without saturating."""
        return any(f in self.flags for f in INT8_DOT_PRODUCT_FLAGS)

    @property
    def bf16(self) -> bool:
        return any(f in self.flags for f in BF16_FLAGS)

    def to_dict(self) -> dict:
        return {**asdict(self), "flags": list(self.flags)}


def parse_cpuinfo(text: str, machine: str = "") -> CPUInfo:
    """A :class:`CPUInfo` from the text of ``/proc/cpuinfo`` (the first processor's entry)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return CPUInfo(model or platform.processor() or "unknown", machine, tuple(sorted(f for f in REPORTED_FLAGS if f in flags)))


@functools.lru_cache(maxsize=1)
def cpu_info() -> CPUInfo:
    """This machine's CPU. Without ``/proc/cpuinfo`` (not Linux), no flag is reported: recipes
    then take their conservative branch (e.g. 7-bit INT8 weights)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())


def describe_cpu(text: str, info: CPUInfo) -> str:
    """The CPU as a benchmark table names it: the model name, its ``cpu family`` and ``model``
    numbers (a virtual machine's model name is often generic: "Intel(R) Xeon(R) Processor") and
    its INT8/BF16 flags, e.g. ``Intel(R) Xeon(R) Processor (family 6 model 207; amx_bf16,
    amx_int8, avx512_bf16, avx512_vnni, avx_vnni)``.

    Args:
        text: the text of ``/proc/cpuinfo`` (its first processor's entry is read), or ``""``.
        info: the CPU's :class:`CPUInfo` (its model name and flags).
    """
    numbers = {key: re.search(rf"^{key}\s*:\s*(\d+)\s*$", text, re.M) for key in ("cpu family", "model")}
    family, model = (m.group(1) if m else None for m in numbers.values())
    units = [f for f in info.flags if f in (*INT8_DOT_PRODUCT_FLAGS, *BF16_FLAGS)]
    parts = [f"family {family} model {model}"] if family and model else []
    parts += [", ".join(units) or "no VNNI/BF16/AMX flags"]
    return f"{info.model} ({'; '.join(parts)})"


def cpu_description() -> str:
    """This machine's CPU for a benchmark table (:func:`describe_cpu` of ``/proc/cpuinfo``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return describe_cpu(text, cpu_info())


def usable_cores() -> int:
    """Logical CPUs this process may run on: its affinity mask (``taskset``, a container's
    cpuset), else ``os.cpu_count()``; at least 1. CPU quotas (cgroup ``cpu.max``) are not read."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def warn_above_usable_cores(threads: int) -> None:
    """A ``RuntimeWarning`` when ``threads`` per operator exceed :func:`usable_cores`: the
    threads then take turns on the cores (the same answers, slower)."""
    cores = usable_cores()
    if threads > cores:
        warnings.warn(
            f"{threads} threads per operator is more than the {cores} cores this process may use "
            "(its CPU affinity): they take turns on the cores, the same answers, slower",
            RuntimeWarning, stacklevel=3,
        )
