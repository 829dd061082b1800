"""The demo's smoke budget end to end (seconds), plus the output-scale folding it relies on."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from autoscale.cli import main as cli_main
from autoscale.demo import METHODS, mean_baseline_mae
from autoscale.models.registry import build_from_checkpoint, load_checkpoint


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert cli_main(["demo", "--out", str(out), "--smoke", "--quiet"]) == 0
    return out


def test_outputs_and_schema(smoke_out: Path) -> None:
    for f in ("report.md", "results.json", "training_log.json"):
        assert (smoke_out / f).is_file(), f
    res = json.loads((smoke_out / "results.json").read_text())
    assert set(res["methods"]) == set(METHODS) == set(res["checkpoints"])
    for name, m in res["methods"].items():
        keys = {"mae", "rmse", "dense_mae"} | ({"precision", "recall", "f1"} if "localization" in name else set())
        assert set(m) == keys, name
        assert all(np.isfinite(v) and v >= 0 for v in m.values())
        assert m["rmse"] >= m["mae"] - 1e-9
        for k in ("precision", "recall", "f1"):
            assert 0 <= m.get(k, 0) <= 1
    report = (smoke_out / "report.md").read_text()
    assert "on synthetic crowds**, from scratch" in report and all(n in report for n in METHODS)  # smoke: VGG16
    assert "vgg16 FPN at width 0.0625" in report


def test_checkpoints_load(smoke_out: Path) -> None:
    res = json.loads((smoke_out / "results.json").read_text())
    for name, path in res["checkpoints"].items():
        ck = load_checkpoint(path)
        method, variant = name.split("_", 1)
        assert (ck["method"], ck["variant"]) == (method, variant)
        assert ck["pipeline"]["variant"] == variant
        fpn, l2s = build_from_checkpoint(path)
        assert (l2s is None) == (method == "fpn")
        out = fpn.eval()(torch.zeros(1, 3, 40, 48))
        assert out.final.shape[-2:] == (40, 48)


def test_mean_baseline_recomputed_from_list_files(smoke_out: Path) -> None:
    root = smoke_out / "data"

    def counts(split: str) -> list[int]:
        lines = [ln.split() for ln in (root / f"{split}.txt").read_text().splitlines() if ln.strip()]
        return [len(json.loads((root / ann).read_text())["points"]) for _, ann in lines]

    tr, te = counts("train"), counts("test")
    expected = sum(abs(c - sum(tr) / len(tr)) for c in te) / len(te)
    res = json.loads((smoke_out / "results.json").read_text())
    assert res["mean_baseline_mae"] == pytest.approx(expected, rel=1e-12)
    assert mean_baseline_mae([1, 3], [0, 2, 5]) == pytest.approx((2 + 0 + 3) / 3)


def test_dense_mae_matches_per_image_rows(smoke_out: Path) -> None:
    rows = json.loads((smoke_out / "per_image.json").read_text())
    res = json.loads((smoke_out / "results.json").read_text())
    for name, rr in rows.items():
        gt = np.array([r["gt"] for r in rr], float)
        pr = np.array([r["pred"] for r in rr], float)
        assert res["methods"][name]["mae"] == pytest.approx(np.abs(pr - gt).mean(), abs=1e-9)
        top = np.argsort(-gt, kind="stable")[: int(np.ceil(len(gt) / 3))]
        assert res["methods"][name]["dense_mae"] == pytest.approx(np.abs(pr[top] - gt[top]).mean(), abs=1e-9)


def test_checkpoints_come_from_engine_runs_with_model_cards(smoke_out: Path) -> None:
    for name in METHODS:
        method = name.split("_", 1)[0]
        card = json.loads((smoke_out / "checkpoints" / f"{name}.json").read_text())
        assert card["method"] == method and card["checkpoint"] == f"{name}.pt" and card["cpu_minutes"] > 0
        assert (smoke_out / "runs" / name / "run.json").is_file()
        ck = load_checkpoint(smoke_out / "checkpoints" / f"{name}.pt")
        assert ck["epoch"] == ck["config"]["optim"]["epochs"]
        if method == "autoscale":  # branched off the FPN run's kept epoch
            parent = load_checkpoint(ck["config"]["init_from"])
            assert parent["method"] == "fpn" and ck["cpu_seconds"] > parent["cpu_seconds"]


def test_two_processes_train_the_same_models_as_one(smoke_out: Path, tmp_path: Path) -> None:
    """``--jobs 2`` (the default on two CPUs) trains the two variants in spawned processes: the
    checkpoints' tensors and the metrics equal a run that trains them one after the other."""
    res2 = json.loads((smoke_out / "results.json").read_text())
    assert res2["jobs"] == (2 if (os.cpu_count() or 1) >= 2 else 1)
    one = tmp_path / "one"
    assert cli_main(["demo", "--out", str(one), "--smoke", "--quiet", "--jobs", "1"]) == 0
    res1 = json.loads((one / "results.json").read_text())
    assert res1["jobs"] == 1 and res1["methods"] == res2["methods"]
    for name in METHODS:
        a, b = load_checkpoint(one / "checkpoints" / f"{name}.pt"), load_checkpoint(smoke_out / "checkpoints" / f"{name}.pt")
        for key in ("state_dict", "l2s_state_dict"):
            sa, sb = a.get(key) or {}, b.get(key) or {}
            assert sa.keys() == sb.keys() and (key == "l2s_state_dict" or sa)
            assert all(torch.equal(sa[k], sb[k]) for k in sa), (name, key)


def test_train_seed_retrains_on_the_same_data(smoke_out: Path, tmp_path: Path) -> None:
    """``--train-seed 1`` draws the same dataset as ``--seed 0`` (byte-identical files) and trains
    other models on it (different weights), and says so in results.json and the report."""
    other = tmp_path / "ts1"
    assert cli_main(["demo", "--out", str(other), "--smoke", "--quiet", "--jobs", "1", "--train-seed", "1"]) == 0
    res0 = json.loads((smoke_out / "results.json").read_text())
    res1 = json.loads((other / "results.json").read_text())
    assert (res0["seed"], res0["train_seed"]) == (0, 0) and (res1["seed"], res1["train_seed"]) == (0, 1)
    files = sorted(p.relative_to(smoke_out / "data") for p in (smoke_out / "data").rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(other / "data") for p in (other / "data").rglob("*") if p.is_file())
    assert all((smoke_out / "data" / f).read_bytes() == (other / "data" / f).read_bytes() for f in files)
    assert res1["mean_baseline_mae"] == res0["mean_baseline_mae"]
    a = load_checkpoint(smoke_out / "checkpoints" / "fpn_regression.pt")["state_dict"]
    b = load_checkpoint(other / "checkpoints" / "fpn_regression.pt")["state_dict"]
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)
    assert "seed 0 (training seed 1)" in (other / "report.md").read_text()
