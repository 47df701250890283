"""Sustained load and faults against a real server (slow, bounded: about a minute together).

FUSIONRT_SOAK_S sets the soak length: 60 s by default; .ci/run bounds it to 20 s.
"""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fusionrt import InputError

pytestmark = pytest.mark.slow

SOAK_S = float(os.environ.get("FUSIONRT_SOAK_S", "60"))


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_soak_16_clients_zero_failures(triton_server, client, photo_dir, capsys):
    images = [photo_dir / n for n in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "logo.png")]
    lock = threading.Lock()
    records: list[tuple[float, float]] = []  # (finish time, latency ms)
    failures: list[str] = []
    start = time.perf_counter()
    stop = start + SOAK_S

    def caller(k):
        i = k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                client.predict([f"caller {k} request {i}"], [images[i % 6]])
            except Exception as exc:  # counted, reported below
                with lock:
                    failures.append(repr(exc))
            else:
                with lock:
                    records.append((time.perf_counter() - start, (time.perf_counter() - t0) * 1e3))
            i += 16

    rss_before = _rss_bytes(triton_server.pid)
    threads = [threading.Thread(target=caller, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SOAK_S + 120)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    window_s = max(SOAK_S / 2, 5.0)
    with capsys.disabled():
        print(f"\nsoak {SOAK_S:.0f} s, 16 clients: {len(records)} requests; server RSS {rss_before / 2**20:.0f} -> "
              f"{_rss_bytes(triton_server.pid) / 2**20:.0f} MiB")
        for w in range(int(np.ceil(SOAK_S / window_s))):
            lat = [ms for at, ms in records if w * window_s <= at < (w + 1) * window_s]
            if lat:
                print(f"  window {w}: {len(lat)} requests, p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms")
    assert len(records) >= 16


def test_server_killed_mid_load_then_restarted(served_repository, photo_dir, tmp_path):
    from fusionrt.triton import Client, TritonServer

    image = photo_dir / "coffee.png"
    server = TritonServer(served_repository, http_port=None, grpc_port=None, metrics_port=None,
                          startup_timeout_s=90, stop_timeout_s=5, log_path=tmp_path / "a.log")
    server.start()
    outcomes: list = []
    try:
        with Client(server.http_url, protocol="http", timeout_s=5, admin_key=server.admin_key) as client:
            client.predict(["warm"], [image])

            def caller():
                for _ in range(200):
                    t0 = time.perf_counter()
                    try:
                        client.predict(["x"], [image])
                        outcomes.append(("ok", time.perf_counter() - t0))
                    except Exception as exc:
                        outcomes.append((type(exc).__name__, time.perf_counter() - t0))
                        return

            threads = [threading.Thread(target=caller) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            os.killpg(server.pid, signal.SIGKILL)  # the server and its stubs die mid-load
            for t in threads:
                t.join(30)
            assert not any(t.is_alive() for t in threads)  # nobody hangs
    finally:
        server.stop()
    errors = [o for o in outcomes if o[0] != "ok"]
    assert len(errors) == 4 and all(seconds < 10 for _, seconds in errors)  # within the 5 s timeout (+ slack)
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))  # the killed server's regions are gone

    again = TritonServer(served_repository, http_port=None, grpc_port=None, metrics_port=None,
                         startup_timeout_s=90, stop_timeout_s=5, log_path=tmp_path / "b.log")
    with again, Client(again.grpc_url, timeout_s=30, admin_key=again.admin_key) as client:
        (p,) = client.predict(["served again"], [image])
        assert p.label in client.labels
        with pytest.raises(InputError):
            client.predict(["bad"], [b"\x89PNG broken"])
        assert client.predict(["next"], [image])[0].label in client.labels
