"""Every writer goes through one output-folder guard (utils.atomic_directory): an absent or empty
folder is written, a folder fusionrt wrote is replaced only with --overwrite / overwrite=True, any
other folder is refused with an InputError and left byte for byte as it was; a Ctrl-C while
writing leaves the old folder as it was."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pytest

from fusionrt import InputError
from fusionrt.cli import main
from fusionrt.utils import OUTPUT_MARKER, OutputKind, atomic_directory, output_folder_problem

USER_BYTES = bytes(range(256)) * 4  # a user's file, compared byte for byte afterwards


def user_folder(tmp_path: Path, name: str = "photos") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(USER_BYTES)
    return folder


def assert_untouched(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]
    assert (folder / "holiday.jpg").read_bytes() == USER_BYTES
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


# --- the guard itself ------------------------------------------------------------------------------

KIND = OutputKind("test output", "-o/--output", InputError)



def test_an_output_of_another_kind_is_named_as_such(tmp_path):
    with atomic_directory(tmp_path / "out", KIND) as tmp:
        (tmp / "model.onnx").write_text("x")
    checkpoint = OutputKind("checkpoint", "-o/--output", InputError, ours=lambda p: (p / "config.json").is_file())
    problem = output_folder_problem(tmp_path / "out", checkpoint, overwrite=True)
    assert problem.startswith(f"-o/--output {tmp_path}/out holds a fusionrt test output, not a checkpoint (.fusionrt-output, model.onnx)")
    assert problem.endswith("never replaced by a checkpoint, --overwrite or not: give a new or empty folder")

def test_the_ladder_absent_empty_ours_and_other(tmp_path):
    assert output_folder_problem(tmp_path / "absent", KIND, overwrite=False) is None
    (tmp_path / "empty").mkdir()
    assert output_folder_problem(tmp_path / "empty", KIND, overwrite=False) is None
    (tmp_path / "file").write_text("x")
    assert "exists and is not a folder" in output_folder_problem(tmp_path / "file", KIND, overwrite=True)
    problem = output_folder_problem(tmp_path / "file" / "sub" / "out", KIND, overwrite=False)
    assert problem == f"-o/--output {tmp_path}/file/sub/out: {tmp_path}/file is a file, not a folder; give a path whose folders can be created"
    folder = user_folder(tmp_path)
    for overwrite in (False, True):
        problem = output_folder_problem(folder, KIND, overwrite)
        assert problem.startswith(f"-o/--output {folder} holds files fusionrt did not write (holiday.jpg)")
        assert "never replaced, --overwrite or not" in problem
    with pytest.raises(InputError, match="holiday.jpg"):
        with atomic_directory(folder, KIND, overwrite=True) as tmp:
            (tmp / "x").write_text("new")
    assert_untouched(folder)

    with atomic_directory(tmp_path / "ours", KIND) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (tmp_path / "ours" / OUTPUT_MARKER).is_file()
    assert f"holds an earlier fusionrt test output ({OUTPUT_MARKER}, a.txt); pass --overwrite" in \
        output_folder_problem(tmp_path / "ours", KIND, overwrite=False)
    with atomic_directory(tmp_path / "ours", KIND, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [OUTPUT_MARKER, "b.txt"]

    # the marker lists what fusionrt wrote; anything else the user put there stops --overwrite
    (tmp_path / "ours" / "notes").mkdir()
    problem = output_folder_problem(tmp_path / "ours", KIND, overwrite=True)
    assert problem == (f"-o/--output {tmp_path / 'ours'} holds an earlier fusionrt test output and files fusionrt did not "
                       "write there (notes/); --overwrite replaces only what fusionrt wrote: move them out, or give a new folder")
    (tmp_path / "ours" / "notes").rmdir()
    # a marker that lists nothing (an older fusionrt's, or one cut short) cannot tell the user's files
    # from fusionrt's: c.txt would have been deleted
    for marker in ("written by fusionrt: test output\n", "", "written by f"):
        (tmp_path / "ours" / OUTPUT_MARKER).write_text(marker)
        (tmp_path / "ours" / "c.txt").write_text("?")
        problem = output_folder_problem(tmp_path / "ours", KIND, overwrite=True)
        assert f"whose {OUTPUT_MARKER} does not say what fusionrt wrote there" in problem, marker


@pytest.mark.parametrize("kind, files", [
    ("fusionrt.export.exporter:BUNDLE_OUTPUT", ["manifest.json"]),
    ("fusionrt.model.train:CHECKPOINT_OUTPUT", ["config.json", "model.safetensors"]),
    ("fusionrt.bench.report:REPORT_OUTPUT", ["results.json", "report.md"]),
])
def test_a_folder_that_only_looks_like_an_output_is_never_replaced(tmp_path, kind, files):
    """A web app's manifest.json, a Hugging Face encoder's config.json + model.safetensors: the
    kind's own files, but no marker. --overwrite deleted the whole folder (index.html, assets/, ...)."""
    import importlib

    module, name = kind.split(":")
    kind = getattr(importlib.import_module(module), name)
    folder = user_folder(tmp_path, "webapp")
    for name in files:
        (folder / name).write_text("{}")
    before = snapshot(folder)
    for overwrite in (False, True):
        problem = output_folder_problem(folder, kind, overwrite)
        assert problem.startswith(f"{kind.flag} {folder} holds files like a fusionrt {kind.what}'s (")
        assert f"but no {OUTPUT_MARKER}, fusionrt's record of what it wrote there" in problem and "never replaces them" in problem
    with pytest.raises(InputError, match="cannot tell them from yours"):
        with atomic_directory(folder, kind, overwrite=True) as tmp:
            (tmp / "manifest.json").write_text("new")
    assert snapshot(folder) == before


