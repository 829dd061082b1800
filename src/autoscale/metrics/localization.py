"""Localization metrics: point matching within per-GT thresholds, micro P/R/F1, threshold rules.

Protocol (NWPU-Crowd official scorer, protocols reference B.3; also FIDTM's ShanghaiTech and
UCF-QNRF variants, B.4/B.5):

* Per image, prediction ``i`` may match GT point ``j`` iff ``||pred_i - gt_j|| <= thresholds[j]``
  (inclusive, the GT point's **own** threshold, in pixels). We compare squared distances, which
  is exact for the integer coordinates and thresholds of the official files.
* The matching is **maximum-cardinality** bipartite (not minimum-distance). The official scorer
  does it with Kuhn's augmenting-path DFS in pure Python; we use
  ``scipy.sparse.csgraph.maximum_bipartite_matching`` (Hopcroft-Karp) on the sparse candidate
  graph from a KD-tree. The maximum matching size is unique, so TP/FP/FN are identical; *which*
  GT points are matched (hence per-level recall) may differ slightly.
* TP = matched pairs, FP = unmatched predictions, FN = unmatched GT. Aggregation is **micro**:
  TP/FP/FN are summed over images before P = TP/(TP+FP), R = TP/(TP+FN), F1 = 2PR/(P+R),
  with 0/0 defined as 0.

Points are ``(x, y)`` in pixels of the original image (docs/architecture.md).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Iterable, Literal, NamedTuple, Sequence

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree

__all__ = [
    "MatchResult",
    "match_points",
    "match_points_multi",
    "localization_metrics",
    "fixed_thresholds",
    "knn_thresholds",
    "BoxSigmas",
    "nwpu_sigmas_from_boxes",
    "head_size_level",
    "qnrf_average_metrics",
    "per_level_recall",
]

#: Neighbours per GT point taken from the k-NN query in ``_candidates`` (measured on NWPU val:
#: with 4, 0.4 % of GT points need the ball query; 2 leaves 8 %, 8 is no faster).
_KNN = 4


@dataclass(frozen=True)
class MatchResult:
    """Matching of one image. ``pairs``: ``(tp, 2)`` int64 rows ``(pred index, gt index)``."""

    tp: int
    fp: int
    fn: int
    pairs: np.ndarray = field(repr=False)


def _as_points(a: np.ndarray | Sequence, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) (x, y), got {arr.shape}")
    return arr


def _as_thresholds(thresholds: float | np.ndarray | Sequence[float], n: int) -> np.ndarray:
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(n, float(t))
    elif t.shape != (n,):
        raise ValueError(f"thresholds must be a scalar or have shape ({n},), got {t.shape}")
    if np.any(np.isnan(t)) or np.any(t < 0):
        raise ValueError("thresholds must be >= 0 (and not NaN)")
    return t


def _candidates(pred: np.ndarray, gt: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (gt index, pred index, squared distance) with distance <= radius[gt] (exact test), sorted
    by gt index, then pred index.

    The few nearest predictions of every GT point come from one vectorised k-NN query; only the GT
    points whose k-th neighbour is still inside their radius (crowded ones) are asked for all
    neighbours in the radius (a ball query, which builds Python lists and costs far more per pair).
    """
    tree = cKDTree(pred)
    # Slightly enlarged radii so the tree never drops a boundary pair; the exact test follows.
    r = radius * (1 + 1e-6) + 1e-6
    k = min(_KNN, len(pred))
    dist, idx = tree.query(gt, k=k, distance_upper_bound=float(r.max()))
    dist, idx = dist.reshape(len(gt), k), idx.reshape(len(gt), k)
    inside = dist <= r[:, None]  # absent neighbours have dist inf
    more = inside[:, -1].copy() if k < len(pred) else np.zeros(len(gt), dtype=bool)
    inside[more] = False
    gi, col = np.nonzero(inside)
    pi = idx[gi, col]
    if more.any():
        rows = np.flatnonzero(more)
        hits = tree.query_ball_point(gt[rows], r=r[rows], return_sorted=False)
        lens = np.fromiter(map(len, hits), dtype=np.int64, count=len(hits))
        gi = np.concatenate([gi, np.repeat(rows, lens)])
        pi = np.concatenate([pi, np.fromiter(itertools.chain.from_iterable(hits), dtype=np.int64,
                                             count=int(lens.sum()))])
    order = np.lexsort((pi, gi))
    gi, pi = gi[order].astype(np.int64), pi[order].astype(np.int64)
    d2 = ((pred[pi] - gt[gi]) ** 2).sum(axis=1)
    keep = d2 <= radius[gi] ** 2
    return gi[keep], pi[keep], d2[keep]


