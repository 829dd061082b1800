"""Maps -> points: regional minima of distance-label maps, density peaks, KNN boxes, and mapping
points from a zoomed region back to the original map.

Point convention (docs/architecture.md): ``(x, y)`` in pixels of the map, continuous; a point
derived from pixel row ``r``, column ``c`` (possibly a fractional centroid) is reported at the
pixel centre ``(c + 0.5, r + 0.5)``. Point arrays are ``(N, 2)`` float64 ``(x, y)``, sorted by
``y`` then ``x``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from autoscale.dense_region import as_map

__all__ = [
    "regional_minima",
    "Minima",
    "find_minima",
    "count_people",
    "count_people_outside",
    "density_peaks",
    "knn_boxes",
    "map_points_back",
]



def _yx_order(pts: np.ndarray) -> np.ndarray:
    """The order that sorts ``(N, 2)`` points ``(x, y)`` by y then x (the points' convention)."""
    return np.lexsort((pts[:, 0], pts[:, 1]))


def _sorted_points(centroids: np.ndarray) -> np.ndarray:
    """Pixel-index centroids ``(x, y)`` -> pixel-centre points (``+ 0.5``), sorted by y then x."""
    pts = np.asarray(centroids, dtype=np.float64).reshape(-1, 2) + 0.5
    return pts[_yx_order(pts)]


_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _erodable(m: np.ndarray) -> np.ndarray:
    """``m`` in a type OpenCV erodes, with the same order and ties and room for ``+ 1`` below the
    type's maximum: uint8 maps (class maps) as they are, small non-negative integers as uint16,
    anything else by its ranks among its distinct values."""
    if m.dtype == np.uint8 and m.max() < 255:
        return m
    if m.dtype.kind in "biu" and m.min() >= 0 and m.max() < 65535:
        return m.astype(np.uint16)
    _, ranks = np.unique(m, return_inverse=True)
    return ranks.reshape(m.shape).astype(np.float64)


def _regional_minima(m: np.ndarray, exclude: np.ndarray | None = None, *, with_labels: bool = False,
                     offset: tuple[int, int] = (0, 0)) -> Any:
    """Pixel-index centroids ``(x, y)`` (float64) of the 4-connected regional minima (plateaus all
    of whose outside 4-neighbours are higher) of integer map ``m``, leaving out the minima whose
    pixels are ``exclude``d (a mask that holds whole value levels, e.g. ``m == background``).

    One connected-component pass instead of one per value level: a pixel is a *candidate* when
    no 4-neighbour is strictly lower. Two 4-adjacent candidates have equal values (the higher
    one would see the lower), so each 4-connected component of candidates lies inside one
    plateau, and it is that whole plateau - a regional minimum - exactly when none of its pixels
    has an equal-valued neighbour that is not a candidate. Same minima, same pixels per minimum
    as labelling every plateau. A value level excluded from the candidates removes whole
    components and changes no other. Centroids: OpenCV's component statistics (integer
    coordinate sums, exact, divided by the area); with an ``offset`` ``(x, y)`` of ``m``'s corner
    in a bigger map, each sum is recovered exactly and shifted before the one division, so the
    centroids are bit for bit those computed on the bigger map.

    ``with_labels``: return ``(centroids, labels, row, extent)``: the ``int32`` component label of
    every pixel (0: not a candidate), per label the row of ``centroids`` it is (-1: no minimum) and
    the component's bounding box ``(x0, y0, x1, y1)`` in ``m``'s pixels (exclusive ends)."""
    w = _erodable(m)
    # erosion by the 4-neighbour cross (the border counts as +inf): the lowest of a pixel and its
    # 4-neighbours; a candidate is a pixel that is its own lowest
    cand = cv2.erode(w, _CROSS) == w
    # A candidate's candidate neighbours are equal to it and its other neighbours are not lower,
    # so raising the candidates by one leaves the lowest neighbour equal to it exactly when an
    # equal-valued neighbour is no candidate: then its plateau is no minimum.
    spoiled = cv2.erode(w + cand.view(np.uint8), _CROSS) == w
    if exclude is not None:
        cand &= ~exclude
    spoiled &= cand
    n, labels, stats, cents = cv2.connectedComponentsWithStats(cand.view(np.uint8), connectivity=4,
                                                               ltype=cv2.CV_32S)
    is_min = np.ones(n, dtype=bool)
    is_min[labels.ravel().take(np.flatnonzero(spoiled))] = False
    is_min[0] = False  # label 0 is the background of the candidate mask
    keep = np.flatnonzero(is_min)
    centroids = cents[keep]
    if offset != (0, 0):
        area = stats[keep, cv2.CC_STAT_AREA].astype(np.float64)[:, None]
        sums = np.rint(centroids * area) + area * np.array(offset, dtype=np.float64)
        centroids = sums / area
    if not with_labels:
        return centroids
    row = np.full(n, -1, dtype=np.int64)
    row[keep] = np.arange(len(keep))
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    extent = np.stack([x, y, x + stats[:, cv2.CC_STAT_WIDTH], y + stats[:, cv2.CC_STAT_HEIGHT]], axis=1)
    return centroids, labels, row, extent


def regional_minima(class_map: Any) -> np.ndarray:
    """4-connected regional minima of a class (or any integer) map.

    A regional minimum is a plateau (4-connected set of pixels of equal value) all of whose
    4-neighbours outside it are strictly higher; it counts once, at its centroid, the same
    semantics as Milena's ``labeling::regional_minima`` with ``c4`` in the authors' binary. A
    constant map is one minimum.

    Args:
        class_map: ``(H, W)`` map (numpy or torch), e.g. the argmax distance-label map.

    Returns:
        ``(N, 2)`` float64 ``(x, y)`` pixel-centre centroids (``x = mean col + 0.5``), sorted by
        ``y`` then ``x``.
    """
    m = as_map(class_map, "class_map")
    return _sorted_points(_regional_minima(m))


def _exclusion(m: np.ndarray, background: int | None, num_classes: int, exclude_background: bool,
               max_class: int | None) -> np.ndarray | None:
    """The value levels :func:`count_people` does not count (background, classes above ``max_class``)."""
    exclude = None
    if exclude_background:
        exclude = m == (num_classes - 1 if background is None else background)
    if max_class is not None:
        above = m > max_class
        exclude = above if exclude is None else exclude | above
    return exclude


@dataclass(frozen=True)
class Minima:
    """The counted regional minima of one class map (:func:`find_minima`).

    ``points``: ``(N, 2)`` as :func:`count_people` returns them; ``labels``: ``int32`` map of the
    same shape whose minima pixels hold a label (other pixels may hold labels too); ``row``: per
    label, the row of ``points`` whose plateau it is, -1 for labels that are no minimum;
    ``extent``: per label, the bounding box ``(x0, y0, x1, y1)`` (exclusive ends) of its component;
    ``shape`` and ``options``: the map's shape and the counting options the minima were found with
    (what :func:`count_people_outside` checks before reusing them)."""

    points: np.ndarray
    labels: np.ndarray
    row: np.ndarray
    extent: np.ndarray
    shape: tuple[int, int]
    options: tuple[Any, ...]

    @property
    def count(self) -> int:
        return int(len(self.points))


def _options(background: int | None, num_classes: int, exclude_background: bool,
             max_class: int | None) -> tuple[Any, ...]:
    return (num_classes - 1 if background is None else int(background), bool(exclude_background),
            None if max_class is None else int(max_class))


def find_minima(
    class_map: Any,
    *,
    background: int | None = None,
    num_classes: int = 11,
    exclude_background: bool = True,
    max_class: int | None = None,
) -> Minima:
    """:func:`count_people`'s minima with their component labels, for :func:`count_people_outside`."""
    m = as_map(class_map, "class_map")
    cents, labels, row, extent = _regional_minima(
        m, _exclusion(m, background, num_classes, exclude_background, max_class), with_labels=True)
    pts = cents + 0.5
    order = _yx_order(pts)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    row = np.where(row >= 0, rank[np.maximum(row, 0)], -1) if len(order) else row
    return Minima(pts[order], labels, row, extent, m.shape, _options(background, num_classes, exclude_background,
                                                             max_class))


def count_people(
    class_map: Any,
    *,
    background: int | None = None,
    num_classes: int = 11,
    exclude_background: bool = True,
    max_class: int | None = None,
) -> tuple[int, np.ndarray]:
    """People count and head points of a distance-label map: its regional minima.

    Plateaus at the background class (default ``num_classes - 1`` = 10, "farther than 28 px
    from any head") are not heads: an image without heads is all background and counts 0 (paper
    semantics). Since labels never exceed the background class, this only changes a map that is
    entirely background. ``exclude_background=False`` reproduces the official binary, which
    counts such a map as 1.

    ``max_class`` (default None: every minimum counts, as in the paper) drops minima whose class is
    above it: a head's own pixel is class 0, so a minimum at, say, class 6 (6-8 px from the
    nearest predicted head) is a fold in the map rather than a person. An option for weakly
    trained models; it is not in the paper.

    Returns:
        ``(count, points)`` with points as in :func:`regional_minima`.
    """
    found = find_minima(class_map, background=background, num_classes=num_classes,
                        exclude_background=exclude_background, max_class=max_class)
    return found.count, found.points


def _minima_among(row: np.ndarray, n: int, parts: Sequence[np.ndarray]) -> np.ndarray:
    """``(n,)`` bool: the minima (``row``: label -> minimum row or -1) with a pixel whose label is
    in one of the label arrays ``parts``."""
    present = np.zeros(len(row), dtype=bool)
    for q in parts:
        present[q.ravel()] = True
    r = row[present]
    out = np.zeros(n, dtype=bool)
    out[r[r >= 0]] = True
    return out


def count_people_outside(
    class_map: Any,
    boxes: Sequence[tuple[int, int, int, int]],
    *,
    first: Minima | None = None,
    background: int | None = None,
    num_classes: int = 11,
    exclude_background: bool = True,
    max_class: int | None = None,
) -> tuple[int, np.ndarray]:
    """:func:`count_people` of the map with every box ``(x, y, w, h)`` (integer pixels) set to the
    background class: the heads outside refined dense regions (the authors' rule).

    With ``first`` (:func:`find_minima` of the same map and options) the whole map is not counted
    again. A plateau none of whose pixels lies in the boxes grown by one pixel has the same
    values and neighbours in both maps, so it is a minimum of one exactly when it is of the other:
    those minima come from ``first``. The others are found in a window around the boxes (grown by
    16 px), grown further until none of the minima near the boxes touches a window edge inside the
    map (a plateau that does may continue outside: the window then takes in the extents of the
    first map's components at that plateau's edge pixels); a window component that does not is
    its whole plateau with all of its neighbours, so its status is exact. Same points as the full
    recount (tested against it on random maps).
    """
    m = as_map(class_map, "class_map")
    bg, excl_bg, max_cls = _options(background, num_classes, exclude_background, max_class)
    H, W = m.shape
    boxes = [tuple(int(v) for v in b) for b in boxes]
    if first is None or first.shape != m.shape or first.options != (bg, excl_bg, max_cls) or not boxes:
        masked = m.copy()
        for x, y, w, h in boxes:
            masked[y:y + h, x:x + w] = bg
        return count_people(masked, background=bg, num_classes=num_classes, exclude_background=excl_bg,
                            max_class=max_cls)
    grown = [(max(0, x - 1), max(0, y - 1), min(W, x + w + 1), min(H, y + h + 1)) for x, y, w, h in boxes]
    # minima with a pixel in the boxes grown by one pixel
    hit = _minima_among(first.row, first.count, [first.labels[gy0:gy1, gx0:gx1] for gx0, gy0, gx1, gy1 in grown])
    kept = first.points[~hit]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)  # exclusive
    wx0, wy0, wx1, wy1 = max(0, x0 - 16), max(0, y0 - 16), min(W, x1 + 16), min(H, y1 + 16)
    while True:
        win = m[wy0:wy1, wx0:wx1].copy()
        for x, y, w, h in boxes:
            win[max(0, y - wy0):max(0, y + h - wy0), max(0, x - wx0):max(0, x + w - wx0)] = bg
        cents, labels, row, _ = _regional_minima(win, _exclusion(win, bg, num_classes, excl_bg, max_cls),
                                                 with_labels=True, offset=(wx0, wy0))
        n = len(cents)
        # the grown boxes in window coordinates (each lies inside the window)
        w_near = _minima_among(row, n, [labels[gy0 - wy0:gy1 - wy0, gx0 - wx0:gx1 - wx0] for gx0, gy0, gx1, gy1 in grown])
        edges = []  # window edges inside the map: (window labels, their pixels' (y, x) in the map)
        cols, rows = np.arange(wx0, wx1), np.arange(wy0, wy1)
        if wy0 > 0:
            edges.append((labels[0, :], np.full_like(cols, wy0), cols))
        if wy1 < H:
            edges.append((labels[-1, :], np.full_like(cols, wy1 - 1), cols))
        if wx0 > 0:
            edges.append((labels[:, 0], rows, np.full_like(rows, wx0)))
        if wx1 < W:
            edges.append((labels[:, -1], rows, np.full_like(rows, wx1 - 1)))
        bad = w_near & _minima_among(row, n, [e[0] for e in edges])
        if not bad.any():
            break
        # Grow the window over what the offending plateaus may hold beyond it. Its edges lie >= 15
        # px from every box, where the map and its candidates are the original's, so each part of
        # such a plateau outside the window lies in an original candidate component that contains
        # one of the plateau's edge pixels: take those components' extents (from ``first``), + 1 px.
        bad_label = (row >= 0) & bad[np.maximum(row, 0)]
        orig = np.unique(np.concatenate([first.labels[ys[bad_label[lab]], xs[bad_label[lab]]] for lab, ys, xs in edges]))
        ext = first.extent[orig]
        nx0, ny0 = max(0, min(wx0, int(ext[:, 0].min()) - 1)), max(0, min(wy0, int(ext[:, 1].min()) - 1))
        nx1, ny1 = min(W, max(wx1, int(ext[:, 2].max()) + 1)), min(H, max(wy1, int(ext[:, 3].max()) + 1))
        if (nx0, ny0, nx1, ny1) == (wx0, wy0, wx1, wy1):  # cannot happen by the argument above; be safe
            nx0, ny0, nx1, ny1 = 0, 0, W, H
        wx0, wy0, wx1, wy1 = nx0, ny0, nx1, ny1
    found = cents[w_near] + 0.5
    pts = np.concatenate([kept, found], axis=0)
    pts = pts[_yx_order(pts)]
    return int(len(pts)), pts


