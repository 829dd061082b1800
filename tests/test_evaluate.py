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
    # The same counts as the prediction API (no EXIF in PNGs, no resize at this size; both run a
    # loaded checkpoint channels_last on the CPU, so the same maps; the CSV keeps 6 decimals)
    p = Predictor.from_checkpoint(ck["regression"])
    assert p.channels_last
    np.testing.assert_allclose(pred, [p(r.image_path).count for r in records], rtol=0, atol=1e-6)
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


def test_passed_model_keeps_its_layout_loaded_checkpoint_runs_channels_last(data):
    """A checkpoint path runs channels_last (fast on the CPU); a model object passed in (what the
    trainer does at validation) keeps its NCHW weights, and both give the same counts."""
    from autoscale.predict import load_autoscale

    root, ck = data
    records = read_dataset("generic", root, "test")
    model, _ = load_autoscale(ck["regression"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows_live: list = []
    rows_file: list = []
    evaluate(model, records, per_image=rows_live, figures=False)
    evaluate(ck["regression"], records, per_image=rows_file, figures=False)
    for k, v in model.state_dict().items():
        assert v.is_contiguous(), k  # not converted to channels_last behind the caller's back
        assert torch.equal(v, before[k]), k
    live = np.array([r["pred"] for r in rows_live])
    loaded = np.array([r["pred"] for r in rows_file])
    np.testing.assert_allclose(loaded, live, rtol=1e-5, atol=1e-5)
    assert [r["n_regions"] for r in rows_live] == [r["n_regions"] for r in rows_file]


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


# ------------------------------------------------------------------ given regions / density peaks
class _FixedMap(nn.Module):
    """A 'counter' whose density map is fixed (network-input frame), so counts are hand-computable."""

    feature_channels = 1

    def __init__(self, m: np.ndarray):
        super().__init__()
        self.register_buffer("m", torch.tensor(m, dtype=torch.float32))
        self.unused = nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, x, return_features=False):
        assert tuple(x.shape[-2:]) == tuple(self.m.shape)
        from autoscale.models.fpn import FPNOutput

        return FPNOutput(final=self.m[None, None].clone(), side=[], features=None)


@pytest.fixture
def hand_case(tmp_path):
    """Three 40x30 images evaluated at half size (20x15) by a fixed map with ones at input pixels
    (2, 2), (12, 8), (13, 9) and 0.5 at (5, 5)."""
    from PIL import Image

    from autoscale.data.formats import write_generic_annotation, write_generic_list
    from autoscale.pipeline import AutoScale, PipelineConfig

    gt = {"a": [(21, 15), (29.9, 19.9), (25, 17), (30, 15), (5, 5)],
          "b": [(3, 3), (10.5, 3), (10.5, 10.5)],
          "c": [(1, 1)]}
    entries = []
    for name, pts in gt.items():
        ip = tmp_path / "data" / f"{name}.png"
        ip.parent.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(ip)
        entries.append((ip, write_generic_annotation(ip.with_suffix(".json"), np.array(pts, float))))
    write_generic_list(tmp_path / "data", "test", entries)
    m = np.zeros((15, 20), np.float32)
    m[2, 2] = m[8, 12] = m[9, 13] = 1.0
    m[5, 5] = 0.5
    model = AutoScale(_FixedMap(m), None, PipelineConfig(variant="regression"))
    # a: one box, input (10, 7, 5, 3); b: two boxes (fractional), input (1, 1, 4, 4) and (5, 5, 1, 1); c: none
    boxes = {"a": [(20, 14, 10, 6)], "b": [(1.2, 1.2, 8.6, 8.6), (10, 10, 2, 2)]}
    return model, read_dataset("generic", tmp_path / "data", "test"), ResizeRule("half", max_long=20), boxes


def test_given_regions_hand_computed(tmp_path, hand_case):
    model, records, rule, boxes = hand_case
    m = evaluate(model, records, resize=rule, given_regions=boxes, out_dir=tmp_path / "eval", figures=False)
    # a: GT (21,15) (29.9,19.9) (25,17) inside the box -> 3, map ones at (12,8) (13,9) -> 2
    # b: GT (3,3) in box 1, (10.5,10.5) in box 2 -> 2; map 1 at (2,2) + 0.5 at (5,5) -> 1.5; c: not scored
    g = m["given_regions"]
    assert g["n"] == 2 and g["boxes"] == 3 and g["count_from"] == "density"
    assert g["mae"] == pytest.approx((1 + 0.5) / 2)
    assert g["rmse"] == pytest.approx(np.sqrt((1 + 0.25) / 2))
    rows = {r["image"]: r for r in read_rows(tmp_path / "eval" / "per_image.csv")}
    assert (float(rows["a"]["given_gt"]), float(rows["a"]["given_pred"])) == (3.0, 2.0)
    assert (float(rows["b"]["given_gt"]), float(rows["b"]["given_pred"])) == (2.0, 1.5)
    assert rows["c"]["given_gt"] == rows["c"]["given_pred"] == ""
    assert [float(r["pred"]) for r in rows.values()] == [3.5] * 3
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["given_regions"] == g
    assert "Given regions" in (tmp_path / "eval" / "report.md").read_text()


def test_density_peaks_scored_as_points_hand_computed(tmp_path, hand_case):
    model, records, rule, boxes = hand_case
    m = evaluate(model, records, resize=rule, sigmas=(4,), knn=False, points_from_density_peaks=True,
                 given_regions=boxes, out_dir=tmp_path / "eval", figures=False)
    # peaks: (2,2), the plateau {(12,8), (13,9)} and (5,5) -> pixel centres (2.5,2.5) (13,9) (5.5,5.5)
    # -> original pixels (5,5) (26,18) (11,11). Matches within 4 px: a 2 of 5 GT, b 2 of 3, c 0 of 1.
    loc = m["localization"]["sigma_4"]
    assert (loc["tp"], loc["fp"], loc["fn"]) == (4, 5, 5)
    assert loc["precision"] == pytest.approx(4 / 9) and loc["recall"] == pytest.approx(4 / 9)
    assert m["points_count"]["mae"] == pytest.approx((2 + 0 + 2) / 3)
    assert m["counting"]["mae"] == pytest.approx((1.5 + 0.5 + 2.5) / 3)  # density sums 3.5, unchanged
    # given regions count the peaks inside: a 1 (of 3 GT), b 1 + 1 (of 2 GT)
    assert m["given_regions"]["count_from"] == "points" and m["given_regions"]["mae"] == pytest.approx(1.0)
    rows = read_rows(tmp_path / "eval" / "per_image.csv")
    assert [int(r["n_points"]) for r in rows] == [3, 3, 3]
    assert m["settings"]["points_from"] == "density_peaks"


def test_read_region_boxes_orig_column_and_fallback(tmp_path):
    from autoscale.engine.evaluate import read_region_boxes
    from autoscale.errors import DataError

    p = tmp_path / "per_image.csv"
    p.write_text("image,width,height,input_width,input_height,region_boxes,region_boxes_orig\n"
                 "a,40,30,20,15,10 7 5 3,20 14 10 6\nb,40,30,20,15,,\n")
    assert read_region_boxes(p) == {"a": [(20.0, 14.0, 10.0, 6.0)], "b": []}
    p.write_text("image,width,height,input_width,input_height,region_boxes\n"
                 "a,40,30,20,15,10 7 5 3;1 1 2 2\n")  # older file: input-frame boxes x (40/20, 30/15)
    assert read_region_boxes(p) == {"a": [(20.0, 14.0, 10.0, 6.0), (2.0, 2.0, 4.0, 4.0)]}
    p.write_text("image,gt\na,3\n")
    with pytest.raises(DataError, match="region_boxes"):
        read_region_boxes(p)


def test_cli_regions_from_own_evaluation_matches_region_columns(tmp_path, data):
    """An AutoScale model scored inside its own refined boxes: given_gt = region_gt and given_pred
    = its re-predicted count there (region_autoscale)."""
    root, ck = data
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["evaluate", "--checkpoint", str(ck["regression"]), "--format", "generic", "--root", str(root),
                 "--split", "test", "--out", str(a)]) == 0
    assert main(["evaluate", "--checkpoint", str(ck["regression"]), "--format", "generic", "--root", str(root),
                 "--split", "test", "--out", str(b), "--regions-from", str(a / "per_image.csv")]) == 0
    ra, rb = read_rows(a / "per_image.csv"), read_rows(b / "per_image.csv")
    refined = [i for i, r in enumerate(ra) if r["region_gt"] != ""]
    assert refined
    for i, (x, y) in enumerate(zip(ra, rb)):
        if i in refined:
            assert float(y["given_gt"]) == float(x["region_gt"])
            assert float(y["given_pred"]) == pytest.approx(float(x["region_autoscale"]), abs=1e-4)
        else:
            assert y["given_gt"] == ""
    mb = json.loads((b / "metrics.json").read_text())
    assert mb["given_regions"]["n"] == len(refined)
    assert mb["given_regions"]["mae"] == pytest.approx(
        json.loads((a / "metrics.json").read_text())["dense_regions"]["autoscale"]["mae"], abs=1e-4)
    # density peaks need a regression checkpoint
    assert main(["evaluate", "--checkpoint", str(ck["localization"]), "--format", "generic", "--root", str(root),
                 "--split", "test", "--out", str(tmp_path / "c"), "--points-from-density-peaks"]) == 2
