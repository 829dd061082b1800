"""Smoke test of benchmarks/bench_pretrained.py on the real ShanghaiTech B files (under a minute).

``--smoke`` trains width-1/16 networks for 2 epochs on 1/16-size copies of 3 train photos and
scores 2 test photos, all through ``autoscale train`` / ``autoscale evaluate`` subprocesses.
Checked against independent expectations: head counts read with scipy from the ``.mat`` files,
MAE/RMSE recomputed from evaluate's per_image.csv, the FPN's dense-region error recomputed from
the AutoScale model's boxes with the prediction API's density map, and a second invocation that
must start no subprocess and leave the results as they were.
"""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from scipy.io import loadmat

METHODS = "fpn_regression,autoscale_regression,fpn_density_peaks,autoscale_localization,fpn_localization_ce"
PRF = [f"{k}_{s}" for s in (4, 8) for k in ("precision", "recall", "f1")]


def _mat_points(gt_dir, name):
    return np.asarray(loadmat(gt_dir / f"GT_{name}.mat")["image_info"][0, 0][0, 0]["location"], dtype=np.float64)


def _rows(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _state(work):
    return {p.name: p.read_text() for p in sorted((work / "state").glob("*.json"))}


def test_smoke_part_b_user_path_resume_and_dense_mae(shared_data, tmp_path, load_bench):
    mod = load_bench("bench_pretrained")
    root = shared_data / "shanghaitech"
    work, out = tmp_path / "work", tmp_path / "out"
    args = ["--smoke", "--part", "b", "--root", str(root), "--work", str(work), "--out", str(out), "--quiet",
            "--methods", METHODS]
    res = mod.main(args)
    saved = json.loads((out / "shanghaitech_b_pretrained.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert list(saved["methods"]) == METHODS.split(",")
    for key in ("machine", "resolution", "seed", "dataset", "budget"):
        assert key in saved
    assert saved["seed"] == 0 and saved["budget"]["max_cpu_minutes"] == 90
    assert saved["resolution"]["input_sizes_wh"] == [[64, 48]]

    # the scored images: the first 2 test photos, counts straight from the .mat files
    test_dir = root / "part_B" / "test_data"
    names = ["IMG_1", "IMG_2"]
    gt_points = {n: _mat_points(test_dir / "ground-truth", n) for n in names}
    for name, m in saved["methods"].items():
        for k in ("mae", "rmse", "first_pass_mae", "dense_mae", "dense_mae_n", "cpu_minutes", "command"):
            assert k in m, (name, k)
        assert all(k in m for k in PRF) == (name != "fpn_regression" and name != "autoscale_regression")
        rows = _rows(m["eval_dir"] + "/per_image.csv")
        assert [r["image"] for r in rows] == names
        gt = np.array([len(gt_points[n]) for n in names], dtype=float)
        assert [float(r["gt"]) for r in rows] == gt.tolist()
        col = "n_points" if name == "fpn_density_peaks" else "pred"
        pred = np.array([float(r[col]) for r in rows])
        assert m["mae"] == pytest.approx(np.abs(pred - gt).mean(), abs=1e-5)
        assert m["rmse"] == pytest.approx(math.sqrt(((pred - gt) ** 2).mean()), abs=1e-5)
        assert m["cpu_minutes"] > 0 and m["cpu_minutes_complete"]
        # exact command lines: the user's CLI, train then evaluate
        assert all(c.startswith(f"{sys.executable} -m autoscale train --config shanghaitech_b_") for c in m["command"]["train"])
        assert m["command"]["evaluate"].startswith(f"{sys.executable} -m autoscale evaluate --checkpoint ")
        assert m["cpu_minutes"] == pytest.approx(sum(c["cpu_s"] for c in m["train_calls"]) / 60, abs=2e-3)

    fpn, auto = saved["methods"]["fpn_regression"], saved["methods"]["autoscale_regression"]
    assert [c["phase"] for c in fpn["train_calls"]] == ["trunk", "rest"]
    assert "optim.max_steps=3" in fpn["command"]["train"][0] and "--resume" in fpn["command"]["train"][1]
    # AutoScale: the FPN's first call (to the branch epoch) + its own, started from epoch_1.pt
    assert [c["phase"] for c in auto["train_calls"]] == ["trunk", "branch"]
    assert auto["command"]["train"][0] == fpn["command"]["train"][0]
    assert "init_from=" in auto["command"]["train"][1] and "epoch_1.pt" in auto["command"]["train"][1]
    assert auto["cpu_minutes_trunk"] == pytest.approx(fpn["train_calls"][0]["cpu_s"] / 60, abs=1e-3)
    assert "--points-from-density-peaks" in saved["methods"]["fpn_density_peaks"]["command"]["evaluate"]
    assert "pipeline.loss=ce" in saved["methods"]["fpn_localization_ce"]["command"]["train"][0]
    assert saved["methods"]["fpn_density_peaks"]["mae_density_sum"] == pytest.approx(fpn["mae"])

    # dense_mae of the FPN: GT heads vs its density inside the AutoScale model's boxes, recomputed
    # with the prediction API on the evaluated copies (points of the copies = .mat points / 16)
    from autoscale.predict import Predictor

    assert "--regions-from" in fpn["command"]["evaluate"] and fpn["dense_regions_from"] == "autoscale_regression"
    predictor = Predictor.from_checkpoint(fpn["checkpoint"])
    pairs = []
    for r in _rows(auto["eval_dir"] + "/per_image.csv"):
        if not r["region_boxes_orig"]:
            continue
        dmap = predictor(work / "data" / "test" / f"{r['image']}.png").map
        pts = gt_points[r["image"]] / 16.0
        g = p = 0.0
        for box in r["region_boxes_orig"].split(";"):
            x, y, w, h = (int(round(float(v))) for v in box.split())
            g += float(((pts[:, 0] >= x) & (pts[:, 0] < x + w) & (pts[:, 1] >= y) & (pts[:, 1] < y + h)).sum())
            p += float(dmap[y:y + h, x:x + w].sum(dtype=np.float64))
        pairs.append((g, p))
    assert pairs and fpn["dense_mae_n"] == len(pairs) == auto["dense_mae_n"]
    assert fpn["dense_mae"] == pytest.approx(np.mean([abs(p - g) for g, p in pairs]), rel=1e-4, abs=1e-4)
    # the AutoScale entry: its own second-pass count in its boxes (per_image region_* columns)
    arows = [r for r in _rows(auto["eval_dir"] + "/per_image.csv") if r["region_gt"]]
    assert auto["dense_mae"] == pytest.approx(
        np.mean([abs(float(r["region_autoscale"]) - float(r["region_gt"])) for r in arows]), abs=1e-5)
    assert [float(r["region_gt"]) for r in arows] == [g for g, _ in pairs]

    md = (out / "shanghaitech_b_pretrained.md").read_text()
    assert all(f"| {n} |" in md for n in saved["methods"])

    # second invocation: every training and evaluation is found finished, nothing changes
    state = _state(work)
    again = mod.main(args)
    assert _state(work) == state
    assert again["methods"] == saved["methods"]
    assert json.loads((out / "shanghaitech_b_pretrained.json").read_text())["methods"] == saved["methods"]


def test_missing_root_and_bad_arguments(tmp_path, load_bench):
    mod = load_bench("bench_pretrained")
    with pytest.raises(SystemExit, match="part_B.*not found"):
        mod.main(["--smoke", "--root", str(tmp_path), "--work", str(tmp_path / "w"), "--quiet"])
    with pytest.raises(SystemExit, match="unknown method"):
        mod.main(["--smoke", "--methods", "fpn_regression,nope", "--root", str(tmp_path)])
    assert mod._branch_arg("12") == {"regression": 12, "localization": 12}
    assert mod._branch_arg("localization=9") == {"localization": 9}
