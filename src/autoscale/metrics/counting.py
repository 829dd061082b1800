"""Counting metrics: MAE, RMSE (the field's "MSE"), NAE, GAME(L), grouped metrics.

Conventions (protocols reference, section B.1/B.2):

* Per image ``e_i = pred_i - gt_i`` (counts in heads; a predicted count is a density-map sum or
  a number of predicted points).
* ``mae = mean |e_i|``; ``rmse = sqrt(mean e_i^2)``. Crowd-counting papers and every peer scorer
  call the latter "MSE"; we return it under both names, ``mse`` being **identical to** ``rmse``.
* ``nae = mean |e_i| / gt_i`` over the images with ``gt_i > 0`` only (NaN when there are none),
  as in the NWPU scorers.
* GAME(L) follows the TRANCOS authors' recursive split (CCNN ``gameRec``): a block of ``H x W``
  pixels is cut at ``y_half = int(H/2)``, ``x_half = int(W/2)`` into TL, TR, BL, BR and each
  quadrant is split again until depth L; GAME(L) sums ``|pred - gt|`` over the ``4^L`` blocks.
  An ROI mask multiplies both prediction and GT first.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Hashable, Iterable, Literal, Mapping, Sequence

import numpy as np

__all__ = [
    "counting_metrics",
    "game",
    "game_metrics",
    "game_split_edges",
    "grouped_counting_metrics",
    "jhu_density_group",
    "nwpu_counting_report",
    "mean_group_mae",
]


def counting_metrics(pred: Sequence[float] | np.ndarray, gt: Sequence[float] | np.ndarray) -> dict[str, float]:
    """MAE, RMSE, "MSE" (= RMSE), NAE and ``n`` over images.

    ``pred`` and ``gt`` are per-image counts of equal length. With ``n == 0`` every metric is NaN.
    """
    p = np.asarray(pred, dtype=np.float64).ravel()
    g = np.asarray(gt, dtype=np.float64).ravel()
    if p.shape != g.shape:
        raise ValueError(f"pred and gt lengths differ: {p.size} vs {g.size}")
    n = int(p.size)
    if n == 0:
        nan = float("nan")
        return {"mae": nan, "rmse": nan, "mse": nan, "nae": nan, "n": 0}
    err = np.abs(p - g)
    rmse = float(np.sqrt(np.mean(err**2)))
    pos = g > 0
    nae = float(np.mean(err[pos] / g[pos])) if np.any(pos) else float("nan")
    return {"mae": float(err.mean()), "rmse": rmse, "mse": rmse, "nae": nae, "n": n}


# --------------------------------------------------------------------------- GAME


def game_split_edges(size: int, level: int) -> np.ndarray:
    """1-D block edges of the recursive GAME split of ``size`` pixels to depth ``level``.

    Returns ``2^level + 1`` non-decreasing edges; block k covers ``[edges[k], edges[k+1])``.
    Each interval ``[a, b)`` splits at ``a + int((b - a) / 2)``. Because a block's row split
    depends only on its own height, the 2-D recursive split is the product of the row and column
    splits. (Blocks may be empty for tiny sizes, e.g. a 1-pixel side at level 1.)
    """
    if level < 0:
        raise ValueError(f"GAME level must be >= 0, got {level}")
    edges = [0, int(size)]
    for _ in range(level):
        new = [edges[0]]
        for a, b in zip(edges[:-1], edges[1:]):
            new += [a + (b - a) // 2, b]
        edges = new
    return np.asarray(edges, dtype=np.int64)


def _as_gt_map(gt: np.ndarray, shape: tuple[int, int], gt_kind: str) -> np.ndarray:
    gt = np.asarray(gt)
    if gt_kind == "auto":
        if gt.ndim == 2 and gt.shape == shape and shape[1] != 2:
            gt_kind = "map"
        elif (gt.ndim == 2 and gt.shape[1] == 2 and gt.shape != shape) or gt.size == 0:
            gt_kind = "points"
        else:
            raise ValueError(f"cannot tell whether gt of shape {gt.shape} is points (N, 2) or a map "
                             f"{shape}; pass gt_kind")
    if gt_kind == "map":
        if gt.shape != shape:
            raise ValueError(f"gt map shape {gt.shape} != prediction shape {shape}")
        return gt.astype(np.float64)
    if gt_kind != "points":
        raise ValueError(f"gt_kind must be 'auto', 'points' or 'map', got {gt_kind!r}")
    pts = gt.reshape(-1, 2).astype(np.float64)
    h, w = shape
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
    cols = np.floor(pts[inside, 0]).astype(np.int64)
    rows = np.floor(pts[inside, 1]).astype(np.int64)
    return np.bincount(rows * w + cols, minlength=h * w).astype(np.float64).reshape(h, w)


def game(pred_map: np.ndarray, gt: np.ndarray, level: int, roi: np.ndarray | None = None,
         gt_kind: Literal["auto", "points", "map"] = "auto") -> float:
    """GAME(level) of one image: ``sum over 4^level blocks of |pred block sum - gt block sum|``.

    ``pred_map``: ``(H, W)`` predicted density at full image resolution. ``gt``: points ``(N, 2)``
    ``(x, y)`` in pixels (rasterised at row ``floor(y)``, column ``floor(x)``; points outside the
    image are dropped) or an ``(H, W)`` dot/density map. ``roi``: ``(H, W)`` mask (nonzero =
    inside) applied to both before splitting. GAME(0) = ``|pred.sum() - gt count|``.
    """
    pred = np.asarray(pred_map, dtype=np.float64)
    if pred.ndim != 2:
        raise ValueError(f"pred_map must be (H, W), got shape {pred.shape}")
    shape = (int(pred.shape[0]), int(pred.shape[1]))
    gmap = _as_gt_map(gt, shape, gt_kind)
    if roi is not None:
        mask = np.asarray(roi)
        if mask.shape != shape:
            raise ValueError(f"roi shape {mask.shape} != prediction shape {shape}")
        mask = mask != 0
        pred = pred * mask
        gmap = gmap * mask
    diff = pred - gmap
    # Integral image with a zero first row/column: block sums stay right for empty blocks.
    integral = np.zeros((shape[0] + 1, shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(diff, axis=0), axis=1, out=integral[1:, 1:])
    ye = game_split_edges(shape[0], level)
    xe = game_split_edges(shape[1], level)
    s = integral[np.ix_(ye, xe)]
    blocks = s[1:, 1:] - s[:-1, 1:] - s[1:, :-1] + s[:-1, :-1]
    return float(np.abs(blocks).sum())


def game_metrics(pred_maps: Iterable[np.ndarray], gts: Iterable[np.ndarray],
                 levels: Sequence[int] = (0, 1, 2, 3),
                 rois: Iterable[np.ndarray | None] | None = None,
                 gt_kind: Literal["auto", "points", "map"] = "auto") -> dict[str, float]:
    """Mean GAME over a dataset: ``{"game0": ..., "game1": ..., "n": N}`` for each of ``levels``."""
    preds = list(pred_maps)
    gts = list(gts)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction maps but {len(gts)} ground truths")
    roi_list = [None] * len(preds) if rois is None else list(rois)
    if len(roi_list) != len(preds):
        raise ValueError(f"{len(roi_list)} ROI masks for {len(preds)} images")
    out: dict[str, float] = {}
    for lv in levels:
        vals = [game(p, g, lv, r, gt_kind) for p, g, r in zip(preds, gts, roi_list)]
        out[f"game{lv}"] = float(np.mean(vals)) if vals else float("nan")
    out["n"] = len(preds)
    return out


# --------------------------------------------------------------------------- groups


def grouped_counting_metrics(pred: Sequence[float] | np.ndarray, gt: Sequence[float] | np.ndarray,
                             groups: Sequence[Hashable]) -> dict[Hashable, dict[str, float]]:
    """:func:`counting_metrics` per group label (``groups[i]`` labels image i), sorted by label."""
    p = np.asarray(pred, dtype=np.float64).ravel()
    g = np.asarray(gt, dtype=np.float64).ravel()
    if not (len(p) == len(g) == len(groups)):
        raise ValueError(f"lengths differ: pred {len(p)}, gt {len(g)}, groups {len(groups)}")
    idx: dict[Hashable, list[int]] = defaultdict(list)
    for i, lab in enumerate(groups):
        idx[lab].append(i)
    try:
        keys = sorted(idx)
    except TypeError:
        keys = list(idx)
    return {k: counting_metrics(p[idx[k]], g[idx[k]]) for k in keys}


def jhu_density_group(count: float) -> str:
    """JHU-Crowd++ density group of a GT count: ``"low"`` (0-50), ``"medium"`` (51-500),
    ``"high"`` (> 500)."""
    if count <= 50:
        return "low"
    if count <= 500:
        return "medium"
    return "high"


def mean_group_mae(grouped: Mapping[Any, Mapping[str, float]]) -> float:
    """Mean of per-group MAE over the non-empty groups (NWPU's mMAE)."""
    maes = [m["mae"] for m in grouped.values() if m["n"] > 0]
    return float(np.mean(maes)) if maes else float("nan")


def nwpu_counting_report(pred: Mapping[int, float], gt: Mapping[int, float],
                         meta: Mapping[int, tuple[int, int]]) -> dict[str, Any]:
    """The NWPU-Crowd counting leaderboard numbers.

    ``pred``/``gt``: ``{image id: count}``; ``meta``: ``{image id: (illumination 0-3, scene level
    0-4)}`` (:func:`autoscale.metrics.nwpu.read_nwpu_meta`). Every GT id needs a prediction
    (``KeyError`` otherwise). Returns ``overall`` metrics, ``levels`` / ``illums`` (group -> metrics)
    and ``mmae_level`` / ``mmae_illum``: the mean of per-group MAE. The official scorer averages
    over all 5 levels / 4 illuminations and puts -1 for an empty group; we average over the
    non-empty groups only (identical whenever every group is present, as on NWPU val/test).
    """
    ids = list(gt)
    missing = [i for i in ids if i not in pred]
    if missing:
        raise KeyError(f"no prediction for image id(s) {missing[:5]}{'...' if len(missing) > 5 else ''}")
    p = np.array([pred[i] for i in ids], dtype=np.float64)
    g = np.array([gt[i] for i in ids], dtype=np.float64)
    illums = [meta[i][0] for i in ids]
    levels = [meta[i][1] for i in ids]
    by_level = grouped_counting_metrics(p, g, levels)
    by_illum = grouped_counting_metrics(p, g, illums)
    return {
        "overall": counting_metrics(p, g),
        "levels": by_level,
        "illums": by_illum,
        "mmae_level": mean_group_mae(by_level),
        "mmae_illum": mean_group_mae(by_illum),
    }