def _overflow_scale(pred: np.ndarray, gt: np.ndarray, thresholds: list[np.ndarray]) -> float:
    """1, or the power of two that brings coordinates and radii below 2**400 when they are so
    large (above ~1e150) that squared distances overflow float64 (the KD-tree refuses them)."""
    finite = [np.abs(pred).max(), np.abs(gt).max()] + [t[np.isfinite(t)].max(initial=0.0) for t in thresholds]
    top = float(max(finite))
    if not np.isfinite(top) or top <= 2.0**400:
        return 1.0
    return 2.0 ** (int(np.ceil(np.log2(top))) - 400)


def _max_matching(gi: np.ndarray, pi: np.ndarray, n_gt: int, n_pred: int) -> MatchResult:
    if gi.size == 0:
        return MatchResult(0, n_pred, n_gt, np.zeros((0, 2), dtype=np.int64))
    # gi is sorted (see _candidates): the CSR rows are given directly, without a COO conversion
    indptr = np.zeros(n_gt + 1, dtype=np.int64)
    np.cumsum(np.bincount(gi, minlength=n_gt), out=indptr[1:])
    graph = csr_array((np.ones(gi.size, dtype=np.int8), pi, indptr), shape=(n_gt, n_pred))
    match = maximum_bipartite_matching(graph, perm_type="column")  # per GT row: pred col or -1
    gt_idx = np.flatnonzero(match >= 0)
    pairs = np.column_stack([match[gt_idx], gt_idx]).astype(np.int64)
    tp = int(gt_idx.size)
    return MatchResult(tp, n_pred - tp, n_gt - tp, pairs)


def match_points(pred: np.ndarray, gt: np.ndarray,
                 thresholds: float | np.ndarray | Sequence[float]) -> MatchResult:
    """Maximum-cardinality matching of ``pred (P, 2)`` to ``gt (G, 2)`` for one image.

    ``thresholds``: a scalar or ``(G,)`` per-GT radii in pixels; pred i may match gt j iff
    ``dist(i, j) <= thresholds[j]`` (inclusive). Empty inputs give all-FP / all-FN results.
    """
    return match_points_multi(pred, gt, [thresholds])[0]


def match_points_multi(pred: np.ndarray, gt: np.ndarray,
                       thresholds_list: Sequence[float | np.ndarray | Sequence[float]]) -> list[MatchResult]:
    """:func:`match_points` for several threshold sets on the same image (e.g. sigma_s and
    sigma_l, or t = 1..100), sharing one KD-tree query at the largest radii."""
    p = _as_points(pred, "pred")
    g = _as_points(gt, "gt")
    ts = [_as_thresholds(t, len(g)) for t in thresholds_list]
    if len(p) == 0 or len(g) == 0:
        empty = np.zeros((0, 2), dtype=np.int64)
        return [MatchResult(0, len(p), len(g), empty) for _ in ts]
    if not ts:
        return []
    scale = _overflow_scale(p, g, ts)
    if scale != 1.0:  # a power of two: the scaled squared-distance tests are the same, without overflow
        p, g, ts = p / scale, g / scale, [t / scale for t in ts]
    gi, pi, d2 = _candidates(p, g, np.max(np.stack(ts), axis=0))
    out = []
    for t in ts:
        keep = d2 <= t[gi] ** 2
        out.append(_max_matching(gi[keep], pi[keep], len(g), len(p)))
    return out


