"""Smoke test of benchmarks/bench_shanghaitech.py on the real ShanghaiTech files (seconds).

``--smoke`` trains a width-1/16 FPN for two epochs on the first 3 images of a split and scores
the first 3 of the other. Checked against independent expectations: head counts read straight
from the ``.mat`` files with scipy, the Part A validation draw recomputed from the seed, MAE/RMSE
recomputed from the per-image rows, and the merge of two ``--variant`` runs into one file.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import loadmat


def _mat_count(gt_dir: Path, name: str) -> int:
    return len(loadmat(gt_dir / f"GT_{name}.mat")["image_info"][0, 0][0, 0]["location"])


def _natural(names):
    return sorted(names, key=lambda s: int(re.search(r"\d+", s).group()))


def _run(mod, args):
    threads = torch.get_num_threads()
    try:
        return mod.main(args)
    finally:
        torch.set_num_threads(threads)


def test_part_b_two_variant_runs_merge(shared_data, tmp_path, load_bench):
    mod = load_bench("bench_shanghaitech")
    root = shared_data / "shanghaitech"
    _run(mod, ["--smoke", "--part", "B", "--variant", "regression", "--root", str(root), "--out", str(tmp_path), "--quiet"])
    first = json.loads((tmp_path / "shanghaitech_b.json").read_text())
    assert set(first["methods"]) == {"fpn_regression", "autoscale_regression"}
    res = _run(mod, ["--smoke", "--part", "B", "--variant", "localization", "--root", str(root), "--out", str(tmp_path),
                     "--quiet"])
    saved = json.loads((tmp_path / "shanghaitech_b.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert set(saved["methods"]) == {"fpn_regression", "autoscale_regression", "fpn_localization",
                                     "autoscale_localization"}
    assert set(saved["runs"]) == {"regression", "localization"}
    assert saved["seed"] == 0 and saved["seconds"] > 0 and "--variant localization" in saved["command"]
    assert saved["methods"]["fpn_regression"] == first["methods"]["fpn_regression"]  # kept, not retrained

    # the first 3 test images (natural order) with their head counts from the .mat files
    test_dir = root / "part_B" / "test_data"
    names = _natural(p.stem for p in (test_dir / "images").glob("*.jpg"))[:3]
    counts = [_mat_count(test_dir / "ground-truth", n) for n in names]
    train_dir = root / "part_B" / "train_data"
    train_names = _natural(p.stem for p in (train_dir / "images").glob("*.jpg"))[:3]
    train_mean = np.mean([_mat_count(train_dir / "ground-truth", n) for n in train_names])
    assert saved["dataset"]["mean_baseline_mae"] == pytest.approx(np.mean(np.abs(np.array(counts) - train_mean)))
    for name, rows in saved["per_image"].items():
        assert [r["image"] for r in rows] == names
        assert [r["gt"] for r in rows] == counts
        gt = np.array(counts, float)
        pred = np.array([r["pred"] for r in rows])
        m = saved["methods"][name]
        assert m["mae"] == pytest.approx(np.abs(pred - gt).mean())
        assert m["rmse"] == pytest.approx(math.sqrt(((pred - gt) ** 2).mean()))
        assert ("f1_sigma8" in m) == ("localization" in name)
        assert saved["targets"][name]["met"] == (m["mae"] < 26.4)
        if "count_factor_from_train" in m:  # regression: calibrated counts = raw counts x factor
            assert m["mae_calibrated"] == pytest.approx(np.abs(pred * m["count_factor_from_train"] - gt).mean())
    md = (tmp_path / "shanghaitech_b.md").read_text()
    assert all(f"| {n} |" in md for n in saved["methods"])


def test_part_a_validation_split_is_carved_from_train(shared_data, tmp_path, load_bench):
    mod = load_bench("bench_shanghaitech")
    root = shared_data / "shanghaitech"
    res = _run(mod, ["--smoke", "--part", "A", "--variant", "regression", "--root", str(root), "--out", str(tmp_path),
                     "--quiet", "--seed", "3"])
    names = _natural(p.stem for p in (root / "part_A" / "train_data" / "images").glob("*.jpg"))
    assert len(names) == 300
    val = [names[i] for i in np.random.default_rng(3).permutation(len(names))[:2]]
    assert sorted(res["dataset"]["val_images"]) == sorted(val)
    scored = [r["image"] for r in res["per_image"]["fpn_regression"]]
    assert set(scored) <= set(val)
    gt_dir = root / "part_A" / "train_data" / "ground-truth"
    assert [r["gt"] for r in res["per_image"]["fpn_regression"]] == [_mat_count(gt_dir, n) for n in scored]
    assert (tmp_path / "shanghaitech_a_val.json").exists()


def test_missing_root_is_a_clear_error(tmp_path, load_bench):
    mod = load_bench("bench_shanghaitech")
    with pytest.raises(SystemExit, match="part_B.*not found"):
        mod.main(["--smoke", "--root", str(tmp_path), "--out", str(tmp_path)])


def test_analysis_reproduces_the_benchmark_first_pass(shared_data, tmp_path, load_bench):
    """analyze_shanghaitech.py re-loads the saved weights and recomputes the first-pass counts by its
    own path (resize in memory, plain counter forward): its test MAE must equal the benchmark's."""
    mod = load_bench("bench_shanghaitech")
    root = shared_data / "shanghaitech"
    res = _run(mod, ["--smoke", "--part", "B", "--variant", "regression", "--root", str(root), "--out", str(tmp_path),
                     "--quiet", "--save-dir", str(tmp_path / "w")])
    ana = load_bench("analyze_shanghaitech")
    out = _run(ana, ["--smoke", "--root", str(root), "--weights", str(tmp_path / "w"), "--out", str(tmp_path)])
    for name in ("fpn_regression", "autoscale_regression"):
        got = out["regression_counts"][name]
        assert got["first_pass_mae_test"] == pytest.approx(res["methods"][name]["first_pass_mae"], rel=1e-5)
        rows = res["per_image"][name]
        assert got["first_pass_bias_test"] == pytest.approx(np.mean([r["first"] - r["gt"] for r in rows]), rel=1e-5)
    # sparse test images at full resolution: every head is its own minimum of the GT label map
    full = out["label_map_oracle_test"]["x1"]
    assert full["heads"] == sum(r["gt"] for r in res["per_image"]["fpn_regression"])
    assert full["recall_at_4px"] == pytest.approx(1.0) and full["minima"] == full["heads"]
    assert (tmp_path / "shanghaitech_b_analysis.md").exists()
