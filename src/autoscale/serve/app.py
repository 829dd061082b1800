"""The FastAPI application behind ``autoscale serve`` (:func:`create_app`); see :mod:`autoscale.serve`."""
from __future__ import annotations

import base64
import contextlib
import functools
import hmac
import ipaddress
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from os import PathLike
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from autoscale import __version__
from autoscale.serve.jobs import ApiError, InferenceQueue, count_upload, probe_upload
from autoscale.serve.schemas import (
    CountResponse,
    ErrorResponse,
    HealthResponse,
    ModelCardResponse,
    ModelInfo,
    QueueState,
    RegionOut,
)

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_QUEUE", "create_app", "is_loopback",
           "model_card"]

log = logging.getLogger("autoscale.serve")

STATIC = Path(__file__).resolve().parent / "static"
#: Largest request body accepted by default (bytes): 20 MiB.
DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
#: Largest image (width x height, from its header) decoded by default: 50 million pixels (a 48 MP
#: phone photo passes; decoding it takes ~150 MB, its density map ~200 MB).
DEFAULT_MAX_PIXELS = 50_000_000
#: Requests admitted at once by default (waiting or being counted).
DEFAULT_QUEUE = 16

_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
     b"form-action 'none'; base-uri 'none'; frame-ancestors 'none'"),
]
_ERROR_NAMES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
                422: "invalid_request", 500: "internal_error", 503: "queue_full"}
_CHUNK = 64 * 1024


def is_loopback(host: str) -> bool:
    """True for a loopback address or name: ``127.0.0.0/8``, ``::1``, ``localhost``."""
    h = host.strip().strip("[]").lower()
    if h in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------------ model card
def _redact(value: Any) -> Any:
    """A copy of ``value`` with every absolute path reduced to its file name (a client learns no
    server path)."""
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v) for v in value]
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith(("~", "\\\\")) or "/" in value
                                   or "\\" in value):
        return Path(value.replace("\\", "/")).name
    return value


