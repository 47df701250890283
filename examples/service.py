"""A small web service embedding fusionrt: one shared, batched engine behind ``POST /predict``.

Run:  FUSIONRT_BUNDLE=fusionrt-demo/bundles/int8 uvicorn examples.service:app --port 8080
Call: curl -F text="what a lovely picture" -F image=@photo.jpg http://127.0.0.1:8080/predict

``POST /predict`` takes a multipart form with repeated ``text`` fields and ``image`` files, paired in
order, and answers a JSON list with one object per pair: the prediction, or ``{"error": ...}``
for a bad item (the other items are still answered). Mismatched counts are a 400.
Needs ``pip install starlette python-multipart uvicorn``; no torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fusionrt import BatchingEngine, Engine, InputError


def create_app(bundle: str, max_queue_delay_microseconds: int = 2000, threads: int | None = None) -> Starlette:
    """Build the app around one engine and one batcher shared by every request."""
    engine = Engine.from_bundle(bundle, intra_op_num_threads=threads)
    batcher = BatchingEngine(engine, max_queue_delay_microseconds=max_queue_delay_microseconds)

    async def predict(request: Request) -> JSONResponse:
        form = await request.form()
        texts = [str(t) for t in form.getlist("text")]
        files = form.getlist("image")
        if len(texts) != len(files) or not texts:
            return JSONResponse(
                {"error": f"got {len(texts)} text fields and {len(files)} image files; send one image per text"},
                status_code=400,
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
        return JSONResponse(body)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "labels": engine.labels, "providers": engine.providers})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()
        engine.close()

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)], lifespan=lifespan)


if os.environ.get("FUSIONRT_BUNDLE"):
    app = create_app(os.environ["FUSIONRT_BUNDLE"])
