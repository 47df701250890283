"""`triton build` and `serve` as the main CLI adds them (through add_triton_commands)."""

from __future__ import annotations

import argparse

import pytest

from fusionrt import InputError
from fusionrt.triton.cli import add_triton_commands


def parse(argv):
    parser = argparse.ArgumentParser(prog="fusionrt")
    add_triton_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_triton_build(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "repo"
    args = parse(["triton", "build", str(tiny_bundle), "-o", str(out), "--backend", "python", "--device", "gpu",
                  "--max-batch-size", "16", "--preferred-batch-size", "2,16", "--max-queue-delay-microseconds", "700",
                  "--instances", "2", "--threads-per-instance", "2"])
    assert args.func(args) == 0
    assert f"written to {out}" in capsys.readouterr().out
    config = (out / "image_encoder" / "config.pbtxt").read_text()
    for line in ('backend: "python"', "max_batch_size: 16", "preferred_batch_size: [ 2, 16 ]",
                 "max_queue_delay_microseconds: 700", "count: 2", "kind: KIND_GPU", 'string_value: "2"'):
        assert line in config
    args = parse(["triton", "build", str(tiny_bundle), "-o", str(out), "--max-batch-size", "8"])
    with pytest.raises(InputError, match="--overwrite"):
        args.func(args)
    args = parse(["triton", "build", str(tiny_bundle), "-o", str(out), "--max-batch-size", "8", "--seq-buckets", "8,24", "--overwrite",
                  "--model-instances", "text_encoder=3,preprocess=2"])
    assert args.func(args) == 0
    assert 'string_value: "8,24"' in (out / "preprocess" / "config.pbtxt").read_text()
    counts = {m: (out / m / "config.pbtxt").read_text().split("count: ")[1].split()[0] for m in ("preprocess", "text_encoder", "image_encoder")}
    assert counts == {"preprocess": "2", "text_encoder": "3", "image_encoder": "1"}  # explicit counts replace the cpu default
    args = parse(["triton", "build", str(tiny_bundle), "-o", str(tmp_path / "other"), "--max-batch-size", "8", "--seq-buckets", "8,16"])
    with pytest.raises(InputError, match=r"last sequence bucket must be max_seq_len=24, got \[8, 16\]"):
        args.func(args)


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        parse(["triton", "build", "b", "-o", "r", "--preferred-batch-size", "four"])
    assert exc.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["triton", "build", "b", "-o", "r", "--device", "tpu"])
    with pytest.raises(SystemExit) as exc:
        parse(["triton", "build", "b", "-o", "r", "--seq-buckets", "16,,128"])
    assert exc.value.code == 2 and "like 16,32,64,128, got '16,,128'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        parse(["triton", "build", "b", "-o", "r", "--model-instances", "image_encoder:2"])
    assert exc.value.code == 2 and "MODEL=COUNT like image_encoder=2, got 'image_encoder:2'" in capsys.readouterr().err
    for value, message in (("image_encoder=2,image_encoder=3", "image_encoder is given twice"), ("", "got ''"), ("image_encoder=²", "got 'image_encoder=²'")):
        with pytest.raises(SystemExit) as exc:
            parse(["triton", "build", "b", "-o", "r", "--model-instances", value])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    merged = parse(["triton", "build", "b", "-o", "r", "--model-instances", "image_encoder=3", "--model-instances", "text_encoder=2"])
    assert merged.model_instances == {"image_encoder": 3, "text_encoder": 2}
    with pytest.raises(SystemExit):
        parse(["triton", "build", "b", "-o", "r", "--model-instances", "image_encoder=3", "--model-instances", "image_encoder=2"])
    assert "image_encoder given twice" in capsys.readouterr().err


def test_serve_checks_ports(tmp_path):
    args = parse(["serve", str(tmp_path), "--http-port", "70000"])
    with pytest.raises(InputError, match="--http-port must be 0..65535"):
        args.func(args)


def test_build_without_backend_uses_what_the_local_server_has(tiny_bundle, tmp_path, capsys):
    """The wheel's server (python backend only): the default is python, said in the output, and the
    printed serve command names a server that has it."""
    pytest.importorskip("pytriton", reason="needs nvidia-pytriton (fusionrt[serve])")
    from fusionrt.triton.install import find_tritonserver, repository_backends

    installation = find_tritonserver()
    if "onnxruntime" in installation.backends:
        pytest.skip(f"{installation.tritonserver} has the onnxruntime backend: this test is about a python-only server")
    out = tmp_path / "repo"
    args = parse(["triton", "build", str(tiny_bundle), "-o", str(out), "--max-batch-size", "8"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert set(repository_backends(out).values()) == {"python", "ensemble"}
    assert f"backend python (--backend not given: the local server {installation.tritonserver} has only python backend(s)" in printed
    assert f"serve it with: fusionrt serve {out}" in printed


def test_build_never_prints_a_serve_command_that_fails(tiny_bundle, tmp_path, capsys, monkeypatch):
    from fusionrt.errors import ServerError
    from fusionrt.triton import install
    from fusionrt.triton.install import ServerInstallation

    python_only = ServerInstallation(tmp_path / "tritonserver", {"python": tmp_path})
    monkeypatch.setattr(install, "find_tritonserver", lambda *a, **k: python_only)
    args = parse(["triton", "build", str(tiny_bundle), "-o", str(tmp_path / "ort"), "--backend", "onnxruntime", "--max-batch-size", "8"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "backend onnxruntime (given)" in printed and "fusionrt serve" in printed  # named as what cannot serve it
    assert "serve it with: fusionrt serve" not in printed and "rebuild with --backend python" in printed
    assert f"tritonserver --model-repository={tmp_path / 'ort'}" in printed

    def no_server(*a, **k):
        raise ServerError("no tritonserver found")

    monkeypatch.setattr(install, "find_tritonserver", no_server)
    args = parse(["triton", "build", str(tiny_bundle), "-o", str(tmp_path / "none"), "--max-batch-size", "8"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "backend onnxruntime (--backend not given: no local Triton server (no tritonserver found)" in printed
    assert "serve it with: fusionrt serve" not in printed and "found no Triton server here" in printed
    assert 'backend: "onnxruntime"' in (tmp_path / "none" / "text_encoder" / "config.pbtxt").read_text()
