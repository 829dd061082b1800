"""Smoke test of benchmarks/bench_inference.py: its ``--tiny`` run (96x128 real photo, width-1/16
VGG16 FPNs, seconds) must work and report truthfully: derived figures follow their definitions
from the reported raw ones, and FLOPs and counts match values recomputed here independently."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from autoscale.models.vgg import normalize


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, load_bench) -> tuple[dict, Path, object]:
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "shanghaitech").is_dir():
        pytest.skip("real data not found")
    mod = load_bench("bench_inference")
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        result = mod.main(["--tiny", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return result, out, mod


def test_files_and_definitions(tiny):
    result, out, _ = tiny
    saved = json.loads((out / "inference.json").read_text())
    assert saved["command"].startswith("python benchmarks/bench_inference.py --tiny")
    assert saved["methods"].keys() == result["methods"].keys()
    md = (out / "inference.md").read_text()
    for name in ("vgg16_regression_fp32_96x128", "vgg16_regression_bf16_96x128", "vgg16_localization_fp32_96x128",
                 "vgg16_regression_ort_96x128", "csrnet_fp32_96x128"):
        r = saved["methods"][name]
        assert f"| {name} |" in md
        assert r["floor_s"] == pytest.approx(r["flops_total"] / (r["peak_gflops_per_s"] * 1e9))
        assert r["peak_gflops_per_s"] > 0
        assert r["ratio_to_floor"] == pytest.approx(r["total_s"] / r["floor_s"])
        assert r["images_per_s"] == pytest.approx(1 / r["total_s"])
        assert r["second_pass_s"] == pytest.approx(r["total_s"] - r["first_pass_s"])
    for r in saved["methods"].values():
        if r["variant"] == "localization" and "count_s" in r:
            assert r["count_share"] == pytest.approx(r["count_s"] / (r["total_s"] - r["count_s"]))
    f = saved["folder"]
    net = f["network_only_images_per_s_rounds"]  # one before the first folder run, one after each
    assert len(net) == 3 * f["rounds"] + 1 and f["rounds"] == 3
    for j, (mode, key) in enumerate((("streamed", "throughput_ratio"), ("sequential", "throughput_ratio_sequential"),
                                     ("streamed_png", "throughput_ratio_png_overlays"))):
        runs = f[f"{mode}_images_per_s_rounds"]
        assert len(runs) == 3 and f[f"{mode}_images_per_s"] == sorted(runs)[1]
        want = [runs[r] / ((net[3 * r + j] + net[3 * r + j + 1]) / 2) for r in range(3)]
        assert f[f"{key}_rounds"] == pytest.approx(want) and f[key] == sorted(want)[1]
    for v in saved["bf16_count_check"].values():
        assert v["max_rel_diff"] == max(v["rel_diffs"]) and abs(v["mean_signed_rel_diff"]) <= v["max_rel_diff"]
        assert f"{len(v['rel_diffs'])} photos, max {v['max_rel_diff']:.2%}" in md


def test_flops_and_counts_match_independent_recomputation(tiny):
    result, _, mod = tiny
    photo = mod.load_photo((96, 128))
    m = result["methods"]
    # the first pass's FLOPs do not depend on the weights: any width-1/16 FPN of the same shape
    from autoscale.models.registry import get_model

    fpn = get_model("fpn_regression", width=0.0625).eval()
    x = normalize(photo["image"])
    # inference mode, as the predictor: the final map without the full-resolution side maps
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        fpn(x, return_features=True)
    assert m["vgg16_regression_fp32_96x128"]["flops_first_pass"] == fc.get_total_flops()
    assert m["vgg16_regression_fp32_96x128"]["flops_total"] > fc.get_total_flops()  # the second pass ran
    # the first-pass count of the same seeded trainer checkpoint, by a plain forward
    from autoscale.models.registry import build_from_checkpoint

    ck = mod.make_checkpoint("vgg16", "regression", 0.0625)
    net, _ = build_from_checkpoint(ck)
    with torch.no_grad():
        want = float(net.eval()(x).final.double().sum())
    assert m["vgg16_regression_fp32_96x128"]["first_count"] == pytest.approx(want, rel=1e-5, abs=1e-6)
    # onnxruntime and bf16 against fp32
    ref = m["vgg16_regression_fp32_96x128"]["count"]
    assert m["vgg16_regression_ort_96x128"]["count"] == pytest.approx(ref, rel=1e-3)
    assert m["vgg16_regression_fp32_96x128"]["scale"] == pytest.approx(m["vgg16_regression_ort_96x128"]["scale"],
                                                                       rel=1e-4)
    check = next(iter(result["bf16_count_check"].values()))
    assert len(check["rel_diffs"]) == 2 and check["max_rel_diff"] == max(check["rel_diffs"])
