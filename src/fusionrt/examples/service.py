"""A small web service embedding fusionrt: one shared, batched engine behind ``POST /predict``.

Run (from any folder; ``pip install 'fusionrt[cpu,example]'``, no torch)::

    python -m fusionrt.examples.service --bundle fusionrt-demo/bundles/int8 --port 8080
    fusionrt-example-service --bundle fusionrt-demo/bundles/int8 --port 8080   # the same

Call::

    curl -F text="what a lovely picture" -F image=@photo.jpg http://127.0.0.1:8080/predict

``POST /predict`` takes a ``multipart/form-data`` form with repeated ``text`` fields and ``image``
files (a caption may come as a UTF-8 file part: ``-F text=@caption.txt``), paired in order, and answers a JSON list with one object per pair: the prediction, or
``{"error": ...}`` for a bad item. Status 200 when at least one item was predicted (the failures
are listed in place), 422 when every item failed (each with its error), 400 when the counts do not
pair up or the form cannot be read, 413 for a body over ``--max-request-mb`` (64 MB by default;
the images are read into memory to decode them), 415 for a body that is not a multipart form (a
JSON body, say): its message names the fields to send. A client that disconnects mid-upload is
dropped without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fusionrt import BatchingEngine, Engine, InputError

FORM_HELP = ("send a multipart/form-data form with one `text` field and one `image` file per item, paired in order "
             "(curl -F text='a caption' -F image=@photo.jpg URL/predict)")


def create_app(bundle: str, max_queue_delay_microseconds: int = 2000, threads: int | None = None,
               max_request_mb: float = 64) -> Starlette:
    """Build the app around one engine and one batcher shared by every request.

    Args:
        max_request_mb: the largest request body taken, in MB (10**6 bytes); larger ones get 413.

    Raises:
        BundleError: ``bundle`` is missing or corrupt.
    """
    engine = Engine.from_bundle(bundle, intra_op_num_threads=threads)
    batcher = BatchingEngine(engine, max_queue_delay_microseconds=max_queue_delay_microseconds)
    limit = int(max_request_mb * 1e6)

    def too_large(size: int) -> JSONResponse:
        return JSONResponse({"error": f"the request's {size} bytes are over the service's limit of {limit} "
                                      f"(--max-request-mb {max_request_mb:g}); send fewer or smaller images per request"}, status_code=413)

    async def predict(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip() or "no content type"
        if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            return JSONResponse({"error": f"POST /predict got a {content_type} body; {FORM_HELP}"}, status_code=415)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return too_large(int(declared))
        try:
            form = await request.form()
        except ClientDisconnect:  # the client left mid-upload: nobody to answer
            return Response(status_code=400)
        except HTTPException as exc:  # python-multipart could not parse it (no boundary, cut short...)
            return JSONResponse({"error": f"the form could not be read ({exc.detail}); {FORM_HELP}"}, status_code=400)
        sent = sum(len(v) if isinstance(v, str) else (v.size or 0) for _, v in form.multi_items())
        if sent > limit:  # a body sent without a length (chunked)
            return too_large(sent)
        texts = []
        for k, t in enumerate(form.getlist("text")):
            if isinstance(t, str):
                texts.append(t)
                continue
            try:  # a file part (curl -F text=@caption.txt): its bytes are the caption; str(t) named the upload object
                texts.append((await t.read()).decode("utf-8"))
            except UnicodeDecodeError as exc:
                return JSONResponse({"error": f"text field {k} is a file ({t.filename}) that is not UTF-8 text ({exc.reason} "
                                              f"at byte {exc.start}); {FORM_HELP}"}, status_code=400)
        files = form.getlist("image")
        if len(texts) != len(files) or not texts:
            return JSONResponse(
                {"error": f"got {len(texts)} text fields and {len(files)} image files; {FORM_HELP}"}, status_code=400,
            )
        images = [await f.read() if hasattr(f, "read") else str(f).encode() for f in files]
        results = await asyncio.gather(*(batcher.infer(t, i) for t, i in zip(texts, images)), return_exceptions=True)
        body = []
        for r in results:
            if isinstance(r, InputError):
                body.append({"error": str(r)})
            elif isinstance(r, BaseException):
                raise r
            else:
                body.append(r.to_dict())
        failed = all("error" in item for item in body)
        return JSONResponse(body, status_code=422 if failed else 200)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "labels": engine.labels, "providers": engine.providers})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()
        engine.close()

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)], lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    """``python -m fusionrt.examples.service --bundle B [--host 127.0.0.1] [--port 8080]``: serve with uvicorn."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="fusionrt-example-service", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="bundle directory written by fusionrt export")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    parser.add_argument("--max-queue-delay-microseconds", type=int, default=2000,
                        help="how long the batcher waits for more requests to join a batch (default: 2000)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of the engine (default: all cores)")
    parser.add_argument("--max-request-mb", type=float, default=64,
                        help="largest request body taken, in MB; larger ones get 413 (default: 64)")
    args = parser.parse_args(argv)
    app = create_app(args.bundle, args.max_queue_delay_microseconds, args.threads, args.max_request_mb)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
