"""BatchingEngine: groups single requests from many threads into batches, the in-process
counterpart of Triton's dynamic batcher (``max_batch_size``, ``max_queue_delay_microseconds``).

Two stages run in their own threads: the collector forms a batch (waiting at most
``max_queue_delay_microseconds`` after its first request) and decodes it; the runner executes the
previous batch meanwhile. On 2 CPU cores batching saves little compute (per-item cost from batch 1
to 8: ResNet-18 1.05x, MiniLM 1.14x, measured here), so on CPU the overlap of decoding with
inference is what keeps it from costing throughput; on GPUs a batch costs little more than one item.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
import weakref
from concurrent.futures import Future

from fusionrt.engine.engine import Engine
from fusionrt.errors import EngineClosedError, InputError
from fusionrt.prediction import Prediction
from fusionrt.preprocessing import ImageLike
from fusionrt.threads import renew_after_fork

_STOP = object()


BATCH_SIZES_KEPT = 10_000


class _Shared:
    """What a :class:`BatchingEngine` shares with its two threads. The threads hold this, not the
    BatchingEngine, so one its owner drops unclosed is collected, and its finalizer stops them."""

    def __init__(self, engine: Engine, max_batch_size: int, max_queue_delay_microseconds: int):
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.delay_s = max_queue_delay_microseconds / 1e6
        # sizes of the last BATCH_SIZES_KEPT batches run (statistics; a list grew for the service's life)
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=BATCH_SIZES_KEPT)
        self.renew()

    def renew(self) -> None:
        """New queues and lock, threads not started (also in a forked child: the parent's threads are not there)."""
        self.requests: queue.Queue = queue.Queue()
        self.prepared: queue.Queue = queue.Queue(maxsize=1)  # one batch decoded ahead
        self.lock = threading.Lock()
        self.threads: tuple[threading.Thread, ...] = ()

    def start(self) -> None:
        self.threads = (threading.Thread(target=_collect, args=(self,), name="fusionrt-batch-collect", daemon=True),
                        threading.Thread(target=_run, args=(self,), name="fusionrt-batch-run", daemon=True))
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """The threads finish the requests queued before this, then end."""
        self.requests.put(_STOP)


def _collect(shared: _Shared) -> None:
    while True:
        first = shared.requests.get()
        if first is _STOP:
            shared.prepared.put(_STOP)
            return
        batch = [first]
        deadline = time.perf_counter() + shared.delay_s
        stop = False
        while len(batch) < shared.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                item = shared.requests.get(timeout=max(remaining, 0)) if remaining > 0 else shared.requests.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        live = [b for b in batch if b[2].set_running_or_notify_cancel()]
        if live:
            try:
                prepared = shared.engine.prepare([b[0] for b in live], [b[1] for b in live])
            except Exception as exc:  # a bug, or the Engine closed: callers must not wait forever
                for b in live:
                    b[2].set_exception(exc)
            else:
                shared.prepared.put((live, prepared))
        if stop:
            shared.prepared.put(_STOP)
            return


def _run(shared: _Shared) -> None:
    while True:
        job = shared.prepared.get()
        if job is _STOP:
            return
        live, prepared = job
        shared.batch_sizes.append(len(prepared.rows))
        try:
            results = shared.engine.infer(prepared)
        except Exception as exc:
            for b in live:
                b[2].set_exception(exc)
            continue
        for (_, _, future), r in zip(live, results):
            if isinstance(r, InputError):  # its index in the internal batch means nothing to the caller
                future.set_exception(r.without_index())
            elif isinstance(r, Exception):
                future.set_exception(r)
            else:
                future.set_result(r)


class BatchingEngine:
    """Batches concurrent single-item requests for an :class:`~fusionrt.Engine`.

    Args:
        engine: the engine that runs the batches (not closed by :meth:`close`).
        max_batch_size: most items per batch, at most the bundle's ``max_batch_size`` (``None``:
            that one).
        max_queue_delay_microseconds: longest wait, after a batch's first request, for more
            requests before the batch runs anyway.

    Use as a context manager, or call :meth:`close`; pending requests then fail with
    :class:`EngineClosedError`. One dropped unclosed stops its threads once collected, after
    the requests already queued. In a process forked from the one that made it (gunicorn
    ``--preload``), its threads start again on the child's first :meth:`submit`.

    Attributes:
        batch_sizes: the sizes of the last :data:`BATCH_SIZES_KEPT` batches run, oldest first.
    """

    def __init__(self, engine: Engine, max_batch_size: int | None = None, max_queue_delay_microseconds: int = 2000):
        size = max_batch_size if max_batch_size is not None else engine.max_batch_size
        if not 1 <= size <= engine.max_batch_size:  # the bundle's: TensorRT's profiles end there
            raise InputError(f"max_batch_size must be 1..{engine.max_batch_size} (the bundle's max_batch_size), got {size}")
        if max_queue_delay_microseconds < 0:
            raise InputError(f"max_queue_delay_microseconds must be >= 0, got {max_queue_delay_microseconds}")
        self.engine = engine
        self.max_batch_size = size
        self.max_queue_delay_microseconds = max_queue_delay_microseconds
        self._shared = _Shared(engine, size, max_queue_delay_microseconds)
        self.batch_sizes = self._shared.batch_sizes
        self._closed = False
        self._shared.start()
        self._finalizer = weakref.finalize(self, _Shared.stop, self._shared)
        renew_after_fork(self)

    def _after_fork(self) -> None:
        self._shared.renew()  # threads start at the child's first submit

    def submit(self, text: str, image: ImageLike) -> "Future[Prediction]":
        """Queue one text+image pair.

        Returns:
            A future resolving to a :class:`~fusionrt.Prediction`, or failing with
            :class:`~fusionrt.InputError` for a bad item or :class:`EngineClosedError`.

        Raises:
            EngineClosedError: the engine is closed.
        """
        future: Future = Future()
        shared = self._shared
        with shared.lock:
            if self._closed:
                raise EngineClosedError("BatchingEngine is closed; create a new one to submit requests")
            if not shared.threads:  # a forked child's first request
                shared.start()
            shared.requests.put((text, image, future))
        return future

    async def infer(self, text: str, image: ImageLike) -> Prediction:
        """``await``-able :meth:`submit`."""
        return await asyncio.wrap_future(self.submit(text, image))

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop accepting requests, let the batch in flight finish, fail the others.

        Requests still queued fail with :class:`EngineClosedError`.
        """
        shared = self._shared
        with shared.lock:
            if self._closed:
                return
            self._closed = True
            pending = []
            while True:
                try:
                    pending.append(shared.requests.get_nowait())
                except queue.Empty:
                    break
            self._finalizer.detach()
            shared.stop()
        for _, _, future in pending:
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineClosedError("BatchingEngine was closed before this request ran"))
        for thread in shared.threads:
            thread.join(timeout_s)

    def __enter__(self) -> "BatchingEngine":
        return self

    def __reduce_ex__(self, protocol):
        raise TypeError("a BatchingEngine cannot be pickled to reach another process: make one in each process, on its own Engine")

    def __exit__(self, *exc) -> None:
        self.close()
