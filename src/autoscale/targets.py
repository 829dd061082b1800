"""Ground-truth targets: density maps, distance-label maps, closeness levels, sigma maps, and
their regeneration for a rescaled (zoomed) region (paper §3.2-3.5, Table 10, Table 11).

Conventions (see ``docs/architecture.md``): a point is ``(x, y)`` in pixels, continuous, pixel
column ``c`` covering ``[c, c + 1)``. A head at ``(x, y)`` rasterises to row ``floor(y)``, column
``floor(x)``. Points outside ``[0, W) x [0, H)`` are ignored (never wrapped, never clipped) unless
a function says otherwise. Maps are ``(H, W)`` numpy arrays: density ``float32`` (people per
pixel), class maps ``uint8``. A region is an integer box ``(x, y, w, h)``.

Everything here is numpy / scipy / OpenCV only (no torch).
"""
from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import cv2
import numpy as np
from scipy import sparse
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from autoscale.errors import DataError

__all__ = [
    "DISTANCE_EDGES",
    "gaussian_kernel_1d",
    "density_map",
    "adaptive_sigmas",
    "adaptive_density_map",
    "distance_map",
    "distance_label_map",
    "nearest_neighbour_distances",
    "half_nn_distance",
    "sigma_map",
    "closeness_level",
    "people_number_level",
    "people_number_spacing",
    "region_points",
    "zoomed_size",
    "zoom_points",
    "unzoom_points",
    "region_target",
]

#: Lower edges (px) of the 11 distance classes of the localization target: class k covers
#: ``[DISTANCE_EDGES[k], DISTANCE_EDGES[k + 1])``, the last class is ``>= 28`` (official code).
DISTANCE_EDGES: tuple[float, ...] = (0, 1, 2, 3, 4, 5, 6, 8, 12, 18, 28)

