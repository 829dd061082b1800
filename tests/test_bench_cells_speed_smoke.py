"""Smoke tests of benchmarks/bench_cells.py and benchmarks/bench_speed.py (``--smoke`` runs).

The smoke runs are tiny (seconds). Their reported numbers are checked against values recomputed
here independently: MAE from the reported per-image predictions and ground truth counted from
the dots images directly, FLOPs counted on real tensors instead of the meta device, throughput
and GFLOP/s from their definitions, GT counts read from the .mat files with scipy.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image


@pytest.fixture(scope="module")
def cells_mod(load_bench):
    return load_bench("bench_cells")


@pytest.fixture(scope="module")
def speed_mod(load_bench):
    return load_bench("bench_speed")


def _red_points(rgb: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero((rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0))
    return np.stack([cols + 0.5, rows + 0.5], axis=1)


def _sorted(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p).reshape(-1, 2)
    return p[np.lexsort((p[:, 1], p[:, 0]))]


# ------------------------------------------------------------------------------------- cells
def test_rot90_points_follow_the_rotated_pixels(cells_mod):
    rng = np.random.default_rng(3)
    h, w = 37, 52  # non-square: H and W swap on odd turns
    img = np.zeros((h, w, 3), np.uint8)
    rr, cc = rng.integers(0, h, 20), rng.integers(0, w, 20)
    img[rr, cc] = (255, 0, 0)
    pts = _red_points(img)
    for k in range(4):
        expected = _red_points(np.rot90(img, k))
        np.testing.assert_allclose(_sorted(cells_mod.rot90_points(pts, k, (h, w))), _sorted(expected))


def test_draw_indices(cells_mod):
    a = cells_mod.draw_indices(0, 32)
    assert len(a) == len(set(a.tolist())) == 32 and a.min() >= 0 and a.max() < 100
    assert np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, cells_mod.draw_indices(0, 32))
    assert not np.array_equal(a, cells_mod.draw_indices(1, 32))


def test_draw_dataset_round_trip(cells_mod, shared_data, tmp_path):
    from autoscale.data.formats import read_dataset
    from autoscale.data.image_io import read_image

    cells = shared_data / "vgg_cells"
    recs = sorted(read_dataset("vgg_cells", cells, "train"), key=lambda r: r.name)[:2]
    root = cells_mod.write_draw_dataset(recs, tmp_path / "d", rotations=4)
    out = read_dataset("generic", root, "train")
    assert len(out) == 8
    for i, r in enumerate(out):
        src = recs[i // 4]
        k = i % 4
        dots = np.asarray(Image.open(Path(src.image_path).with_name(src.name.replace("cell", "dots") + ".png")).convert("RGB"))
        np.testing.assert_allclose(_sorted(r.points), _sorted(_red_points(np.rot90(dots, k))))
        np.testing.assert_array_equal(read_image(r.image_path), np.rot90(read_image(src.image_path), k))


@pytest.fixture(params=["loop", "trainer"])
def cells_smoke(request, cells_mod, shared_data, tmp_path):
    # shared_data skips (with its reason) when ../shared/data is absent: the cells need real data
    out = tmp_path / "cells"
    threads = torch.get_num_threads()
    try:
        result = cells_mod.main(["--smoke", "--engine", request.param, "--data", str(shared_data / "vgg_cells"),
                                 "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return result, out


def test_cells_smoke_reports_truthfully(cells_smoke, cells_mod, shared_data):
    result, out = cells_smoke
    saved = json.loads((out / "cells.json").read_text())
    assert saved["command"].startswith("python benchmarks/bench_cells.py --smoke --engine") and saved["seconds"] > 0
    assert saved["settings"]["engine"] in saved["command"]
    assert saved["seed"] == [0, 1] and len(saved["draws"]) == 2
    # ground truth counted here from the dots images (red pixels) of the first test images
    n_test = saved["settings"]["test_images"]
    gt = np.array([len(_red_points(np.asarray(Image.open(shared_data / "vgg_cells" / f"{i:03d}dots.png").convert("RGB"))))
                   for i in range(101, 101 + n_test)], dtype=float)
    maes = []
    for d in saved["draws"]:
        pred = np.array(d["pred_counts"])
        assert len(pred) == n_test
        assert d["mae"] == pytest.approx(np.abs(pred - gt).mean(), abs=2e-3)  # preds rounded to 1e-3
        # calibrated by default: reported counts = raw counts x factor
        assert d["calibrated"] and d["mae"] == pytest.approx(d["mae_calibrated"])
        assert d["mae_uncalibrated"] == pytest.approx(np.abs(pred / d["calibration_factor"] - gt).mean(), abs=2e-3)
        assert d["steps"] == saved["settings"]["steps"]
        idx = cells_mod.draw_indices(d["seed"], saved["settings"]["n"])
        assert d["train_images"] == [f"{i + 1:03d}cell" for i in idx]
        maes.append(d["mae"])
    assert saved["maes"] == maes
    assert saved["mae_mean"] == pytest.approx(np.mean(maes)) and saved["mae_std"] == pytest.approx(np.std(maes))
    assert saved["target_met"] == (saved["mae_mean"] <= 2.9)
    assert f"{saved['mae_mean']:.2f} +- {saved['mae_std']:.2f}" in (out / "cells.md").read_text()


# ------------------------------------------------------------------------------------- speed
@pytest.fixture(scope="module")
def speed_smoke(speed_mod, tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    threads = torch.get_num_threads()
    try:
        result = speed_mod.main(["--smoke", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return result, out


def test_speed_smoke_training_and_ddp(speed_smoke):
    _, out = speed_smoke
    saved = json.loads((out / "speed.json").read_text())
    assert saved["command"] == f"python benchmarks/bench_speed.py --smoke --out {out}"
    assert saved["seed"] == 0 and saved["seconds"] > 0 and len(saved["load_average_start"]) == 3
    rows = {r["case"]: r for r in saved["training"]["rows"]}
    assert set(rows) == {"fp32/fpn/b1", "fp32/autoscale/b1", "fp32/fpn/b2", "fp32/autoscale/b2"}
    for r in rows.values():
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["step_median_s"])
        assert len(r["steps_s"]) == 1 and r["step_median_s"] == r["steps_s"][0] > 0
    # every image of an AutoScale step ran a second pass on a region (forced by region_from="target")
    assert rows["fp32/autoscale/b1"]["regions_per_step"] == [1] and rows["fp32/autoscale/b2"]["regions_per_step"] == [2]
    assert rows["fp32/fpn/b1"]["regions_per_step"] == []
    ratio = saved["training"]["ratios"]["fp32/b1: autoscale step / fpn step"]
    assert ratio == pytest.approx(rows["fp32/autoscale/b1"]["step_median_s"] / rows["fp32/fpn/b1"]["step_median_s"])
    ddp = saved["ddp"]
    by = {r["processes"]: r for r in ddp["rows"]}
    assert set(by) == {1, 2}
    # trainer steps: 4 images, batch 1 per process, 2 epochs -> 8 steps alone, 4 with two ranks
    assert by[1]["steps"] == 8 and by[2]["steps"] == 4
    for r in by.values():
        assert len(r["epoch_seconds"]) == 2 and r["images_per_s"] == pytest.approx(4 / r["epoch_seconds"][-1])
    assert ddp["throughput_ratio_2_over_1"] == pytest.approx(by[2]["images_per_s"] / by[1]["images_per_s"])


def test_speed_smoke_inference_flops(speed_smoke, speed_mod):
    from torch.utils.flop_counter import FlopCounterMode

    from autoscale.targets import zoomed_size

    _, out = speed_smoke
    saved = json.loads((out / "speed.json").read_text())
    mp = saved["matmul_peak"]
    for k in ("fp32", "bf16"):
        assert mp[f"{k}_gflops"] == pytest.approx(2 * mp["n"] ** 3 / mp[f"{k}_seconds"] / 1e9)
    rows = saved["inference"]["rows"]
    assert [tuple(r["size"]) for r in rows] == [(48, 64), (96, 128)]
    model = speed_mod.build_model(0, 1 / 16)
    for r in rows:
        assert r["achieved_gflops"] == pytest.approx(r["flops"]["total"] / r["median_s"] / 1e9)
        # FLOPs counted here on real tensors (not the meta device)
        x, y, w, h = r["region_xywh"]
        zh, zw = zoomed_size((x, y, w, h), r["l2s_scale"])
        assert r["flops"]["second_pass_size"] == [zh, zw]
        with torch.no_grad():
            with FlopCounterMode(display=False) as fc:
                model.counter(torch.zeros(1, 3, *r["size"]), return_features=True)
            first = fc.get_total_flops()
            with FlopCounterMode(display=False) as fc:
                model.counter(torch.zeros(1, 3, zh, zw))
            second = fc.get_total_flops()
        assert r["flops"]["first_pass"] == first and r["flops"]["second_pass"] == second
        assert r["peak_rss_mib"] > 0 and r["median_s"] > 0


def test_speed_smoke_gt(speed_smoke, shared_data):
    _, out = speed_smoke
    g = json.loads((out / "speed.json").read_text())["gt"]
    gt_dir = shared_data / "shanghaitech" / "part_B" / "train_data" / "ground-truth"
    heads = sum(len(scipy.io.loadmat(gt_dir / f"GT_{n}.mat")["image_info"][0, 0][0, 0]["location"]) for n in g["names"])
    assert g["images"] == 3 and g["heads"] == heads
    # density maps integrate to the head count (points are inside the 1024x768 images)
    assert g["density_mass"] == pytest.approx(heads, rel=1e-4)
    assert g["total_s"] == pytest.approx(g["read_annotations_s"] + g["density_sigma8_s"] + g["distance_labels_s"])
