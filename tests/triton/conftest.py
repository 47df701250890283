"""Triton fixtures: one python-backend repository built from the tiny bundle and one real server on
free loopback ports, shared by the whole session and stopped (process group included) at the end."""

from __future__ import annotations

import pytest

# A long queue delay makes concurrent requests merge reliably; a lone request waits this long at
# each of the five batched models (about 0.5 s), which the few served tests can afford.
QUEUE_DELAY_US = 100_000
MAX_BATCH_SIZE = 8


def live_group_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that are not zombies (a zombie is dead; init reaps it)."""
    from pathlib import Path

    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def parse_config(path):
    """A config.pbtxt parsed into tritonclient's ``ModelConfig`` (raises on any unknown field)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def pin_fusionrt(repository):
    """Make the repository's python models import the fusionrt under test: the python backend's
    stub ignores PYTHONPATH and imports fusionrt from the environment's (editable) install, which
    in a second checkout of the project is another tree."""
    from pathlib import Path

    import fusionrt

    src = str(Path(fusionrt.__file__).resolve().parents[1])
    for model in Path(repository).glob("*/1/model.py"):
        model.write_text(f"import sys\nsys.path.insert(0, {src!r})\n" + model.read_text())
    return repository


@pytest.fixture(scope="session")
def served_repository(tiny_bundle, tmp_path_factory):
    from fusionrt.triton import RepositoryOptions, build_repository

    return pin_fusionrt(build_repository(
        tiny_bundle,
        tmp_path_factory.mktemp("triton") / "repo",
        RepositoryOptions(
            backend="python",
            max_batch_size=MAX_BATCH_SIZE,
            preferred_batch_size=(4, 8),
            max_queue_delay_microseconds=QUEUE_DELAY_US,
        ),
    ))


@pytest.fixture(scope="session")
def triton_server(served_repository, tmp_path_factory):
    pytest.importorskip("tritonclient", reason="needs fusionrt[serve]")
    from fusionrt.triton import ServerError, TritonServer, find_tritonserver

    try:
        find_tritonserver()
    except ServerError as exc:
        pytest.skip(f"no Triton server here: {exc}")
    server = TritonServer(
        served_repository, http_port=None, grpc_port=None, metrics_port=None,
        startup_timeout_s=90, stop_timeout_s=5, log_path=tmp_path_factory.mktemp("triton_log") / "tritonserver.log",
    )
    try:
        server.start()  # stops the server itself when it fails to become ready
        yield server
    finally:
        server.stop()  # SIGTERM to the process group, SIGKILL after stop_timeout_s


@pytest.fixture(scope="session")
def client(triton_server):
    from fusionrt.triton import Client

    with Client(triton_server.grpc_url, protocol="grpc", timeout_s=30, admin_key=triton_server.admin_key) as c:
        yield c
