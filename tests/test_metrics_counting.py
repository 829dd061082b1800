"""Counting metrics: MAE/RMSE/NAE by hand, GAME against a literal recursive reference."""
from __future__ import annotations

import math

import numpy as np
import pytest

from autoscale.metrics.counting import (
    counting_metrics,
    game,
    game_metrics,
    game_split_edges,
    grouped_counting_metrics,
    jhu_density_group,
    mean_group_mae,
    nwpu_counting_report,
)


def test_counting_metrics_by_hand():
    # errors 2, 0, -5; NAE skips the gt = 0 image: (2/8 + 5/10) / 2
    m = counting_metrics([10, 0, 5], [8, 0, 10])
    assert m["n"] == 3
    assert m["mae"] == pytest.approx(7 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(29 / 3))
    assert m["mse"] == m["rmse"]  # the field's "MSE" is the root mean square error
    assert m["nae"] == pytest.approx(0.375)


def test_counting_metrics_edge_cases():
    assert math.isnan(counting_metrics([3.0], [0.0])["nae"])  # no image with gt > 0
    assert counting_metrics([3.0], [0.0])["mae"] == 3.0
    empty = counting_metrics([], [])
    assert empty["n"] == 0 and math.isnan(empty["mae"])
    with pytest.raises(ValueError):
        counting_metrics([1, 2], [1])


# ---------------------------------------------------------------- GAME reference


def _game_rec(pred: np.ndarray, gt: np.ndarray, level: int) -> float:
    """Literal transcription of the recursive rule on array slices (independent of ours)."""
    if level == 0:
        return abs(float(pred.sum()) - float(gt.sum()))
    h, w = pred.shape
    yh, xh = int(h / 2), int(w / 2)
    total = 0.0
    for ys in (slice(0, yh), slice(yh, h)):
        for xs in (slice(0, xh), slice(xh, w)):
            total += _game_rec(pred[ys, xs], gt[ys, xs], level - 1)
    return total


def _raster(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape)
    for x, y in points:
        if 0 <= x < shape[1] and 0 <= y < shape[0]:
            out[int(math.floor(y)), int(math.floor(x))] += 1
    return out


def test_split_edges_odd_size_by_hand():
    # 13 -> [0,6) [6,13) -> [0,3) [3,6) [6,9) [9,13) -> cuts at 1, 4, 7, 11.
    assert game_split_edges(13, 3).tolist() == [0, 1, 3, 4, 6, 7, 9, 11, 13]
    # floor(k*13/8) would put the 6th edge at 8, not 7: the rules differ for odd sizes.
    assert [math.floor(k * 13 / 8) for k in range(9)][5] == 8
    assert game_split_edges(1, 1).tolist() == [0, 0, 1]
    assert game_split_edges(10, 0).tolist() == [0, 10]


def test_game_odd_size_hand_example():
    # 13x1 map: prediction mass in row 6, GT head in row 7. The recursive split separates rows
    # 6 and 7 only at level 3 (blocks [6,7) and [7,9)); floor(k*H/8) edges would not.
    pred = np.zeros((13, 1))
    pred[6, 0] = 1.0
    gt = np.array([[0.5, 7.2]])
    assert game(pred, gt, 0) == 0.0
    assert game(pred, gt, 1) == 0.0  # both in rows [6, 13)
    assert game(pred, gt, 2) == 0.0  # both in rows [6, 9)
    assert game(pred, gt, 3) == 2.0


def test_game_matches_recursive_reference_random():
    rng = np.random.default_rng(0)
    for _ in range(25):
        h, w = int(rng.integers(1, 24)), int(rng.integers(1, 24))
        pred = rng.random((h, w))
        pts = np.column_stack([rng.uniform(-2, w + 2, 30), rng.uniform(-2, h + 2, 30)])
        roi = rng.random((h, w)) > 0.3
        gmap = _raster(pts, (h, w))
        for level in range(4):
            ref = _game_rec(pred, gmap, level)
            assert game(pred, pts, level) == pytest.approx(ref, abs=1e-9)
            assert game(pred, gmap, level, gt_kind="map") == pytest.approx(ref, abs=1e-9)
            ref_roi = _game_rec(pred * roi, gmap * roi, level)
            assert game(pred, pts, level, roi=roi) == pytest.approx(ref_roi, abs=1e-9)


