"""The tests' background job (tests/background_build.py) as its fixtures wait for it
(tests/conftest.py ``_background_step``): a job that stops or hangs fails its users, naming the step."""

import subprocess
import sys
import time

import pytest

from tests import conftest


def _job(tmp_path, monkeypatch, code: str, deadline_s: float) -> subprocess.Popen:
    (tmp_path / "build.log").write_text("building the checkpoint\n")
    process = subprocess.Popen([sys.executable, "-c", code])
    monkeypatch.setattr(conftest, "_background", {"process": process, "root": tmp_path, "deadline": time.monotonic() + deadline_s})
    return process


def test_a_finished_step_is_returned_without_waiting(tmp_path, monkeypatch):
    process = _job(tmp_path, monkeypatch, "import time; time.sleep(60)", deadline_s=60)
    (tmp_path / "checkpoint.done").touch()
    try:
        assert conftest._background_step("checkpoint") == tmp_path
    finally:
        process.kill()
        process.wait()


def test_a_job_that_stopped_before_the_step_fails_its_user_with_the_log(tmp_path, monkeypatch):
    _job(tmp_path, monkeypatch, "raise SystemExit(3)", deadline_s=60)
    with pytest.raises(pytest.fail.Exception, match=r"(?s)stopped \(exit 3\) before its step 'int8'.*building the checkpoint"):
        conftest._background_step("int8")


def test_a_hung_job_is_stopped_at_its_deadline(tmp_path, monkeypatch):
    process = _job(tmp_path, monkeypatch, "import time; time.sleep(600)", deadline_s=1)
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=f"stopped after {conftest.BACKGROUND_TIMEOUT_S} s before its step 'fp32'"):
        conftest._background_step("fp32")
    assert process.poll() is not None and time.monotonic() - started < 30
