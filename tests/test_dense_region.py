"""Dense-region selection vs brute-force references and hand-made cases."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from autoscale.dense_region import (
    Region,
    dense_mask_localization,
    dense_mask_regression,
    find_dense_regions,
    select_dense_regions,
)
from autoscale.errors import ConfigError


def bfs_components(mask: np.ndarray) -> list[tuple[list[tuple[int, int]], tuple[int, int]]]:
    """Reference: 8-connected components by BFS, in raster order of their first pixel.
    Returns (pixels, first_pixel) per component."""
    H, W = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    for r in range(H):
        for c in range(W):
            if not mask[r, c] or seen[r, c]:
                continue
            q = deque([(r, c)])
            seen[r, c] = True
            pix = []
            while q:
                y, x = q.popleft()
                pix.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < H and 0 <= xx < W and mask[yy, xx] and not seen[yy, xx]:
                            seen[yy, xx] = True
                            q.append((yy, xx))
            comps.append((pix, (r, c)))
    return comps


def ref_largest(mask: np.ndarray):
    comps = bfs_components(mask)
    if not comps:
        return None
    best = max(range(len(comps)), key=lambda i: (len(comps[i][0]), -i))  # first on ties
    pix = np.array(comps[best][0])
    y0, x0 = pix.min(0)
    y1, x1 = pix.max(0)
    return (int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)), len(pix)


@pytest.mark.parametrize("seed", range(40))
def test_largest_component_matches_bfs(seed):
    rng = np.random.default_rng(seed)
    H, W = rng.integers(1, 25, size=2)
    # blocky random masks: many ties in size, diagonal-only contacts, border touching
    mask = rng.random((H, W)) < rng.uniform(0.1, 0.6)
    ref = ref_largest(mask)
    regions = select_dense_regions(mask, area_ratio=0.0)
    if ref is None:
        assert regions == []
        return
    (box, area) = ref
    assert len(regions) == 1
    assert regions[0].box == box
    assert regions[0].area == area
    assert regions[0].area_ratio == pytest.approx(box[2] * box[3] / (H * W))
    # the official criterion picks *some* 8-connected component: its box and pixel count agree
    comp_boxes = set()
    for pix, _ in bfs_components(mask):
        p = np.array(pix)
        (y0, x0), (y1, x1) = p.min(0), p.max(0)
        comp_boxes.add(((int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)), len(pix)))
    (off,) = select_dense_regions(mask, area_ratio=0.0, criterion="official")
    assert (off.box, off.area) in comp_boxes


def test_tie_goes_to_first_in_raster_order():
    m = np.zeros((6, 8), bool)
    m[4:6, 0:2] = True  # 4 px, first pixel at row 4
    m[0:2, 6:8] = True  # 4 px, first pixel at row 0 -> wins
    (r,) = select_dense_regions(m, area_ratio=0.0)
    assert r.box == (6, 0, 2, 2)


def test_diagonal_contact_is_connected():
    m = np.eye(5, dtype=bool)
    (r,) = select_dense_regions(m, area_ratio=0.0)
    assert (r.box, r.area) == ((0, 0, 5, 5), 5)


@pytest.mark.parametrize("criterion", ["area", "official"])
def test_edge_cases(criterion):
    assert select_dense_regions(np.zeros((7, 5), bool), criterion=criterion) == []
    (r,) = select_dense_regions(np.ones((7, 5), bool), criterion=criterion)
    assert (r.box, r.area, r.area_ratio) == ((0, 0, 5, 7), 35, 1.0)
    (r,) = select_dense_regions(np.ones((1, 1), bool), criterion=criterion)
    assert (r.box, r.area) == ((0, 0, 1, 1), 1)
    assert select_dense_regions(np.zeros((1, 1), bool), criterion=criterion) == []
    # touching the bottom-right border
    m = np.zeros((10, 10), bool)
    m[6:10, 7:10] = True
    (r,) = select_dense_regions(m, area_ratio=0.0, criterion=criterion)
    assert (r.box, r.area) == ((7, 6, 3, 4), 12)


def test_gate_is_strict_and_uses_box_area():
    H, W = 10, 20  # 200 px
    m = np.zeros((H, W), bool)
    m[0:4, 0:5] = True  # box 20 px = 0.1 of the image
    assert select_dense_regions(m, area_ratio=0.1) == []  # equal: not kept
    assert len(select_dense_regions(m, area_ratio=0.0999)) == 1
    m[4, 5] = True  # box grows to 6x5 = 30 px (ratio 0.15), component only 21 px
    (r,) = select_dense_regions(m, area_ratio=0.1)
    assert (r.area, r.area_ratio) == (21, pytest.approx(0.15))
    # a thin diagonal: 10 px component, 10x10 box -> ratio 0.5 > 0.4
    d = np.zeros((H, W), bool)
    d[np.arange(10), np.arange(10)] = True
    assert select_dense_regions(d, area_ratio=0.4)[0].area_ratio == pytest.approx(0.5)


def test_gate_applies_to_the_maximal_region_only():
    m = np.zeros((20, 20), bool)
    m[0:4, 0:4] = True  # 16 px, box ratio 0.04
    m[10:11, 0:12] = True  # 12 px, box ratio 0.03
    assert select_dense_regions(m, area_ratio=0.035) != []
    assert select_dense_regions(m, area_ratio=0.05) == []  # largest fails -> nothing


def test_top_k_skips_overlapping_boxes():
    m = np.zeros((20, 20), bool)
    m[0:6, 0:6] = True  # 36 px
    # an L-shaped component wrapping around: its box overlaps the first box
    m[0:10, 8] = True
    m[9, 0:9] = True  # 9 + 10 = 19 px, box (0,0,9,10) overlaps
    m[14:18, 14:18] = True  # 16 px, disjoint
    regs = select_dense_regions(m, area_ratio=0.0, top_k=2)
    assert [r.box for r in regs] == [(0, 0, 6, 6), (14, 14, 4, 4)]
    assert len(select_dense_regions(m, area_ratio=0.0, top_k=5)) == 2
    assert Region(0, 0, 6, 6, 36, 0.0).overlaps(Region(5, 5, 2, 2, 4, 0.0))
    assert not Region(0, 0, 6, 6, 36, 0.0).overlaps(Region(6, 0, 2, 2, 4, 0.0))


def test_official_criterion_area_times_vertices():
    m = np.zeros((30, 30), bool)
    m[0:10, 0:10] = True  # 100 px; contour through pixel centres: area 9*9 = 81, 4 vertices -> 324
    m[18:21, 15:24] = True  # a plus of 45 px: bars 9x3; the 8-connected border cuts each
    m[15:24, 18:21] = True  # concave corner diagonally: 16 vertices, area 8*2*2 - 4 + 4/2 = 30 -> 480
    big = select_dense_regions(m, area_ratio=0.0)[0]
    off = select_dense_regions(m, area_ratio=0.0, criterion="official")[0]
    assert (big.box, big.area) == ((0, 0, 10, 10), 100)
    assert (off.box, off.area) == ((15, 15, 9, 9), 45)


def test_official_ties_go_to_last_contour():
    import cv2

    m = np.zeros((10, 10), bool)
    m[0:3, 0:3] = True
    m[6:9, 6:9] = True  # equal score 4 * 4 for both
    cs, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    listed = [tuple(cv2.boundingRect(c)) for c in cs]
    regs = select_dense_regions(m, area_ratio=0.0, criterion="official", top_k=2)
    assert [r.box for r in regs] == listed[::-1]  # the later contour ranks first


def test_regression_threshold_paper():
    d = np.zeros((4, 5))
    d[0, 0] = 1.0  # mean 0.05 -> 2*mean = 0.1
    d[1, 1] = 0.1  # exactly at 2*mean: not dense
    d[2, 2] = 0.10001
    # recompute the expectation independently
    thr = 2 * d.mean()
    assert dense_mask_regression(d).tolist() == (d > thr).tolist()
    assert not dense_mask_regression(np.full((3, 3), 0.5)).any()  # constant: nothing above 2x
    exact = np.array([[3.0, 0.0, 0.0]])  # mean 1, 3 > 2*1 only at [0,0]
    assert dense_mask_regression(exact).tolist() == [[True, False, False]]
    assert not dense_mask_regression(np.array([[2.0, 1.0, 0.0]]), k=1.0)[0, 1]  # == k*mean


def test_regression_threshold_degenerate_maps():
    for d in (np.zeros((3, 3)), -np.ones((3, 3)), np.array([[-5.0, 1.0]])):
        for method in ("paper", "official"):
            assert not dense_mask_regression(d, method=method).any()


def test_regression_threshold_official():
    # 100 px, max 1: T = 255 * 4 * mean; values are normalised and *truncated* to uint8
    a = np.zeros((10, 10))
    a[0, 0], a[0, 1] = 1.0, 0.0439  # 11.19 -> 11 > T = 10.2 * 1.0439 = 10.648: dense
    assert dense_mask_regression(a, k=4, method="official").tolist()[0][:3] == [True, True, False]
    b = np.zeros((10, 10))
    b[0, 0], b[0, 1] = 1.0, 0.0419  # 10.68 -> 10 < T = 10.2 * 1.0419 = 10.627: not dense
    assert dense_mask_regression(b, k=4, method="official").sum() == 1
    assert dense_mask_regression(b, k=4, method="paper").sum() == 2  # 0.0419 > 4 * 0.010419
    # the cap: a map where 4*mean > 150/255*max; pixels at 0.6*max are kept anyway
    c = np.full((2, 2), 0.6)
    c[0, 0] = 1.0  # mean 0.7 -> 4*mean = 2.8 > max, uncapped nothing would pass
    assert dense_mask_regression(c, k=4, method="paper").sum() == 0
    assert dense_mask_regression(c, k=4, method="official").all()  # 153 > 150
    c[1, 1] = 0.58  # 147.9 -> 147 <= 150
    assert dense_mask_regression(c, k=4, method="official").tolist() == [[True, True], [True, False]]
    # negatives -> 0, never dense
    n = np.array([[1.0, -0.5, 0.0, 0.0]])  # mean 0.125 > 0, T = 3.19
    assert dense_mask_regression(n, k=0.1, method="official").tolist() == [[True, False, False, False]]


def test_localization_threshold():
    cm = np.arange(11).reshape(1, 11)
    assert np.flatnonzero(dense_mask_localization(cm)).tolist() == list(range(8))
    assert np.flatnonzero(dense_mask_localization(cm, method="official")).tolist() == list(range(8))
    # official quirk: the cut depends on the map's max class
    assert np.flatnonzero(dense_mask_localization(cm[:, :10], method="official")).tolist() == list(range(7))
    assert np.flatnonzero(dense_mask_localization(cm[:, :10])).tolist() == list(range(8))
    assert dense_mask_localization(np.zeros((2, 2), int), method="official").all()


def test_find_dense_regions_end_to_end_and_torch_input():
    d = np.full((20, 30), 0.01)
    d[5:12, 10:20] = 0.5  # box 70 px of 600 (0.117) > 0.1
    d[15:17, 0:2] = 0.5
    (r,) = find_dense_regions(torch.from_numpy(d)[None, None], "regression")
    assert r.box == (10, 5, 10, 7)
    assert find_dense_regions(d, "regression", area_ratio=0.2) == []
    cm = np.full((20, 30), 10)
    cm[2:6, 3:9] = 4  # 24/600 = 0.04 > 0.02
    (r,) = find_dense_regions(cm, "localization")
    assert r.box == (3, 2, 6, 4)
    (r,) = find_dense_regions(cm, "localization", method="official")
    assert r.box == (3, 2, 6, 4)
    with pytest.raises(ConfigError):
        find_dense_regions(cm, "segmentation")
    with pytest.raises(ConfigError):
        select_dense_regions(cm < 5, criterion="perimeter")