def test_game_points_rasterise_floor_and_drop_outside():
    pred = np.zeros((4, 4))
    # (3.999, 1.0) is column 3; (4.0, 1.0) and (-0.01, 0) are outside and dropped.
    pts = np.array([[3.999, 1.0], [4.0, 1.0], [-0.01, 0.0]])
    assert game(pred, pts, 0) == 1.0
    pred[1, 3] = 1.0
    assert game(pred, pts, 2) == 0.0
    assert game(np.zeros((3, 3)), np.zeros((0, 2)), 1) == 0.0


def test_game0_is_absolute_count_error_and_roi_masks_both():
    pred = np.full((5, 6), 0.5)  # sum 15
    pts = np.array([[0.5, 0.5], [5.5, 4.5]])
    assert game(pred, pts, 0) == pytest.approx(13.0)
    roi = np.zeros((5, 6), dtype=np.uint8)
    roi[0, 0] = 255  # keeps 0.5 of prediction and one head
    assert game(pred, pts, 0, roi=roi) == pytest.approx(0.5)


def test_game_metrics_means_per_level():
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[0, 0] = 2.0  # vs one head at (3.5, 3.5): GAME0 1, GAME1 3
    pts_a = np.array([[3.5, 3.5]])
    pts_b = np.zeros((0, 2))
    m = game_metrics([a, b], [pts_a, pts_b], levels=(0, 1))
    assert m["game0"] == pytest.approx(0.5)
    assert m["game1"] == pytest.approx(1.5)
    assert m["n"] == 2


def test_game_rejects_ambiguous_or_bad_input():
    with pytest.raises(ValueError):
        game(np.zeros((3, 2)), np.zeros((3, 2)), 1)  # map or 3 points? must say
    with pytest.raises(ValueError):
        game(np.zeros((3, 3)), np.zeros((3, 3)), 1, roi=np.ones((2, 2)))
    with pytest.raises(ValueError):
        game(np.zeros((3, 3)), np.zeros((0, 2)), -1)


# ---------------------------------------------------------------- groups


def test_grouped_metrics_and_jhu_groups():
    gt = [10, 50, 51, 500, 501, 2000]
    pred = [12, 40, 61, 500, 401, 2100]
    groups = [jhu_density_group(c) for c in gt]
    assert groups == ["low", "low", "medium", "medium", "high", "high"]
    g = grouped_counting_metrics(pred, gt, groups)
    assert g["low"]["mae"] == pytest.approx(6.0)
    assert g["medium"]["mae"] == pytest.approx(5.0)
    assert g["high"]["mae"] == pytest.approx(100.0)
    assert g["high"]["n"] == 2
    assert mean_group_mae(g) == pytest.approx(37.0)


def test_nwpu_counting_report_by_hand():
    gt = {1: 0.0, 2: 10.0, 3: 100.0, 4: 20.0}
    pred = {1: 2.0, 2: 12.0, 3: 90.0, 4: 20.0, 99: 5.0}  # extra ids are ignored
    meta = {1: (0, 0), 2: (1, 1), 3: (1, 2), 4: (2, 1)}
    r = nwpu_counting_report(pred, gt, meta)
    assert r["overall"]["mae"] == pytest.approx(14 / 4)
    assert r["levels"][1]["mae"] == pytest.approx(1.0)  # images 2 and 4: errors 2, 0
    assert r["mmae_level"] == pytest.approx((2 + 1 + 10) / 3)
    assert r["mmae_illum"] == pytest.approx((2 + 6 + 0) / 3)
    assert math.isnan(r["levels"][0]["nae"])  # negative image only
    with pytest.raises(KeyError):
        nwpu_counting_report({1: 0.0}, gt, meta)
