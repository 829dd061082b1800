"""Map -> points post-processing vs brute-force references and hand-computed cases."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
from scipy import ndimage

from autoscale.dense_region import Region
from autoscale.postprocess import (
    count_people,
    count_people_outside,
    density_peaks,
    find_minima,
    knn_boxes,
    map_points_back,
    regional_minima,
)

N4 = ((-1, 0), (1, 0), (0, -1), (0, 1))
N8 = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def flood(mask_fn, H, W, nbrs):
    """Reference components: BFS over pixels where two neighbours are joined iff mask_fn(a, b)."""
    seen = np.zeros((H, W), bool)
    comps = []
    for r in range(H):
        for c in range(W):
            if seen[r, c] or not mask_fn((r, c), (r, c)):
                continue
            seen[r, c] = True
            q, pix = deque([(r, c)]), []
            while q:
                y, x = q.popleft()
                pix.append((y, x))
                for dy, dx in nbrs:
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < H and 0 <= xx < W and not seen[yy, xx] and mask_fn((y, x), (yy, xx)):
                        seen[yy, xx] = True
                        q.append((yy, xx))
            comps.append(pix)
    return comps


def centre(pix):
    p = np.asarray(pix, dtype=float)
    return (p[:, 1].mean() + 0.5, p[:, 0].mean() + 0.5)


def sort_pts(pts):
    pts = np.asarray(pts, dtype=float).reshape(-1, 2)
    return pts[np.lexsort((pts[:, 0], pts[:, 1]))]


def ref_regional_minima(m):
    H, W = m.shape
    plateaus = flood(lambda a, b: m[a] == m[b], H, W, N4)
    out, vals = [], []
    for pix in plateaus:
        inside = set(pix)
        ok = True
        for y, x in pix:
            for dy, dx in N4:
                yy, xx = y + dy, x + dx
                if 0 <= yy < H and 0 <= xx < W and (yy, xx) not in inside and not m[yy, xx] > m[y, x]:
                    ok = False
        if ok:
            out.append(centre(pix))
            vals.append(m[pix[0]])
    return sort_pts(out), vals


@pytest.mark.parametrize("seed", range(60))
def test_regional_minima_matches_bfs(seed):
    rng = np.random.default_rng(seed)
    H, W = rng.integers(1, 16, size=2)
    m = rng.integers(0, rng.integers(1, 5), size=(H, W)).astype(np.uint8)
    ref, vals = ref_regional_minima(m)
    got = regional_minima(m)
    np.testing.assert_allclose(got, ref)
    n, pts = count_people(m, background=int(m.max()) + 1)  # nothing is background
    assert n == len(ref) and np.allclose(pts, ref)


@pytest.mark.parametrize("case", ["uint8_top", "int64", "negative", "int16", "uint16_top", "huge", "float", "bool"])
def test_regional_minima_any_value_type(case):
    """The erosion works on a copy of the map's type or on its ranks: same minima as the plain
    reference for every integer type, values at the type's top, negatives and int64 values
    that float64 cannot tell apart."""
    rng = np.random.default_rng(hash(case) % 2**32)
    for _ in range(25):
        H, W = rng.integers(1, 14, size=2)
        m = rng.integers(0, rng.integers(1, 5), size=(H, W))
        m = {"uint8_top": lambda a: (a + 252).astype(np.uint8), "int64": lambda a: a * 1000,
             "negative": lambda a: a - 2, "int16": lambda a: (a * 300 - 600).astype(np.int16),
             "uint16_top": lambda a: (a + 65532).astype(np.uint16), "huge": lambda a: a + (2**62 - 3),
             "float": lambda a: a * 0.25, "bool": lambda a: a % 2 == 1}[case](m)
        ref, _ = ref_regional_minima(m)
        np.testing.assert_allclose(regional_minima(m), ref)


def test_regional_minima_hand_cases():
    assert regional_minima(np.full((4, 6), 10)).tolist() == [[3.0, 2.0]]  # one minimum, centre
    assert regional_minima(np.array([[7]])).tolist() == [[0.5, 0.5]]
    # plateau touching the border: left column of 0s
    m = np.array([[0, 1, 1], [0, 1, 1], [0, 1, 0]])
    assert regional_minima(m).tolist() == [[0.5, 1.5], [2.5, 2.5]]
    # checkerboard: every 0 is its own 4-connected plateau (diagonal contact does not join)
    cb = (np.indices((4, 4)).sum(0) % 2).astype(np.uint8)
    pts = regional_minima(cb)
    assert len(pts) == 8
    assert {(int(x - 0.5), int(y - 0.5)) for x, y in pts} == {(c, r) for r in range(4) for c in range(4) if (r + c) % 2 == 0}
    # a plateau with one lower neighbour is not a minimum
    m = np.array([[2, 2, 2], [2, 1, 1], [2, 1, 0]])
    assert regional_minima(m).tolist() == [[2.5, 2.5]]
    # a non-convex plateau: the centroid, not a pixel of it
    m = np.array([[0, 0, 0], [5, 5, 0], [5, 5, 0]])
    np.testing.assert_allclose(regional_minima(m), [[(0 + 1 + 2 + 2 + 2) / 5 + 0.5, (0 + 0 + 0 + 1 + 2) / 5 + 0.5]])


def test_count_people_background():
    assert count_people(np.full((5, 5), 10))[0] == 0  # paper: no heads
    assert count_people(np.full((5, 5), 10), exclude_background=False)[0] == 1  # official binary
    assert count_people(np.full((5, 5), 3), background=3)[0] == 0
    m = np.full((9, 9), 10, dtype=np.uint8)
    m[1:4, 1:4] = 2
    m[2, 2] = 0
    m[6, 6] = 1
    n, pts = count_people(torch.from_numpy(m))
    assert n == 2 and pts.tolist() == [[2.5, 2.5], [6.5, 6.5]]


def ref_peaks(d, kernel, thr):
    H, W = d.shape
    r = kernel // 2
    is_peak = np.zeros_like(d, dtype=bool)
    for y in range(H):
        for x in range(W):
            win = d[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
            is_peak[y, x] = d[y, x] == win.max() and d[y, x] > thr
    comps = flood(lambda a, b: is_peak[a] and is_peak[b], H, W, N8)
    return sort_pts([centre(p) for p in comps])


@pytest.mark.parametrize("seed", range(30))
def test_density_peaks_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    H, W = rng.integers(1, 14, size=2)
    d = rng.integers(0, 4, size=(H, W)).astype(np.float32) / 4  # many plateaus
    kernel = int(rng.choice([1, 3, 5]))
    got = density_peaks(d, kernel=kernel, threshold=0.1, rel_threshold=0.3)
    ref = ref_peaks(d, kernel, max(0.1, 0.3 * d.max()))
    np.testing.assert_allclose(got, ref)


def test_density_peaks_gaussians():
    yy, xx = np.mgrid[0:40, 0:50]
    d = np.exp(-((xx - 10) ** 2 + (yy - 12) ** 2) / 8.0) + 0.5 * np.exp(-((xx - 35) ** 2 + (yy - 30) ** 2) / 8.0)
    assert density_peaks(d).tolist() == [[10.5, 12.5], [35.5, 30.5]]
    assert density_peaks(d, rel_threshold=0.6).tolist() == [[10.5, 12.5]]
    assert density_peaks(np.zeros((5, 5))).shape == (0, 2)
    with pytest.raises(ValueError):
        density_peaks(d, kernel=2)


def test_knn_boxes_hand_cases():
    # 4 points on a line at x = 0, 10, 20, 40 (y = 50); image 1000 x 1000 -> cap 50
    pts = np.array([[0, 50], [10, 50], [20, 50], [40, 50]], float)
    b = knn_boxes(pts, (1000, 1000))
    half = 0.1 * np.array([10 + 20 + 40, 10 + 10 + 30, 10 + 20 + 20, 20 + 30 + 40])
    np.testing.assert_allclose(b, np.stack([pts[:, 0] - half, pts[:, 1] - half, pts[:, 0] + half, pts[:, 1] + half], 1))
    # cap: 5% of the shorter side (H = 100 -> 5)
    b = knn_boxes(pts, (100, 1000))
    np.testing.assert_allclose(b[:, 2] - b[:, 0], 2 * np.minimum(half, 5.0))
    # two points: only one neighbour exists
    b = knn_boxes(np.array([[0, 0], [30, 40]], float), (1000, 2000))
    np.testing.assert_allclose(b[0], [-5, -5, 5, 5])  # 0.1 * 50
    # one point: the cap
    np.testing.assert_allclose(knn_boxes(np.array([[10.0, 20.0]]), (200, 300)), [[0, 10, 20, 30]])
    assert knn_boxes(np.zeros((0, 2)), (10, 10)).shape == (0, 4)
    np.testing.assert_allclose(knn_boxes(np.array([[1.0, 2.0]]), (200, 300), clip=True), [[0, 0, 11, 12]])


def test_map_points_back_inverts_zoom():
    rng = np.random.default_rng(0)
    reg = Region(x=13, y=7, w=40, h=25, area=100, area_ratio=0.5)
    s = 1.7
    Hz, Wz = max(1, round(25 * s)), max(1, round(40 * s))  # (42, 68)
    orig = np.stack([rng.uniform(13, 53, 20), rng.uniform(7, 32, 20)], 1)
    zoomed = np.stack([(orig[:, 0] - 13) * Wz / 40, (orig[:, 1] - 7) * Hz / 25], 1)
    np.testing.assert_allclose(map_points_back(zoomed, reg, (Hz, Wz)), orig)
    np.testing.assert_allclose(map_points_back([[0, 0], [68, 42]], (13, 7, 40, 25), (42, 68)), [[13, 7], [53, 32]])


def test_count_people_max_class_drops_shallow_minima():
    m = np.full((7, 9), 10, dtype=np.uint8)
    m[1, 1] = 0  # a head
    m[5, 7] = 6  # a fold of the map 6-8 px from any head: a minimum, but not a person
    assert count_people(m)[0] == 2
    n, pts = count_people(m, max_class=3)
    assert n == 1 and pts.tolist() == [[1.5, 1.5]]


def _count_people_plateau_reference(m, background=10, exclude_background=True, max_class=None):
    """The previous implementation: one scipy label per value level, then the plateaus with no
    strictly lower 4-neighbour."""
    from scipy import ndimage

    four = ndimage.generate_binary_structure(2, 1)
    labels = np.zeros(m.shape, dtype=np.int64)
    values, n = [m.flat[0]], 0
    for v in np.unique(m):
        lab, k = ndimage.label(m == v, structure=four)
        labels[lab > 0] = lab[lab > 0] + n
        values.extend([v] * k)
        n += k
    values = np.asarray(values)
    lower = np.zeros(m.shape, dtype=bool)
    lower[1:, :] |= m[:-1, :] < m[1:, :]
    lower[:-1, :] |= m[1:, :] < m[:-1, :]
    lower[:, 1:] |= m[:, :-1] < m[:, 1:]
    lower[:, :-1] |= m[:, 1:] < m[:, :-1]
    is_min = ~(np.bincount(labels.ravel(), weights=lower.ravel(), minlength=n + 1) > 0)
    is_min[0] = False
    if exclude_background:
        is_min &= values != background
    if max_class is not None:
        is_min &= values <= max_class
    flat = labels.ravel()
    rows, cols = np.divmod(np.arange(flat.size), m.shape[1])
    cnt = np.bincount(flat, minlength=n + 1).astype(np.float64)
    sy = np.bincount(flat, weights=rows, minlength=n + 1)
    sx = np.bincount(flat, weights=cols, minlength=n + 1)
    ids = np.flatnonzero(is_min)
    pts = np.stack([sx[ids] / cnt[ids] + 0.5, sy[ids] / cnt[ids] + 0.5], axis=1)
    return pts[np.lexsort((pts[:, 0], pts[:, 1]))].reshape(-1, 2)


@pytest.mark.parametrize("seed", range(6))
def test_count_people_equals_plateau_labelling(seed):
    """One connected-component pass over the candidate pixels gives bit-identical points to
    labelling every plateau level by level (random maps, few levels, smooth distance maps)."""
    from autoscale.targets import distance_label_map

    rng = np.random.default_rng(seed)
    maps = [rng.integers(0, 11, size=(37, 53)).astype(np.uint8),
            rng.integers(0, 3, size=(64, 40)).astype(np.uint8),
            np.full((9, 7), 10, dtype=np.uint8), np.full((9, 7), 4, dtype=np.uint8),
            rng.integers(0, 2, size=(1, 50)).astype(np.int64)]
    pts = rng.uniform(0, 200, size=(60, 2))
    smooth = distance_label_map(pts, (150, 210))
    maps += [smooth, np.clip(smooth.astype(np.int16) + rng.integers(-1, 2, size=smooth.shape), 0, 10).astype(np.uint8)]
    for m in maps:
        for kw in ({}, {"exclude_background": False}, {"max_class": 3}):
            n, got = count_people(m, background=10, num_classes=11, **kw)
            ref = _count_people_plateau_reference(m, **kw)
            assert n == len(ref) and np.array_equal(got, ref)
            if not kw:
                assert np.array_equal(regional_minima(m), _count_people_plateau_reference(m, exclude_background=False))


def _random_class_map(rng, H, W, kind, *, smooth=4.0, heads=5, erode=False):
    """A random uint8 class map of one of three kinds: 0 noise, 1 a smooth field (Gaussian sigma
    drawn in [0.5, smooth]) cut into 11 classes, 2 ``heads`` random values on background 10
    (grown into 3x3 plateaus with ``erode``)."""
    if kind == 0:
        m = rng.integers(0, rng.integers(1, 12), (H, W))
    elif kind == 1:
        f = ndimage.gaussian_filter(rng.standard_normal((H, W)), rng.uniform(0.5, smooth))
        m = np.clip(((f - f.min()) / (np.ptp(f) + 1e-9) * 11).astype(int), 0, 10)
    else:
        m = np.full((H, W), 10)
        m[rng.integers(0, H, heads), rng.integers(0, W, heads)] = rng.integers(0, 10, heads)
        m = ndimage.grey_erosion(m, size=3) if erode else m
    return m.astype(np.uint8)


def _masked_reference(m, boxes, **kw):
    masked = m.copy()
    for x, y, w, h in boxes:
        masked[y:y + h, x:x + w] = kw.get("background", 10)
    return count_people(masked, **kw)


@pytest.mark.parametrize("seed", range(4))
def test_count_people_outside_equals_the_full_recount(seed):
    """The minima outside refined boxes, reusing the first count (find_minima), equal counting the
    map with the boxes set to the background class again: random maps of three kinds (noise,
    smooth fields, sparse heads on background), one or two boxes, each counting option."""
    rng = np.random.default_rng(seed)
    for it in range(150):
        H, W = (int(v) for v in rng.integers(1, 50, 2))
        m = _random_class_map(rng, H, W, it % 3)
        boxes = []
        for _ in range(int(rng.integers(1, 3))):
            x, y = int(rng.integers(0, W)), int(rng.integers(0, H))
            boxes.append((x, y, int(rng.integers(1, W - x + 1)), int(rng.integers(1, H - y + 1))))
        kw = [{}, {"exclude_background": False}, {"max_class": int(rng.integers(0, 11))}][it % 3]
        first = find_minima(m, **kw)
        assert first.count == count_people(m, **kw)[0]
        np.testing.assert_array_equal(first.points, count_people(m, **kw)[1])
        want = _masked_reference(m, boxes, **kw)
        for got in (count_people_outside(m, boxes, first=first, **kw), count_people_outside(m, boxes, **kw)):
            assert got[0] == want[0]
            np.testing.assert_array_equal(got[1], want[1])  # bit for bit


def test_count_people_outside_on_bigger_maps(monkeypatch):
    """The same equality on maps larger than the first window (40-159 px, boxes up to a third of
    a side), where plateaus reaching out of the window make it grow (over the extents of the
    original components at the plateau's edge pixels): some counts need more than one window."""
    import autoscale.postprocess as pp

    windows: list[int] = []
    real = pp._regional_minima

    def counted(m, *a, **kw):
        windows.append(1)
        return real(m, *a, **kw)

    rng = np.random.default_rng(11)
    grew = 0
    for it in range(240):
        H, W = (int(v) for v in rng.integers(40, 160, 2))
        m = _random_class_map(rng, H, W, it % 3, smooth=8, heads=30, erode=it % 2 == 1)
        boxes = []
        for _ in range(int(rng.integers(1, 3))):
            w, h = int(rng.integers(1, W // 3)), int(rng.integers(1, H // 3))
            boxes.append((int(rng.integers(0, W - w)), int(rng.integers(0, H - h)), w, h))
        kw = [{}, {"exclude_background": False}, {"max_class": int(rng.integers(0, 11))}][it % 3]
        first = find_minima(m, **kw)
        want = _masked_reference(m, boxes, **kw)
        monkeypatch.setattr(pp, "_regional_minima", counted)
        windows.clear()
        got = count_people_outside(m, boxes, first=first, **kw)
        monkeypatch.setattr(pp, "_regional_minima", real)
        grew += len(windows) > 1
        assert got[0] == want[0]
        np.testing.assert_array_equal(got[1], want[1])
    assert grew >= 5, grew


def test_count_people_outside_follows_a_plateau_beyond_the_window():
    """A minimum plateau next to the box that runs the map's whole width (far past the first
    16 px window), a minimum that masking the box creates, and one that it removes."""
    m = np.full((40, 300), 9, dtype=np.uint8)
    m[20, :] = 3  # a 300 px long minimum just below the box
    m[5, 100] = 1  # a head inside the box: gone once the box is background
    m[12:14, 95] = 6  # a plateau whose lower neighbour lies inside the box ...
    m[12, 96] = 2  # ... (this pixel, in the box): a minimum only after masking
    box = [(96, 0, 20, 20)]
    first = find_minima(m)
    assert first.count == 3  # the long row, the head, the pixel at (96, 12)
    got = count_people_outside(m, box, first=first)
    want = _masked_reference(m, box)
    assert got[0] == want[0] == 2
    np.testing.assert_array_equal(got[1], want[1])
    assert got[1].tolist() == [[95.5, 13.0], [150.0, 20.5]]
    # options that differ from the first count's: recounted in full, still the same
    np.testing.assert_array_equal(count_people_outside(m, box, first=first, max_class=5)[1],
                                  _masked_reference(m, box, max_class=5)[1])
