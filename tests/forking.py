"""Run a function in a forked child under a deadline, as pre-fork servers (gunicorn --preload)
and multiprocessing's 'fork' start method run a worker."""

from __future__ import annotations

import multiprocessing

import pytest

CHILD_DEADLINE_S = 60


def in_forked_child(fn) -> object:
    """``fn()``'s result computed in a forked child (multiprocessing's 'fork' context), or
    pytest.fail when it raises or outlives CHILD_DEADLINE_S (killed)."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def child():
        try:
            results.put(("ok", fn()))
        except BaseException as exc:  # noqa: BLE001 (reported to the parent)
            results.put(("error", repr(exc)))

    process = context.Process(target=child, daemon=True)
    process.start()
    try:
        kind, value = results.get(timeout=CHILD_DEADLINE_S)
    except Exception:
        process.kill()
        pytest.fail(f"the forked child gave no answer in {CHILD_DEADLINE_S} s (hung)")
    finally:
        process.join(10)
    assert kind == "ok", value
    return value
