"""The server's work off the event loop: one inference thread behind a bounded queue, and the steps
of one count (header probe, decode, predict, overlay).

:class:`InferenceQueue` admits at most ``capacity`` requests at once (waiting or being counted); one
more is refused at once (the API answers 503 with ``Retry-After``, estimated from the mean service
time). The model runs in a single worker thread, so requests never run the network concurrently
(torch's own intra-op threads still parallelise each one) and the event loop stays free to accept,
read and refuse requests.

:func:`probe_upload` checks an uploaded file's header only: its format (415 when Pillow does not
recognise one) and its declared pixel count (400 above the limit, before any pixel is decoded: a
decompression bomb declares billions of pixels in a few bytes). :func:`count_upload` decodes with
:func:`autoscale.data.image_io.read_image` (EXIF orientation applied, as ``Predictor(path)`` does)
and counts with :meth:`autoscale.predict.Predictor.predict_array`.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from autoscale.data.image_io import image_size, read_image
from autoscale.errors import DataError

__all__ = ["ApiError", "CountResult", "InferenceQueue", "count_upload", "probe_upload", "render_overlay"]

T = TypeVar("T")

#: The longer side of the overlay embedded in JSON answers (``?overlay=inline``, JPEG), pixels.
INLINE_OVERLAY_SIDE = 1280


class ApiError(Exception):
    """An error answer: HTTP ``status``, short ``error`` code, human ``detail`` (one line), extra
    response ``headers``."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = " ".join(str(detail).split())
        self.headers = headers or {}


class InferenceQueue:
    """At most ``capacity`` jobs admitted at once, run one at a time on one worker thread."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"queue capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._lock = threading.Lock()
        self._pending = 0
        self._served = 0
        self._busy_s = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoscale-infer")

    @property
    def pending(self) -> int:
        """Jobs admitted and not finished (waiting or running)."""
        return self._pending

    def full(self) -> bool:
        return self._pending >= self.capacity

    def try_reserve(self) -> bool:
        """Take a place in the queue; False when it is full."""
        with self._lock:
            if self._pending >= self.capacity:
                return False
            self._pending += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._pending = max(0, self._pending - 1)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the queue's expected drain time (mean service time
        x jobs pending), at least 1, at most 120."""
        mean = self._busy_s / self._served if self._served else 1.0
        return int(min(120, max(1, math.ceil(mean * max(1, self._pending)))))

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker thread (the caller holds a reservation) and await its result."""
        def timed() -> T:
            t0 = time.perf_counter()
            try:
                return fn()
            finally:
                with self._lock:
                    self._served += 1
                    self._busy_s += time.perf_counter() - t0

        return await asyncio.wrap_future(self._executor.submit(timed))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _problem(exc: DataError, path: Path) -> str:
    """The error's problem without the server's temporary path."""
    return (exc.problem or str(exc)).replace(str(path), "upload")


def probe_upload(path: Path, max_pixels: int | None) -> tuple[int, int]:
    """``(width, height)`` from the upload's header (EXIF orientation applied), or :class:`ApiError`:
    415 for a file that is no image Pillow recognises, 400 for a declared size above ``max_pixels``
    (or the process-wide limit of :mod:`autoscale.data.image_io`) or a corrupt header."""
    try:
        width, height = image_size(path, exif=True)
    except DataError as exc:
        problem = _problem(exc, path)
        if "not a recognised image format" in problem:
            raise ApiError(415, "unsupported_media_type",
                           "the upload is not an image in a format this server decodes (JPEG, PNG, WebP, BMP, "
                           "TIFF, GIF, ...)") from None
        if "decoding limit" in problem:
            raise ApiError(400, "too_many_pixels", problem.split(" (possible")[0]) from None
        raise ApiError(400, "invalid_image", problem) from None
    if max_pixels is not None and width * height > max_pixels:
        raise ApiError(400, "too_many_pixels", f"image declares {width}x{height} = {width * height:,} pixels, above "
                                               f"this server's limit of {max_pixels:,} pixels")
    return width, height


@dataclass
class CountResult:
    """What the worker hands back: the prediction and, when asked, the encoded overlay (PNG for
    ``overlay="png"``, JPEG for ``"inline"``)."""

    prediction: Any  # autoscale.predict.Prediction
    overlay: bytes | None = None


def count_upload(predictor: Any, path: Path, overlay: str | None) -> CountResult:
    """Decode ``path`` (EXIF applied) and count it; ``overlay``: None, ``"png"`` (PNG at full
    resolution) or ``"inline"`` (JPEG, longer side at most :data:`INLINE_OVERLAY_SIDE`). Decoding
    errors become a 400 :class:`ApiError`."""
    try:
        rgb = read_image(path, exif=True)
    except DataError as exc:
        problem = _problem(exc, path)
        if "decoding limit" in problem:
            raise ApiError(400, "too_many_pixels", problem.split(" (possible")[0]) from None
        raise ApiError(400, "invalid_image", problem) from None
    pred = predictor.predict_array(rgb, name="upload")
    if overlay is None:
        return CountResult(pred)
    from autoscale.viz import encode_picture

    side = INLINE_OVERLAY_SIDE if overlay == "inline" else None
    try:
        return CountResult(pred, encode_picture(render_overlay(rgb, pred, predictor.variant, max_side=side),
                                                "jpg" if overlay == "inline" else "png"))
    except ValueError as exc:  # pragma: no cover - OpenCV fails only on absurd inputs
        raise ApiError(500, "internal_error", str(exc)) from None


def render_overlay(rgb: np.ndarray, pred: Any, variant: str, *, max_side: int | None = None) -> np.ndarray:
    """The overlay of one prediction (:func:`autoscale.viz.draw_overlay`): the density heat map for
    regression, the head points (ringed in black for contrast) for localization, each refined region's
    box labelled with its zoom factor (``x1.75``). With ``max_side`` the picture is drawn on the image downscaled so its longer
    side is at most that (geometry scaled alike)."""
    from autoscale.viz import REGION_COLOR, draw_overlay

    H, W = rgb.shape[:2]
    f = 1.0
    img = rgb
    if max_side is not None and max(H, W) > max_side:
        f = max_side / max(H, W)
        img = cv2.resize(rgb, (max(1, round(W * f)), max(1, round(H * f))), interpolation=cv2.INTER_AREA)
    regions = [{k: r[k] * f for k in ("x", "y", "w", "h")} for r in pred.regions]
    points = np.asarray(pred.points, dtype=np.float64).reshape(-1, 2) * f
    heat = pred.map if variant == "regression" else None
    out = draw_overlay(img, heat, variant=variant, regions=regions, points=points, knn=False)
    h, w = out.shape[:2]
    rad = max(1, round(min(h, w) / 300)) + 1  # draw_overlay's dot radius: ring each dot for contrast
    for x, y in points:
        cv2.circle(out, (int(x), int(y)), rad + 1, (20, 20, 20), 1, cv2.LINE_AA)
    font_scale = max(0.4, min(h, w) / 700)
    thick = max(1, round(font_scale * 2))
    for r, box in zip(pred.regions, regions):
        label = f"x{r['scale']:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
        x = int(min(max(0, round(box["x"])), max(0, w - tw - 4)))
        y = int(round(box["y"])) - 4
        if y - th - base < 0:
            y = int(round(box["y"])) + th + 4
        cv2.rectangle(out, (x, y - th - base), (x + tw + 4, y + base), REGION_COLOR, -1)
        cv2.putText(out, label, (x + 2, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out