def localization_metrics(results: Iterable[MatchResult]) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 (plus summed tp, fp, fn and image count ``n``).

    0/0 is defined as 0 for P, R and F1.
    """
    tp = fp = fn = n = 0
    for r in results:
        tp += r.tp
        fp += r.fp
        fn += r.fn
        n += 1
    return _prf(tp, fp, fn) | {"tp": tp, "fp": fp, "fn": fn, "n": n}


def _prf(tp: float, fp: float, fn: float) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


# --------------------------------------------------------------------------- thresholds


def fixed_thresholds(gt: np.ndarray, sigma: float) -> np.ndarray:
    """The same threshold ``sigma`` (pixels) for every GT point (ShanghaiTech sigma = 4, 8, 16)."""
    return np.full(len(_as_points(gt, "gt")), float(sigma), dtype=np.float64)


def knn_thresholds(gt: np.ndarray, k: int = 1, scale: float = 0.5,
                   reduction: Literal["mean", "min"] = "mean",
                   fallback: float = float("inf")) -> np.ndarray:
    """Per-GT threshold ``scale * reduce(distances to the k nearest other GT points)``, pixels.

    The default (``k=1, scale=0.5``) is half the nearest-neighbour distance: the ``sigma_map`` the
    AutoScale localization scripts store. ``reduction`` ``"mean"`` (P2PNet-style density
    normalisation uses ``k=3``) or ``"min"``. A point with fewer than ``k`` neighbours uses the
    ones it has; a lone point gets ``fallback`` (default ``inf``, which is what a k=2 KD-tree
    query gives in the authors' script).
    """
    g = _as_points(gt, "gt")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if reduction not in ("mean", "min"):
        raise ValueError(f"reduction must be 'mean' or 'min', got {reduction!r}")
    n = len(g)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    if n == 1:
        return np.full(1, float(fallback))
    kk = min(k, n - 1)
    d, _ = cKDTree(g).query(g, k=kk + 1)
    d = np.asarray(d, dtype=np.float64).reshape(n, kk + 1)[:, 1:]  # drop self (distance 0)
    red = d.mean(axis=1) if reduction == "mean" else d.min(axis=1)
    return scale * red


class BoxSigmas(NamedTuple):
    """NWPU thresholds from head boxes (only boxes with positive area, see ``keep``)."""

    points: np.ndarray  # (M, 2) box centres (x, y)
    sigma_s: np.ndarray  # (M,) int(min(w, h) / 2)
    sigma_l: np.ndarray  # (M,) int(sqrt(w^2 + h^2) / 2)
    level: np.ndarray  # (M,) head-size level 0-5
    keep: np.ndarray  # (N,) bool, which input boxes were kept


def head_size_level(area: np.ndarray | float) -> np.ndarray:
    """NWPU head-size level from box area ``w*h`` (pixels^2): 0 for < 10, 1 for [10, 100),
    2 for [100, 1e3), 3 for [1e3, 1e4), 4 for [1e4, 1e5), 5 for >= 1e5.

    The published ranges are (1,10), (10,100), ... with the exact powers of ten unassigned; we put
    a power of ten in the upper class.
    """
    a = np.asarray(area, dtype=np.float64)
    return np.searchsorted(np.array([10.0, 1e2, 1e3, 1e4, 1e5]), a, side="right").astype(np.int64)


def nwpu_sigmas_from_boxes(boxes: np.ndarray) -> BoxSigmas:
    """NWPU ``sigma_s``, ``sigma_l`` and ``level`` from head boxes ``(N, 4)`` ``(x1, y1, x2, y2)``.

    ``w = x2 - x1``, ``h = y2 - y1``; the point is the box centre; ``sigma_s = int(min(w, h)/2)``,
    ``sigma_l = int(sqrt(w^2 + h^2)/2)``; boxes with zero (or negative) area are skipped.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    keep = (w > 0) & (h > 0)
    b, w, h = b[keep], w[keep], h[keep]
    centres = np.column_stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2])
    sigma_s = np.floor(np.minimum(w, h) / 2)
    sigma_l = np.floor(np.sqrt(w**2 + h**2) / 2)
    return BoxSigmas(centres, sigma_s, sigma_l, head_size_level(w * h), keep)