def density_peaks(
    density: Any,
    *,
    kernel: int = 3,
    threshold: float = 0.0,
    rel_threshold: float = 0.1,
) -> np.ndarray:
    """Local maxima of a density map (Table 12's density-map localization baseline).

    A pixel is a peak when it equals the maximum of the ``kernel x kernel`` window centred on it
    (the window is clipped at the map border) and its value is strictly greater than both
    ``threshold`` (absolute, people per pixel) and ``rel_threshold * max(density)``. Peak pixels
    that touch (8-connectivity) lie inside each other's window, so they have equal values; each
    such plateau gives one point, at its centroid.

    Returns:
        ``(N, 2)`` float64 pixel-centre ``(x, y)``, sorted by ``y`` then ``x``.
    """
    d = as_map(density, "density").astype(np.float64, copy=False)
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd integer, got {kernel}")
    mx = ndimage.maximum_filter(d, size=kernel, mode="constant", cval=-np.inf)
    thr = max(threshold, rel_threshold * float(d.max()))
    peaks = (d == mx) & (d > thr)
    _, _, _, centroids = cv2.connectedComponentsWithStats(peaks.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return _sorted_points(centroids[1:])


def knn_boxes(
    points: Any,
    image_size: tuple[int, int],
    k: int = 3,
    factor: float = 0.1,
    max_fraction: float = 0.05,
    clip: bool = False,
) -> np.ndarray:
    """Head boxes from nearest-neighbour distances (LSC-CNN / FIDTM style).

    Each box is centred on its point with half-size ``factor * (d1 + ... + dk)``, the distances
    (pixels) to the ``k`` nearest *other* points, capped at ``max_fraction * min(H, W)``. With
    fewer than ``k`` other points the existing ones are used; a single point gets the cap.

    Args:
        points: ``(N, 2)`` ``(x, y)`` in pixels.
        image_size: ``(H, W)`` in pixels.
        clip: clip boxes to ``[0, W] x [0, H]``.

    Returns:
        ``(N, 4)`` float64 ``(x1, y1, x2, y2)``.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    H, W = image_size
    cap = max_fraction * min(H, W)
    n = len(pts)
    if n == 0:
        return np.zeros((0, 4), dtype=np.float64)
    kk = min(k, n - 1)
    if kk > 0:
        dist, _ = cKDTree(pts).query(pts, k=kk + 1)
        # column 0 is the point itself (distance 0; with duplicates another copy, also 0).
        half = np.minimum(factor * dist[:, 1:].sum(axis=1), cap)
    else:
        half = np.full(n, cap)
    boxes = np.stack(
        [pts[:, 0] - half, pts[:, 1] - half, pts[:, 0] + half, pts[:, 1] + half], axis=1
    )
    if clip:
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, W)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, H)
    return boxes


def map_points_back(points_zoomed: Any, region: Any, zoomed_size: tuple[int, int]) -> np.ndarray:
    """Map points from a zoomed region back to the map the region was cut from.

    Inverse of the zoom mapping (docs/architecture.md): ``x = x0 + x' * w / W'``,
    ``y = y0 + y' * h / H'``.

    Args:
        points_zoomed: ``(N, 2)`` ``(x', y')`` in pixels of the zoomed map.
        region: a :class:`autoscale.dense_region.Region` or ``(x0, y0, w, h)``.
        zoomed_size: ``(H', W')`` of the zoomed map.
    """
    x0, y0, w, h = region.box if hasattr(region, "box") else region
    Hz, Wz = zoomed_size
    p = np.asarray(points_zoomed, dtype=np.float64).reshape(-1, 2)
    return np.stack([x0 + p[:, 0] * (w / Wz), y0 + p[:, 1] * (h / Hz)], axis=1)
