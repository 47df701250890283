"""Client errors are classified by their status code, not by their text."""

import pytest

from fusionrt.triton.client import _transport_reason


class _Error(Exception):
    def __init__(self, status, message="the words do not matter"):
        super().__init__(message)
        self._status = status

    def status(self):
        return self._status


@pytest.mark.parametrize("status, reason", [
    ("StatusCode.DEADLINE_EXCEEDED", "timed out"),
    ("StatusCode.UNAVAILABLE", "is unreachable"),
    ("StatusCode.CANCELLED", "is unreachable"),
    ("504", "timed out"),
    ("StatusCode.INVALID_ARGUMENT", None),
    ("400", None),
    (None, None),
])
def test_transport_reason_comes_from_the_status(status, reason):
    assert _transport_reason(_Error(status)) == reason
    assert _transport_reason(ValueError("timed out")) is None  # no status: no transport reason