# --------------------------------------------------------------------------- aggregates


def qnrf_average_metrics(pred_list: Sequence[np.ndarray], gt_list: Sequence[np.ndarray],
                         thresholds: Iterable[float] = range(1, 101)) -> dict[str, object]:
    """UCF-QNRF style localization: micro P/R/F1 at each fixed threshold ``t`` (pixels, the same
    for every GT point), then the mean over thresholds.

    Returns ``precision`` / ``recall`` (means over t), ``f1`` (mean of the per-threshold F1),
    ``f1_from_mean_pr`` (F1 of the mean P and mean R), and ``per_threshold`` arrays
    (``thresholds``, ``precision``, ``recall``, ``f1``).
    """
    ts = np.asarray(list(thresholds), dtype=np.float64)
    if ts.size == 0:
        raise ValueError("thresholds is empty")
    if len(pred_list) != len(gt_list):
        raise ValueError(f"{len(pred_list)} prediction sets but {len(gt_list)} GT sets")
    sums = np.zeros((ts.size, 3), dtype=np.int64)  # tp, fp, fn per threshold
    for p, g in zip(pred_list, gt_list):
        for k, r in enumerate(match_points_multi(p, g, list(ts))):
            sums[k] += (r.tp, r.fp, r.fn)
    prf = np.array([[*_prf(*row).values()] for row in sums])
    mp, mr = float(prf[:, 0].mean()), float(prf[:, 1].mean())
    return {
        "precision": mp,
        "recall": mr,
        "f1": float(prf[:, 2].mean()),
        "f1_from_mean_pr": _prf_from_pr(mp, mr),
        "per_threshold": {"thresholds": ts, "precision": prf[:, 0], "recall": prf[:, 1],
                          "f1": prf[:, 2], "tp": sums[:, 0], "fp": sums[:, 1], "fn": sums[:, 2]},
    }


def _prf_from_pr(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def per_level_recall(results: Sequence[MatchResult], levels: Sequence[np.ndarray],
                     n_levels: int = 6) -> dict[str, object]:
    """NWPU per-head-size-level recall ``AR_c = TP_c / (TP_c + FN_c)`` summed over images.

    ``levels[i]`` holds the level of each GT point of image i (levels outside ``0..n_levels-1``
    are ignored). Returns ``recall`` (``(n_levels,)``,
    NaN for a level with no GT; the official scorer reports 0 there), ``mean`` (over levels with
    GT), ``tp`` and ``fn`` per level. Which GT points a maximum matching covers is not unique, so
    these can differ slightly from the official Kuhn-DFS scorer; overall TP/FP/FN cannot.
    """
    if len(results) != len(levels):
        raise ValueError(f"{len(results)} match results but {len(levels)} level arrays")
    tp_c = np.zeros(n_levels, dtype=np.int64)
    all_c = np.zeros(n_levels, dtype=np.int64)
    for r, lv in zip(results, levels):
        lv = np.asarray(lv, dtype=np.int64).ravel()
        if lv.size != r.tp + r.fn:
            raise ValueError(f"level array of size {lv.size} for an image with {r.tp + r.fn} GT points")
        hit = lv[r.pairs[:, 1]]
        all_c += np.bincount(lv[(lv >= 0) & (lv < n_levels)], minlength=n_levels)
        tp_c += np.bincount(hit[(hit >= 0) & (hit < n_levels)], minlength=n_levels)
    with np.errstate(invalid="ignore", divide="ignore"):
        rec = np.where(all_c > 0, tp_c / np.maximum(all_c, 1), np.nan)
    mean = float(np.nanmean(rec)) if np.any(all_c > 0) else float("nan")
    return {"recall": rec, "mean": mean, "tp": tp_c, "fn": all_c - tp_c}
