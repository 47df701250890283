"""Small helpers shared across fusionrt (torch-free)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator


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


OUTPUT_MARKER = ".fusionrt-output"
# The marker's lines: "written by fusionrt: KIND", then (not in a merged output) "entries: A/B/C",
# the top-level entries fusionrt wrote there (what --overwrite may replace), and "paths: [...]", a
# JSON list (ASCII, so that no name can break the line) of every file ("a/b.txt"), folder ("a/")
# and symbolic link ("a/l@") under them: a file the user added inside a subfolder, or a folder
# replaced by a file or a link, stops --overwrite too. Markers written before "paths" existed are
# checked by their top level only.
_KIND, _ENTRIES, _PATHS = "written by fusionrt: ", "entries: ", "paths: "


@dataclass(frozen=True)
class _Marker:
    kind: str | None  # "bundle", ...; None: no marker, or the demo's own
    entries: set[str] | None  # top-level entries fusionrt wrote; None: not listed
    paths: set[str] | None  # every file, folder and link beneath, typed (see _tree); None: not listed
    damaged: bool = False  # a "paths" line that does not parse: cut short or edited


def _read_marker(folder: Path) -> _Marker:
    """What the folder's :data:`OUTPUT_MARKER` says fusionrt wrote there; ``None`` fields for what
    it does not say (no marker, or one written before markers listed entries or paths)."""
    try:
        lines = (folder / OUTPUT_MARKER).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return _Marker(None, None, None)

    def field(prefix: str) -> str | None:
        return next((line[len(prefix):] for line in lines if line.startswith(prefix)), None)

    listed, paths = field(_ENTRIES), field(_PATHS)
    tree, damaged = None, False
    if paths is not None:
        try:
            tree = json.loads(paths)
        except ValueError:
            tree = None
        damaged = not (isinstance(tree, list) and all(isinstance(p, str) for p in tree))
        tree = None if damaged else set(tree)
    return _Marker(field(_KIND), None if listed is None else set(listed.split("/")) - {""}, tree, damaged)


def _tree(folder: Path, names: Iterable[str] | None = None) -> set[str]:
    """Every file, folder and symbolic link under ``folder`` (or under its entries ``names``), as
    posix paths relative to it, typed: ``"a/b.txt"`` a file, ``"a/"`` a folder, ``"a/l@"`` a link
    (listed, not followed)."""
    out: set[str] = set()
    stack = [folder / n for n in names] if names is not None else list(folder.iterdir())
    while stack:
        path = stack.pop()
        if not path.exists() and not path.is_symlink():
            continue
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            out.add(rel + "@")
        elif path.is_dir():
            out.add(rel + "/")
            stack.extend(path.iterdir())
        else:
            out.add(rel)
    return out


def _write_marker(folder: Path, kind: str, entries: set[str] | None, paths: set[str] | None = None) -> None:
    lines = [_KIND + kind] + ([] if entries is None else [_ENTRIES + "/".join(sorted(entries))])
    lines += [] if paths is None else [_PATHS + json.dumps(sorted(paths))]
    (folder / OUTPUT_MARKER).write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")


def record_written(folder: str | os.PathLike, *names: str) -> None:
    """Add ``names`` (top-level entries fusionrt wrote into ``folder`` after :func:`atomic_directory`
    made it) to its :data:`OUTPUT_MARKER`'s lists, so that ``--overwrite`` may replace them later.
    A folder whose marker lists nothing is left as it is."""
    folder = Path(folder)
    marker = _read_marker(folder)
    if marker.kind is not None and marker.entries is not None:
        paths = None if marker.paths is None else marker.paths | _tree(folder, names)
        _write_marker(folder, marker.kind, marker.entries | set(names), paths)


def has_output_marker(folder: Path) -> bool:
    """``folder`` holds :data:`OUTPUT_MARKER`: fusionrt wrote it (the default recognition of
    :class:`OutputKind`, for outputs without a manifest of their own)."""
    return (folder / OUTPUT_MARKER).is_file()


@dataclass(frozen=True)
class OutputKind:
    """A kind of output folder fusionrt writes, and how it tells its own earlier output apart
    from a folder the user keeps other files in.

    Attributes:
        what: what the folder holds, for messages (``"bundle"``, ``"checkpoint"``, ``"report"``).
        flag: the option that names the folder, for messages (``"-o/--output"``, ``"--report"``).
        error: the exception a refusal raises (fusionrt passes ``errors.InputError``, which this
            rank-0 module may not import).
        ours: whether a non-empty folder is an earlier output of this kind (its own manifest); the
            default is :func:`has_output_marker` (:func:`atomic_directory` writes the marker, with
            the entries it wrote, into every output but a merged one).
        lists_entries: its marker lists what fusionrt wrote (every output :func:`atomic_directory`
            writes); ``False`` for the demo's folder, whose marker lists nothing and whose parts
            carry their own.
    """

    what: str
    flag: str
    error: type
    ours: Callable[[Path], bool] = has_output_marker
    lists_entries: bool = True


def output_folder_problem(target: str | os.PathLike, kind: OutputKind, overwrite: bool, merge: bool = False) -> str | None:
    """Why ``target`` must not be written, or ``None``: it is absent, an empty folder, or (with
    ``overwrite``) an earlier output of ``kind`` whose :data:`OUTPUT_MARKER` lists what fusionrt
    wrote, holding nothing it does not list (no top-level entry, and no file, folder or link
    beneath, of another name or type), fusionrt's ``.fusionrt*`` stamps aside (with ``merge``,
    whose writer replaces only its own entries, it may hold other top-level entries). A folder
    holding anything else, or without such a marker, is never written, whatever ``overwrite``
    says; nor one that cannot be written (``target``, its parent, or the nearest folder above a
    new one), refused here rather than after the work.

    Returns:
        The refusal: it names the folder, what is in it, and the flag to change.
    """
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        blocker = next((a for a in target.absolute().parents if a.exists()), None)
        if blocker is not None and not blocker.is_dir():  # mkdir would fail only after the long work
            return f"{kind.flag} {target}: {blocker} is a file, not a folder; give a path whose folders can be created"
        return _not_writable(target, kind, blocker)
    if not target.is_dir():
        return f"{kind.flag} {target} exists and is not a folder; give a new or empty folder for the {kind.what}"
    if unwritable := _not_writable(target, kind, target.parent) or _not_writable(target, kind, target):
        return unwritable
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir())
    if not entries:
        return None
    shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
    marker = _read_marker(target)
    if not kind.ours(target):
        other = marker.kind
        if other and other != kind.what:
            return (f"{kind.flag} {target} holds a fusionrt {other}, not a {kind.what} ({shown}); it is never "
                    f"replaced by a {kind.what}, --overwrite or not: give a new or empty folder")
        return (f"{kind.flag} {target} holds files fusionrt did not write ({shown}); it is not a fusionrt "
                f"{kind.what} and is never replaced, --overwrite or not: give a new or empty folder")
    if not merge and not has_output_marker(target):  # it looks like one (a manifest.json, ...) but fusionrt did not record writing it
        return (f"{kind.flag} {target} holds files like a fusionrt {kind.what}'s ({shown}) but no {OUTPUT_MARKER}, "
                f"fusionrt's record of what it wrote there, so it cannot tell them from yours and never replaces them, "
                "--overwrite or not: give a new or empty folder (or remove it yourself)")
    if not overwrite:
        return f"{kind.flag} {target} holds an earlier fusionrt {kind.what} ({shown}); pass --overwrite to replace it"
    if kind.lists_entries and (marker.entries is None or marker.damaged):
        return (f"{kind.flag} {target} holds a fusionrt {kind.what} whose {OUTPUT_MARKER} does not say what fusionrt wrote "
                f"there (written by an older fusionrt, cut short or edited), so fusionrt cannot tell your files from its "
                "own and does not replace it: give a new or empty folder (or remove it yourself)")
    written = marker.entries
    # fusionrt's stamps, written into an output after it (the demo's and the default's recipes, the reference
    # cache), are .fusionrt-*, and so are their temporary files (atomic_write_bytes) left by a killed process
    added = sorted(e for e in entries if written is not None and not merge and e.rstrip("/") not in written
                   and not e.startswith(".fusionrt"))
    if not added and written is not None and marker.paths is not None:  # inside the folders fusionrt wrote (merged too)
        added = sorted(p for p in _tree(target, written & {e.rstrip("/") for e in entries}) - marker.paths
                       if "__pycache__/" not in p)  # Python's caches: the served python models' imports write them
    if added:
        return (f"{kind.flag} {target} holds an earlier fusionrt {kind.what} and files fusionrt did not write there "
                f"({', '.join(added[:5])}{', ...' if len(added) > 5 else ''}); --overwrite replaces only what fusionrt "
                "wrote: move them out, or give a new folder")
    return None


def _not_writable(target: Path, kind: OutputKind, folder: Path | None) -> str | None:
    """The refusal when ``folder`` (``target``, its parent or the nearest folder that exists above
    it) cannot be written: fusionrt builds the output beside ``target`` and renames it into place."""
    if folder is None or os.access(folder, os.W_OK | os.X_OK):
        return None
    return (f"{kind.flag} {target}: {folder} is not writable (fusionrt writes the {kind.what} in a new folder beside "
            f"{target.name!r} and renames it into place): give a folder you can write")


def check_output_folder(target: str | os.PathLike, kind: OutputKind, overwrite: bool, merge: bool = False) -> None:
    """Raise ``kind.error`` with :func:`output_folder_problem`'s refusal, if there is one: a
    writer calls it before its long work, :func:`atomic_directory` again before writing."""
    problem = output_folder_problem(target, kind, overwrite, merge)
    if problem:
        raise kind.error(problem)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, kind: OutputKind, overwrite: bool = False, merge: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it to ``target`` only on success.

    ``target`` is checked by :func:`check_output_folder` on entry and again before the move: an
    absent or empty folder is written; an earlier output of ``kind`` only with ``overwrite``, and
    only while it holds nothing but the top-level entries fusionrt wrote (listed in its
    :data:`OUTPUT_MARKER`); any other folder never. On any exception (Ctrl-C included) the temporary directory is removed and
    ``target`` is left as it was: a failed export or training never leaves a half-written result.
    An existing ``target`` is replaced only after the new one is complete; with ``merge``, only its
    entries that the new directory also has are replaced, all or none (:func:`_merge_into`), and the
    others stay (a Triton model repository keeps the models it has beside fusionrt's); within the
    entries fusionrt wrote, a file the user added stops ``overwrite`` as in any output. A ``target``
    that is a symbolic link is written where it points; the link stays.

    Everything gets the permissions the user's umask gives, as files written in place would. When
    the process works in ``target`` (``-o .``) or inside it, ``target`` itself stays and its entries
    are replaced, all or none, so that a shell there is not left in a deleted folder; the process
    goes on in the same folder of the new output.

    Raises:
        kind.error: ``target`` may not be written (see :func:`output_folder_problem`).
    """
    target = Path(os.path.abspath(target))  # without "..": the temporary siblings are made next to the folder itself
    if target.is_symlink():  # write where the link points (current -> v3); the link stays
        target = Path(os.path.realpath(target))
    check_output_folder(target, kind, overwrite, merge)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_sibling(target, "tmp")
    try:
        yield tmp
        # what --overwrite may replace later (output_folder_problem); a merge lists its own entries only
        _write_marker(tmp, kind.what, {e.name for e in tmp.iterdir() if e.name != OUTPUT_MARKER}, _tree(tmp) - {OUTPUT_MARKER})
        check_output_folder(target, kind, overwrite, merge)
        working = _working_folder_in(target)
        if not target.exists():
            os.replace(tmp, target)
        elif merge or working is not None:  # (-o .: the folder itself stays, so a shell in it stays in it)
            _merge_into(target, tmp, kind, everything=not merge)
        else:
            old = _fresh_sibling(target, "old")
            try:
                os.replace(target, old / "x")
            except BaseException:
                old.rmdir()
                raise
            os.replace(tmp, target)
            _remove_old(old, target)
        _follow_working_folder(target, working)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _merge_into(target: Path, tmp: Path, kind: OutputKind, everything: bool = False) -> None:
    """Move ``tmp``'s entries into ``target``, replacing the entries of the same name (``everything``:
    all of ``target``'s, checked as fusionrt's), all or none: the old ones are first moved aside
    (each in one rename; put back when one fails), then the new ones moved in. Without
    ``everything``, an entry of the same name that the old marker does not list as fusionrt's (a
    model the user added) is refused."""
    ours = _read_marker(target).entries or set()
    names = sorted(e.name for e in tmp.iterdir())
    foreign = [n for n in names if n != OUTPUT_MARKER and n not in ours and ((target / n).exists() or (target / n).is_symlink())]
    if foreign and not everything:
        raise kind.error(f"{kind.flag} {target} holds {', '.join(foreign)}, which fusionrt did not write there and would "
                         f"replace; --overwrite replaces only what fusionrt wrote: move them out, or give a new folder")
    old, moved = _fresh_sibling(target, "old"), []
    try:
        for name in sorted(e.name for e in target.iterdir()) if everything else names:
            if (target / name).exists() or (target / name).is_symlink():
                os.replace(target / name, old / name)
                moved.append(name)
    except BaseException:
        for name in moved:
            os.replace(old / name, target / name)
        shutil.rmtree(old, ignore_errors=True)
        raise
    for name in names:
        os.replace(tmp / name, target / name)
    shutil.rmtree(tmp, ignore_errors=True)
    _remove_old(old, target)


