"""A fusionrt.triton.Client as services hold it: made before a fork (gunicorn --preload,
multiprocessing's 'fork') and used in the child; closed. Each forked child runs under a deadline
(tests.forking.in_forked_child), so a hang fails the test instead of stopping the suite."""

from __future__ import annotations

import pytest

from tests.forking import in_forked_child
from tests.triton.test_server import assert_same

TEXTS = ["a red car on a road", "two cats asleep", "", "great " * 40]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_client_used_before_fork_answers_in_the_child(protocol, triton_server, photo_dir):
    """The parent's worker threads and connections are not copied by fork: the child's pool
    (idle workers on paper) started none and a request of several items waited forever. The
    child's answers equal the parent's; the parent's client still works after."""
    from fusionrt.triton import Client

    images = sorted(photo_dir.glob("*.png"))[: len(TEXTS)]
    url = triton_server.grpc_url if protocol == "grpc" else f"http://{triton_server.http_url}"
    with Client(url, protocol=protocol, timeout_s=30, admin_key=triton_server.admin_key) as client:
        expected = client.predict(TEXTS, images)  # starts the pool's threads and connections in the parent
        got = in_forked_child(lambda: client.predict(TEXTS, images))
        assert_same(got, expected)
        assert_same(client.predict(TEXTS, images), expected)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_closed_client_refuses_calls_naming_it(protocol, photo_dir):
    """After close() a call made a new connection (gRPC) or failed inside tritonclient."""
    pytest.importorskip("tritonclient", reason="needs fusionrt[serve]")
    from fusionrt import ServerError
    from fusionrt.triton import Client

    client = Client("127.0.0.1:1", protocol=protocol, timeout_s=5)
    client.close()
    with pytest.raises(ServerError, match=r"this Client of the Triton server at 127\.0\.0\.1:1 is closed"):
        client.predict("a cat", photo_dir / "chelsea.png")