BorderMode = Literal["reflect", "constant"]
_MODES = ("reflect", "constant")
# density_map(method="auto"): one full-map filter beats per-head patches above this many
# kernel-row taps per pixel (measured on 2048x1536, 2 CPU cores).
_FILTER_CROSSOVER = 0.2


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _as_points(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Points as a float64 ``(N, 2)`` array; raises :class:`DataError` for bad shape / values."""
    p = np.asarray(points, dtype=np.float64)
    if p.size == 0:
        return p.reshape(0, 2)
    if p.ndim != 2 or p.shape[1] != 2:
        raise DataError(None, f"points must be an N x 2 array of (x, y), got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        bad = int(np.argmax(~np.all(np.isfinite(p), axis=1)))
        raise DataError(None, f"non-finite coordinate at point {bad}: {p[bad].tolist()}")
    return p


def _as_shape(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"shape must be (H, W), got {tuple(shape)}")
    h, w = int(shape[0]), int(shape[1])
    if h <= 0 or w <= 0 or h != shape[0] or w != shape[1]:
        raise ValueError(f"shape must be two positive integers (H, W), got {tuple(shape)}")
    return h, w


def _inside(p: np.ndarray, h: int, w: int) -> np.ndarray:
    return (p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)


def _pixels(p: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of in-image points (``p`` already filtered by :func:`_inside`)."""
    rows = np.minimum(np.floor(p[:, 1]).astype(np.int64), h - 1)  # guard x == W - tiny rounding
    cols = np.minimum(np.floor(p[:, 0]).astype(np.int64), w - 1)
    return rows, cols


def _reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """scipy.ndimage ``reflect`` (half-sample symmetric, ``d c b a | a b c d | d c b a``) folding
    of arbitrary integer indices into ``[0, n)``, repeated for reaches wider than ``n``."""
    m = np.mod(idx, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


# --------------------------------------------------------------------------------------------
# density maps
# --------------------------------------------------------------------------------------------
def gaussian_kernel_1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised 1-D Gaussian scipy.ndimage uses: radius ``int(truncate * sigma + 0.5)``,
    taps ``exp(-x^2 / (2 sigma^2))`` for ``x = -radius .. radius`` (pixels), summing to 1.

    ``sigma == 0`` gives the identity kernel ``[1.0]`` (scipy skips filtering then).
    """
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    if sigma == 0:
        return np.ones(1)
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    return phi / phi.sum()


def _kernel_entries(
    centres: np.ndarray, sigmas: np.ndarray, truncate: float, n: int, mode: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-point 1-D kernel taps along one axis as COO triplets ``(point id, index, weight)``.

    Every point ``i`` gets ``2 r_i + 1`` taps centred on ``centres[i]`` with its own sigma. Taps
    outside ``[0, n)`` are folded back (``reflect``, mass-preserving) or dropped (``constant``).
    """
    radii = np.where(sigmas > 0, (truncate * sigmas + 0.5).astype(np.int64), 0)
    lengths = 2 * radii + 1
    owner = np.repeat(np.arange(len(centres)), lengths)
    starts = np.cumsum(lengths) - lengths
    offsets = np.arange(int(lengths.sum()), dtype=np.int64) - starts[owner] - radii[owner]
    s = sigmas[owner]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(s > 0, np.exp(-0.5 / np.where(s > 0, s * s, 1.0) * offsets * offsets), 1.0)
    w = w / np.bincount(owner, weights=w, minlength=len(centres))[owner]
    idx = centres[owner] + offsets
    if mode == "reflect":
        idx = _reflect_index(idx, n)
    else:
        keep = (idx >= 0) & (idx < n)
        owner, idx, w = owner[keep], idx[keep], w[keep]
    return owner, idx, w


def density_map(
    points: np.ndarray | Sequence[Sequence[float]],
    shape: Sequence[int],
    sigma: float | np.ndarray = 4.0,
    *,
    truncate: float = 4.0,
    mode: BorderMode = "reflect",
    method: Literal["auto", "patches", "filter"] = "auto",
) -> np.ndarray:
    """Gaussian density map, ``float32 (H, W)``, in people per pixel.

    Each in-image head at ``(x, y)`` puts a truncated separable Gaussian (see
    :func:`gaussian_kernel_1d`) of standard deviation ``sigma`` px centred on pixel
    ``(floor(y), floor(x))``; coincident heads add. Points outside ``[0, W) x [0, H)`` are ignored.
    ``sigma`` is a scalar or one value per point (same order as ``points``, e.g. from
    :func:`adaptive_sigmas`).

    ``mode``:
        ``reflect`` (default): kernel parts falling outside the image are folded back in
            (scipy's half-sample-symmetric reflect, repeated when the kernel is wider than the
            image), so the map integrates exactly to the number of in-image heads. Equals
            ``scipy.ndimage.gaussian_filter(dots, sigma, mode='reflect', truncate=truncate)`` where
            ``dots`` holds +1 per head (what the official regression GT uses).
        ``constant``: kernel parts outside are lost (= ``gaussian_filter(..., mode='constant')``;
            the official code uses it for the GT of a zoomed crop).

    ``method``: ``patches`` places per-head truncated kernel patches, cost proportional to
    ``sum_i (2 r_i + 1)^2`` taps, not to ``H * W`` per head (the map is ``A^T B`` with ``A``
    (heads x H) and ``B`` (heads x W) sparse matrices of the per-head folded row and column
    kernels). ``filter`` rasterises the heads and runs one separable ``gaussian_filter`` over the
    whole map (same result by linearity; fixed sigma only), cheaper for very crowded images.
    ``auto`` (default) picks ``filter`` for a fixed sigma when ``heads * (2 r + 1) > 0.2 * H * W``.
    """
    h, w = _as_shape(shape)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    p = _as_points(points)
    sig = np.asarray(sigma, dtype=np.float64)
    if sig.ndim == 0:
        sig = np.full(len(p), float(sig))
    elif sig.shape != (len(p),):
        raise ValueError(f"sigma must be a scalar or one value per point ({len(p)}), got shape {sig.shape}")
    if not np.all(np.isfinite(sig)) or np.any(sig < 0):
        raise ValueError("sigma values must be finite and >= 0")
    keep = _inside(p, h, w)
    p, sig = p[keep], sig[keep]
    if len(p) == 0:
        return np.zeros((h, w), dtype=np.float32)
    rows, cols = _pixels(p, h, w)
    n = len(p)
    uniform = bool(np.all(sig == sig[0]))
    if method == "auto":
        taps = 2 * int(truncate * sig[0] + 0.5) + 1
        method = "filter" if uniform and n * taps > _FILTER_CROSSOVER * h * w else "patches"
    if method == "filter":
        if not uniform:
            raise ValueError("method='filter' needs one sigma for all heads")
        dots = np.bincount(rows * w + cols, minlength=h * w).astype(np.float64).reshape(h, w)
        return gaussian_filter(dots, float(sig[0]), mode=mode, truncate=truncate).astype(np.float32)
    if method != "patches":
        raise ValueError(f"method must be 'auto', 'patches' or 'filter', got {method!r}")
    oi, ri, rw = _kernel_entries(rows, sig, truncate, h, mode)
    oj, cj, cw = _kernel_entries(cols, sig, truncate, w, mode)
    a = sparse.csr_matrix((rw, (oi, ri)), shape=(n, h))  # duplicate entries are summed
    b = sparse.csr_matrix((cw, (oj, cj)), shape=(n, w))
    out = (a.T.tocsr() @ b).toarray()
    return out.astype(np.float32)


def adaptive_sigmas(
    points: np.ndarray | Sequence[Sequence[float]],
    k: int = 3,
    beta: float = 0.3,
    min_sigma: float = 1.0,
    single: float | None = None,
    *,
    shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Geometry-adaptive kernel widths (CSRNet, Zhang et al. 2016), ``(N,)`` float64 px.

    ``sigma_i = beta * mean distance from point i to its k nearest other points`` (cKDTree on
    the continuous coordinates; with fewer than ``k`` other points, the mean over those there
    are). A lone point gets ``single``; when ``single`` is None it is CSRNet's
    ``mean(H, W) / 4`` of ``shape`` (an error if neither is given). Every sigma is floored at
    ``min_sigma`` (so coincident points, at distance 0, still get a kernel).
    """
    p = _as_points(points)
    n = len(p)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n == 0:
        return np.zeros(0)
    if n == 1:
        if single is None:
            if shape is None:
                raise ValueError("a lone point needs `single` (or `shape` for CSRNet's mean(H, W) / 4)")
            h, w = _as_shape(shape)
            single = (h + w) / 2.0 / 4.0
        return np.array([max(float(single), min_sigma)])
    kk = min(k, n - 1)
    d, _ = cKDTree(p).query(p, k=kk + 1)
    d = np.asarray(d).reshape(n, kk + 1)[:, 1:]  # drop the point itself
    return np.maximum(beta * d.mean(axis=1), min_sigma)


def adaptive_density_map(
    points: np.ndarray | Sequence[Sequence[float]],
    shape: Sequence[int],
    k: int = 3,
    beta: float = 0.3,
    min_sigma: float = 1.0,
    truncate: float = 4.0,
    mode: BorderMode = "reflect",
) -> np.ndarray:
    """Density map with geometry-adaptive kernels (:func:`adaptive_sigmas` over the in-image
    heads only; a lone head gets CSRNet's ``mean(H, W) / 4``). ``float32 (H, W)``."""
    h, w = _as_shape(shape)
    p = _as_points(points)
    p = p[_inside(p, h, w)]
    sig = adaptive_sigmas(p, k=k, beta=beta, min_sigma=min_sigma, shape=(h, w))
    return density_map(p, (h, w), sig, truncate=truncate, mode=mode)


# --------------------------------------------------------------------------------------------
# distance maps and distance-label maps (localization target)
# --------------------------------------------------------------------------------------------
def _head_mask_precise(p: np.ndarray, h: int, w: int) -> np.ndarray:
    src = np.full((h, w), 255, dtype=np.uint8)
    p = p[_inside(p, h, w)]
    rows, cols = _pixels(p, h, w)
    src[rows, cols] = 0
    return src


def _head_mask_official(p: np.ndarray, h: int, w: int) -> np.ndarray:
    # Authors' scripts: row max(1, floor(y)), col max(1, floor(x)); skip row >= H or col >= W.
    src = np.full((h, w), 255, dtype=np.uint8)
    rows = np.maximum(1, np.floor(p[:, 1])).astype(np.int64)
    cols = np.maximum(1, np.floor(p[:, 0])).astype(np.int64)
    keep = (rows < h) & (cols < w)
    src[rows[keep], cols[keep]] = 0
    return src


def distance_map(
    points: np.ndarray | Sequence[Sequence[float]],
    shape: Sequence[int],
    *,
    method: Literal["precise", "official"] = "precise",
) -> np.ndarray:
    """Distance (px, ``float32 (H, W)``) from each pixel index ``(r, c)`` to the nearest head
    pixel ``(floor(y), floor(x))``; ``inf`` everywhere when there is no head.

    ``precise``: exact Euclidean distance (``cv2.distanceTransform(DIST_L2, DIST_MASK_PRECISE)``),
    snapped to ``sqrt(round(d^2))`` where ``d < 1000`` so that distances equal to an integer edge
    (e.g. 8 px) are exactly that edge. Out-of-image heads are ignored.
    ``official``: the authors' scripts: head pixel at row ``max(1, floor(y))``, column
    ``max(1, floor(x))`` (so heads in row/column 0 or at negative coordinates move to 1), heads
    with that row >= H or column >= W skipped, and the 5x5-mask approximate Euclidean transform
    (``cv2.DIST_MASK_5``).
    """
    h, w = _as_shape(shape)
    p = _as_points(points)
    if method == "precise":
        src = _head_mask_precise(p, h, w)
    elif method == "official":
        src = _head_mask_official(p, h, w)
    else:
        raise ValueError(f"method must be 'precise' or 'official', got {method!r}")
    if src.min() != 0:
        return np.full((h, w), np.inf, dtype=np.float32)
    if method == "official":
        return cv2.distanceTransform(src, cv2.DIST_L2, cv2.DIST_MASK_5).astype(np.float32)
    d = cv2.distanceTransform(src, cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(np.float64)
    # True distances are sqrt(integer); undo float32 rounding so ties with integer edges are exact.
    near = d < 1000.0
    d[near] = np.sqrt(np.rint(d[near] * d[near]))
    return d.astype(np.float32)


def _check_edges(edges: Sequence[float]) -> np.ndarray:
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or len(e) < 1 or len(e) > 256:
        raise ValueError(f"edges must be a 1-D sequence of 1..256 values, got {edges!r}")
    if e[0] != 0 or np.any(np.diff(e) <= 0) or not np.all(np.isfinite(e)):
        raise ValueError(f"edges must start at 0 and increase strictly, got {tuple(e.tolist())}")
    return e


def distance_label_map(
    points: np.ndarray | Sequence[Sequence[float]],
    shape: Sequence[int],
    edges: Sequence[float] = DISTANCE_EDGES,
    *,
    method: Literal["precise", "official"] = "precise",
) -> np.ndarray:
    """Distance-label map (paper §3.5), ``uint8 (H, W)``.

    The class of a pixel is the index of the last edge ``<= d``, ``d`` being its
    :func:`distance_map` value: half-open bins ``[e_k, e_{k+1})``, the last class open-ended.
    With the default :data:`DISTANCE_EDGES` that is 11 classes, class 10 meaning ``>= 28`` px.
    An image without heads is all class ``len(edges) - 1``.
    """
    e = _check_edges(edges)
    d = distance_map(points, shape, method=method)
    if np.isinf(d).all():
        return np.full(d.shape, len(e) - 1, dtype=np.uint8)
    if method == "official":
        # compare in float32 like the official in-place thresholding of the float32 map
        return (np.searchsorted(e.astype(np.float32), d, side="right") - 1).astype(np.uint8)
    return (np.searchsorted(e, d.astype(np.float64), side="right") - 1).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# neighbour distances, sigma map, closeness
# --------------------------------------------------------------------------------------------
def nearest_neighbour_distances(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Euclidean distance (px) from each point to its nearest other point, ``(N,)`` float64.

    With fewer than 2 points every entry is ``inf`` (there is no other point); coincident points
    give 0.
    """
    p = _as_points(points)
    if len(p) < 2:
        return np.full(len(p), np.inf)
    d, _ = cKDTree(p).query(p, k=2)
    return d[:, 1]


def half_nn_distance(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Half the nearest-neighbour distance per point, ``(N,)`` float64 px: the official "sigma
    map" value (``KDTree.query(k=2)`` distance / 2); 0 for a single-person image, as in the
    authors' JHU/NWPU scripts."""
    d = nearest_neighbour_distances(points)
    return np.where(np.isinf(d), 0.0, d / 2.0)


def sigma_map(points: np.ndarray | Sequence[Sequence[float]], shape: Sequence[int]) -> np.ndarray:
    """``float32 (H, W)`` map holding :func:`half_nn_distance` (computed among the in-image
    heads) at each head pixel ``(floor(y), floor(x))`` and 0 elsewhere; when several heads fall
    in one pixel the largest value is kept."""
    h, w = _as_shape(shape)
    p = _as_points(points)
    p = p[_inside(p, h, w)]
    out = np.zeros((h, w), dtype=np.float64)
    if len(p):
        rows, cols = _pixels(p, h, w)
        np.maximum.at(out, (rows, cols), half_nn_distance(p))
    return out.astype(np.float32)


def closeness_level(points: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Closeness level ``S`` of a region (paper Eq. 1): mean over its people of the distance
    (px) to their nearest other person in the region. ``NaN`` with fewer than 2 people (the
    caller skips such regions). Pass the region's points (see :func:`region_points`)."""
    p = _as_points(points)
    if len(p) < 2:
        return float("nan")
    return float(nearest_neighbour_distances(p).mean())


def people_number_level(points: np.ndarray | Sequence[Sequence[float]], area: float) -> float:
    """The conference version's density measure ("average people number", Table 10), in our
    definition (the paper gives none): people per 1000 px^2 of region area,
    ``1000 * len(points) / area``. ``area`` in px^2, > 0."""
    if not area > 0:
        raise ValueError(f"area must be > 0, got {area}")
    return 1000.0 * len(_as_points(points)) / float(area)


def people_number_spacing(points: np.ndarray | Sequence[Sequence[float]], area: float) -> float:
    """The average people number (:func:`people_number_level`) as a length: the spacing
    ``sqrt(area / N)`` px the region's N people would have if spread evenly over its area (px^2).
    Unlike the level, it grows linearly with a zoom, like Eq. 1's distance, so the centre loss
    ``(S r^2 - C)^2`` keeps its meaning. ``NaN`` for an empty region."""
    n = len(_as_points(points))
    if not area > 0:
        raise ValueError(f"area must be > 0, got {area}")
    return math.sqrt(float(area) / n) if n else float("nan")


def _check_box(box: Sequence[int]) -> tuple[int, int, int, int]:
    if len(box) != 4:
        raise ValueError(f"a region is (x, y, w, h), got {tuple(box)}")
    x0, y0, w, h = (int(v) for v in box)
    if (x0, y0, w, h) != tuple(box) or w <= 0 or h <= 0:
        raise ValueError(f"a region is integer (x, y, w, h) with w, h > 0, got {tuple(box)}")
    return x0, y0, w, h


def region_points(points: np.ndarray | Sequence[Sequence[float]], box: Sequence[int]) -> np.ndarray:
    """Points inside an integer region ``(x, y, w, h)``: ``x <= px < x + w`` and
    ``y <= py < y + h`` (original coordinates, unchanged), as ``(M, 2)`` float64."""
    x0, y0, w, h = _check_box(box)
    p = _as_points(points)
    m = (p[:, 0] >= x0) & (p[:, 0] < x0 + w) & (p[:, 1] >= y0) & (p[:, 1] < y0 + h)
    return p[m]


# --------------------------------------------------------------------------------------------
# regeneration for a rescaled region (online ground-truth update, §3.4 and Table 11)
# --------------------------------------------------------------------------------------------
def zoomed_size(box: Sequence[int], scale: Any) -> tuple[int, int]:
    """Size ``(H', W') = (max(1, round(h * s)), max(1, round(w * s)))`` of region ``(x, y, w, h)``
    zoomed by ``scale`` (Python ``round``: halves go to the even integer, the project-wide
    convention). ``scale``: a number or a one-element array/tensor (e.g. the L2S output). The one
    rule for the zoomed size: the network's zoom (:func:`autoscale.models.l2s.zoom_region`) and the
    regenerated ground truth use it alike."""
    _, _, w, h = _check_box(box)
    s = float(scale.detach().reshape(-1)[0]) if hasattr(scale, "detach") else float(np.asarray(scale).reshape(-1)[0])
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"scale must be a finite number > 0, got {s}")
    return max(1, round(h * s)), max(1, round(w * s))


def zoom_points(
    points: np.ndarray | Sequence[Sequence[float]], box: Sequence[int], out_size: Sequence[int]
) -> np.ndarray:
    """Points inside region ``(x0, y0, w, h)`` mapped into the zoomed ``(H', W')`` output:
    ``x' = (x - x0) * W' / w``, ``y' = (y - y0) * H' / h`` (bilinear resize with
    ``align_corners=False``). Points outside the region are dropped."""
    x0, y0, w, h = _check_box(box)
    oh, ow = _as_shape(out_size)
    p = region_points(points, box)
    return np.stack([(p[:, 0] - x0) * (ow / w), (p[:, 1] - y0) * (oh / h)], axis=1)


def unzoom_points(
    points: np.ndarray | Sequence[Sequence[float]], box: Sequence[int], out_size: Sequence[int]
) -> np.ndarray:
    """Inverse of :func:`zoom_points`: ``x = x0 + x' * w / W'``, ``y = y0 + y' * h / H'``."""
    x0, y0, w, h = _check_box(box)
    oh, ow = _as_shape(out_size)
    p = _as_points(points)
    return np.stack([x0 + p[:, 0] * (w / ow), y0 + p[:, 1] * (h / oh)], axis=1)


def region_target(
    points: np.ndarray | Sequence[Sequence[float]],
    box: Sequence[int],
    scale: float,
    *,
    kind: Literal["density", "distance"] = "density",
    sigma: float = 4.0,
    edges: Sequence[float] = DISTANCE_EDGES,
    kernel: Literal["fixed", "multiplied", "divided"] = "fixed",
    mode: BorderMode = "reflect",
    truncate: float = 4.0,
    method: Literal["precise", "official"] = "precise",
) -> np.ndarray:
    """Regenerated ground truth for region ``box = (x, y, w, h)`` rescaled by ``scale`` (paper
    §3.4 "online ground-truth update"; kernel variants of Table 11).

    ``kernel``:
        ``fixed`` (paper default): points zoomed to :func:`zoomed_size`, same ``sigma`` / ``edges``.
        ``multiplied``: zoomed size, ``sigma * scale`` (distance ``edges * scale``).
        ``divided``: region kept at its original ``(h, w)`` (no zoom), ``sigma / scale``
            (``edges / scale``).

    Returns a ``float32`` density map (``kind="density"``; with ``mode="reflect"`` it integrates
    to the number of heads inside the box) or a ``uint8`` distance-label map.
    """
    x0, y0, w, h = _check_box(box)
    out_size = zoomed_size(box, scale)
    if kernel == "fixed":
        pts, size, factor = zoom_points(points, box, out_size), out_size, 1.0
    elif kernel == "multiplied":
        pts, size, factor = zoom_points(points, box, out_size), out_size, float(scale)
    elif kernel == "divided":
        pts, size, factor = zoom_points(points, box, (h, w)), (h, w), 1.0 / float(scale)
    else:
        raise ValueError(f"kernel must be 'fixed', 'multiplied' or 'divided', got {kernel!r}")
    if kind == "density":
        return density_map(pts, size, sigma * factor, truncate=truncate, mode=mode)
    if kind == "distance":
        return distance_label_map(pts, size, tuple(np.asarray(edges, float) * factor), method=method)
    raise ValueError(f"kind must be 'density' or 'distance', got {kind!r}")
