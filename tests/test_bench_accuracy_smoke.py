"""Smoke tests of benchmarks/bench_synthetic.py and benchmarks/bench_ablations.py.

Both ``--smoke`` runs (8 synthetic images of 64x80, FPN width 1/16, a few steps) run in-process
once per module (a few seconds). Their reported numbers are checked against values recomputed
here independently: the dataset is regenerated from the seed, counting metrics and P/R/F1 are
recomputed from the per-image rows, point matching is redone with a Hungarian assignment
(scipy), dense-region GT counts with plain numpy, and the two scripts must agree on the models
they share (same seed, same trunk -> identical predictions).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from autoscale.data.formats import read_dataset
from autoscale.data.synth import generate_dataset

LOC_METHODS = ("fpn_localization", "autoscale_localization", "fpn_localization_ce", "fpn_density_peaks_sigma2")
REG_METHODS = ("fpn_regression", "autoscale_regression")
VARIANTS = ("fpn", "learned", "fixed_1.5", "fixed_2", "fixed_2.5", "fixed_3", "people_number",
            "dense_official_4x", "kernel_multiplied", "kernel_divided", "top2")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, load_bench):
    out = tmp_path_factory.mktemp("bench_acc")
    threads = torch.get_num_threads()
    try:
        syn = load_bench("bench_synthetic").main(["--smoke", "--out", str(out), "--quiet"])
        abl = load_bench("bench_ablations").main(["--smoke", "--out", str(out), "--quiet"])
    finally:
        torch.set_num_threads(threads)
    return syn, abl, out


@pytest.fixture(scope="module")
def gt_points(runs, tmp_path_factory):
    """The smoke test split regenerated independently: name -> (N, 2) points."""
    syn = runs[0]
    b = syn["budget"]
    n = b["n_train"] + b["n_test"]
    root = tmp_path_factory.mktemp("regen") / "data"
    generate_dataset(root, n=n, size=tuple(b["size"]), seed=syn["seed"],
                     splits={"train": b["n_train"] / n, "test": b["n_test"] / n})
    return {r.name: np.asarray(r.points, dtype=float).reshape(-1, 2) for r in read_dataset("generic", root, "test")}


def _hungarian_tp(pred: np.ndarray, gt: np.ndarray, radius: float) -> int:
    """Maximum matching within ``radius`` via a min-cost complete assignment (cost 0 allowed, 1 not)."""
    if len(pred) == 0 or len(gt) == 0:
        return 0
    d = np.sqrt(((pred[:, None, :] - gt[None, :, :]) ** 2).sum(-1))
    cost = (d > radius).astype(float)
    r, c = linear_sum_assignment(cost)
    return int((cost[r, c] == 0).sum())


def _in_box(pts: np.ndarray, box) -> int:
    x, y, w, h = box
    pts = np.asarray(pts, dtype=float).reshape(-1, 2)
    return int(((pts[:, 0] >= x) & (pts[:, 0] < x + w) & (pts[:, 1] >= y) & (pts[:, 1] < y + h)).sum())


# ------------------------------------------------------------------------------- bench_synthetic
def test_synthetic_files_and_keys(runs):
    syn, _, out = runs
    saved = json.loads((out / "synthetic.json").read_text())
    assert saved == json.loads(json.dumps(syn))
    assert saved["command"] == f"python benchmarks/bench_synthetic.py --smoke --out {out} --quiet"
    assert saved["seed"] == 0 and saved["seconds"] > 0 and saved["machine"]["torch_threads"] == 1
    assert set(saved["methods"]) == set(REG_METHODS + LOC_METHODS)
    for name, m in saved["methods"].items():
        assert {"mae", "rmse", "dense_mae"} <= m.keys()
        assert m["rmse"] >= m["mae"] >= 0
        for s in (4, 8):
            assert (f"f1_sigma{s}" in m) == (name in LOC_METHODS)
    md = (out / "synthetic.md").read_text()
    for name in saved["methods"]:
        assert f"| {name} |" in md
    assert torch.get_num_threads() >= 1


def test_synthetic_dataset_matches_regeneration(runs, gt_points):
    syn = runs[0]
    assert syn["dataset"]["test_counts"] == [len(p) for p in gt_points.values()]
    for rows in syn["per_image"].values():
        assert [r["gt"] for r in rows] == [len(gt_points[r["image"]]) for r in rows]


def test_synthetic_metrics_recomputed_from_rows(runs, gt_points):
    syn = runs[0]
    for name, rows in syn["per_image"].items():
        gt = np.array([r["gt"] for r in rows], float)
        pred = np.array([r["pred"] for r in rows], float)
        m = syn["methods"][name]
        assert m["mae"] == pytest.approx(np.abs(pred - gt).mean())
        assert m["rmse"] == pytest.approx(math.sqrt(((pred - gt) ** 2).mean()))
        if name not in LOC_METHODS:
            continue
        for s in (4, 8):
            tp = fp = fn = 0
            for r in rows:
                pts = np.asarray(r["points"], float).reshape(-1, 2)
                g = gt_points[r["image"]]
                t = _hungarian_tp(pts, g, float(s))
                assert (r[f"tp_{s}"], r[f"fp_{s}"], r[f"fn_{s}"]) == (t, len(pts) - t, len(g) - t)
                tp, fp, fn = tp + t, fp + len(pts) - t, fn + len(g) - t
            p = tp / (tp + fp) if tp + fp else 0.0
            rc = tp / (tp + fn) if tp + fn else 0.0
            assert m[f"precision_sigma{s}"] == pytest.approx(p)
            assert m[f"recall_sigma{s}"] == pytest.approx(rc)
            assert m[f"f1_sigma{s}"] == pytest.approx(2 * p * rc / (p + rc) if p + rc else 0.0)
        # point methods count their points
        assert all(r["pred"] == len(r["points"]) for r in rows)


def test_synthetic_dense_protocol_same_regions(runs, gt_points):
    syn = runs[0]
    ref = syn["per_image"]["autoscale_localization"]
    refined = [r for r in ref if r["regions"]]
    assert refined, "the smoke run must refine at least one region (regions from the target, no gate)"
    for r in refined:
        assert all(reg[4] > 0 for reg in r["regions"])
        assert r["region_gt"] == sum(_in_box(gt_points[r["image"]], reg[:4]) for reg in r["regions"])
    gts = np.array([r["region_gt"] for r in refined], float)
    auto = np.array([r["region_refined"] for r in refined], float)
    m = syn["methods"]["autoscale_localization"]
    assert m["dense_images"] == len(refined)
    assert m["dense_mae"] == pytest.approx(np.abs(auto - gts).mean())
    own_first = np.array([r["region_first"] for r in refined], float)
    assert m["dense_mae_own_first_pass"] == pytest.approx(np.abs(own_first - gts).mean())
    by_name = {r["image"]: r for r in ref}
    for name in ("fpn_localization", "fpn_localization_ce", "fpn_density_peaks_sigma2"):
        rows = {r["image"]: r for r in syn["per_image"][name]}
        base = np.array([sum(_in_box(rows[n]["points"], g[:4]) for g in by_name[n]["regions"])
                         for n in (r["image"] for r in refined)], float)
        assert [rows[r["image"]]["given_gt"] for r in refined] == list(gts)
        assert [rows[r["image"]]["given_pred"] for r in refined] == list(base)
        assert all(r["given_gt"] is None for n, r in rows.items() if not by_name[n]["regions"])
        assert syn["methods"][name]["dense_images"] == len(refined)
        assert syn["methods"][name]["dense_mae"] == pytest.approx(np.abs(base - gts).mean())


def test_synthetic_targets_follow_numbers(runs):
    syn = runs[0]
    t, m = syn["targets"], syn["methods"]
    for v in ("regression", "localization"):
        base, new = m[f"fpn_{v}"]["dense_mae"], m[f"autoscale_{v}"]["dense_mae"]
        tv = t[f"dense_mae_reduction_{v}"]
        assert (tv["fpn_dense_mae"], tv["autoscale_dense_mae"]) == (base, new)
        if base:
            assert tv["reduction"] == pytest.approx((base - new) / base)
            assert tv["met"] == ((base - new) / base >= 0.10)
        else:
            assert tv["met"] is False
    assert t["dce_beats_ce_f1"]["met"] == (m["fpn_localization"]["f1_sigma8"] > m["fpn_localization_ce"]["f1_sigma8"])
    assert t["distance_label_beats_density_peaks"]["met"] == (
        m["fpn_localization"]["f1_sigma8"] > m["fpn_density_peaks_sigma2"]["f1_sigma8"])


# ------------------------------------------------------------------------------- bench_ablations
def test_ablations_files_and_recomputation(runs):
    _, abl, out = runs
    saved = json.loads((out / "ablations.json").read_text())
    assert saved == json.loads(json.dumps(abl))
    assert saved["command"] == f"python benchmarks/bench_ablations.py --smoke --out {out} --quiet"
    assert saved["seed"] == 0 and saved["seconds"] > 0
    assert tuple(saved["variants"]) == VARIANTS
    md = (out / "ablations.md").read_text()
    for name, m in saved["variants"].items():
        assert f"| {name} |" in md
        rows = saved["per_image"][name]
        gt = np.array([r["gt"] for r in rows], float)
        pred = np.array([r["pred"] for r in rows], float)
        assert m["mae"] == pytest.approx(np.abs(pred - gt).mean())
        assert m["rmse"] == pytest.approx(math.sqrt(((pred - gt) ** 2).mean()))


def test_ablations_training_ran_the_variants(runs):
    abl = runs[1]
    v = abl["variants"]
    for name in VARIANTS[1:-1]:
        # smoke configs take training regions from the target: every step refined a region
        assert v[name]["train"]["regions_per_epoch"] == [abl["budget"]["n_train"]] * (
            abl["budget"]["epochs"] - abl["budget"]["branch_epoch"])
    for s in ("1.5", "2", "2.5", "3"):
        assert v[f"fixed_{s}"]["train"]["center"] is None  # no L2S, no centre loss
    # the people-number measure moves the centre C differently from the mean distance (Eq. 4)
    assert v["learned"]["train"]["center"] != v["people_number"]["train"]["center"]


def test_ablations_top2_is_learned_model(runs):
    abl = runs[1]
    for a, b in zip(abl["per_image"]["learned"], abl["per_image"]["top2"]):
        assert a["first"] == b["first"]
        assert len(b["regions"]) <= 2
        if a["regions"]:
            assert b["regions"][0][:4] == a["regions"][0][:4]
        else:
            assert not b["regions"] and a["pred"] == b["pred"]


def test_scripts_agree_on_shared_models(runs):
    syn, abl, _ = runs
    for s_name, a_name in (("fpn_regression", "fpn"), ("autoscale_regression", "learned")):
        a = [r["pred"] for r in syn["per_image"][s_name]]
        b = [r["pred"] for r in abl["per_image"][a_name]]
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9)
