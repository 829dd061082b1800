"""Where the dense region is chosen (paper §3.4 and §3.5; official ``find_couter.py`` /
``find_contours.py``).

Two steps, each with the paper's rule as the default and the authors' code as a named option:

1. a binary *dense mask* from the first-pass prediction:

   * regression (:func:`dense_mask_regression`): ``density > k * mean(density)``; paper k = 2,
     official k = 4 on a max-normalised uint8 image with the threshold capped at 150/255;
   * localization (:func:`dense_mask_localization`): ``class < c`` (c = 8); the official code
     thresholds ``255 * class / max(class)`` at ``8/11 * 255``, which is ``class < 8`` only when the
     map's max class is 10.

2. the dense *region* (:func:`select_dense_regions`): the connected component of the mask with
   the most pixels (paper: "maximal connected region"), or, with ``criterion="official"``, the
   external contour with the largest ``contourArea * number_of_vertices`` (the authors'
   ``areaCal``); its bounding box is the region, kept only if ``box area / image area`` is
   strictly greater than ``area_ratio`` (J_r = 0.1 regression, J_l = 0.02 localization).

:func:`find_dense_regions` chains both for a predicted map. Regions are integer ``(x, y, w, h)``
in pixels of the map they were found in: columns ``x .. x+w-1``, rows ``y .. y+h-1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any, Literal

import cv2
import numpy as np
from scipy import ndimage

from autoscale.errors import ConfigError

__all__ = [
    "Region",
    "dense_mask_regression",
    "dense_mask_localization",
    "select_dense_regions",
    "find_dense_regions",
    "DEFAULTS",
]

#: Per-variant defaults (paper): threshold factor / class cut and area-ratio gate J.
DEFAULTS: dict[str, dict[str, float]] = {
    "regression": {"k": 2.0, "official_k": 4.0, "area_ratio": 0.1},
    "localization": {"c": 8, "area_ratio": 0.02},
}

# 8-connectivity: cv2.findContours (Suzuki & Abe) follows the borders of 8-connected foreground
# components, so labelling with a 3x3 structure gives the same components as the official code.
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Region:
    """A dense region: integer box ``(x, y, w, h)`` in pixels of the map it was found in.

    Attributes:
        x, y: column and row of the top-left pixel.
        w, h: width and height in pixels (the box covers columns ``x .. x+w-1``).
        area: number of mask pixels in the chosen connected component (not the box).
        area_ratio: ``w * h / (H * W)``, box area over map area (what the J gate compares).
    """

    x: int
    y: int
    w: int
    h: int
    area: int
    area_ratio: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(x, y, w, h)``."""
        return (self.x, self.y, self.w, self.h)

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices selecting the region from an ``(H, W)`` array."""
        return (slice(self.y, self.y + self.h), slice(self.x, self.x + self.w))

    def overlaps(self, other: "Region") -> bool:
        """True when the two boxes share at least one pixel."""
        return (
            self.x < other.x + other.w
            and other.x < self.x + self.w
            and self.y < other.y + other.h
            and other.y < self.y + self.h
        )


def as_map(arr: Any, name: str) -> np.ndarray:
    """A 2-D numpy view of ``arr`` (numpy or torch; leading singleton dims are squeezed)."""
    if hasattr(arr, "detach"):
        arr = arr.detach().cpu().numpy()
    a = np.asarray(arr)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty (H, W) map, got shape {np.shape(arr)}")
    return a


def dense_mask_regression(
    density: Any, k: float = 2.0, method: Literal["paper", "official"] = "paper"
) -> np.ndarray:
    """Binary dense mask of a predicted density map (density in people per pixel).

    ``method="paper"``: ``density > k * mean(density)`` over the whole map (paper: k = 2).
    Values exactly at ``k * mean`` are not dense.

    ``method="official"`` (``findmaxcontours`` of ``AutoScale_regression``, whose k is 4):
    ``img = uint8(255 * density / max)`` with negatives set to 0 before the (truncating) cast,
    ``T = min(255 * k * mean / max, 150)`` and the mask is ``img > T``; so any pixel above
    150/255 of the max is dense whatever the mean.

    A map whose mean or max is <= 0 has no dense pixels (empty mask) with either method.

    Returns:
        ``(H, W)`` bool array.
    """
    d = as_map(density, "density").astype(np.float64, copy=False)
    mean, mx = float(d.mean()), float(d.max())
    if not (mean > 0 and mx > 0):  # also catches NaN
        return np.zeros(d.shape, dtype=bool)
    if method == "paper":
        return d > k * mean
    if method == "official":
        img = 255.0 * d / mx
        img[img < 0] = 0
        img = img.astype(np.uint8)
        thr = min(255.0 * (k * mean) / mx, 150.0)
        return img > thr
    raise ConfigError(f"dense-mask method must be 'paper' or 'official', got {method!r}")


def dense_mask_localization(
    class_map: Any,
    c: int = 8,
    method: Literal["paper", "official"] = "paper",
    num_classes: int = 11,
) -> np.ndarray:
    """Binary dense mask of a predicted distance-label (class) map.

    ``method="paper"``: ``class < c`` (c = 8, i.e. within 12 px of a predicted head).

    ``method="official"`` (``AutoScale/find_contours.py``): ``img = uint8(255 * class / max)``
    kept where ``img <= c / num_classes * 255`` (``THRESH_BINARY_INV`` at 8/11*255). This equals
    ``class < 8`` only when the map's max class is 10; a smaller max shifts the cut (max 9 keeps
    only classes <= 6). A map whose max class is 0 is all dense (every pixel is class 0).

    Returns:
        ``(H, W)`` bool array.
    """
    m = as_map(class_map, "class_map")
    if method == "paper":
        return m < c
    if method == "official":
        mx = float(m.max())
        if mx <= 0:
            return np.ones(m.shape, dtype=bool)
        img = (255.0 * m.astype(np.float64) / mx)
        img[img < 0] = 0
        img = img.astype(np.uint8)
        return img <= c / num_classes * 255.0
    raise ConfigError(f"dense-mask method must be 'paper' or 'official', got {method!r}")


def _candidates_area(mask: np.ndarray) -> Iterator[tuple[tuple[int, int, int, int], int]]:
    """8-connected components ranked by pixel area (desc), lazily; ties keep the raster order of
    the component's first pixel. OpenCV's SAUF labelling (``CCL_WU``) numbers components in that
    order, as scipy's ``label`` does, and the sort is stable."""
    n, _, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        np.ascontiguousarray(mask).view(np.uint8), 8, cv2.CV_32S, cv2.CCL_WU)
    stats = stats[1:]  # label 0: the background
    areas = stats[:, cv2.CC_STAT_AREA]
    for i in np.argsort(-areas, kind="stable"):
        x, y, w, h, a = (int(v) for v in stats[i])
        yield (x, y, w, h), a