def model_card(checkpoint: str | PathLike[str], ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``GET /v1/model`` answers for ``checkpoint``: its model card ``<name>.json`` (written by
    ``autoscale train``) when one is there and readable, else the checkpoint header's facts (``ckpt``,
    or the file loaded with :func:`autoscale.models.registry.load_checkpoint`). The card's ``use``
    line is dropped and paths become file names; ``source`` says where it came from."""
    path = Path(checkpoint)
    card_path = path.with_suffix(".json")
    card: dict[str, Any] | None = None
    if card_path.is_file():
        try:
            raw = json.loads(card_path.read_text(encoding="utf-8"))
            if isinstance(raw, dict) and raw.get("variant") in ("regression", "localization") \
                    and isinstance(raw.get("model"), dict):
                card = {**raw, "source": "model card"}
            else:
                log.warning("model card %s lacks 'variant' / 'model': using the checkpoint header", card_path.name)
        except (OSError, ValueError) as exc:
            log.warning("model card %s unreadable (%s): using the checkpoint header", card_path.name,
                        type(exc).__name__)
    if card is None:
        if ckpt is None:
            from autoscale.models.registry import load_checkpoint

            ckpt = load_checkpoint(path)
        model = ckpt.get("model") or {}
        card = {"source": "checkpoint header", "variant": ckpt.get("variant"), "method": ckpt.get("method"),
                "model": model, "backbone": (model.get("kwargs") or {}).get("backbone", "vgg16"),
                "normalization": ckpt.get("normalization"), "pipeline": ckpt.get("pipeline"),
                "epochs": ckpt.get("epoch"), "steps": ckpt.get("step"), "metrics": ckpt.get("metrics") or {},
                "code_version": ckpt.get("code_version")}
    card.pop("use", None)
    card["checkpoint"] = path.name
    card = _redact(card)
    if card.get("backbone") is None:
        card["backbone"] = ((card.get("model") or {}).get("kwargs") or {}).get("backbone")
    return card


def _card_from_predictor(predictor: Any) -> dict[str, Any]:
    """A minimal card for a :class:`Predictor` built without a checkpoint path."""
    info = getattr(predictor, "info", {}) or {}
    return {"source": "checkpoint header", "checkpoint": "model", "variant": predictor.variant,
            "method": info.get("method"), "backbone": None, "model": {},
            "code_version": info.get("code_version")}


# ------------------------------------------------------------------------------ front door
def _json_bytes(status: int, error: str, detail: str) -> bytes:
    return json.dumps({"error": error, "detail": detail}).encode()


class _FrontDoor:
    """Pure ASGI middleware around the whole app: refuses foreign ``Host`` headers (when asked:
    DNS rebinding guard for an unauthenticated loopback server) and cross-origin writes (a page of
    another site cannot make a visitor's browser post images here), adds security headers, and logs
    one line per request: client, method, path, status, bytes in / out, milliseconds (never the
    query string, headers or image data)."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, check_host: bool) -> None:
        self.app = app
        self.check_host = check_host

    def _refusal(self, scope: MutableMapping[str, Any]) -> tuple[int, str, str] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self.check_host:
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            if not is_loopback(name):
                return 400, "bad_host", ("this server answers only to 127.0.0.1 / localhost (it runs without a "
                                         "token); start it with --token to serve other names")
        origin = headers.get("origin")
        if origin is not None and scope.get("method", "GET") not in _SAFE_METHODS:
            if urlsplit(origin).netloc.lower() != host.lower():
                return 403, "cross_origin", "requests from another site's page are refused"
        return None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = {"in": 0, "out": 0, "status": 0}

        async def counted_receive() -> dict[str, Any]:
            msg = await receive()
            if msg["type"] == "http.request":
                state["in"] += len(msg.get("body", b""))
            return msg

        async def guarded_send(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                state["status"] = msg["status"]
                names = {k.lower() for k, _ in msg.get("headers", [])}
                msg = {**msg, "headers": [*msg.get("headers", []),
                                          *[(k, v) for k, v in _SECURITY_HEADERS if k not in names]]}
            elif msg["type"] == "http.response.body":
                state["out"] += len(msg.get("body", b""))
            await send(msg)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                status, error, detail = refusal
                await JSONResponse({"error": error, "detail": detail}, status_code=status)(
                    scope, counted_receive, guarded_send)
            else:
                await self.app(scope, counted_receive, guarded_send)
        except Exception as exc:  # noqa: BLE001 - a bug must still answer JSON, in one log line
            log.error("internal error on %s %s: %s: %s", scope.get("method", "-"), scope.get("path", "-"),
                      type(exc).__name__, " ".join(str(exc).split())[:300])
            if not state["status"]:
                await JSONResponse({"error": "internal_error", "detail": "the server failed on this request "
                                    "(see its log)"}, status_code=500)(scope, counted_receive, guarded_send)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %s %d in=%d out=%d %.1fms", client[0], scope.get("method", "-"),
                     scope.get("path", "-"), state["status"] or 500, state["in"], state["out"],
                     (time.perf_counter() - t0) * 1000)


# ------------------------------------------------------------------------------ uploads
class _TooLarge(Exception):
    pass


def _limited(receive: Callable[[], Awaitable[dict[str, Any]]], limit: int) -> Callable[[], Awaitable[dict[str, Any]]]:
    """``receive`` that raises :class:`_TooLarge` once more than ``limit`` body bytes arrived (the
    body is never buffered whole beyond the limit)."""
    seen = 0

    async def wrapped() -> dict[str, Any]:
        nonlocal seen
        msg = await receive()
        if msg["type"] == "http.request":
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return msg

    return wrapped


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


async def _receive_upload(request: Request, dest: Path, limit: int) -> int:
    """Write the uploaded image to ``dest``: the multipart field ``file`` or the raw body. Returns
    its size; :class:`ApiError` 413 past ``limit`` request-body bytes, 400 for an empty or malformed
    upload."""
    too_large = ApiError(413, "payload_too_large", f"the upload exceeds this server's limit of {_mib(limit)}")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large
        except ValueError:
            raise ApiError(400, "bad_request", "malformed Content-Length header") from None
    limited = Request(request.scope, _limited(request.receive, limit))
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    size = 0
    try:
        if ctype == "multipart/form-data":
            async with limited.form(max_files=1, max_fields=8, max_part_size=64 * 1024) as form:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError(400, "bad_request", "multipart upload needs the image in a field named 'file'")
                size = await run_in_threadpool(_copy_file, upload.file, dest)
        else:
            with open(dest, "wb") as f:
                async for chunk in limited.stream():
                    f.write(chunk)
                    size += len(chunk)
    except _TooLarge:
        raise too_large from None
    except StarletteHTTPException as exc:  # the multipart parser's 400
        raise ApiError(400, "bad_request", f"malformed multipart upload: {exc.detail}") from None
    if size == 0:
        raise ApiError(400, "bad_request", "empty upload: send an image as the request body or as the "
                                           "multipart field 'file'")
    return size


def _copy_file(src: Any, dest: Path) -> int:
    src.seek(0)
    with open(dest, "wb") as f:
        shutil.copyfileobj(src, f, _CHUNK)
        return f.tell()


# ------------------------------------------------------------------------------ the app
def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc} for code, desc in (
        (400, "malformed upload, image over the pixel limit or undecodable"),
        (401, "missing or wrong bearer token (servers started with --token)"),
        (413, "upload over the size limit"), (415, "not an image"),
        (503, "queue full: retry after the Retry-After header's seconds"))}

