"""Smoke test of benchmarks/bench_table9.py (paper Table 9: L2S on MCNN, CSRNet, CAN, SFCN, BL).

One ``--smoke`` run (2 seeds x 5 counters, each without and with L2S, 64x80 crowds, a few steps)
in-process per module. Its numbers are recomputed here from its per-image rows: the dataset is
regenerated from each seed, MAE / RMSE / dense MAE per seed with numpy, then means and standard
deviations over the seeds and the target verdicts. A second call with the same work folder
resumes: no pair is trained again.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autoscale.data.formats import read_dataset
from autoscale.data.synth import generate_dataset

COUNTERS = ("mcnn", "csrnet", "can", "sfcn", "bl")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, load_bench):
    out, work = tmp_path_factory.mktemp("t9_out"), tmp_path_factory.mktemp("t9_work")
    threads = torch.get_num_threads()
    try:
        mod = load_bench("bench_table9")
        res = mod.main(["--smoke", "--out", str(out), "--work", str(work), "--quiet"])
    finally:
        torch.set_num_threads(threads)
    return mod, res, out, work


def test_results_files_hold_every_method_with_means_and_stds(smoke):
    _, res, out, _ = smoke
    saved = json.loads((out / "table9.json").read_text())
    assert saved["methods"] == json.loads(json.dumps(res["methods"]))
    names = {f"{c}{s}" for c in COUNTERS for s in ("", "_l2s")}
    assert set(saved["methods"]) == names and saved["complete"] and saved["pairs_done"] == 10
    for m in saved["methods"].values():
        for k in ("mae", "rmse", "dense_mae"):
            assert k in m and f"{k}_std" in m
        assert m["seeds"] == list(SEEDS) and m["paper_shanghaitech_a"]["mae"] > 0
    md = (out / "table9.md").read_text()
    assert "| csrnet + L2S |" in md and "Status: complete" in md
    # each counter was trained as itself: the per-pair configs name it
    for key, pair in saved["pairs"].items():
        seed, counter = key.split("/")
        assert pair["counter"] == counter and pair["seed"] == int(seed)


def _mean_std(v):
    v = [x for x in v if x is not None]
    return (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) if v else (None, None)


def test_metrics_recomputed_from_the_per_image_rows(smoke, tmp_path):
    _, res, _, _ = smoke
    b = res["budget"]
    for seed in SEEDS:  # the test images are the seed's synthetic crowds
        root = tmp_path / f"d{seed}"
        n = b["n_train"] + b["n_test"]
        generate_dataset(root, n=n, size=tuple(b["size"]), seed=seed,
                         splits={"train": b["n_train"] / n, "test": b["n_test"] / n})
        gt = {r.name: r.count for r in read_dataset("generic", root, "test")}
        for c in COUNTERS:
            for kind in ("base", "l2s"):
                assert {r["image"]: r["gt"] for r in res["per_image"][f"{seed}/{c}"][kind]} == gt
    for c in COUNTERS:
        per = {"base": {"mae": [], "rmse": [], "dense": []}, "l2s": {"mae": [], "rmse": [], "dense": []}}
        for seed in SEEDS:
            rows = res["per_image"][f"{seed}/{c}"]
            for kind in ("base", "l2s"):
                err = np.array([r["pred"] - r["gt"] for r in rows[kind]])
                per[kind]["mae"].append(float(np.abs(err).mean()))
                per[kind]["rmse"].append(float(np.sqrt((err ** 2).mean())))
            # dense MAE: the L2S model's boxes; the baseline was scored in the same boxes
            own = [(r["region_refined"], r["region_gt"]) for r in rows["l2s"] if r["region_gt"] is not None]
            given = [(r["given_pred"], r["given_gt"]) for r in rows["base"] if r.get("given_gt") is not None]
            assert sorted(g for _, g in own) == sorted(g for _, g in given)
            per["l2s"]["dense"].append(float(np.mean([abs(p - g) for p, g in own])) if own else None)
            per["base"]["dense"].append(float(np.mean([abs(p - g) for p, g in given])) if given else None)
        for kind, name in (("base", c), ("l2s", f"{c}_l2s")):
            m = res["methods"][name]
            for k, key in (("mae", "mae"), ("rmse", "rmse"), ("dense", "dense_mae")):
                mean, std = _mean_std(per[kind][k])
                if mean is None:
                    assert m[key] is None
                else:
                    assert m[key] == pytest.approx(mean, rel=1e-9, abs=1e-9)
                    assert m[f"{key}_std"] == pytest.approx(std, rel=1e-9, abs=1e-9)
    t = res["targets"]
    lower = [c for c in COUNTERS if res["methods"][f"{c}_l2s"]["mae"] < res["methods"][c]["mae"]]
    assert t["mae_lower_at_least_four"]["lower"] == len(lower)
    assert t["mae_lower_at_least_four"]["met"] == (len(lower) >= 4)


def test_a_second_call_resumes_without_training(smoke, monkeypatch):
    mod, res, out, work = smoke

    def no_training(*a, **k):
        raise AssertionError("a finished pair was trained again")

    monkeypatch.setattr(mod, "run_pair", no_training)
    again = mod.main(["--smoke", "--out", str(out), "--work", str(work), "--quiet"])
    assert again["methods"] == res["methods"]
    with pytest.raises(SystemExit, match="other settings"):
        mod.main(["--smoke", "--out", str(out), "--work", str(work), "--quiet", "--epochs", "3"])
