"""A real tritonserver (the nvidia-pytriton wheel's, python backend) serving the tiny bundle."""

from __future__ import annotations

import io
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusionrt import Engine, InputError
from tests.triton.conftest import MAX_BATCH_SIZE, live_group_members

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "logo.png")
TEXTS = ("what a lovely picture", "this scene looks awful to me", "", "great " * 40, "i find the poster gloomy")  # one request each: buckets 16 and 24 mixed in one preprocess batch
TOLERANCE = 1e-4  # FP32 end to end: the same graphs and preprocessing; padding differs (a length bucket per request vs the longest of the batch)


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return Engine.from_bundle(tiny_bundle, intra_op_num_threads=1)


def assert_same(served, local):
    assert len(served) == len(local)
    for s, e in zip(served, local):
        assert s.label == e.label and s.truncated == e.truncated
        assert set(s.probabilities) == set(e.probabilities)
        assert max(abs(s.probabilities[k] - e.probabilities[k]) for k in e.probabilities) < TOLERANCE
        assert abs(s.score - e.score) < TOLERANCE
        assert max(abs(s.modality_weights[k] - e.modality_weights[k]) for k in ("text", "image")) < TOLERANCE


def test_one_item_matches_the_engine(client, engine, photo_dir):
    image = photo_dir / "chelsea.png"
    assert_same(client.predict("what a lovely cat", image), engine.predict("what a lovely cat", image))


def test_five_real_photographs_match_the_engine(client, engine, photo_dir):
    images = [photo_dir / p for p in PHOTOS[:5]]  # RGB, JPEG, grayscale photographs
    served = client.predict(list(TEXTS), images)
    assert_same(served, engine.predict(list(TEXTS), images))
    assert served[3].truncated  # 40 words > max_seq_len 24 tokens


def test_http_answers_like_grpc(triton_server, client, photo_dir):
    from fusionrt.triton import Client

    images = [(photo_dir / "logo.png").read_bytes(), photo_dir / "rocket.jpg"]  # RGBA bytes, a path
    with Client(f"http://{triton_server.http_url}", protocol="http", timeout_s=30, admin_key=triton_server.admin_key) as http:
        assert_same(http.predict(["great design", "gloomy"], images), client.predict(["great design", "gloomy"], images))


def test_concurrent_requests_are_merged_by_the_dynamic_batcher(client, photo_dir):
    def counts():
        stats = client.statistics()
        return {m: (s["inference_count"], s["execution_count"]) for m, s in stats.items()}

    before = counts()
    n = MAX_BATCH_SIZE
    client.predict(["what a lovely picture"] * n, [photo_dir / PHOTOS[i % len(PHOTOS)] for i in range(n)])
    # The server counts a request after sending its response: wait for the last ones.
    deadline = time.monotonic() + 5
    while any(counts()[m][0] - before[m][0] < n for m in before if m != "explain") and time.monotonic() < deadline:
        time.sleep(0.05)
    after = counts()
    for model in ("preprocess", "text_encoder", "image_encoder", "fusion_head", "postprocess"):
        inferences = after[model][0] - before[model][0]
        executions = after[model][1] - before[model][1]
        assert inferences == n, model
        assert executions < inferences, f"{model}: {executions} executions for {inferences} single-item requests"


def test_a_bad_image_fails_its_own_request_and_the_next_is_served(client, photo_dir):
    with pytest.raises(InputError, match=r"item 0 .*IMAGE\[0\]: image <19 bytes> is not a decodable image"):
        client.predict("a", b"this is not a photo")
    good = photo_dir / "coffee.png"
    # Sent together, the three requests reach preprocess in one batch (100 ms queue delay).
    results = client.predict(["a", "b", "a"], [good, b"\x89PNG\r\n\x1a\n broken", good], errors="return")
    assert isinstance(results[1], InputError) and "not a decodable image" in str(results[1])
    assert results[0].probabilities == pytest.approx(results[2].probabilities, abs=1e-6)
    (after,) = client.predict(["a"], [good])
    assert after.probabilities == pytest.approx(results[0].probabilities, abs=1e-6)


def test_trailing_zero_bytes_of_an_image_survive(client, engine):
    # A BMP stores rows bottom-up: a black top row makes the file end in zero bytes, and a
    # truncated BMP does not decode. Fixed-width numpy "S" arrays would drop those zeros.
    pixels = np.full((8, 8, 3), 200, np.uint8)
    pixels[0] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="BMP")
    data = buffer.getvalue()
    assert data.endswith(b"\x00" * 24)
    assert_same(client.predict(["what a lovely picture"], [data]), engine.predict(["what a lovely picture"], [data]))


def test_client_side_errors(client, photo_dir, tmp_path):
    with pytest.raises(InputError, match="got 2 texts and 1 images"):
        client.predict(["a", "b"], [photo_dir / "coffee.png"])
    results = client.predict(["a", "b"], [tmp_path / "missing.png", photo_dir / "coffee.png"], errors="return")
    assert isinstance(results[0], InputError) and "images[0]: image file not found" in str(results[0])
    assert results[1].label in results[1].probabilities
    (tmp_path / "photos.jpg").mkdir()  # said "image file not found" where the Engine says what it is
    results = client.predict(["a"], [tmp_path / "photos.jpg"], errors="return")
    assert f"images[0]: image path {tmp_path / 'photos.jpg'} is a folder, not an image file" in str(results[0])
    results = client.predict(["\ud800", "b"], [photo_dir / "coffee.png"] * 2, errors="return")
    assert isinstance(results[0], InputError) and "texts[0] is not valid Unicode text" in str(results[0])
    assert results[1].label in results[1].probabilities


