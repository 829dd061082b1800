"""Localization matching vs an exhaustive reference, thresholds, micro metrics, benchmark smoke."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from autoscale.metrics.localization import (
    MatchResult,
    fixed_thresholds,
    head_size_level,
    knn_thresholds,
    localization_metrics,
    match_points,
    match_points_multi,
    nwpu_sigmas_from_boxes,
    per_level_recall,
    qnrf_average_metrics,
)

ROOT = Path(__file__).resolve().parents[1]


def _brute_max_matching(allowed: list[list[bool]]) -> int:
    """Maximum matching size by exhaustive search: each GT row is unmatched or takes a free pred."""
    n_g = len(allowed)

    def best(j: int, used: frozenset) -> int:
        if j == n_g:
            return 0
        res = best(j + 1, used)
        for i, ok in enumerate(allowed[j]):
            if ok and i not in used:
                res = max(res, 1 + best(j + 1, used | {i}))
        return res

    return best(0, frozenset())


def _allowed(pred, gt, thr) -> list[list[bool]]:
    return [[math.dist(p, g) <= t for p in pred] for g, t in zip(gt, thr)]


def test_matching_equals_exhaustive_on_random_small_cases():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n_p, n_g = int(rng.integers(0, 7)), int(rng.integers(0, 7))
        # integer grid coordinates: many exact ties and distances equal to the threshold
        pred = rng.integers(0, 6, size=(n_p, 2)).astype(float)
        gt = rng.integers(0, 6, size=(n_g, 2)).astype(float)
        thr = rng.integers(0, 4, size=n_g).astype(float)
        r = match_points(pred, gt, thr)
        allowed = _allowed(pred.tolist(), gt.tolist(), thr.tolist())
        assert r.tp == _brute_max_matching(allowed)
        assert r.tp + r.fp == n_p and r.tp + r.fn == n_g
        # pairs are a valid matching within the GT point's own threshold
        assert len(set(r.pairs[:, 0].tolist())) == r.tp == len(set(r.pairs[:, 1].tolist()))
        for i, j in r.pairs.tolist():
            assert allowed[j][i]


def test_candidate_pairs_equal_brute_force_where_many_neighbours_are_in_range():
    """The k-NN query keeps a few neighbours per GT point; crowded points (more than that in
    range) must still get every pair, including pairs exactly at the radius."""
    from autoscale.metrics.localization import _KNN, _candidates
    rng = np.random.default_rng(1)
    crowded = 0
    for _ in range(200):
        n_p, n_g = int(rng.integers(1, 40)), int(rng.integers(1, 12))
        pred = rng.integers(0, 8, size=(n_p, 2)).astype(float)
        gt = rng.integers(0, 8, size=(n_g, 2)).astype(float)
        radius = rng.integers(0, 6, size=n_g).astype(float)
        gi, pi, d2 = _candidates(pred, gt, radius)
        want = sorted((j, i) for j in range(n_g) for i in range(n_p) if math.dist(pred[i], gt[j]) <= radius[j])
        assert list(zip(gi.tolist(), pi.tolist())) == want
        np.testing.assert_array_equal(d2, ((pred[pi] - gt[gi]) ** 2).sum(axis=1))
        crowded += int(np.any(np.bincount(gi, minlength=n_g) > _KNN))
    assert crowded > 50  # the ball-query path ran


def test_greedy_nearest_is_suboptimal_but_we_are_not():
    # GT A (0,0), GT B (4,0), threshold 3. p1 (1,0) is nearest to A; p2 (-2,0) only reaches A.
    # Greedy nearest-first gives A-p1 and leaves B unmatched; the maximum matching is A-p2, B-p1
    # (B-p1 at distance exactly 3 = threshold, inclusive).
    gt = np.array([[0.0, 0.0], [4.0, 0.0]])
    pred = np.array([[1.0, 0.0], [-2.0, 0.0]])
    r = match_points(pred, gt, 3.0)
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)
    assert sorted(map(tuple, r.pairs.tolist())) == [(0, 1), (1, 0)]


def test_threshold_is_inclusive_and_per_gt():
    gt = np.array([[0.0, 0.0]])
    pred = np.array([[3.0, 4.0]])  # distance exactly 5
    assert match_points(pred, gt, 5.0).tp == 1
    assert match_points(pred, gt, np.nextafter(5.0, 0)).tp == 0
    # the GT point's own threshold decides, not the prediction's neighbourhood
    gt2 = np.array([[0.0, 0.0], [20.0, 0.0]])
    pred2 = np.array([[0.0, 2.0], [20.0, 2.0]])
    r = match_points(pred2, gt2, [1.0, 2.0])
    assert (r.tp, r.fp, r.fn) == (1, 1, 1) and r.pairs.tolist() == [[1, 1]]
    assert match_points(pred, gt, 0.0).tp == 0
    assert match_points(gt, gt, 0.0).tp == 1  # coincident points match at threshold 0


def test_empty_inputs():
    r = match_points(np.zeros((0, 2)), np.array([[1.0, 1.0], [2, 2]]), 4)
    assert (r.tp, r.fp, r.fn) == (0, 0, 2)
    r = match_points(np.array([[1.0, 1.0]]), np.zeros((0, 2)), [])
    assert (r.tp, r.fp, r.fn) == (0, 1, 0)
    r = match_points([], [], 4)
    assert (r.tp, r.fp, r.fn) == (0, 0, 0) and r.pairs.shape == (0, 2)
    with pytest.raises(ValueError):
        match_points(np.zeros((2, 2)), np.zeros((2, 2)), [1.0])  # wrong threshold length
    with pytest.raises(ValueError):
        match_points(np.zeros((2, 2)), np.zeros((2, 2)), -1.0)


def test_multi_equals_separate_calls():
    rng = np.random.default_rng(1)
    pred = rng.uniform(0, 50, (80, 2))
    gt = rng.uniform(0, 50, (70, 2))
    ths = [2.0, rng.uniform(0, 6, 70), 8.0]
    multi = match_points_multi(pred, gt, ths)
    for r, t in zip(multi, ths):
        s = match_points(pred, gt, t)
        assert (r.tp, r.fp, r.fn) == (s.tp, s.fp, s.fn)


def test_localization_metrics_micro_average():
    empty = np.zeros((0, 2), dtype=np.int64)
    res = [MatchResult(8, 2, 0, empty), MatchResult(0, 0, 10, empty)]
    m = localization_metrics(res)
    # micro: P = 8/10, R = 8/18 (a macro average would give R = (1 + 0)/2)
    assert m["precision"] == pytest.approx(0.8)
    assert m["recall"] == pytest.approx(8 / 18)
    assert m["f1"] == pytest.approx(2 * 0.8 * (8 / 18) / (0.8 + 8 / 18))
    assert (m["tp"], m["fp"], m["fn"], m["n"]) == (8, 2, 10, 2)
    z = localization_metrics([MatchResult(0, 0, 0, empty)])
    assert (z["precision"], z["recall"], z["f1"]) == (0.0, 0.0, 0.0)


# ---------------------------------------------------------------- thresholds


def test_knn_thresholds_by_hand_and_brute_force():
    g = np.array([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]])
    assert knn_thresholds(g).tolist() == [1.5, 1.5, 2.0]
    # k=2 mean: (3+5)/2, (3+4)/2, (4+5)/2, halved
    assert knn_thresholds(g, k=2).tolist() == pytest.approx([2.0, 1.75, 2.25])
    assert knn_thresholds(g, k=2, scale=1.0, reduction="min").tolist() == [3.0, 3.0, 4.0]
    assert knn_thresholds(g, k=5, scale=1.0).tolist() == pytest.approx([4.0, 3.5, 4.5])  # uses the 2 it has
    assert knn_thresholds(g[:1]).tolist() == [math.inf]
    assert knn_thresholds(g[:1], fallback=8.0).tolist() == [8.0]
    assert knn_thresholds(np.zeros((0, 2))).shape == (0,)
    rng = np.random.default_rng(2)
    pts = rng.uniform(0, 100, (40, 2))
    d = np.linalg.norm(pts[:, None] - pts[None], axis=2)
    np.fill_diagonal(d, np.inf)
    ref = np.sort(d, axis=1)[:, :3].mean(axis=1) * 0.3
    assert knn_thresholds(pts, k=3, scale=0.3) == pytest.approx(ref)
    assert fixed_thresholds(pts, 4).tolist() == [4.0] * 40


def test_nwpu_sigmas_from_boxes_by_hand():
    boxes = np.array([[10, 20, 16, 28],  # w 6, h 8: sigma_s 3, sigma_l 5, area 48 -> level 1
                      [0, 0, 0, 5],  # zero width: skipped
                      [5, 5, 8, 6]])  # w 3, h 1: sigma_s int(0.5) = 0, sigma_l int(1.58) = 1, area 3
    s = nwpu_sigmas_from_boxes(boxes)
    assert s.keep.tolist() == [True, False, True]
    assert s.points.tolist() == [[13.0, 24.0], [6.5, 5.5]]
    assert s.sigma_s.tolist() == [3, 0] and s.sigma_l.tolist() == [5, 1]
    assert s.level.tolist() == [1, 0]
    assert head_size_level([1, 9.99, 10, 99, 100, 999, 1e3, 5e4, 1e5, 1e7]).tolist() == \
        [0, 0, 1, 1, 2, 2, 3, 4, 5, 5]


def test_qnrf_average_matches_per_threshold_brute_force():
    rng = np.random.default_rng(3)
    preds = [rng.integers(0, 12, (int(rng.integers(0, 6)), 2)).astype(float) for _ in range(6)]
    gts = [rng.integers(0, 12, (int(rng.integers(0, 6)), 2)).astype(float) for _ in range(6)]
    ts = [1, 2, 3, 5]
    ps, rs, fs = [], [], []
    for t in ts:
        tp = fp = fn = 0
        for p, g in zip(preds, gts):
            m = _brute_max_matching(_allowed(p.tolist(), g.tolist(), [t] * len(g)))
            tp, fp, fn = tp + m, fp + len(p) - m, fn + len(g) - m
        P = tp / (tp + fp) if tp + fp else 0.0
        R = tp / (tp + fn) if tp + fn else 0.0
        ps.append(P)
        rs.append(R)
        fs.append(2 * P * R / (P + R) if P + R else 0.0)
    out = qnrf_average_metrics(preds, gts, ts)
    assert out["precision"] == pytest.approx(np.mean(ps))
    assert out["recall"] == pytest.approx(np.mean(rs))
    assert out["f1"] == pytest.approx(np.mean(fs))
    mp, mr = np.mean(ps), np.mean(rs)
    assert out["f1_from_mean_pr"] == pytest.approx(2 * mp * mr / (mp + mr))
    assert out["per_threshold"]["f1"].tolist() == pytest.approx(fs)


def test_per_level_recall_by_hand():
    gt = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    pred = np.array([[0.0, 1.0], [20.0, 1.0]])
    r = match_points(pred, gt, 2.0)
    out = per_level_recall([r], [np.array([0, 0, 3])], n_levels=6)
    rec = out["recall"]
    assert rec[0] == 0.5 and rec[3] == 1.0 and np.isnan(rec[1])
    assert out["mean"] == pytest.approx(0.75)
    assert out["tp"].tolist() == [1, 0, 0, 1, 0, 0] and out["fn"].tolist() == [1, 0, 0, 0, 0, 0]


# ---------------------------------------------------------------- benchmark smoke


def test_bench_matching_smoke(shared_data, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_matching", ROOT / "benchmarks" / "bench_matching.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ref = shared_data / "eval_reference" / "nwpu_val"
    res = bench.main(["--gt", str(ref / "val_gt_loc.txt"), "--pred", str(ref / "pred_raz_loc.txt"),
                      "--limit", "4", "--repeat", "1", "--out-dir", str(tmp_path)])
    assert res["identical_tp_fp_fn"] is True and res["data"]["n_images"] == 4
    saved = json.loads((tmp_path / "matching.json").read_text())
    assert {"command", "seed", "seconds", "metrics"} <= saved.keys()
    assert saved["metrics"]["large"]["tp"] >= saved["metrics"]["small"]["tp"] > 0  # sigma_l >= sigma_s
    assert (tmp_path / "matching.md").read_text().startswith("# Localization matching benchmark")


def test_reference_kuhn_equals_exhaustive():
    """The benchmark's pure-Python reference is itself checked against exhaustive search."""
    spec = importlib.util.spec_from_file_location("bench_matching", ROOT / "benchmarks" / "bench_matching.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(4)
    for _ in range(100):
        n_p, n_g = int(rng.integers(0, 7)), int(rng.integers(0, 7))
        pred = rng.integers(0, 5, (n_p, 2)).astype(float)
        gt = rng.integers(0, 5, (n_g, 2)).astype(float)
        thr = rng.integers(0, 3, n_g).astype(float)
        tp, fp, fn = bench.reference_counts(pred, gt, thr)
        assert tp == _brute_max_matching(_allowed(pred.tolist(), gt.tolist(), thr.tolist()))