_UPLOAD_BODY = {"requestBody": {"required": True, "description": "the image: multipart field 'file', or the raw "
                                                                  "file as the body (any image/* type)",
                                "content": {"multipart/form-data": {"schema": {
                                    "type": "object", "required": ["file"],
                                    "properties": {"file": {"type": "string", "format": "binary"}}}},
                                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def create_app(
    predictor: Any,
    *,
    card: dict[str, Any] | None = None,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    queue_size: int = DEFAULT_QUEUE,
    check_host: bool | None = None,
) -> FastAPI:
    """The HTTP API and web page around one loaded model.

    Args:
        predictor: an :class:`autoscale.predict.Predictor` (anything with ``predict_array(rgb)`` and
            ``variant``); loaded once by the caller, used by one worker thread.
        card: what ``GET /v1/model`` answers (:func:`model_card`); also names the model in answers.
        token: when set, every ``/v1/`` request needs ``Authorization: Bearer <token>`` (401 else).
        max_upload_bytes: largest request body (413 beyond, enforced while reading).
        max_pixels: largest declared width x height (400 beyond; None = only the process-wide
            limit of :mod:`autoscale.data.image_io`).
        queue_size: requests admitted at once (waiting or counted); more get 503 + ``Retry-After``.
        check_host: answer only requests whose ``Host`` is a loopback name (guards a token-less
            loopback server against DNS rebinding); default: when ``token`` is None.
    """
    if token is not None and not token.strip():
        raise ValueError("token must not be empty")
    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be >= 1, got {max_upload_bytes}")
    card = dict(card) if card is not None else _card_from_predictor(predictor)
    info = ModelInfo(name=Path(str(card.get("checkpoint") or "model")).stem, variant=predictor.variant,
                     backbone=card.get("backbone"), method=card.get("method"))
    queue = InferenceQueue(queue_size)
    workdir = Path(tempfile.mkdtemp(prefix="autoscale-serve-"))
    secret = token.encode("utf-8") if token is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            queue.shutdown()
            shutil.rmtree(workdir, ignore_errors=True)

    app = FastAPI(
        title="autoscale", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Count people in photos with an AutoScale model (Xu, Liang et al., IJCV 2021). "
                    "POST an image to /v1/count; the web page is at /.")
    app.state.queue = queue
    app.state.card = card
    app.state.workdir = workdir
    bearer = HTTPBearer(auto_error=False, description="required when the server was started with --token")

    def authorize(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if secret is None:
            return
        given = creds.credentials.encode("utf-8") if creds is not None else b""
        if creds is None or not hmac.compare_digest(given, secret):
            raise ApiError(401, "unauthorized", "this server needs 'Authorization: Bearer <token>'" if creds is None
                           else "wrong token", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, _ERROR_NAMES.get(exc.status_code, "http_error"), str(exc.detail),
                      dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return _error(422, "invalid_request", "; ".join(parts)[:500])

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", response_model=HealthResponse, summary="liveness and queue depth")
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok", queue=QueueState(pending=queue.pending, capacity=queue.capacity))

    @app.get("/v1/model", response_model=ModelCardResponse, dependencies=[Depends(authorize)],
             responses={401: _ERRORS[401]}, summary="the model card")
    async def model() -> dict[str, Any]:
        return card

    def queue_full() -> ApiError:
        return ApiError(503, "queue_full", f"the server is busy ({queue.capacity} requests queued); retry later",
                        headers={"Retry-After": str(queue.retry_after())})

    @app.post("/v1/count", response_model=CountResponse, dependencies=[Depends(authorize)],
              responses={200: {"content": {"image/png": {}},
                               "description": "JSON, or with ?overlay=png the overlay picture (PNG; headers "
                                              "X-Count, X-First-Pass-Count, X-Elapsed-Ms)"}, **_ERRORS},
              openapi_extra=_UPLOAD_BODY, summary="count the people in one image")
    async def count(request: Request, overlay: Literal["png", "inline"] | None = Query(
            None, description="'png': answer with the overlay picture instead of JSON; 'inline': JSON with "
                              "the overlay as a JPEG data URL")) -> Any:
        t0 = time.perf_counter()
        if queue.full():  # refuse before reading a body we could not count
            raise queue_full()
        fd, name = tempfile.mkstemp(dir=workdir, suffix=".upload")
        os.close(fd)
        path = Path(name)
        try:
            await _receive_upload(request, path, max_upload_bytes)
            await run_in_threadpool(probe_upload, path, max_pixels)
            if not queue.try_reserve():
                raise queue_full()
            try:
                result = await queue.run(functools.partial(count_upload, predictor, path, overlay))
            finally:
                queue.release()
        finally:
            path.unlink(missing_ok=True)
        pred = result.prediction
        elapsed = round((time.perf_counter() - t0) * 1000, 1)
        if overlay == "png":
            return Response(result.overlay, media_type="image/png",
                            headers={"X-Count": repr(pred.count), "X-First-Pass-Count": repr(pred.first_count),
                                     "X-Elapsed-Ms": str(elapsed), "Cache-Control": "no-store"})
        H, W = pred.input_size
        body = CountResponse(
            count=pred.count, first_pass_count=pred.first_count, width=W, height=H,
            points=[(round(float(x), 2), round(float(y), 2)) for x, y in pred.points],
            regions=[RegionOut(box=(r["x"], r["y"], r["w"], r["h"]), scale=r["scale"],
                               count_before=r["count_before"], count_after=r["count_after"]) for r in pred.regions],
            model=info, elapsed_ms=elapsed,
            overlay=None if result.overlay is None
            else "data:image/jpeg;base64," + base64.b64encode(result.overlay).decode("ascii"))
        return JSONResponse(body.model_dump(mode="json"), headers={"Cache-Control": "no-store"})

    app.add_middleware(_FrontDoor, check_host=token is None if check_host is None else bool(check_host))
    return app
