"""The canonical per-image annotation record shared by every dataset reader.

Coordinate convention (used throughout autoscale): a point is ``(x, y)`` in pixels of the
*original* image file as stored (no EXIF rotation applied), continuous coordinates where pixel
column ``c`` covers ``[c, c + 1)``. A head at ``(x, y)`` is rasterised to the pixel at row
``floor(y)``, column ``floor(x)``. A point is inside the image iff ``0 <= x < width`` and
``0 <= y < height``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from autoscale.errors import DataError

OutsidePolicy = Literal["drop", "clip", "keep"]
OUTSIDE_POLICIES: tuple[str, ...] = ("drop", "clip", "keep")


@dataclass
class ImageRecord:
    """One annotated image.

    Attributes:
        image_path: path of the image file.
        width, height: size in pixels of the image file as stored.
        points: ``(N, 2)`` float64 array of head centres ``(x, y)`` in original-image pixels.
        boxes: optional ``(N, 4)`` float64 head boxes ``(x1, y1, x2, y2)``, row ``i`` belongs to
            ``points[i]``; ``None`` when the format has no boxes.
        roi_path: optional file holding the region-of-interest mask (TRANCOS ``*mask.mat`` with
            variable ``BW``, or a grayscale image where nonzero = inside); load it with
            :func:`autoscale.data.formats.load_roi`.
        meta: free-form metadata (scene level, illumination, weather, split, ...).
        dropped_points: how many annotated points the outside policy removed.
        annotated: False for images whose annotations are withheld (e.g. NWPU test).
    """

    image_path: Path
    width: int
    height: int
    points: np.ndarray
    boxes: np.ndarray | None = None
    roi_path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    dropped_points: int = 0
    annotated: bool = True

    @property
    def name(self) -> str:
        """File stem of the image, e.g. ``IMG_1``."""
        return Path(self.image_path).stem

    @property
    def count(self) -> int:
        """Number of annotated heads kept in this record."""
        return int(len(self.points))


def inside_mask(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean mask of points with ``0 <= x < width`` and ``0 <= y < height``."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (p[:, 0] >= 0) & (p[:, 0] < width) & (p[:, 1] >= 0) & (p[:, 1] < height)


def apply_outside_policy(
    points: np.ndarray,
    width: int,
    height: int,
    policy: OutsidePolicy = "drop",
    boxes: np.ndarray | None = None,
    source: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Apply the policy for points outside the image; never wraps a point into the image.

    Policies:
        ``drop`` (default): remove outside points (and their boxes); the number removed is returned.
        ``clip``: move outside points onto the nearest in-image position (``x`` to
            ``[0, width - 1e-6]``); nothing is dropped.
        ``keep``: keep them as they are (for counting protocols that count every annotation).

    Returns ``(points, boxes, dropped)``. Raises :class:`DataError` (naming ``source``) for NaN,
    infinite or wrongly shaped coordinates.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.size == 0:
        p = p.reshape(0, 2)
    if p.ndim != 2 or p.shape[1] != 2:
        raise DataError(source, f"points must be an N x 2 array of (x, y), got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        bad = int(np.argmax(~np.all(np.isfinite(p), axis=1)))
        raise DataError(source, f"non-finite coordinate at point {bad}: {p[bad].tolist()}")
    if policy not in OUTSIDE_POLICIES:
        raise DataError(source, f"unknown outside-point policy {policy!r}; expected one of {OUTSIDE_POLICIES}")
    if policy == "keep":
        return p, boxes, 0
    if policy == "clip":
        q = p.copy()
        q[:, 0] = np.clip(q[:, 0], 0.0, np.nextafter(width, 0))
        q[:, 1] = np.clip(q[:, 1], 0.0, np.nextafter(height, 0))
        return q, boxes, 0
    keep = inside_mask(p, width, height)
    b = None if boxes is None else np.asarray(boxes, dtype=np.float64)[keep]
    return p[keep], b, int((~keep).sum())