def test_every_call_has_a_timeout_http(triton_server, client, photo_dir):
    from fusionrt.triton import Client, ServerError

    # 1 ms is far below the 100 ms the batcher holds a lone request.
    with Client(triton_server.http_url, protocol="http", timeout_s=0.001, admin_key=triton_server.admin_key) as impatient:
        with pytest.raises(ServerError, match="timed out"):
            impatient.predict(["a"], [photo_dir / "coffee.png"])
    assert client.predict(["a"], [photo_dir / "coffee.png"])[0].label in client.labels  # still serving


def test_a_repository_needing_the_onnxruntime_backend_is_refused(tiny_bundle, tmp_path, triton_server):
    from fusionrt.triton import ServerError, TritonServer, RepositoryOptions, build_repository

    repo = build_repository(tiny_bundle, tmp_path / "ort", RepositoryOptions(max_batch_size=8))
    with pytest.raises(ServerError, match=r"no onnxruntime backend here.*rebuild with --backend python"):
        TritonServer(repo, http_port=None, grpc_port=None, metrics_port=None).start()


def test_a_startup_timeout_shows_the_log_and_leaves_no_process(served_repository, triton_server):
    from fusionrt.triton import ServerError, TritonServer

    server = TritonServer(served_repository, http_port=None, grpc_port=None, metrics_port=None,
                          startup_timeout_s=0.3, stop_timeout_s=3)
    with pytest.raises(ServerError, match=r"(?s)not ready .* after 0 s.*end of its log"):
        server.start()
    assert server.process.poll() is not None and live_group_members(server.pid) == []


def test_serve_stops_server_and_stubs_on_sigterm(served_repository, triton_server):
    script = textwrap.dedent(
        f"""
        import argparse, sys
        from fusionrt.triton.cli import add_triton_commands
        parser = argparse.ArgumentParser()
        add_triton_commands(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["serve", {str(served_repository)!r}, "--http-port", "0", "--grpc-port", "0",
                                  "--metrics-port", "0"])
        sys.exit(args.func(args))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving" in line and "Ctrl-C to stop" in line, proc.stderr.read() if proc.poll() is not None else line
        server_pid = int(line.split("server pid ")[1].split(")")[0])
        assert len(live_group_members(server_pid)) >= 2  # the server and its python backend stubs
        lines = [proc.stdout.readline() for _ in range(5)]  # the admin key, its use, the development-server warning
        key_file = Path(lines[0].split(" with the key in ")[1].split(" (mode 0600")[0])
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_text().strip()) == 64
        assert lines[1].startswith('  curl -X POST -H "fusionrt-admin-key: $(cat ') and "--admin-key-file" in lines[2]
        assert lines[4].startswith("warning: the Triton server of the nvidia-pytriton wheel (2.51) is a development server "
                                   "with known vulnerabilities") and "never expose it" in lines[4]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()
        said = proc.stdout.read()
        assert said.startswith(f"server stopped: {served_repository} is no longer served") and f"server pid {server_pid}" in said
        assert not key_file.exists()  # the key dies with its server
    finally:
        if proc.poll() is None:
            proc.kill()
    assert live_group_members(server_pid) == []


def test_the_text_encoder_model_takes_every_mask_pattern(triton_server, tiny_checkpoint):
    """A client calling the served ``text_encoder`` directly gets PyTorch's text features for
    right, left, holed and fully masked rows (FP32, within TOLERANCE)."""
    import torch

    from fusionrt.model.checkpoint import load_checkpoint
    from tests.export.test_attention_masks import mask_patterns
    from tests.triton.test_masks_served import text_features

    ckpt = load_checkpoint(tiny_checkpoint)
    for name, feed in mask_patterns(ckpt.tokenizer, 24).items():
        served = text_features(triton_server.grpc_url, feed)
        with torch.inference_mode():
            ref = ckpt.model.encode_text(*(torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))).numpy()
        assert served.shape == ref.shape
        assert float(np.abs(served - ref).max()) < TOLERANCE, name


def test_a_served_repository_is_rebuilt_with_overwrite(triton_server, served_repository, tiny_bundle, tmp_path):
    """Serving writes Python's caches into the python models' folders (__pycache__, as the
    server imported model.py): they are not the user's files and do not stop --overwrite."""
    import shutil

    from fusionrt.triton import RepositoryOptions, build_repository

    copy = shutil.copytree(served_repository, tmp_path / "repo")
    assert list(copy.glob("*/1/__pycache__/*.pyc"))
    build_repository(tiny_bundle, copy, RepositoryOptions(backend="python", max_batch_size=MAX_BATCH_SIZE), overwrite=True)
    assert not list(copy.glob("*/1/__pycache__"))
