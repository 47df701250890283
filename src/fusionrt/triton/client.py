"""A client for the ``fusionrt`` ensemble: the Engine's ``predict``, answered by a Triton server.

Each text+image pair is one request, all sent concurrently, so the server's dynamic batcher merges
them (and those of other callers) into batches. Needs ``tritonclient`` (``fusionrt[serve]``).
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from fusionrt.explanation import Explanation
from fusionrt.prediction import MODALITIES, Prediction
from fusionrt.preprocessing.image import not_an_image_file_reason
from fusionrt.errors import InputError
from fusionrt.preprocessing import as_pairs, check_text
from fusionrt.threads import renew_after_fork
from fusionrt.triton.repository import ENSEMBLE, EXPLANATION, IMAGE, LABEL, MODALITY_WEIGHTS, PROBABILITIES, TEXT, TRUNCATED
from fusionrt.triton.server import ADMIN_HEADER, GRPC_ADMIN_HEADER, ServerError

PROTOCOLS = ("grpc", "http")
OUTPUTS = (PROBABILITIES, LABEL, MODALITY_WEIGHTS, TRUNCATED)
# gRPC status codes that mean "no answer from the server", as opposed to an answered error.
# Status (tritonclient's ``exc.status()``: gRPC status codes, HTTP status numbers) -> reason.
_TRANSPORT_STATUSES = {
    "StatusCode.DEADLINE_EXCEEDED": "timed out",
    "StatusCode.UNAVAILABLE": "is unreachable",
    "StatusCode.CANCELLED": "is unreachable",
    "504": "timed out",
    "503": "is unreachable",
}
TIMED_OUT = "timed out"


def _transport_reason(exc) -> str | None:
    """``"timed out"`` or ``"is unreachable"`` when ``exc`` carries a status meaning no answer."""
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    return _TRANSPORT_STATUSES.get(str(status or ""))


class Client:
    """Send text+image pairs to a served ``fusionrt`` ensemble.

    Args:
        url: ``host:port`` of the server's gRPC (default 8001) or HTTP (8000) endpoint; a
            ``grpc://`` or ``http://`` prefix is accepted.
        protocol: ``grpc`` or ``http``.
        timeout_s: limit of every call to the server, in seconds (per request for ``predict``).
        model: the ensemble's name.
        max_concurrency: requests in flight at once.
        admin_key: the server's admin key (``fusionrt serve`` prints the file holding it;
            :attr:`TritonServer.admin_key`; a deployment's Secret), sent in the
            ``fusionrt-admin-key`` header (gRPC: ``triton-grpc-protocol-fusionrt-admin-key``) with
            every call but inference. The labels (from the model
            config) and :meth:`statistics` need it on a server that restricts those APIs, as
            ``fusionrt serve`` and ``fusionrt triton deploy`` do; inference does not.

    One client may be shared by threads (gRPC: one channel; HTTP: one connection per thread) and
    made before a fork (gunicorn ``--preload``): a forked child opens its own connections and
    threads at its first call. Calls after :meth:`close` raise :class:`ServerError`.

    Raises:
        InputError: unknown protocol or non-positive timeout.
        ServerError: tritonclient is not installed.
    """

    def __init__(
        self,
        url: str,
        protocol: Literal["grpc", "http"] = "grpc",
        timeout_s: float = 30.0,
        model: str = ENSEMBLE,
        max_concurrency: int = 32,
        admin_key: str | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise InputError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
        if timeout_s <= 0:
            raise InputError(f"timeout_s must be > 0, got {timeout_s}")
        if max_concurrency < 1:
            raise InputError(f"max_concurrency must be >= 1, got {max_concurrency}")
        for prefix in ("grpc://", "http://"):
            url = url[len(prefix):] if url.startswith(prefix) else url
        self.url, self.protocol, self.timeout_s, self.model = url, protocol, float(timeout_s), model
        self.max_concurrency = int(max_concurrency)
        if admin_key is not None and (not isinstance(admin_key, str) or not admin_key.strip()):
            raise InputError("admin_key must be a non-empty string (the server's key), or None")
        header = GRPC_ADMIN_HEADER if protocol == "grpc" else ADMIN_HEADER
        self._headers = {header: admin_key.strip()} if admin_key else None
        try:
            if protocol == "grpc":
                import tritonclient.grpc as triton
            else:
                import tritonclient.http as triton
        except ImportError as exc:
            raise ServerError(f"tritonclient is not installed ({exc}): pip install 'fusionrt[serve]'") from None
        self._triton = triton
        self._timeouts: tuple = (TimeoutError,)
        if protocol == "http":
            import gevent

            self._timeouts = (TimeoutError, gevent.Timeout)  # gevent.Timeout is a BaseException
        self._closed = False
        self._after_fork()
        renew_after_fork(self)
        self._labels: list[str] | None = None

    def _after_fork(self) -> None:
        # A forked child holds copies of the pool, lock and connections but none of their threads:
        # the copied pool started no worker and the parent's gRPC channel does not work there.
        self._pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="fusionrt-client")
        self._lock = threading.Lock()
        self._idle = threading.Condition()  # gRPC calls in flight reach 0
        self._in_flight = 0
        self._local = threading.local()
        self._connections: list = []
        self._grpc = None  # the gRPC client (thread-safe), made on first use

    # --- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections. gRPC calls still running (abandoned after a timeout) are waited
        for, up to ``timeout_s``: closing the channel would cancel them (see :meth:`_send`)."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=self.timeout_s)
        with self._lock:
            connections, self._connections = self._connections + ([self._grpc] if self._grpc else []), []
            self._grpc = None
        for connection in connections:
            connection.close()

    def _connection(self):
        """The gRPC client (thread-safe), or this thread's own HTTP client (tritonclient's HTTP
        client must stay in the thread that made it)."""
        if self._closed:
            raise ServerError(f"this Client of the Triton server at {self.url} is closed")
        if self.protocol == "grpc":
            grpc = self._grpc
            if grpc is not None:  # every call after the first: no lock
                return grpc
            with self._lock:
                if self._grpc is None:
                    self._grpc = self._triton.InferenceServerClient(self.url)
                return self._grpc
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._triton.InferenceServerClient(
                self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
            )
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    # --- server ----------------------------------------------------------------------------------
    def model_config(self, model: str | None = None) -> dict:
        """A served model's configuration as a dict (protobuf JSON names)."""
        config = self._call("get_model_config", model or self.model, as_json=True) if self.protocol == "grpc" else self._call("get_model_config", model or self.model)
        return config.get("config", config)

    def statistics(self, model: str | None = None) -> dict[str, dict]:
        """Inference statistics since the server started, per model version.

        Args:
            model: one model (default: every model).

        Returns:
            Model name -> ``inference_count`` (items inferred), ``execution_count`` (model
            executions; fewer than ``inference_count`` when the batcher merged requests),
            ``success_count``, ``failure_count`` and ``queue_ns_total``, ``compute_ns_total``
            (cumulative nanoseconds waiting in the queue and computing).
        """
        args = {"as_json": True} if self.protocol == "grpc" else {}
        raw = self._call("get_inference_statistics", model or "", **args)
        out = {}
        for entry in raw.get("model_stats", []):
            stats = entry.get("inference_stats", {})

            def field(name, key):
                return int(stats.get(name, {}).get(key, 0))

            compute = sum(field(k, "ns") for k in ("compute_input", "compute_infer", "compute_output"))
            out[entry["name"]] = {
                "inference_count": int(entry.get("inference_count", 0)),
                "execution_count": int(entry.get("execution_count", 0)),
                "success_count": field("success", "count"),
                "failure_count": field("fail", "count"),
                "queue_ns_total": field("queue", "ns"),
                "compute_ns_total": compute,
            }
        return out

    @property
    def labels(self) -> list[str]:
        """Labels in index order, read once from the config of the model producing PROBABILITIES."""
        if self._labels is None:
            steps = self.model_config().get("ensemble_scheduling", {}).get("step", [])
            producer = next((s["model_name"] for s in steps if PROBABILITIES in s.get("output_map", {}).values()), None)
            if producer is None:
                raise ServerError(f"model {self.model!r} is not a fusionrt ensemble: no step produces {PROBABILITIES}")
            parameters = self.model_config(producer).get("parameters", {})
            try:
                self._labels = list(json.loads(parameters["labels"]["string_value"]))
            except (KeyError, TypeError, json.JSONDecodeError):
                raise ServerError(f"model {producer!r} has no JSON 'labels' parameter in its config; rebuild the repository") from None
        return self._labels

    # --- predict ---------------------------------------------------------------------------------
    def predict(
        self,
        texts: Sequence[str] | str,
        images: Sequence[Any] | Any,
        errors: Literal["raise", "return"] = "raise",
    ) -> list:
        """Classify text+image pairs on the server, one concurrent request per pair.

        Args:
            texts: ``batch`` strings (or one string, then ``images`` is one image).
            images: ``batch`` image file paths or encoded image bytes, paired with ``texts``.
            errors: ``"raise"`` raises the first failed item's error; ``"return"`` puts the
                :class:`~fusionrt.InputError` (with the server's message) in that item's slot
                and answers the others.

        Returns:
            One :class:`fusionrt.Prediction` (or ``InputError`` with ``errors="return"``) per pair.

        Raises:
            InputError: the counts differ; or, with ``errors="raise"``, an item is bad (missing
                file, rejected by the server; the message names the item and the reason).
            ServerError: the server did not answer within ``timeout_s`` or is unreachable.
        """
        if errors not in ("raise", "return"):
            raise InputError(f"errors must be 'raise' or 'return', got {errors!r}")
        texts, images = as_pairs(texts, images)
        results: list = [None] * len(texts)
        if texts:
            labels = self.labels
            if len(texts) == 1:  # one item: no hop through the pool
                answers = [self._infer_one(0, texts[0], images[0])]
            else:
                # Images are read in the workers: at most max_concurrency of them are in memory.
                futures = [self._pool.submit(self._infer_one, i, t, image) for i, (t, image) in enumerate(zip(texts, images))]
                answers = [f.result() for f in futures]
            for i, answer in enumerate(answers):
                results[i] = answer if isinstance(answer, InputError) else _prediction(answer, labels)
        if errors == "raise":
            for r in results:
                if isinstance(r, InputError):
                    raise r
        return results

    def explain(self, texts: Sequence[str] | str, images: Sequence[Any] | Any) -> list[Explanation]:
        """:meth:`fusionrt.Engine.explain` on the server: each pair's request names
        ``EXPLANATION`` among its outputs, so the ensemble's ``explain`` step runs for it (and for
        no request that does not name it). The served method is the repository's ``--explain-method`` (default ``grad-cam``).

        Args:
            texts: ``batch`` strings (or one string, then ``images`` is one image).
            images: ``batch`` image file paths or encoded image bytes, paired with ``texts``.

        Returns:
            One :class:`~fusionrt.explanation.Explanation` per pair.

        Raises:
            InputError: the counts differ, or an item is bad (named, with the server's message).
            ServerError: the server did not answer, or its ensemble has no ``EXPLANATION`` output
                (a repository built from a bundle without the explanation graph: re-export the
                bundle and rebuild the repository).
        """
        texts, images = as_pairs(texts, images)
        if not texts:
            return []
        if not any(o["name"] == EXPLANATION for o in self.model_config().get("output", [])):
            raise ServerError(f"model {self.model!r} has no {EXPLANATION} output: rebuild its repository from a bundle that has the "
                              "explanation graph (fusionrt export, then fusionrt triton build)")
        labels = self.labels
        futures = [self._pool.submit(self._infer_one, i, t, image, (*OUTPUTS, EXPLANATION)) for i, (t, image) in enumerate(zip(texts, images))]
        out = []
        for f in futures:
            answer = f.result()
            if isinstance(answer, InputError):
                raise answer
            fields = json.loads(answer[EXPLANATION].reshape(-1)[0])
            out.append(Explanation.from_fields(_prediction(answer, labels), fields))
        return out

    # --- internals -------------------------------------------------------------------------------
    def _inputs(self, text: str, data: bytes) -> list:
        # Object arrays carry the bytes as they are: a fixed-width "S" array would drop trailing zeros.
        tensors = []
        for name, value in ((TEXT, text.encode("utf-8")), (IMAGE, data)):
            t = self._triton.InferInput(name, [1, 1], "BYTES")
            array = np.empty((1, 1), dtype=np.object_)
            array[0, 0] = value
            if self.protocol == "http":
                t.set_data_from_numpy(array, binary_data=True)
            else:
                t.set_data_from_numpy(array)
            tensors.append(t)
        return tensors

    def _outputs(self, names: Sequence[str] = OUTPUTS) -> list:
        if self.protocol == "http":
            return [self._triton.InferRequestedOutput(n, binary_data=True) for n in names]
        return [self._triton.InferRequestedOutput(n) for n in names]

    def _infer_one(self, i: int, text: Any, image: Any, names: Sequence[str] = OUTPUTS) -> Any:
        """One item's request: {output name: (1, ...) array}, or its InputError (bad item, or the
        server's error answer)."""
        from tritonclient.utils import InferenceServerException

        try:
            check_text(text, i)
        except InputError as exc:
            return exc
        try:
            inputs = self._inputs(text, _image_bytes(image))
        except InputError as exc:
            return InputError.of_item("images", i, f": {exc}")
        try:
            result = self._send(inputs, names)
        except InferenceServerException as exc:
            return self._item_error(i, exc)
        except self._timeouts:
            raise ServerError(
                f"the Triton server at {self.url} ({self.protocol}) timed out for item {i} (timeout_s={self.timeout_s:g})"
            ) from None
        except Exception as exc:  # connection refused, broken pipes
            raise ServerError(f"no answer from the Triton server at {self.url} ({self.protocol}) for item {i}: {exc!r}") from None
        return {n: result.as_numpy(n) for n in names}

    def _send(self, inputs: list, names: Sequence[str] = OUTPUTS):
        """One inference call, limited to ``timeout_s``.

        gRPC: no deadline is sent and nothing is cancelled: the call is waited for with a timeout
        and, past it, abandoned (the server finishes it). Triton servers before 2.53 (24.12) can
        crash when a gRPC inference is cancelled, by a deadline or a closed channel, while it runs
        (triton-inference-server/server#7368, fixed by #7840); the nvidia-pytriton 0.7.0 wheel's
        server is 2.51 and does crash so here. HTTP: the socket timeout, which the server survives.
        """
        if self.protocol != "grpc":
            return self._connection().infer(self.model, inputs, outputs=self._outputs(names))
        grpc, done, answer = self._connection(), threading.Event(), {}

        def callback(result, error):
            answer["result"], answer["error"] = result, error
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()
            done.set()

        with self._idle:
            self._in_flight += 1
        grpc.async_infer(self.model, inputs, callback, outputs=self._outputs(names))
        if not done.wait(self.timeout_s):
            raise TimeoutError(f"no answer within {self.timeout_s:g} s")
        if answer["error"] is not None:
            raise answer["error"]
        return answer["result"]

    def _item_error(self, i: int, exc) -> InputError:
        message = exc.message() or str(exc)
        reason = _transport_reason(exc)
        if reason is not None:
            raise ServerError(
                f"the Triton server at {self.url} ({self.protocol}) {reason} for item {i} "
                f"(timeout_s={self.timeout_s:g}): {message}"
            ) from None
        return InputError(f"item {i} (texts[{i}], images[{i}]): the server answered: {message}")

    def _call(self, method: str, *args, **kwargs):
        """A non-inference call with the timeout, server failures as ServerError."""
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        if self._headers is not None:
            kwargs["headers"] = self._headers
        try:
            return getattr(self._connection(), method)(*args, **kwargs)
        except Exception as exc:
            message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
            if isinstance(exc, self._timeouts) or _transport_reason(exc) == TIMED_OUT:
                message = f"timed out after timeout_s={self.timeout_s:g} s ({message})"
            elif "restricted" in message.lower():  # HTTP 403, gRPC UNAVAILABLE "This protocol is restricted"
                message += (" (this API is restricted to requests carrying the admin key: pass admin_key, "
                            "the key in the file `fusionrt serve` printed, or --admin-key-file)")
            raise ServerError(f"{method} on the Triton server at {self.url} ({self.protocol}) failed: {message}") from None


def _image_bytes(image: Any) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():  # the Engine's words: a folder, a special file, a URL, not found
            raise InputError(not_an_image_file_reason(image))
        data = path.read_bytes()
    else:
        raise InputError(f"unsupported image type {type(image).__name__}; the client sends file paths or encoded image bytes")
    if not data:
        raise InputError("image is empty (0 bytes); expected encoded JPEG/PNG/GIF/TIFF/WebP/BMP bytes")
    return data


def _prediction(answer: dict, labels: list[str]) -> Prediction:
    p = answer[PROBABILITIES][0]  # (num_labels,) float32
    if len(p) != len(labels):
        raise ServerError(f"the server returned {len(p)} probabilities for {len(labels)} labels")
    label = answer[LABEL].reshape(-1)[0]
    label = label.decode("utf-8") if isinstance(label, bytes) else str(label)
    weights = answer[MODALITY_WEIGHTS][0]  # (2,)
    return Prediction(
        label=label,
        score=float(p[labels.index(label)]) if label in labels else float(p.max()),
        probabilities={name: float(v) for name, v in zip(labels, p)},
        modality_weights={m: float(v) for m, v in zip(MODALITIES, weights)},
        truncated=bool(answer[TRUNCATED].reshape(-1)[0]),
    )
