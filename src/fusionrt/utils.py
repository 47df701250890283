"""Small helpers shared across fusionrt (torch-free)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator


def _fresh_sibling(target: Path, kind: str) -> Path:
    """A new, empty directory next to ``target``, created with ``os.mkdir`` so that it gets the
    permissions the user's umask gives (0755 under 022), unlike ``tempfile.mkdtemp``'s 0700,
    which a directory renamed into place would keep."""
    for _ in range(100):
        path = target.parent / f".{target.name}.{kind}-{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {target}")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, merge: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it to ``target`` only on success.

    On any exception (Ctrl-C included) the temporary directory is removed and ``target`` is left as
    it was: a failed export or training never leaves a half-written result. An existing ``target``
    is replaced only after the new one is complete; with ``merge``, only its entries that the new
    directory also has are replaced (each top-level entry moved in one rename) and the others stay
    (a Triton model repository keeps the models it has beside fusionrt's).

    Everything gets the permissions the user's umask gives, as files written in place would.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_sibling(target, "tmp")
    try:
        yield tmp
        if not target.exists():
            os.replace(tmp, target)
        elif merge:
            for entry in sorted(tmp.iterdir()):
                old = target / entry.name
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old)
                elif old.exists() or old.is_symlink():
                    old.unlink()
                os.replace(entry, old)
            shutil.rmtree(tmp)
        else:
            old = _fresh_sibling(target, "old")
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling renamed into place (readers never see
    half a file), with the permissions the user's umask gives (0644 under 022).

    Raises:
        OSError: the file cannot be written (the temporary file is removed).
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_tree(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a directory's files and folders (contents only, not modes or times: the copies get the
    permissions the user's umask gives, as :func:`shutil.copytree` with its ``copystat`` does not).

    Raises:
        OSError: a file cannot be read or written; ``target`` exists.
    """
    source, target = Path(source), Path(target)
    os.mkdir(target)
    for entry in sorted(source.iterdir()):
        if entry.is_dir():
            copy_tree(entry, target / entry.name)
        else:
            shutil.copyfile(entry, target / entry.name)


def format_table(header: tuple, rows: list) -> str:
    """A plain fixed-width text table: the header, a rule of dashes, one line per row (cells
    are ``str()``-ed and left-aligned, columns two spaces apart). Used by the CLI and the demo."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