def test_a_file_added_inside_a_subfolder_of_an_output_stops_overwrite(tmp_path):
    """The marker lists every file and folder fusionrt wrote, not only the top level: a note put in
    a bundle's tokenizer/ folder was deleted by --overwrite."""
    out = tmp_path / "out"
    with atomic_directory(out, KIND) as tmp:
        (tmp / "tokenizer").mkdir()
        (tmp / "tokenizer" / "tokenizer.json").write_text("{}")
        (tmp / "a.txt").write_text("x")
    assert output_folder_problem(out, KIND, overwrite=True) is None
    (out / "tokenizer" / "NOTES.txt").write_text("mine")
    (out / "tokenizer" / "drafts").mkdir()
    problem = output_folder_problem(out, KIND, overwrite=True)
    assert "files fusionrt did not write there (tokenizer/NOTES.txt, tokenizer/drafts/)" in problem
    with pytest.raises(InputError, match="NOTES.txt"):
        with atomic_directory(out, KIND, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("new")
    assert (out / "tokenizer" / "NOTES.txt").read_text() == "mine" and (out / "a.txt").read_text() == "x"
    # what fusionrt adds later to its own output (record_written) may be replaced with it
    from fusionrt.utils import record_written

    (out / "tokenizer" / "NOTES.txt").unlink()
    (out / "tokenizer" / "drafts").rmdir()
    (out / "report").mkdir()
    (out / "report" / "search.md").write_text("#")
    assert "report/" in output_folder_problem(out, KIND, overwrite=True)
    record_written(out, "report")
    assert output_folder_problem(out, KIND, overwrite=True) is None
    (out / "report" / "mine.md").write_text("#")
    assert "report/mine.md" in output_folder_problem(out, KIND, overwrite=True)
    (out / "report" / "mine.md").unlink()
    # a folder fusionrt wrote, replaced by a file or a link of the same name, is the user's
    shutil.rmtree(out / "tokenizer")
    (out / "tokenizer").write_text("my notes")
    assert "files fusionrt did not write there (tokenizer)" in output_folder_problem(out, KIND, overwrite=True)
    (out / "tokenizer").unlink()
    (out / "tokenizer").symlink_to(tmp_path)
    assert "files fusionrt did not write there (tokenizer@)" in output_folder_problem(out, KIND, overwrite=True)
    # a "paths" line cut short is a damaged marker, not an older one
    marker = (out / OUTPUT_MARKER).read_text()
    (out / OUTPUT_MARKER).write_text(marker[: marker.index("paths: ") + 20])
    assert "does not say what fusionrt wrote there" in output_folder_problem(out, KIND, overwrite=True)


def _merged(out: Path, names=("model_a", "model_b"), overwrite=False):
    with atomic_directory(out, KIND, overwrite, merge=True) as tmp:
        for name in names:
            (tmp / name / "1").mkdir(parents=True)
            (tmp / name / "1" / "model.onnx").write_text(f"{name} {overwrite}")
            (tmp / name / "config.pbtxt").write_text(name)


def test_a_merged_output_keeps_the_users_files_inside_fusionrts_entries(tmp_path):
    """A Triton repository (merge=True) keeps the models the user put beside fusionrt's; a version
    folder or note the user put inside one of fusionrt's models was deleted by --overwrite, and a
    model of the user's named like one fusionrt adds later would have been."""
    out = tmp_path / "repo"
    _merged(out)
    (out / "mine").mkdir()
    (out / "mine" / "config.pbtxt").write_text("mine")
    _merged(out, overwrite=True)  # the user's model beside fusionrt's stays
    assert (out / "mine" / "config.pbtxt").read_text() == "mine" and (out / "model_a" / "1" / "model.onnx").read_text() == "model_a True"
    (out / "model_a" / "1" / "__pycache__").mkdir()  # Triton's python backend imported model.py: not the user's
    (out / "model_a" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"pyc")
    _merged(out, overwrite=True)
    (out / "model_a" / "2").mkdir()
    (out / "model_a" / "2" / "model.onnx").write_text("my version 2")
    before = snapshot(out)
    with pytest.raises(InputError, match=r"files fusionrt did not write there \(model_a/2/, model_a/2/model.onnx\)"):
        _merged(out, overwrite=True)
    assert snapshot(out) == before
    shutil.rmtree(out / "model_a" / "2")
    with pytest.raises(InputError, match=r"holds mine, which fusionrt did not write there and would replace"):
        _merged(out, names=("model_a", "model_b", "mine"), overwrite=True)
    assert (out / "mine" / "config.pbtxt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_merge_that_fails_midway_puts_the_old_entries_back(tmp_path, monkeypatch):
    """The old entries were deleted one by one while the new ones moved in: a failure half-way
    (a read-only folder) left new configs beside old models, which Triton then refused."""
    import fusionrt.utils

    out = tmp_path / "repo"
    _merged(out)
    before = snapshot(out)
    real, calls = os.replace, []

    def failing_replace(source, target):
        calls.append(source)
        if len(calls) == 3:  # the second of fusionrt's entries moved aside
            raise PermissionError(13, "Permission denied", str(source))
        return real(source, target)

    monkeypatch.setattr(fusionrt.utils.os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        _merged(out, overwrite=True)
    monkeypatch.undo()
    assert snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_output_path_that_is_a_link_is_written_where_it_points(tmp_path):
    """The `current -> v3` layout: the link was replaced by a real folder and its target left as it was."""
    (tmp_path / "v3").mkdir()
    (tmp_path / "current").symlink_to("v3")
    with atomic_directory(tmp_path / "current", KIND) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (tmp_path / "current").is_symlink() and (tmp_path / "v3" / "a.txt").read_text() == "one"
    with atomic_directory(tmp_path / "current", KIND, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("two")
    assert (tmp_path / "current").is_symlink() and (tmp_path / "v3" / "a.txt").read_text() == "two"


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_work(tmp_path, monkeypatch):
    """Refused when checked, naming the folder: the export failed with a bare PermissionError after
    its work (a read-only parent, or a read-only empty -o, which also left a .NAME.old-* folder)."""
    import fusionrt.utils

    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "out").mkdir()
    real = os.access
    monkeypatch.setattr(fusionrt.utils.os, "access", lambda p, mode: real(p, mode) and Path(p) != tmp_path / "ro")
    for target in (tmp_path / "ro" / "out", tmp_path / "ro" / "new" / "out"):
        problem = output_folder_problem(target, KIND, overwrite=False)
        assert problem == (f"-o/--output {target}: {tmp_path / 'ro'} is not writable (fusionrt writes the test output in a "
                           f"new folder beside 'out' and renames it into place): give a folder you can write")


def test_names_that_end_a_line_keep_the_marker_whole(tmp_path):
    """U+2028 in a name written as is split the marker's JSON line: its paths were ignored and a
    user's file in that folder was deleted by --overwrite."""
    out = tmp_path / "out"
    with atomic_directory(out, KIND) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a\u2028b\u0085c").write_text("1")
    assert output_folder_problem(out, KIND, overwrite=True) is None
    (out / "sub" / "mine.txt").write_text("u")
    assert "sub/mine.txt" in output_folder_problem(out, KIND, overwrite=True)


def test_a_folder_filled_by_the_user_while_writing_is_not_replaced(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(InputError, match="holiday.jpg"):
        with atomic_directory(target, KIND) as tmp:
            (tmp / "a.txt").write_text("new")
            user_folder(tmp_path, "out")  # appears while fusionrt is still writing
    assert_untouched(target)


def test_many_entries_are_counted_not_all_listed(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(8):
        (folder / f"f{i}.txt").write_text("x")
    assert "(f0.txt, f1.txt, f2.txt, f3.txt, f4.txt, ... (8 entries))" in output_folder_problem(folder, KIND, False)


def test_the_current_folder_as_output_is_the_current_folder_after_writing(tmp_path, monkeypatch):
    """`mkdir b && cd b && fusionrt export ../ckpt -o .`: the empty current folder was renamed away
    (then deleted) and the new one moved to its path, so the process went on in a deleted folder:
    "." named nothing, and export failed after writing the bundle ("manifest.json is missing: . is
    not a fusionrt bundle"), and the user's shell was left in the deleted folder. The output is now
    written into the folder itself, which stays; from a subfolder of an earlier output that
    --overwrite replaces, the process follows its folder to the new one."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    shell = os.stat(out).st_ino  # the folder a shell started there stays in: it must not be replaced
    with atomic_directory(".", KIND) as tmp:
        (tmp / "sub").mkdir()
    assert Path.cwd() == out and sorted(p.name for p in Path(".").iterdir()) == [OUTPUT_MARKER, "sub"]
    assert os.stat(out).st_ino == shell
    with atomic_directory(".", KIND, overwrite=True) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "a.txt").write_text("again")
    assert os.stat(out).st_ino == shell and sorted(p.name for p in Path(".").iterdir()) == [OUTPUT_MARKER, "a.txt", "sub"]
    monkeypatch.chdir(out / "sub")
    with atomic_directory(out, KIND, overwrite=True) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("second")
    assert Path.cwd() == out / "sub" and Path("b.txt").read_text() == "second"
    with atomic_directory(out, KIND, overwrite=True) as tmp:
        (tmp / "c.txt").write_text("third")  # no sub/ any more: the process goes to the output itself
    assert Path.cwd() == out and sorted(p.name for p in Path(".").iterdir()) == [OUTPUT_MARKER, "c.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_an_output_path_through_dot_dot(tmp_path, monkeypatch):
    """`-o ..` from a subfolder of an earlier output (with --overwrite) was an OSError traceback
    ("Device or resource busy") that left a "....old-*" folder inside the user's output: the
    temporary folders were made next to "..", in the output itself. `-o new/../out` made an empty
    folder "new"."""
    with atomic_directory(tmp_path / "out", KIND) as tmp:
        (tmp / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "out" / "sub")
    with atomic_directory("..", KIND, overwrite=True) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("second")
    with atomic_directory(tmp_path / "new" / ".." / "other", KIND) as tmp:
        (tmp / "c.txt").write_text("third")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "other", f"other/{OUTPUT_MARKER}", "other/c.txt", "out", f"out/{OUTPUT_MARKER}", "out/sub", "out/sub/b.txt"]


# --- train -----------------------------------------------------------------------------------------

def _train(data, out, base, overwrite=False):
    from fusionrt.model.train import TrainOptions, train

    return train(data, out, base=base, options=TrainOptions(epochs=1, ablations=False), progress=False, overwrite=overwrite)


def test_train_api(tiny_data, tiny_base, tiny_checkpoint, tmp_path, monkeypatch):
    from fusionrt.model import train as train_module

    folder = user_folder(tmp_path)
    with pytest.raises(InputError, match=f"-o/--output {folder} holds files fusionrt did not write"):
        _train(tiny_data, folder, tiny_base, overwrite=True)
    assert_untouched(folder)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    with pytest.raises(InputError, match="holds an earlier fusionrt checkpoint .*pass --overwrite"):
        _train(tiny_data, ckpt, tiny_base)
    before = snapshot(ckpt)
    monkeypatch.setattr(train_module, "write_jsonl", interrupt)  # Ctrl-C while the checkpoint is written
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_data, ckpt, tiny_base, overwrite=True)
    assert snapshot(ckpt) == before
    monkeypatch.undo()
    metrics = _train(tiny_data, ckpt, tiny_base, overwrite=True)
    assert metrics["options"]["epochs"] == 1
    assert '"epochs": 1' in (ckpt / "metrics.json").read_text() and snapshot(ckpt) != before


def test_train_cli(tiny_data, tiny_checkpoint, tmp_path, capsys):
    folder = user_folder(tmp_path)
    assert main(["train", str(tiny_data), "-o", str(folder), "--overwrite"]) == 1
    assert "holds files fusionrt did not write (holiday.jpg)" in capsys.readouterr().err
    assert_untouched(folder)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    assert main(["train", str(tiny_data), "-o", str(ckpt)]) == 1
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    assert main(["train", str(tiny_data), "-o", str(ckpt), "--base", str(tiny_checkpoint), "--epochs", "1", "--overwrite"]) == 0
    assert '"epochs": 1' in (ckpt / "metrics.json").read_text()


# --- export, and export --precision auto -----------------------------------------------------------

def test_export_api(tiny_checkpoint, tiny_bundle, tmp_path):
    from fusionrt.export import ExportOptions, export_bundle
    from fusionrt.export.auto import SearchOptions, search_precision

    folder = user_folder(tmp_path)
    with pytest.raises(InputError, match="holiday.jpg.*not a fusionrt bundle"):
        export_bundle(tiny_checkpoint, folder, progress=False, overwrite=True)
    with pytest.raises(InputError, match="holiday.jpg.*not a fusionrt bundle"):  # before any search
        search_precision(tiny_checkpoint, folder, ExportOptions(), SearchOptions(target="cpu"), progress=False, overwrite=True)
    assert_untouched(folder)
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    with pytest.raises(InputError, match="earlier fusionrt bundle"):
        search_precision(tiny_checkpoint, bundle, ExportOptions(), SearchOptions(target="cpu"), progress=False)
    export_bundle(tiny_checkpoint, bundle, ExportOptions(max_batch_size=2, validate=False), progress=False, overwrite=True)
    assert '"max_batch_size": 2' in (bundle / "manifest.json").read_text()  # replaced (the fixture's is 4)
    # a file the user added to that bundle: --overwrite refuses (it would go), naming it; nothing moves
    (bundle / "notes.txt").write_text("mine")
    before = (bundle / "manifest.json").read_text()
    with pytest.raises(InputError, match=r"earlier fusionrt bundle and files fusionrt did not write there \(notes.txt\)"):
        export_bundle(tiny_checkpoint, bundle, ExportOptions(max_batch_size=3, validate=False), progress=False, overwrite=True)
    assert (bundle / "notes.txt").read_text() == "mine" and (bundle / "manifest.json").read_text() == before
    (bundle / "notes.txt").unlink()
    export_bundle(tiny_checkpoint, bundle, ExportOptions(max_batch_size=3, validate=False), progress=False, overwrite=True)
    assert '"max_batch_size": 3' in (bundle / "manifest.json").read_text()


def test_export_cli(tiny_checkpoint, tmp_path, capsys):
    folder = user_folder(tmp_path)
    for extra in ([], ["--overwrite"], ["--precision", "auto", "--overwrite"]):
        assert main(["export", str(tiny_checkpoint), "-o", str(folder), *extra]) == 1
        assert f"-o/--output {folder} holds files fusionrt did not write (holiday.jpg)" in capsys.readouterr().err
    assert_untouched(folder)


# --- triton build and triton deploy ----------------------------------------------------------------

def _triton(argv):
    from fusionrt.triton.cli import add_triton_commands

    parser = argparse.ArgumentParser(prog="fusionrt")
    add_triton_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_triton_build_api_and_cli(tiny_bundle, tmp_path, monkeypatch):
    from fusionrt.triton import RepositoryOptions, build_repository
    from fusionrt.triton import repository

    folder = user_folder(tmp_path)
    with pytest.raises(InputError, match="holiday.jpg.*not a fusionrt model repository"):
        build_repository(tiny_bundle, folder, RepositoryOptions(max_batch_size=8), overwrite=True)
    with pytest.raises(InputError, match="holiday.jpg.*not a fusionrt model repository"):
        _triton(["triton", "build", str(tiny_bundle), "-o", str(folder), "--max-batch-size", "8", "--overwrite"])
    assert_untouched(folder)
    repo = build_repository(tiny_bundle, tmp_path / "repo", RepositoryOptions(max_batch_size=8))
    with pytest.raises(InputError, match="pass --overwrite"):
        _triton(["triton", "build", str(tiny_bundle), "-o", str(repo), "--max-batch-size", "8"])
    before = snapshot(repo)
    monkeypatch.setattr(repository, "_write", interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_repository(tiny_bundle, repo, RepositoryOptions(max_batch_size=8), overwrite=True)
    assert snapshot(repo) == before
    monkeypatch.undo()
    assert _triton(["triton", "build", str(tiny_bundle), "-o", str(repo), "--max-batch-size", "16", "--overwrite"]) == 0
    assert "max_batch_size: 16" in (repo / "text_encoder" / "config.pbtxt").read_text()


def test_triton_deploy_api_and_cli(tmp_path, monkeypatch):
    pytest.importorskip("yaml")
    from fusionrt.triton import deploy

    source = Path(__file__).parents[1] / "triton_repo"
    folder = user_folder(tmp_path)
    with pytest.raises(InputError, match="holiday.jpg.*not a fusionrt deployment"):
        deploy.write_deployment(source, folder, overwrite=True)
    with pytest.raises(InputError, match="holiday.jpg.*not a fusionrt deployment"):
        _triton(["triton", "deploy", str(source), "-o", str(folder), "--overwrite"])
    assert_untouched(folder)
    out = deploy.write_deployment(source, tmp_path / "deploy")
    with pytest.raises(InputError, match="earlier fusionrt deployment .*pass --overwrite"):
        _triton(["triton", "deploy", str(source), "-o", str(out)])
    before = snapshot(out)
    written = []

    def write_then_interrupt(self, *args, **kwargs):  # Ctrl-C after two of the files are written
        written.append(self)
        if len(written) == 3:
            raise KeyboardInterrupt
        return real_write_text(self, *args, **kwargs)

    real_write_text = Path.write_text
    monkeypatch.setattr(Path, "write_text", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        deploy.write_deployment(source, out, overwrite=True)
    assert snapshot(out) == before
    monkeypatch.undo()
    assert _triton(["triton", "deploy", str(source), "-o", str(out), "--max-replicas", "3", "--overwrite"]) == 0
    assert "maxReplicas: 3" in (out / "hpa.yaml").read_text()


# --- bench reports (in-process and served) ---------------------------------------------------------

@pytest.mark.slow  # a whole benchmark run (tens of seconds)
def test_bench_report_api_and_cli(tiny_bundle, tmp_path, monkeypatch, capsys, fixed_peaks):
    from fusionrt.bench import report as report_module
    from fusionrt.bench.runner import run_benchmark
    from fusionrt.bench.served import run_served_benchmark

    folder = user_folder(tmp_path)
    with pytest.raises(InputError, match=f"--report {folder} holds files fusionrt did not write"):
        run_benchmark([tiny_bundle], folder, batch_sizes=(1,), threads=1, duration_s=0.01, progress=False, peers=False, overwrite=True)
    with pytest.raises(InputError, match="holiday.jpg.*not a fusionrt benchmark report"):  # before any request
        run_served_benchmark("127.0.0.1:9", str(folder), overwrite=True)
    for argv in (["bench", str(tiny_bundle)], ["bench", "--url", "127.0.0.1:9"]):
        assert main([*argv, "--report", str(folder), "--overwrite"]) == 1
        assert "holds files fusionrt did not write (holiday.jpg)" in capsys.readouterr().err
    assert_untouched(folder)

    report = tmp_path / "report"
    run_benchmark([tiny_bundle], report, batch_sizes=(1,), threads=1, duration_s=0.01, progress=False, peers=False)
    assert main(["bench", str(tiny_bundle), "--report", str(report), "--batch-sizes", "1", "--duration-s", "0.01"]) == 1
    assert "holds an earlier fusionrt benchmark report" in capsys.readouterr().err
    before = snapshot(report)
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(report_module, "_plots", interrupt)  # Ctrl-C with results.json already written
        run_benchmark([tiny_bundle], report, batch_sizes=(1,), threads=1, duration_s=0.01, progress=False, peers=False, overwrite=True)
    assert snapshot(report) == before
    assert main(["bench", str(tiny_bundle), "--report", str(report), "--batch-sizes", "2", "--duration-s", "0.01",
                 "--threads", "1", "--peers", "off", "--overwrite"]) == 0
    assert '"batch_size": 2' in (report / "results.json").read_text()


# --- the demo's workdir ----------------------------------------------------------------------------

def test_demo_refuses_a_workdir_it_did_not_write(tmp_path, capsys):
    from fusionrt.demo import run_demo

    folder = user_folder(tmp_path)
    with pytest.raises(InputError, match=f"--workdir {folder} holds files fusionrt did not write"):
        run_demo(folder, echo=lambda line: None)
    assert main(["demo", "--workdir", str(folder)]) == 1
    assert "holiday.jpg" in capsys.readouterr().err
    assert_untouched(folder)


def test_demo_refuses_another_fusionrt_output_as_its_workdir(tiny_bundle, tmp_path):
    """A bundle (its marker names it) was taken as a demo folder: the demo overwrote its marker
    and wrote its checkpoint and bundles inside the bundle."""
    from fusionrt.demo import run_demo
    from fusionrt.utils import copy_tree

    copy_tree(tiny_bundle, tmp_path / "bundle")
    before = snapshot(tmp_path / "bundle")
    with pytest.raises(InputError, match="holds a fusionrt bundle, not a demo folder"):
        run_demo(tmp_path / "bundle", echo=lambda line: None)
    assert snapshot(tmp_path / "bundle") == before


def test_sigterm_stops_a_command_with_its_cleanup(tiny_bundle, tmp_path, monkeypatch, capsys):
    """`kill`, a CI job's timeout, a closed terminal: SIGTERM ended the process at once and left
    the .NAME.tmp-* folder (a 109 MB bundle's) beside -o. It now unwinds like Ctrl-C: exit 143."""
    import signal
    import time

    from fusionrt.triton import repository

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises here
        pytest.fail("SIGTERM did not stop the command")

    monkeypatch.setattr(repository, "_write", terminated)
    assert main(["triton", "build", str(tiny_bundle), "-o", str(tmp_path / "repo"), "--max-batch-size", "8"]) == 128 + signal.SIGTERM
    assert "fusionrt triton: stopped by SIGTERM" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_file_the_command_cannot_write_is_an_error_line_not_a_traceback(tiny_bundle, tmp_path, monkeypatch, capsys):
    from fusionrt.triton import repository

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/srv/models/text_encoder/1/model.py")

    monkeypatch.setattr(repository, "_write", denied)
    assert main(["triton", "build", str(tiny_bundle), "-o", str(tmp_path / "repo"), "--max-batch-size", "8"]) == 1
    err = capsys.readouterr().err
    assert err == "fusionrt triton: error: [Errno 13] Permission denied: '/srv/models/text_encoder/1/model.py'\n"
    assert list(tmp_path.iterdir()) == []


def test_the_reference_cache_and_its_killed_writes_temporary_do_not_stop_overwrite(tmp_path, monkeypatch):
    """A process killed while caching the PyTorch reference in a checkpoint left
    ..fusionrt-reference-<key>.npz.tmp-<hex>, which then made `train --overwrite` refuse the
    checkpoint as holding the user's files: a dotfile's temporary now starts as its name does."""
    import fusionrt.utils

    out = tmp_path / "ckpt"
    with atomic_directory(out, KIND) as tmp:
        (tmp / "config.json").write_text("{}")
    (out / ".fusionrt-reference-ab12.npz").write_bytes(b"cache")

    def killed(source, target):  # the process dies before the write's last step, and before its cleanup
        raise RuntimeError("killed")

    with monkeypatch.context() as m:
        m.setattr(fusionrt.utils.os, "replace", killed)
        m.setattr(Path, "unlink", lambda self, missing_ok=False: None)
        with pytest.raises(RuntimeError, match="killed"):
            fusionrt.utils.atomic_write_bytes(out / ".fusionrt-reference-cd34.npz", b"half")
    left = [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert len(left) == 1 and left[0].startswith(".fusionrt-reference-cd34.npz.tmp-"), left
    assert output_folder_problem(out, KIND, overwrite=True) is None
    (out / "..notes").write_text("mine")
    assert "files fusionrt did not write there (..notes)" in output_folder_problem(out, KIND, overwrite=True)