def _remove_old(old: Path, target: Path) -> None:
    """Delete the replaced output moved aside to ``old``; a ``RuntimeWarning`` names what could not be."""
    shutil.rmtree(old, ignore_errors=True)
    if old.exists():
        warnings.warn(f"{target} was written, but its replaced content in {old} could not all be deleted "
                      "(files without write permission): delete it yourself", RuntimeWarning, stacklevel=4)


def _working_folder_in(target: Path) -> Path | None:
    """The process's working folder relative to ``target`` when it is ``target`` or inside it; else ``None``."""
    try:
        here, real = Path.cwd(), target.resolve()
    except OSError:  # the working folder was deleted already
        return None
    return here.relative_to(real) if here == real or real in here.parents else None


def _follow_working_folder(target: Path, relative: Path | None) -> None:
    """After ``target`` was replaced, go to ``target / relative`` (or its nearest folder that still
    exists): the old working folder was moved away and deleted, and "." would name nothing."""
    if relative is None:
        return
    folder = target / relative
    while not folder.is_dir() and folder != target:
        folder = folder.parent
    os.chdir(folder)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling renamed into place (readers never see
    half a file), with the permissions the user's umask gives (0644 under 022).

    Raises:
        OSError: the file cannot be written (the temporary file is removed).
    """
    path = Path(path)
    hidden = path.name if path.name.startswith(".") else f".{path.name}"  # a dotfile's keeps its name's start
    tmp = path.parent / f"{hidden}.tmp-{secrets.token_hex(4)}"
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


class LineProgress:
    """Progress as plain lines, for output that is not a terminal (a log, a CI job, a pipe), where
    tqdm's carriage-return redraws pile up into one unreadable line: ``desc: 3/30 epoch, 12 s,
    loss=0.41``, at most one line every ``min_interval_s`` seconds, and always the last step.
    The subset of tqdm's interface fusionrt uses: iteration, :meth:`update`, :meth:`set_postfix`,
    :meth:`close`."""

    def __init__(self, iterable=None, total: int | None = None, desc: str = "", unit: str = "it",
                 file=None, min_interval_s: float = 5.0):
        import sys
        import time

        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.file, self.min_interval_s = desc, unit, file or sys.stderr, min_interval_s
        self.n = 0
        self.postfix = ""
        self._clock = time.perf_counter
        self._started = self._clock()
        self._printed_at: float | None = None
        self._printed_n = -1

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if self.n == self.total or self._printed_at is None or now - self._printed_at >= self.min_interval_s:
            self._line(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.n != self._printed_n:
            self._line(self._clock())

    def _line(self, now: float) -> None:
        total = f"/{self.total}" if self.total is not None else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}{total} {self.unit}, {now - self._started:.0f} s{extra}", file=self.file, flush=True)
        self._printed_at, self._printed_n = now, self.n


def progress_bar(iterable=None, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True, file=None):
    """A tqdm bar when ``file`` (default stderr) is a terminal, :class:`LineProgress` lines when
    it is not, nothing when ``enabled`` is False (tqdm's ``disable=True``)."""
    import sys

    file = file or sys.stderr
    if enabled and hasattr(file, "isatty") and file.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=file)
    return LineProgress(iterable, total, desc, unit, file=file) if enabled else _Silent(iterable)


class _Silent:
    """A progress bar that shows nothing (``enabled=False``)."""

    def __init__(self, iterable=None):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass
