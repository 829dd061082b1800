"""Smoke test of benchmarks/bench_inference.py: its ``--tiny`` run must work and report truthfully.

The tiny run (48x64 synthetic scene, FPN width 1/32, one timed run, in-process) takes a few
seconds. Its reported region, counts and overheads are checked against values recomputed here
independently from the same seed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autoscale.data.synth import SynthConfig, generate_scene
from autoscale.dense_region import find_dense_regions
from autoscale.models.registry import get_model
from autoscale.models.vgg import normalize
from autoscale.targets import density_map


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, load_bench) -> tuple[dict, Path]:
    mod = load_bench("bench_inference")
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        result = mod.main(["--tiny", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return result, out


def test_files_written_and_consistent(tiny):
    result, out = tiny
    saved = json.loads((out / "inference.json").read_text())
    assert saved["seed"] == 0 and saved["command"].startswith("python benchmarks/bench_inference.py")
    assert saved["seconds"] > 0 and saved["threads"] == 2
    assert saved["results"].keys() == result["results"].keys()
    assert "fp32" in saved["results"]
    md = (out / "inference.md").read_text()
    for name in ("first_pass", "single_pass", "second_pass_s2", "second_pass_l2s", "full_l2s", "full_s2"):
        assert f"| {name} |" in md
        for r in saved["results"].values():
            t = r["timings"][name]
            assert len(t["runs_s"]) == 1 and t["median_s"] == t["runs_s"][0] > 0
    # the overhead is what its definition says, from the reported medians
    for c, r in saved["results"].items():
        t = r["timings"]
        first = t["first_pass"]["median_s"]
        expected = (t["full_l2s"]["median_s"] - first) / first
        assert saved["comparison"]["overhead"][c]["full_l2s"] == pytest.approx(expected)


def test_region_and_counts_match_independent_recomputation(tiny):
    result, _ = tiny
    img, pts, _, _ = generate_scene(SynthConfig.for_size((48, 64)), np.random.default_rng(0))
    d = density_map(pts, (48, 64), 8.0)
    gated = find_dense_regions(d, "regression", k=2.0, area_ratio=0.1)
    region = (gated or find_dense_regions(d, "regression", k=2.0, area_ratio=0.0))[0]
    rep = result["input"]["region"]
    assert (rep["x"], rep["y"], rep["w"], rep["h"]) == region.box
    assert result["input"]["region_passes_gate"] == bool(gated)

    # fp32 counts: same seeded model, the reported dsn6 weights, a plain forward
    torch.manual_seed(0)
    fpn = get_model("fpn_regression", backbone="vgg16", width=1 / 32).eval()
    with torch.no_grad():
        fpn.dsn6.weight.copy_(torch.tensor(result["calibration"]["dsn6_weight"]).reshape(1, 4, 1, 1))
        fpn.dsn6.bias.zero_()
        x = normalize(img)
        first = fpn(x).final[0, 0].double()
        zoomed = torch.nn.functional.interpolate(
            x[..., region.y:region.y + region.h, region.x:region.x + region.w],
            size=(round(region.h * 2.0), round(region.w * 2.0)), mode="bilinear", align_corners=False)
        second = float(fpn(zoomed).final.double().sum())
    t = result["results"]["fp32"]["timings"]
    assert t["first_pass"]["count"] == pytest.approx(float(first.sum()), rel=1e-5, abs=1e-6)
    assert t["single_pass"]["count"] == pytest.approx(t["first_pass"]["count"], rel=1e-6)
    assert t["second_pass_s2"]["count"] == pytest.approx(second, rel=1e-5, abs=1e-6)
    # the full pipeline really refined the forced region: N = sum(Y) - sum(Y[box]) + sum(Y')
    inside = float(first[region.y:region.y + region.h, region.x:region.x + region.w].sum())
    assert t["full_s2"]["scale"] == 2.0
    assert t["full_s2"]["count"] == pytest.approx(float(first.sum()) - inside + second, rel=1e-5, abs=1e-6)
    assert 0.5 < t["full_l2s"]["scale"] < 3.0


def test_bf16_comparison_reported_when_supported(tiny):
    result, _ = tiny
    if not result["machine"]["onednn_bf16_supported"]:
        assert "bf16_cl" not in result["results"]
        return
    f, b = result["results"]["fp32"]["timings"], result["results"]["bf16_cl"]["timings"]
    assert result["results"]["bf16_cl"]["memory_format"] == "channels_last"
    assert result["comparison"]["param_checksums_equal"]
    for k in f:
        assert result["comparison"]["count_rel_diff_bf16"][k] == pytest.approx(
            abs(b[k]["count"] - f[k]["count"]) / abs(f[k]["count"]))
        assert result["comparison"]["speedup_bf16"][k] == pytest.approx(f[k]["median_s"] / b[k]["median_s"])
    # bf16 keeps ~3 significant digits: the maps agree to a few percent even at width 1/32
    assert result["comparison"]["map_agreement_bf16"]["first"]["rel_l2_error"] < 0.05
