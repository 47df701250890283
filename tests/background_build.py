"""The whole suite's background job (tests/conftest.py starts it at the end of collection, one
thread, nice 10): builds the default checkpoint, then exports its fp32 and int8 bundles, while the
tests that need none of them run. After each step it writes ``<step>.done`` into the job's folder,
which the fixtures wait for.

Usage, from the project's root: python -m tests.background_build ROOT (checkpoint at ROOT/checkpoint, its photographs at
ROOT/data, the bundles at ROOT/bundles/{fp32,int8})."""

from __future__ import annotations

import sys
from pathlib import Path

STEPS = ("checkpoint", "fp32", "int8")


def main(root: Path) -> None:
    import torch

    torch.set_num_threads(1)
    from fusionrt.export import ExportOptions, export_bundle
    from fusionrt.model.default import build_default_checkpoint

    checkpoint, _ = build_default_checkpoint(root / "checkpoint", root / "data", progress=False)
    (root / "checkpoint.done").touch()
    for precision in STEPS[1:]:
        export_bundle(checkpoint, root / "bundles" / precision, ExportOptions(precision=precision), progress=False)
        (root / f"{precision}.done").touch()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
