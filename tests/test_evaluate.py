"""Dataset evaluation: metrics.json vs independent computations from per_image.csv and autoscale.metrics."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from autoscale.cli import main
from autoscale.data.formats import read_dataset
from autoscale.data.preprocess import ResizeRule
from autoscale.data.synth import generate_dataset
from autoscale.engine.evaluate import evaluate
from autoscale.metrics import fixed_thresholds, knn_thresholds, localization_metrics, match_points
from autoscale.models.registry import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, get_model
from autoscale.predict import Predictor


def make_checkpoint(path: Path, variant: str, seed: int = 3) -> Path:
    """Tiny registry-format checkpoint, Kaiming re-initialised so maps depend on the image."""
    torch.manual_seed(seed)
    fpn = get_model(f"fpn_{variant}", width=0.0625)
    for m in fpn.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
    net = get_model(f"l2s_{variant}", in_channels=fpn.feature_channels)
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "variant": variant,
                "model": {"name": f"fpn_{variant}", "kwargs": {"width": 0.0625}}, "state_dict": fpn.state_dict(),
                "l2s_state_dict": net.state_dict(), "l2s": {"head": net.head, "bound": net.bound, "pool": net.pool},
                "pipeline": {"variant": variant}, "method": "autoscale"}, path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, n=4, size=(64, 80), splits={"test": 1.0})
    d = tmp_path_factory.mktemp("ck")
    return root, {v: make_checkpoint(d / f"{v}.pt", v) for v in ("regression", "localization")}


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_regression_metrics_from_per_image_csv(tmp_path, data):
    root, ck = data
    records = read_dataset("generic", root, "test")
    out = tmp_path / "eval"
    m = evaluate(ck["regression"], records, out_dir=out)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["counting"]["mae"] == pytest.approx(m["counting"]["mae"])
    rows = read_rows(out / "per_image.csv")
    assert [r["image"] for r in rows] == [r.name for r in records]
    gt = np.array([float(r["gt"]) for r in rows])
    pred = np.array([float(r["pred"]) for r in rows])
    np.testing.assert_array_equal(gt, [r.count for r in records])
    err = pred - gt
    assert on_disk["counting"]["mae"] == pytest.approx(np.abs(err).mean(), abs=1e-5)
    assert on_disk["counting"]["rmse"] == pytest.approx(np.sqrt((err**2).mean()), abs=1e-5)
    assert on_disk["counting"]["mse"] == on_disk["counting"]["rmse"]
    # The same counts as the prediction API (no EXIF in PNGs, no resize at this size).
    p = Predictor.from_checkpoint(ck["regression"])
    np.testing.assert_allclose(pred, [p(r.image_path).count for r in records], atol=1e-5)
    # Groups: every synthetic image has <= 50 heads -> JHU "low".
    assert on_disk["groups"]["density"]["low"]["n"] == 4
    # Dense regions (Table 8): recompute from the per-image columns and the GT points in the box.
    refined = [r for r in rows if r["region_gt"] != ""]
    assert refined, "the test checkpoint should refine a region"
    for r, rec in zip(rows, records):
        if r["region_gt"] == "":
            continue
        x, y, w, h = map(int, r["region_boxes"].split(";")[0].split())
        p_ = rec.points
        inside = ((p_[:, 0] >= x) & (p_[:, 0] < x + w) & (p_[:, 1] >= y) & (p_[:, 1] < y + h)).sum()
        assert float(r["region_gt"]) == inside
    g = np.array([float(r["region_gt"]) for r in refined])
    for key, col in (("baseline", "region_baseline"), ("autoscale", "region_autoscale")):
        e = np.array([float(r[col]) for r in refined]) - g
        assert on_disk["dense_regions"][key]["mae"] == pytest.approx(np.abs(e).mean(), abs=1e-4)
        assert on_disk["dense_regions"][key]["rmse"] == pytest.approx(np.sqrt((e**2).mean()), abs=1e-4)
    assert on_disk["dense_regions"]["num_images"] == len(refined)
    # Scales and Fig. 9 densities: after = before / s^2.
    s = np.array(on_disk["scales"]["values"])
    assert len(s) == sum(int(r["n_regions"]) for r in rows)
    np.testing.assert_allclose(np.array(on_disk["region_density"]["after"]) * s**2,
                               on_disk["region_density"]["before"], rtol=1e-9)
    report = (out / "report.md").read_text()
    assert "Dense regions" in report and "MAE" in report
    assert (out / "scales_hist.png").stat().st_size > 0 and (out / "region_density.png").stat().st_size > 0


def test_localization_metrics_match_independent_scoring(tmp_path, data):
    root, ck = data
    records = read_dataset("generic", root, "test")
    rule = ResizeRule("t", max_long=48)  # 64x80 -> 38x48: points must be mapped back
    m = evaluate(ck["localization"], records, resize=rule, out_dir=tmp_path / "eval", sigmas=(4, 8))
    p = Predictor.from_checkpoint(ck["localization"], max_side=48)  # the same rule, independent code path
    preds = [p(r.image_path).points for r in records]
    assert sum(len(x) for x in preds) > 0
    for sigma in (4, 8):
        exp = localization_metrics([match_points(pp, r.points, fixed_thresholds(r.points, sigma))
                                    for pp, r in zip(preds, records)])
        got = m["localization"][f"sigma_{sigma}"]
        for k in ("precision", "recall", "f1", "tp", "fp", "fn"):
            assert got[k] == pytest.approx(exp[k])
    exp = localization_metrics([match_points(pp, r.points, knn_thresholds(r.points)) for pp, r in zip(preds, records)])
    assert m["localization"]["knn"]["f1"] == pytest.approx(exp["f1"])
    assert m["localization"]["knn"]["tp"] == exp["tp"]
    counts = np.array([len(pp) for pp in preds])
    gt = np.array([r.count for r in records])
    assert m["counting"]["mae"] == pytest.approx(np.abs(counts - gt).mean())


def test_cli_evaluate_format_and_config_agree(tmp_path, data, capsys):
    root, ck = data
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["evaluate", "--checkpoint", str(ck["regression"]), "--format", "generic", "--root", str(root),
                 "--split", "test", "--out", str(a)]) == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"format": "generic", "root": "/nonexistent"}}))
    assert main(["evaluate", "--checkpoint", str(ck["regression"]), "--config", str(cfg), f"data.root={root}",
                 "--out", str(b)]) == 0
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    assert ma["counting"] == mb["counting"] and ma["num_images"] == 4
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ck["regression"]), "--out", str(tmp_path / "c")]) == 2
    assert "--format" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(ck["regression"]), "--format", "generic", "--root",
                 str(tmp_path / "missing"), "--out", str(tmp_path / "d")]) == 2
