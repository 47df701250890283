"""What fusionrt writes gets the permissions the user's umask gives (issue 19.1): a bundle, a Triton
repository or the checkpoint's reference cache renamed into place from a temporary directory must
not keep mkdtemp's 0700, or a Triton container running as another user cannot read it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fusionrt.utils import OUTPUT_MARKER, OutputKind, atomic_directory, atomic_write_bytes, record_written

OUT = OutputKind("test output", "-o", ValueError)


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def modes(root: Path) -> dict[str, set[int]]:
    """{"dirs": modes of root and every folder under it, "files": modes of every file}."""
    out: dict[str, set[int]] = {"dirs": {stat.S_IMODE(root.stat().st_mode)}, "files": set()}
    for p in root.rglob("*"):
        if p.is_symlink():
            continue
        out["dirs" if p.is_dir() else "files"].add(stat.S_IMODE(p.stat().st_mode))
    return out


def expected(umask: int) -> dict[str, set[int]]:
    return {"dirs": {0o777 & ~umask}, "files": {0o666 & ~umask}}


def test_atomic_directory_and_file_follow_the_umask(umask, tmp_path):
    with atomic_directory(tmp_path / "out", OUT) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("x")
    atomic_write_bytes(tmp_path / "out" / "sub" / "b.bin", b"y")
    record_written(tmp_path / "out", "sub")  # fusionrt wrote b.bin into its own output: --overwrite may replace it
    assert modes(tmp_path / "out") == expected(umask)
    # replacing an existing directory, and merging into one, keep following it
    with atomic_directory(tmp_path / "out", OUT, overwrite=True) as tmp:
        (tmp / "c.txt").write_text("z")
    assert modes(tmp_path / "out") == expected(umask)
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with atomic_directory(tmp_path / "out", OUT, overwrite=True, merge=True) as tmp:
        (tmp / "c.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [OUTPUT_MARKER, "c.txt", "keep.txt"]
    assert (tmp_path / "out" / "c.txt").read_text() == "new" and modes(tmp_path / "out") == expected(umask)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_bundle_and_repository_follow_the_umask(umask, tmp_path, tiny_checkpoint):
    pytest.importorskip("tritonclient", reason="needs fusionrt[serve]")
    from fusionrt.export import ExportOptions, export_bundle
    from fusionrt.triton import RepositoryOptions, build_repository

    bundle = export_bundle(tiny_checkpoint, tmp_path / "bundle", ExportOptions(max_batch_size=8, validate=False), progress=False)
    assert modes(bundle) == expected(umask)
    repo = build_repository(bundle, tmp_path / "repo", RepositoryOptions(backend="python"))
    assert modes(repo) == expected(umask)


def test_trained_checkpoint_follows_the_umask(umask, tmp_path, tiny_base, tiny_data):
    """model.safetensors included: safetensors' save_file alone writes it owner-only (0600)."""
    from fusionrt.model.train import TrainOptions, train

    out = tmp_path / "ckpt"
    train(tiny_data, out, base=tiny_base, options=TrainOptions(epochs=1, ablations=False), progress=False)
    assert (out / "model.safetensors").is_file()
    assert modes(out) == expected(umask)
