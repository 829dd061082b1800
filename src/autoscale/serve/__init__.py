"""``autoscale serve``: count people from a web page and an HTTP API (needs the ``[serve]`` extra:
FastAPI, uvicorn, python-multipart).

One model is loaded once (:func:`app_from_checkpoint` / :func:`create_app`); inference runs on one
worker thread behind a bounded queue, off the event loop.

Endpoints (all errors are JSON ``{"error": code, "detail": text}``, never a traceback):

* ``POST /v1/count`` - the image as the multipart field ``file`` or as the raw body. Answers
  :class:`~autoscale.serve.schemas.CountResponse`: ``count``, ``first_pass_count``, ``width``,
  ``height``, ``points`` (``[[x, y], ...]`` head positions, pixels of the image as displayed: EXIF
  orientation applied, x right, y down; localization models), ``regions`` (``box [x, y, w, h]``,
  ``scale``, ``count_before``, ``count_after``), ``model`` (``name``, ``variant``, ``backbone``,
  ``method``), ``elapsed_ms``. ``?overlay=png`` answers the overlay picture instead (PNG, full
  resolution; the count in ``X-Count``); ``?overlay=inline`` adds it to the JSON as a JPEG data URL
  (what the web page shows).
* ``GET /v1/model`` - the model card (:func:`model_card`). ``GET /healthz`` - liveness and queue.
  ``GET /openapi.json`` - the schema. ``GET /`` - the web page (``static/``, shipped in the package;
  nothing is loaded from elsewhere).

Safe by default: binds 127.0.0.1 and then answers only to loopback ``Host`` names; any other
address needs a token (``Authorization: Bearer``, compared with :func:`hmac.compare_digest`). A
request body above the upload limit is refused with 413 while it is read (``Content-Length``
first); an image whose header declares more pixels than the limit with 400 before decoding; a body
that is no image with 415; a full queue with 503 and ``Retry-After``. Clients send image bytes
only: no path, no checkpoint. Cross-origin writes are refused (403). Every request is logged in one
line (client, method, path, status, bytes in/out, ms), never with image data.
"""
from __future__ import annotations

from os import PathLike
from typing import Any

from autoscale.serve.app import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_QUEUE,
    create_app,
    is_loopback,
    model_card,
)

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_QUEUE", "app_from_checkpoint", "create_app",
           "is_loopback", "model_card"]


def app_from_checkpoint(checkpoint: str | PathLike[str], *, device: str = "cpu", max_side: int | str | None = "auto",
                        single_pass: bool = False, points: str = "auto", **app_kwargs: Any) -> Any:
    """Load ``checkpoint`` once (:meth:`autoscale.predict.Predictor.from_checkpoint`) and wrap it
    in :func:`create_app` with its :func:`model_card`; ``app_kwargs`` go to :func:`create_app`."""
    from autoscale.predict import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, device=device, max_side=max_side, single_pass=single_pass,
                                          points=points)
    return create_app(predictor, card=model_card(checkpoint, ckpt=predictor.header), **app_kwargs)
