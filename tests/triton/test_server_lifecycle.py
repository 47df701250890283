"""TritonServer's start and stop around the process, without a tritonserver binary: a port in use
is refused before launching; a second Ctrl-C during stop does not cut the cleanup short."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from fusionrt.errors import ServerError
from fusionrt.triton.server import LOOPBACK, TritonServer


def test_a_port_in_use_is_refused_before_launching(tmp_path):
    """With the HTTP port held by another server, start() saw that server's health, reported ready
    and printed a key; seconds later tritonserver exited 1 ("already in use")."""
    with socket.socket() as other:
        other.bind((LOOPBACK, 0))
        other.listen()
        port = other.getsockname()[1]
        server = TritonServer(tmp_path, http_port=port, grpc_port=None, metrics_port=None)
        with pytest.raises(ServerError, match=rf"http port {port} on 127\.0\.0\.1 is in use \(another server\?\); stop it, or choose another --http-port"):
            server.start()
    assert server.process is None and not list(tmp_path.iterdir())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_second_ctrl_c_while_stopping_does_not_cut_the_cleanup_short(tmp_path):
    """The first Ctrl-C stops the server; a second one 0.3 s later interrupted stop()'s wait: the
    server and its stubs outlived `fusionrt serve`, and the temporary folder with the admin key stayed."""
    server = TritonServer(tmp_path, http_port=None, grpc_port=None, metrics_port=None, stop_timeout_s=1.0)
    # a stand-in server that ignores SIGTERM (stop() then waits stop_timeout_s and kills it)
    server.process = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                       "print('up', flush=True); time.sleep(60)"], start_new_session=True, stdout=subprocess.PIPE)
    assert server.process.stdout.readline() == b"up\n"
    server._workdir = tmp_path / "fusionrt-triton-x"
    server._workdir.mkdir()
    (server._workdir / "admin-key").write_text(server.admin_key)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        code = server.stop()  # the SIGINT arrives during its wait
    finally:
        timer.cancel()
        server.process.stdout.close()
    assert code == -signal.SIGKILL and time.monotonic() - started >= 0.9
    assert server.process.poll() is not None and server._workdir is None
    assert not (tmp_path / "fusionrt-triton-x").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again afterwards


def test_a_config_triton_cannot_parse_is_named_with_its_parse_error(tmp_path):
    """`fusionrt serve` said the model needed "the unknown backend: no unknown backend here"."""
    import shutil
    from pathlib import Path

    from fusionrt.errors import InputError
    from fusionrt.triton.install import repository_backends

    repo = tmp_path / "repo"
    shutil.copytree(Path(__file__).resolve().parents[2] / "triton_repo", repo)
    assert repository_backends(repo)["fusionrt"] == "ensemble"  # parses before the edit
    with open(repo / "postprocess" / "config.pbtxt", "a") as f:
        f.write("garbage {{\n")
    with pytest.raises(InputError, match=r"postprocess/config.pbtxt: expected a field name at offset \d+, got '\{'; rebuild the repository"):
        repository_backends(repo)