def _candidates_official(mask: np.ndarray) -> list[tuple[tuple[int, int, int, int], int]]:
    """External contours ranked by ``contourArea * len(contour)`` (desc); ties: the later
    contour first, as the official ``>=``-style scan keeps the last maximum."""
    img = mask.astype(np.uint8)
    contours, _ = cv2.findContours(img, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    labels, _ = ndimage.label(mask, structure=_EIGHT)
    areas = np.bincount(labels.ravel())
    scored = []
    for idx, cnt in enumerate(contours):
        score = cv2.contourArea(cnt) * len(cnt)
        x0, y0 = cnt[0, 0]
        pix = int(areas[labels[y0, x0]])  # the component the contour bounds
        scored.append((score, idx, tuple(int(v) for v in cv2.boundingRect(cnt)), pix))
    scored.sort(key=lambda t: (-t[0], -t[1]))
    return [(box, pix) for _, _, box, pix in scored]


def select_dense_regions(
    mask: Any,
    *,
    area_ratio: float = 0.1,
    top_k: int = 1,
    criterion: Literal["area", "official"] = "area",
) -> list[Region]:
    """Choose up to ``top_k`` dense regions from a binary mask.

    Components are 8-connected (the components whose outer borders ``cv2.findContours``
    traces). ``criterion="area"`` (paper "maximal connected region") ranks them by pixel count,
    ties broken by the raster order of each component's first pixel (first wins);
    ``criterion="official"`` ranks external contours (``RETR_EXTERNAL``, ``CHAIN_APPROX_SIMPLE``)
    by ``contourArea * number of contour vertices``, ties: last wins, as in the authors' code
    (components inside a hole of another component have no external contour there).

    With ``top_k > 1`` (paper Table 15: "at most two disconnected dense areas") candidates are
    taken in rank order, skipping any whose bounding box overlaps an already chosen box, until
    ``top_k`` are chosen. Then the gate keeps a chosen region only if
    ``w * h / (H * W) > area_ratio`` (strict; paper J_r = 0.1, J_l = 0.02; ``area_ratio=0``
    disables it). So with ``top_k=1`` a too-small maximal region yields no region at all, as in
    the paper, rather than the next-largest one.

    Returns:
        a list (possibly empty) of :class:`Region` in rank order. An empty mask gives ``[]``;
        an all-true mask gives one region covering the whole map.
    """
    m = as_map(mask, "mask").astype(bool, copy=False)
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if criterion == "area":
        cands = _candidates_area(m)
    elif criterion == "official":
        cands = _candidates_official(m)
    else:
        raise ConfigError(f"dense-region criterion must be 'area' or 'official', got {criterion!r}")
    H, W = m.shape
    chosen: list[Region] = []
    for (x, y, w, h), pix in cands:
        reg = Region(int(x), int(y), int(w), int(h), int(pix), (w * h) / float(H * W))
        if any(reg.overlaps(c) for c in chosen):
            continue
        chosen.append(reg)
        if len(chosen) == top_k:
            break
    return [r for r in chosen if r.area_ratio > area_ratio]


def find_dense_regions(
    pred_map: Any,
    variant: Literal["regression", "localization"] = "regression",
    *,
    method: Literal["paper", "official"] = "paper",
    k: float | None = None,
    c: int = 8,
    num_classes: int = 11,
    area_ratio: float | None = None,
    top_k: int = 1,
    criterion: Literal["area", "official"] | None = None,
) -> list[Region]:
    """Dense regions of a first-pass prediction.

    Args:
        pred_map: ``(H, W)`` predicted density (regression) or class map (localization; the
            argmax of the logits). Numpy or torch; leading singleton dims are squeezed.
        variant: ``"regression"`` or ``"localization"``.
        method: ``"paper"`` (default) or ``"official"``; sets the mask rule and the defaults of
            ``k`` (2 paper, 4 official) and ``criterion`` (``"area"`` / ``"official"``).
        k: regression threshold factor (``density > k * mean``).
        c: localization class cut (``class < c``); ``num_classes`` for the official rule.
        area_ratio: the gate J (default 0.1 regression, 0.02 localization).
        top_k, criterion: see :func:`select_dense_regions`.
    """
    if method not in ("paper", "official"):
        raise ConfigError(f"dense-region method must be 'paper' or 'official', got {method!r}")
    if criterion is None:
        criterion = "area" if method == "paper" else "official"
    if variant == "regression":
        if k is None:
            k = DEFAULTS["regression"]["k" if method == "paper" else "official_k"]
        mask = dense_mask_regression(pred_map, k=k, method=method)
    elif variant == "localization":
        mask = dense_mask_localization(pred_map, c=c, method=method, num_classes=num_classes)
    else:
        raise ConfigError(f"variant must be 'regression' or 'localization', got {variant!r}")
    if area_ratio is None:
        area_ratio = DEFAULTS[variant]["area_ratio"]
    return select_dense_regions(mask, area_ratio=area_ratio, top_k=top_k, criterion=criterion)
