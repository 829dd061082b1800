"""Tests of the synthetic crowd generator (autoscale.data.synth) and `autoscale data synth`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist, pdist, squareform

from autoscale.cli import main
from autoscale.data.synth import (
    SynthConfig,
    _layout,
    generate_dataset,
    generate_scene,
    image_rng,
    split_counts,
)
from autoscale.errors import ConfigError, DataError

SMALL = (96, 128)
MID = (192, 256)


def _clean(size, **kw) -> SynthConfig:
    """No blur, no noise: pixels are exactly what the shapes painted."""
    return SynthConfig.for_size(size, blur_prob=0.0, noise_prob=0.0, **kw)


def _scenes(cfg: SynthConfig, n: int, seed: int = 0, **kw):
    return [generate_scene(cfg, image_rng(seed, i), **kw) for i in range(n)]


def test_same_seed_same_scene_different_seed_different():
    cfg = SynthConfig.for_size(MID)
    a = generate_scene(cfg, image_rng(3, 5))
    b = generate_scene(cfg, image_rng(3, 5))
    c = generate_scene(cfg, image_rng(4, 5))
    assert a[0].dtype == np.uint8 and a[0].shape == (*MID, 3)
    assert a[0].tobytes() == b[0].tobytes()
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    assert a[3] == b[3]
    assert a[0].tobytes() != c[0].tobytes()
    assert a[1].shape != c[1].shape or not np.array_equal(a[1], c[1])


def test_points_inside_boxes_around_heads_and_min_spacing():
    H, W = MID
    cfg = SynthConfig.for_size(MID)
    total = 0
    for img, pts, boxes, meta in _scenes(cfg, 6, seed=11):
        total += len(pts)
        assert pts.shape == (meta["count"], 2) and boxes.shape == (len(pts), 4)
        assert np.all((pts[:, 0] >= 0) & (pts[:, 0] < W) & (pts[:, 1] >= 0) & (pts[:, 1] < H))
        assert np.all((boxes[:, 0] <= pts[:, 0]) & (pts[:, 0] <= boxes[:, 2]))
        assert np.all((boxes[:, 1] <= pts[:, 1]) & (pts[:, 1] <= boxes[:, 3]))
        assert boxes.min() >= 0 and np.all(boxes[:, [0, 2]] <= W) and np.all(boxes[:, [1, 3]] <= H)
        # the box is the head circle's square, clipped to the image
        r = np.asarray(meta["radii"])
        expect = np.stack([pts[:, 0] - r, pts[:, 1] - r, pts[:, 0] + r, pts[:, 1] + r], 1)
        expect = np.clip(expect, 0, [W, H, W, H])
        np.testing.assert_allclose(boxes, expect, atol=2e-3)
        # Poisson-disc-like spacing: every pair at least min_spacing * mean radius apart (brute force)
        if len(pts) > 1:
            d = squareform(pdist(pts))
            need = cfg.min_spacing * 0.5 * (r[:, None] + r[None, :]) - 2e-3
            np.fill_diagonal(d, np.inf)
            assert np.all(d >= need)
    assert total > 0


def test_people_painted_where_annotated_and_nowhere_above_horizon():
    cfg = _clean(MID)
    changed, checked = 0, 0
    for i in range(5):
        img, pts, _, meta = generate_scene(cfg, image_rng(7, i))
        bg, pts2, _, meta2 = generate_scene(cfg, image_rng(7, i), draw_people=False)
        np.testing.assert_array_equal(pts, pts2)  # labels do not depend on what is painted
        assert meta == meta2
        # no person reaches above the horizon: sky rows identical with and without people
        hz = int(np.floor(meta["horizon"]))
        np.testing.assert_array_equal(img[:hz], bg[:hz])
        r = np.asarray(meta["radii"])
        for k, (x, y) in enumerate(pts):
            # a centre is occluded only by a head painted later (its body lies lower down)
            later = (pts[:, 1] >= y) & (np.arange(len(pts)) != k)
            if np.any(np.hypot(*(pts[later] - (x, y)).T) < r[later] + 1.0):
                continue
            row, col = int(np.floor(y)), int(np.floor(x))
            checked += 1
            changed += np.abs(img[row, col].astype(int) - bg[row, col].astype(int)).sum() > 24
        assert not np.array_equal(img, bg) or len(pts) == 0
    assert checked >= 40
    assert changed >= 0.9 * checked


def test_distractors_painted_but_never_annotated():
    cfg = _clean(MID, distractor_range=(6, 10))
    n_dis, visible = 0, 0
    for i in range(5):
        img, pts, _, meta = generate_scene(cfg, image_rng(5, i))
        no_d, pts2, _, _ = generate_scene(cfg, image_rng(5, i), draw_distractors=False)
        np.testing.assert_array_equal(pts, pts2)
        dis = np.asarray(meta["distractors"]).reshape(-1, 3)
        assert len(meta["distractor_kinds"]) == len(dis)
        n_dis += len(dis)
        if len(pts) and len(dis):
            # no annotated head lies on (or overlaps) a distractor
            d = cdist(dis[:, :2], pts)
            assert np.all(d > dis[:, 2:3] + np.asarray(meta["radii"])[None, :])
        for x, y, _ in dis:
            row, col = int(np.floor(y)), int(np.floor(x))
            visible += np.abs(img[row, col].astype(int) - no_d[row, col].astype(int)).sum() > 0
    assert n_dis >= 20
    assert visible >= 0.7 * n_dis  # most are painted visibly (a few are hidden behind people)


def test_perspective_head_size_grows_linearly_below_horizon():
    cfg = SynthConfig.for_size(MID)
    ys, rs = [], []
    for _, pts, _, meta in _scenes(cfg, 6, seed=2):
        r = np.asarray(meta["radii"])
        # r = slope * (y - horizon) up to the per-person jitter
        model = meta["head_radius_slope"] * (pts[:, 1] - meta["horizon"])
        assert np.all(np.abs(r / model - 1) <= cfg.head_radius_jitter + 1e-3)
        assert np.all(r >= cfg.min_head_radius * (1 - cfg.head_radius_jitter) - 1e-3)
        assert np.all(pts[:, 1] > meta["horizon"])
        ys.append(pts[:, 1] - meta["horizon"])
        rs.append(r)
    slope = np.polyfit(np.concatenate(ys), np.concatenate(rs), 1)[0]
    assert slope > 0


def test_long_tailed_density_over_a_grid():
    H, W = MID
    cfg = SynthConfig.for_size(MID, count_range=(60, 120))
    ratios, top_share = [], []
    for _, pts, _, meta in _scenes(cfg, 8, seed=0):
        assert 0.5 * cfg.count_range[0] <= len(pts) <= cfg.count_range[1]
        g = np.histogram2d(pts[:, 1], pts[:, 0], bins=4, range=[[0, H], [0, W]])[0].ravel()
        ratios.append(g.max() / max(np.median(g), 1.0))
        top_share.append(np.sort(g)[-2:].sum() / g.sum())  # 2 of 16 cells
    assert np.mean(ratios) >= 4.0
    assert np.mean(top_share) >= 0.35  # uniform density would give 2/16 = 0.125


def test_dense_clusters_have_small_neighbour_distances_at_reference_size():
    cfg = SynthConfig.for_size((384, 512), count_range=(250, 350))
    lay = _layout(cfg, image_rng(0, 1))
    pts = np.stack([lay["x"], lay["y"]], 1)
    d = squareform(pdist(pts))
    np.fill_diagonal(d, np.inf)
    nn = d.min(1)
    # densest part a few px apart (heads overlap partially), sparse parts far apart
    assert 3.0 <= np.percentile(nn, 10) <= 8.0
    assert np.percentile(nn, 90) >= 15.0


def test_split_counts_largest_remainder():
    # 7 * (0.7, 0.1, 0.2) = (4.9, 0.7, 1.4): floors (4, 0, 1), one left goes to the largest remainder
    assert split_counts(7, {"train": 0.7, "val": 0.1, "test": 0.2}) == {"train": 5, "val": 1, "test": 1}
    assert split_counts(10, {"a": 1, "b": 1}) == {"a": 5, "b": 5}
    with pytest.raises(ConfigError):
        split_counts(5, {"a": -1.0, "b": 2.0})


def test_dataset_files_in_generic_format_and_independent_of_n(tmp_path):
    root = tmp_path / "ds"
    summary = generate_dataset(root, n=7, size=SMALL, seed=1)
    assert summary["split_counts"] == {"train": 5, "val": 1, "test": 1}
    lines = {s: (root / f"{s}.txt").read_text().split("\n")[:-1] for s in ("train", "val", "test")}
    names = [f"images/synth_{i:04d}.png annotations/synth_{i:04d}.json" for i in range(7)]
    assert lines == {"train": names[:5], "val": names[5:6], "test": names[6:]}
    ds = json.loads((root / "dataset.json").read_text())
    assert ds["generator"] == "autoscale.synth" and ds["n"] == 7 and ds["size"] == list(SMALL)
    cfg = SynthConfig.for_size(SMALL)
    counts = []
    for i in range(7):
        img, pts, boxes, meta = generate_scene(cfg, image_rng(1, i))
        stored = np.asarray(Image.open(root / f"images/synth_{i:04d}.png"))
        assert Image.open(root / f"images/synth_{i:04d}.png").mode == "RGB"
        np.testing.assert_array_equal(stored, img)  # lossless and RGB order
        ann = json.loads((root / f"annotations/synth_{i:04d}.json").read_text())
        assert set(ann) == {"points", "boxes", "meta"}
        np.testing.assert_array_equal(np.asarray(ann["points"]).reshape(-1, 2), pts)
        np.testing.assert_array_equal(np.asarray(ann["boxes"]).reshape(-1, 4), boxes)
        assert ann["meta"]["seed"] == 1 and ann["meta"]["index"] == i
        counts.append(len(pts))
    assert ds["count_stats"]["total"] == sum(counts)

    # image i does not depend on n or on the number of workers
    other = tmp_path / "ds3"
    generate_dataset(other, n=3, size=SMALL, seed=1, workers=2)
    for i in range(3):
        for sub, ext in (("images", "png"), ("annotations", "json")):
            name = f"{sub}/synth_{i:04d}.{ext}"
            assert (other / name).read_bytes() == (root / name).read_bytes()


def test_read_back_with_generic_reader(tmp_path):
    formats = pytest.importorskip("autoscale.data.formats")
    if not hasattr(formats, "read_dataset"):
        pytest.skip("autoscale.data.formats.read_dataset not available")
    generate_dataset(tmp_path, n=5, size=SMALL, seed=3)
    recs = formats.read_dataset("generic", tmp_path, "train")
    assert [Path(r.image_path).name for r in recs] == [f"synth_{i:04d}.png" for i in range(4)]
    cfg = SynthConfig.for_size(SMALL)
    for i, rec in enumerate(recs):
        _, pts, boxes, _ = generate_scene(cfg, image_rng(3, i))
        assert (rec.height, rec.width) == SMALL and rec.dropped_points == 0
        np.testing.assert_allclose(rec.points, pts)
        np.testing.assert_allclose(rec.boxes, boxes)


def test_cli_end_to_end_and_rewrite_of_previous_output(tmp_path, capsys):
    out = tmp_path / "synth"
    rc = main(["data", "synth", "--out", str(out), "--n", "6", "--size", "96x128", "--seed", "2",
               "--splits", "train=0.5,val=0.5"])
    assert rc == 0
    assert "wrote 6 images 96x128" in capsys.readouterr().out
    assert len((out / "train.txt").read_text().split()) == 6  # 3 lines of 2 fields
    assert len((out / "val.txt").read_text().split()) == 6
    assert not (out / "test.txt").exists()
    assert len(list((out / "images").glob("*.png"))) == 6
    # a previous synth output may be rewritten; its stale images go away
    assert main(["data", "synth", "--out", str(out), "--n", "2", "--size", "96x128"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["synth_0000.png", "synth_0001.png"]
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["synth_0000.json", "synth_0001.json"]


def test_refuses_non_empty_foreign_directory(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        generate_dataset(tmp_path, n=2, size=SMALL)
    assert main(["data", "synth", "--out", str(tmp_path), "--n", "2", "--size", "96x128"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "--overwrite" in err
    assert not (tmp_path / "images").exists()
    assert main(["data", "synth", "--out", str(tmp_path), "--n", "2", "--size", "96x128", "--overwrite"]) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "images" / "synth_0001.png").is_file()


@pytest.mark.parametrize("argv", [["--size", "96*128"], ["--splits", "train:0.5"], ["--size", "16x16"]])
def test_cli_rejects_bad_arguments(tmp_path, capsys, argv):
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--n", "2", *argv]) == 2
    assert capsys.readouterr().err.startswith("autoscale: error:")
