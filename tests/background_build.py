"""The whole suite's background job (tests/conftest.py starts it at the end of collection, one
thread, nice 10): builds the default checkpoint, then exports its bundles (STEPS), while the tests
that need none of them run. After each step it writes ``<step>.done`` into the job's folder,
which the fixtures wait for.

Usage, from the project's root: python -m tests.background_build ROOT (checkpoint at ROOT/checkpoint, its photographs at
ROOT/data, the bundles at ROOT/bundles/<step>)."""

from __future__ import annotations

import sys
from pathlib import Path

# The default checkpoint, its fp32 and int8 bundles (default options), then the bundles of
# tests/export/test_attention_masks.py: the text encoder alone at each of TEXT_PRECISIONS.
TEXT_PRECISIONS = ("fp16", "int8", "int8-dynamic")
STEPS = ("checkpoint", "fp32", "int8") + tuple(f"text-{p}" for p in TEXT_PRECISIONS)


def export_options(step: str):
    """The ExportOptions of a bundle step of STEPS (the fixtures export with them when no job ran)."""
    from fusionrt.export import ExportOptions

    if step.startswith("text-"):
        # 8-bit INT8 weights on every CPU (loaded as u8 where it has no INT8 dot product): the
        # bounds of test_attention_masks.py are theirs; no validation (the tests compare with PyTorch)
        return ExportOptions(precision=f"text={step[len('text-'):]}", validate=False, reduce_range=False)
    return ExportOptions(precision=step)


def main(root: Path) -> None:
    import torch

    torch.set_num_threads(1)
    from fusionrt.export import export_bundle
    from fusionrt.model.default import build_default_checkpoint

    checkpoint, _ = build_default_checkpoint(root / "checkpoint", root / "data", progress=False)
    (root / "checkpoint.done").touch()
    for step in STEPS[1:]:
        export_bundle(checkpoint, root / "bundles" / step, export_options(step), progress=False)
        (root / f"{step}.done").touch()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
