"""Tests for autoscale.targets: density maps, distance-label maps, closeness, regeneration."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from autoscale.errors import DataError
from autoscale.targets import (
    DISTANCE_EDGES,
    adaptive_density_map,
    adaptive_sigmas,
    closeness_level,
    density_map,
    distance_label_map,
    distance_map,
    gaussian_kernel_1d,
    half_nn_distance,
    nearest_neighbour_distances,
    people_number_level,
    people_number_spacing,
    region_points,
    region_target,
    sigma_map,
    unzoom_points,
    zoom_points,
    zoomed_size,
)

ROOT = Path(__file__).resolve().parents[1]


def dot_map(points: np.ndarray, h: int, w: int) -> np.ndarray:
    """Independent rasteriser: +1 per in-image head at (floor(y), floor(x)), duplicates adding."""
    dots = np.zeros((h, w))
    for x, y in np.asarray(points, float).reshape(-1, 2):
        if 0 <= x < w and 0 <= y < h:
            dots[int(np.floor(y)), int(np.floor(x))] += 1
    return dots


def brute_distance(points: np.ndarray, h: int, w: int) -> np.ndarray:
    """Float64 min over heads of the Euclidean distance from every pixel index to each head pixel."""
    p = np.asarray(points, float).reshape(-1, 2)
    p = p[(p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)]
    rr, cc = np.mgrid[:h, :w]
    hr, hc = np.floor(p[:, 1]), np.floor(p[:, 0])
    if len(p) == 0:
        return np.full((h, w), np.inf)
    return np.sqrt(((rr[..., None] - hr) ** 2 + (cc[..., None] - hc) ** 2).min(-1))


def classes_of(d: np.ndarray, edges) -> np.ndarray:
    """Index of the last edge <= d (written as a loop over edges, independently of searchsorted)."""
    out = np.zeros(d.shape, dtype=np.int64)
    for k, e in enumerate(edges):
        out[d >= e] = k
    return out


# ---------------------------------------------------------------------------- kernels / density
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.3, 4.0, 8.0, 15.0])
def test_gaussian_kernel_matches_scipy_impulse_response(sigma):
    k = gaussian_kernel_1d(sigma)
    radius = int(4.0 * sigma + 0.5)
    assert k.shape == (2 * radius + 1,)
    impulse = np.zeros(4 * radius + 3)
    impulse[2 * radius + 1] = 1.0
    ref = gaussian_filter1d(impulse, sigma, mode="constant", truncate=4.0)[radius + 1 : 3 * radius + 2]
    np.testing.assert_allclose(k, ref, rtol=0, atol=1e-15)
    assert k.sum() == pytest.approx(1.0, abs=1e-15)


def test_gaussian_kernel_zero_sigma_and_bad_sigma():
    np.testing.assert_array_equal(gaussian_kernel_1d(0.0), [1.0])
    with pytest.raises(ValueError):
        gaussian_kernel_1d(-1.0)


@pytest.mark.parametrize("mode", ["reflect", "constant"])
@pytest.mark.parametrize(
    "h,w,sigma,n",
    [(40, 56, 4.0, 60), (31, 17, 8.0, 25), (3, 5, 4.0, 4), (7, 2, 8.0, 3), (1, 1, 3.0, 2), (2, 9, 20.0, 5)],
)
@pytest.mark.parametrize("method", ["patches", "filter", "auto"])
def test_density_map_equals_gaussian_filter_of_dot_map(method, mode, h, w, sigma, n):
    rng = np.random.default_rng(h * 1000 + w)
    pts = np.stack([rng.uniform(0, w, n), rng.uniform(0, h, n)], axis=1)
    pts = np.concatenate([pts, pts[:2], [[-0.5, 0.5], [0.5, -0.01], [w, 0.0], [0.0, h + 3.0]]])  # dups + outside
    ref = gaussian_filter(dot_map(pts, h, w), sigma, mode=mode, truncate=4.0)
    d = density_map(pts, (h, w), sigma, mode=mode, method=method)
    assert d.dtype == np.float32 and d.shape == (h, w)
    np.testing.assert_allclose(d, ref, rtol=0, atol=1e-6)
    if mode == "reflect":  # count-preserving: integrates to the number of in-image heads
        assert d.sum(dtype=np.float64) == pytest.approx(n + 2, abs=1e-4)
    else:
        assert d.sum(dtype=np.float64) < n + 2


def test_outside_points_are_ignored_never_wrapped():
    # x = -0.5 would land on column -1 -> W-1 if negative indices wrapped.
    d = density_map([[-0.5, 2.0], [3.0, -0.2], [6.0, 2.0], [2.0, 5.0]], (5, 6), 1.0)
    assert not d.any()
    c = distance_label_map([[-0.5, 2.0], [3.0, -0.2]], (5, 6))
    assert (c == len(DISTANCE_EDGES) - 1).all()


def test_density_map_per_point_sigma_is_sum_of_single_head_filters():
    rng = np.random.default_rng(3)
    h, w = 30, 41
    pts = np.stack([rng.uniform(0, w, 12), rng.uniform(0, h, 12)], axis=1)
    sig = rng.uniform(0.7, 9.0, 12)
    ref = sum(gaussian_filter(dot_map(p[None], h, w), s, mode="reflect", truncate=4.0) for p, s in zip(pts, sig))
    np.testing.assert_allclose(density_map(pts, (h, w), sig), ref, atol=1e-6)
    with pytest.raises(ValueError):
        density_map(pts, (h, w), sig[:-1])
    with pytest.raises(ValueError):
        density_map(pts, (h, w), sig, method="filter")


def test_density_map_empty_and_bad_input():
    assert not density_map(np.zeros((0, 2)), (4, 5)).any()
    with pytest.raises(DataError, match="non-finite"):
        density_map([[1.0, np.nan]], (4, 5))
    with pytest.raises(DataError, match="N x 2"):
        density_map([[1.0, 2.0, 3.0]], (4, 5))
    with pytest.raises(ValueError):
        density_map([[1.0, 1.0]], (4, 5), mode="nearest")


# ---------------------------------------------------------------------------- adaptive kernels
def test_adaptive_sigmas_hand_computed():
    pts = np.array([[0.0, 0.0], [10.0, 0.0], [30.0, 0.0], [60.0, 0.0]])
    # k=1: nearest distances 10, 10, 20, 30 -> 0.3 * d
    np.testing.assert_allclose(adaptive_sigmas(pts, k=1), [3.0, 3.0, 6.0, 9.0])
    # k=2: point 0 -> (10+30)/2, point 1 -> (10+20)/2, point 2 -> (20+30)/2, point 3 -> (30+50)/2
    np.testing.assert_allclose(adaptive_sigmas(pts, k=2), 0.3 * np.array([20.0, 15.0, 25.0, 40.0]))
    # k larger than available neighbours: mean over the 3 others
    np.testing.assert_allclose(adaptive_sigmas(pts, k=10)[0], 0.3 * (10 + 30 + 60) / 3)
    # coincident points are floored at min_sigma
    np.testing.assert_allclose(adaptive_sigmas([[5, 5], [5, 5]], k=3, min_sigma=1.5), [1.5, 1.5])


def test_adaptive_sigmas_lone_point():
    np.testing.assert_allclose(adaptive_sigmas([[3, 4]], single=7.0), [7.0])
    np.testing.assert_allclose(adaptive_sigmas([[3, 4]], single=0.2, min_sigma=1.0), [1.0])
    np.testing.assert_allclose(adaptive_sigmas([[3, 4]], shape=(40, 80)), [15.0])  # mean(H, W) / 4
    with pytest.raises(ValueError):
        adaptive_sigmas([[3, 4]])


def test_adaptive_density_map_is_count_preserving_and_uses_in_image_heads_only():
    rng = np.random.default_rng(5)
    h, w = 48, 64
    pts = np.stack([rng.uniform(0, w, 30), rng.uniform(0, h, 30)], axis=1)
    outside = np.array([[-3.0, 3.0], [70.0, 5.0]])
    d = adaptive_density_map(np.concatenate([pts, outside]), (h, w))
    sig = adaptive_sigmas(pts, k=3, beta=0.3, min_sigma=1.0)
    ref = sum(gaussian_filter(dot_map(p[None], h, w), s, truncate=4.0) for p, s in zip(pts, sig))
    np.testing.assert_allclose(d, ref, atol=1e-6)
    assert d.sum(dtype=np.float64) == pytest.approx(30, abs=1e-4)


# ---------------------------------------------------------------------------- distance labels
def test_distance_labels_on_a_line_hand_computed():
    # one head at pixel (0, 0) of a 1 x 31 image: distance of column c is exactly c
    c = distance_label_map([[0.5, 0.5]], (1, 31))[0]
    expected = [0, 1, 2, 3, 4, 5, 6, 6, 7, 7, 7, 7, 8, 8, 8, 8, 8, 8] + [9] * 10 + [10] * 3
    np.testing.assert_array_equal(c, expected)
    np.testing.assert_array_equal(distance_map([[0.5, 0.5]], (1, 31))[0], np.arange(31, dtype=np.float32))


def test_distance_map_and_labels_match_brute_force():
    rng = np.random.default_rng(11)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 45, 2))
        n = int(rng.integers(1, 7))
        pts = np.stack([rng.uniform(-2, w + 2, n), rng.uniform(-2, h + 2, n)], axis=1)
        ref = brute_distance(pts, h, w)
        d = distance_map(pts, (h, w))
        c = distance_label_map(pts, (h, w))
        assert c.dtype == np.uint8 and c.shape == (h, w)
        if np.isinf(ref).all():
            assert np.isinf(d).all() and (c == 10).all()
            continue
        np.testing.assert_allclose(d, ref, atol=1e-3)
        np.testing.assert_array_equal(c, classes_of(ref, DISTANCE_EDGES))
        edges = (0, 1.5, 2.5, 7)
        np.testing.assert_array_equal(distance_label_map(pts, (h, w), edges), classes_of(ref, edges))


def test_distance_labels_without_heads_and_bad_edges():
    assert (distance_label_map(np.zeros((0, 2)), (4, 6)) == 10).all()
    assert (distance_label_map(np.zeros((0, 2)), (4, 6), (0, 2, 4)) == 2).all()
    assert np.isinf(distance_map(np.zeros((0, 2)), (4, 6))).all()
    with pytest.raises(ValueError):
        distance_label_map([[1, 1]], (4, 6), (1, 2, 3))  # must start at 0
    with pytest.raises(ValueError):
        distance_label_map([[1, 1]], (4, 6), (0, 3, 2))


def test_distance_official_method():
    # 5x5 chamfer mask weights (cv2 DIST_L2 / DIST_MASK_5): 1, 1.4, 2.1969
    h, w = 9, 9
    d = distance_map([[4.7, 4.2]], (h, w), method="official")  # head at row 4, col 4
    assert d[4, 4] == 0 and d[4, 5] == pytest.approx(1.0, abs=1e-4)
    assert d[5, 5] == pytest.approx(1.4, abs=1e-4)
    assert d[6, 5] == pytest.approx(2.1969, abs=1e-4) and d[4, 6] == pytest.approx(2.0, abs=1e-4)
    # row/col 0 and negative coordinates move to 1; heads at or beyond the border are skipped
    d = distance_map([[0.2, -3.0]], (h, w), method="official")
    assert d[1, 1] == 0 and d[0, 0] > 0
    assert np.isinf(distance_map([[2.0, 9.0], [9.5, 2.0]], (h, w), method="official")).all()
    c = distance_label_map([[4.7, 4.2]], (h, w), method="official")
    assert c[4, 4] == 0 and c[5, 5] == 1 and c[6, 5] == 2


# ---------------------------------------------------------------------------- NN / closeness
def test_nearest_neighbour_half_nn_and_sigma_map():
    pts = np.array([[0.5, 0.5], [3.5, 4.5], [10.5, 4.5]])
    np.testing.assert_allclose(nearest_neighbour_distances(pts), [5.0, 5.0, 7.0])
    np.testing.assert_allclose(half_nn_distance(pts), [2.5, 2.5, 3.5])
    assert np.isinf(nearest_neighbour_distances([[1, 2]])).all()
    np.testing.assert_array_equal(half_nn_distance([[1, 2]]), [0.0])
    assert nearest_neighbour_distances(np.zeros((0, 2))).shape == (0,)
    s = sigma_map(np.concatenate([pts, [[-4.0, 0.5]]]), (6, 12))
    expected = np.zeros((6, 12), np.float32)
    expected[0, 0], expected[4, 3], expected[4, 10] = 2.5, 2.5, 3.5
    np.testing.assert_array_equal(s, expected)


def test_closeness_and_people_number_levels():
    pts = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 4.0]])
    assert closeness_level(pts) == pytest.approx((5 + 5 + 7) / 3)
    assert np.isnan(closeness_level(pts[:1])) and np.isnan(closeness_level(np.zeros((0, 2))))
    assert people_number_level(np.zeros((5, 2)), 2000) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        people_number_level(pts, 0)
    # spacing: 4 people on 100 px^2 -> sqrt(25) = 5 px; grows linearly with a zoom r
    assert people_number_spacing(np.zeros((4, 2)), 100.0) == pytest.approx(5.0)
    assert people_number_spacing(np.zeros((4, 2)) * 3, 100.0 * 9) == pytest.approx(3 * 5.0)
    assert people_number_spacing(pts, 2000) == pytest.approx(np.sqrt(1000.0 / people_number_level(pts, 2000)))
    assert np.isnan(people_number_spacing(np.zeros((0, 2)), 50.0))
    with pytest.raises(ValueError):
        people_number_spacing(pts, -1.0)


def test_region_points_half_open():
    pts = np.array([[10, 20], [14.999, 20], [15, 20], [9.999, 21], [12, 24.99], [12, 25]])
    got = region_points(pts, (10, 20, 5, 5))
    np.testing.assert_array_equal(got, pts[[0, 1, 4]])


# ---------------------------------------------------------------------------- regeneration
def test_zoomed_size_and_point_mapping_roundtrip():
    assert zoomed_size((3, 4, 10, 6), 2.0) == (12, 20)
    assert zoomed_size((0, 0, 10, 6), 0.05) == (1, 1)
    assert zoomed_size((0, 0, 7, 5), 1.5) == (8, 10)  # 7.5 -> 8, 10.5 -> 10 (round half to even)
    box = (3, 4, 10, 6)
    z = zoom_points([[3, 4], [8, 7], [13, 4], [2, 5]], box, (12, 20))  # last two are outside
    np.testing.assert_allclose(z, [[0, 0], [10, 6]])
    rng = np.random.default_rng(2)
    pts = np.stack([rng.uniform(0, 40, 50), rng.uniform(0, 30, 50)], axis=1)
    box = (5, 7, 21, 13)
    size = zoomed_size(box, 1.37)
    z = zoom_points(pts, box, size)
    assert ((z[:, 0] >= 0) & (z[:, 0] < size[1]) & (z[:, 1] >= 0) & (z[:, 1] < size[0])).all()
    np.testing.assert_allclose(unzoom_points(z, box, size), region_points(pts, box), atol=1e-12)


@pytest.mark.parametrize("scale", [0.6, 1.0, 1.7, 2.5])
def test_region_target_density_variants(scale):
    rng = np.random.default_rng(int(scale * 10))
    pts = np.stack([rng.uniform(0, 60, 80), rng.uniform(0, 40, 80)], axis=1)
    box = (11, 6, 25, 17)
    inside = region_points(pts, box)
    zh, zw = zoomed_size(box, scale)
    # independent zoom: x' = (x - x0) * W'/w
    zpts = np.stack([(inside[:, 0] - 11) * zw / 25, (inside[:, 1] - 6) * zh / 17], axis=1)
    for kernel, shape, sig, p in (
        ("fixed", (zh, zw), 4.0, zpts),
        ("multiplied", (zh, zw), 4.0 * scale, zpts),
        ("divided", (17, 25), 4.0 / scale, inside - [11, 6]),
    ):
        t = region_target(pts, box, scale, sigma=4.0, kernel=kernel)
        assert t.shape == shape and t.dtype == np.float32
        assert t.sum(dtype=np.float64) == pytest.approx(len(inside), abs=1e-4)
        np.testing.assert_allclose(t, gaussian_filter(dot_map(p, *shape), sig, truncate=4.0), atol=1e-6)
    c = region_target(pts, box, scale, sigma=4.0, mode="constant")
    assert c.sum() < len(inside)


@pytest.mark.parametrize("kernel", ["fixed", "multiplied", "divided"])
def test_region_target_distance_variants(kernel):
    rng = np.random.default_rng(4)
    pts = np.stack([rng.uniform(0, 60, 40), rng.uniform(0, 40, 40)], axis=1)
    box, scale = (11, 6, 25, 17), 1.6
    inside = region_points(pts, box)
    zh, zw = zoomed_size(box, scale)
    if kernel == "divided":
        shape, p, edges = (17, 25), inside - [11, 6], np.array(DISTANCE_EDGES) / scale
    else:
        shape, p = (zh, zw), np.stack([(inside[:, 0] - 11) * zw / 25, (inside[:, 1] - 6) * zh / 17], axis=1)
        edges = np.array(DISTANCE_EDGES) * (scale if kernel == "multiplied" else 1.0)
    t = region_target(pts, box, scale, kind="distance", kernel=kernel)
    assert t.shape == shape and t.dtype == np.uint8
    np.testing.assert_array_equal(t, classes_of(brute_distance(p, *shape), edges))


def test_region_target_bad_arguments():
    with pytest.raises(ValueError):
        region_target([[1, 1]], (0, 0, 4, 4), 1.0, kernel="other")
    with pytest.raises(ValueError):
        region_target([[1, 1]], (0, 0, 4, 4), 1.0, kind="other")
    with pytest.raises(ValueError):
        region_target([[1, 1]], (0, 0, 0, 4), 1.0)
    with pytest.raises(ValueError):
        region_target([[1, 1]], (0, 0, 4, 4), -1.0)


# ---------------------------------------------------------------------------- benchmark smoke
def test_density_benchmark_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_density", ROOT / "benchmarks" / "bench_density.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--tiny", "--repeats", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "density.json").read_text())
    assert saved["rows"] and saved["seed"] == 0 and "machine" in saved and "seconds" in saved
    assert all(r["max_abs_diff"] <= 1e-6 for r in result["rows"])
    assert "| image |" in (tmp_path / "density.md").read_text()


# ---------------------------------------------------------------------------- CLI
def _cli(argv):
    from autoscale.cli import main

    return main(argv)


def test_cli_targets_generic_with_resize(tmp_path, capsys):
    import cv2

    root = tmp_path / "ds"
    root.mkdir()
    cv2.imwrite(str(root / "a.png"), np.zeros((300, 1200, 3), np.uint8))  # W=1200, H=300
    pts = [[600.0, 150.0], [10.5, 20.5], [1199.0, 299.0]]
    (root / "a.json").write_text(json.dumps({"points": pts}))
    (root / "test.txt").write_text("a.png\n")
    out = tmp_path / "out"
    rc = _cli(["data", "targets", "--format", "generic", "--root", str(root), "--split", "test",
               "--kind", "density", "--sigma", "2", "--resize", "long1024", "--out", str(out)])
    assert rc == 0
    d = np.load(out / "a.npy")
    s = 1024 / 1200  # long side 1200 -> 1024, short side 300 -> 256
    assert d.shape == (256, 1024) and d.dtype == np.float32
    ref = gaussian_filter(dot_map(np.array(pts) * [1024 / 1200, 256 / 300], 256, 1024), 2.0, truncate=4.0)
    np.testing.assert_allclose(d, ref, atol=1e-6)
    assert d.sum(dtype=np.float64) == pytest.approx(3, abs=1e-4) and s < 1
    manifest = json.loads((out / "targets.json").read_text())
    assert manifest["resize"] == "long1024" and manifest["images"][0]["count"] == 3
    assert not list(out.glob("*.tmp"))

    rc = _cli(["data", "targets", "--format", "generic", "--root", str(root), "--split", "test",
               "--kind", "distance", "--out", str(out / "dist")])
    c = np.load(out / "dist" / "a.npy")
    assert rc == 0 and c.dtype == np.uint8 and c.shape == (300, 1200)
    np.testing.assert_array_equal(c, classes_of(brute_distance(np.array(pts), 300, 1200), DISTANCE_EDGES))


def test_cli_targets_bad_input(tmp_path, capsys):
    rc = _cli(["data", "targets", "--format", "generic", "--root", str(tmp_path / "missing"), "--split", "test",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "missing" in capsys.readouterr().err
    rc = _cli(["data", "targets", "--format", "generic", "--root", str(tmp_path), "--split", "test",
               "--sigma", "4", "--adaptive", "--out", str(tmp_path / "o")])
    assert rc == 2 and "--adaptive" in capsys.readouterr().err


def test_cli_targets_shanghaitech_b(shared_data, tmp_path):
    from scipy.io import loadmat

    root = shared_data / "shanghaitech" / "part_B"
    out = tmp_path / "gt"
    rc = _cli(["data", "targets", "--format", "shanghaitech", "--root", str(root), "--split", "test",
               "--limit", "2", "--out", str(out)])
    assert rc == 0
    names = sorted(p.stem for p in out.glob("*.npy"))
    assert names == ["IMG_1", "IMG_2"]  # natural order, first two
    for name in names:
        loc = loadmat(root / "test_data" / "ground-truth" / f"GT_{name}.mat")["image_info"][0, 0][0, 0]["location"]
        d = np.load(out / f"{name}.npy")
        assert d.shape == (768, 1024)
        assert d.sum(dtype=np.float64) == pytest.approx(len(loc), abs=1e-3)
        ref = gaussian_filter(dot_map(loc, 768, 1024), 8.0, truncate=4.0)  # part B preset sigma 8
        np.testing.assert_allclose(d, ref, atol=1e-6)
