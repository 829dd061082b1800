"""The two-pass AutoScale pipeline: count composition, point mapping, joint loss, gradient flow."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoscale.dense_region import Region
from autoscale.losses import CenterLoss
from autoscale.models.fpn import FPNOutput
from autoscale.models.registry import get_model
from autoscale.pipeline import AutoScale, PipelineConfig, joint_loss, make_target, _to_tensor
from autoscale.postprocess import regional_minima


class DensityIsChannel0(nn.Module):
    """A constructed 'counter' whose density map is the input's first channel (known answers)."""

    feature_channels = 1

    def forward(self, x, return_features=False):
        d = x[:, :1]
        return FPNOutput(d, [d], d if return_features else None)


class ClassIsChannel0(nn.Module):
    """A constructed 'counter' whose class map is round(channel 0), as one-hot logits."""

    feature_channels = 1

    def forward(self, x, return_features=False):
        cls = torch.round(x[:, 0]).clamp(0, 10).long()
        logits = F.one_hot(cls, 11).permute(0, 3, 1, 2).float() * 10.0
        return FPNOutput(logits, [logits], x[:, :1] if return_features else None)


def test_regression_count_composition_known_answer():
    img = torch.full((1, 3, 40, 60), 0.01)
    img[:, :, 5:25, 10:40] = 1.0  # dense block: 600 px, box ratio 0.25 > J = 0.1
    model = AutoScale(DensityIsChannel0(), None, PipelineConfig(variant="regression", fixed_scale=2.0))
    res = model.predict(img)
    total = 0.01 * (2400 - 600) + 600.0
    assert res.first_count == pytest.approx(total, rel=1e-5)
    assert len(res.regions) == 1
    r = res.regions[0]
    assert (r.region.x, r.region.y, r.region.w, r.region.h) == (10, 5, 30, 20)
    # Zoom x2 of a constant block of ones: 40 x 60 ones re-predicted; the first pass's 600 replaced.
    assert r.zoomed_map.shape == (40, 60)
    assert res.count == pytest.approx(total - 600.0 + 2400.0, rel=1e-5)
    # Display map: the refined region's mass is preserved when resized back into the box.
    assert res.map.sum() == pytest.approx(res.count, rel=1e-4)


def test_regression_no_region_below_gate_keeps_first_count():
    img = torch.full((1, 3, 40, 60), 0.01)
    img[:, :, 5:10, 10:20] = 1.0  # 50 px box: ratio 0.02 < 0.1
    model = AutoScale(DensityIsChannel0(), None, PipelineConfig(variant="regression", fixed_scale=2.0))
    res = model.predict(img)
    assert res.regions == [] and res.count == res.first_count


def test_localization_points_mapped_back_to_original_pixels():
    cmap = np.full((40, 60), 10.0, dtype=np.float32)
    sparse = [(3, 50), (35, 5), (37, 55)]  # (row, col) isolated heads outside the dense block
    for r, c in sparse:
        cmap[r, c] = 0
    cmap[10:26, 12:36] = 5  # dense block: 16 x 24 = 384 px, ratio 0.16 > J = 0.02
    dense = [(12, 15), (14, 30), (20, 20), (24, 33)]
    for r, c in dense:
        cmap[r, c] = 2
    img = torch.from_numpy(cmap)[None, None].repeat(1, 3, 1, 1)
    model = AutoScale(ClassIsChannel0(), None, PipelineConfig(variant="localization", fixed_scale=2.0))
    res = model.predict(img)
    assert len(res.regions) == 1
    reg = res.regions[0].region
    assert (reg.x, reg.y, reg.w, reg.h) == (12, 10, 24, 16)
    expected = sorted([(c + 0.5, r + 0.5) for r, c in sparse + dense])
    got = sorted(map(tuple, res.points.tolist()))
    np.testing.assert_allclose(np.array(got), np.array(expected), atol=1e-6)
    assert res.count == len(sparse) + len(dense)
    # First pass found the same heads directly (independent check with regional_minima).
    assert res.first_count == len(regional_minima(cmap.astype(np.uint8)))


def test_head_class_limit_is_a_distance_that_scales_with_the_zoom():
    """max_head_class=1 keeps minima nearer than edges[2] = 2 px to a head; in a region zoomed x2
    that is 4 px there, so the class-2 heads of the dense block count after zooming, not before."""
    from autoscale.pipeline import zoomed_class_limit
    from autoscale.targets import DISTANCE_EDGES

    assert zoomed_class_limit(DISTANCE_EDGES, 1, 1.0) == 1
    assert zoomed_class_limit(DISTANCE_EDGES, 1, 2.0) == 3  # 4 px: classes 0-3 start below it
    assert zoomed_class_limit(DISTANCE_EDGES, 2, 2.3) == 6  # 6.9 px: class 6 is [6, 8)
    assert zoomed_class_limit(DISTANCE_EDGES, 2, 0.5) == 1  # shrunk: 1.5 px
    assert zoomed_class_limit(DISTANCE_EDGES, None, 3.0) is None
    cmap = np.full((40, 60), 10.0, dtype=np.float32)
    for r, c in [(3, 50), (35, 5), (37, 55)]:
        cmap[r, c] = 0
    cmap[10:26, 12:36] = 5
    for r, c in [(12, 15), (14, 30), (20, 20), (24, 33)]:
        cmap[r, c] = 2
    img = torch.from_numpy(cmap)[None, None].repeat(1, 3, 1, 1)
    counts = {}
    for scale in (1.0, 2.0):
        cfg = PipelineConfig(variant="localization", fixed_scale=scale, max_head_class=1)
        res = AutoScale(ClassIsChannel0(), None, cfg).predict(img)
        assert res.first_count == 3 and len(res.regions) == 1
        counts[scale] = res.count
    assert counts == {1.0: 3, 2.0: 7}


def _tiny(variant: str, zoom: str = "stn"):
    torch.manual_seed(0)
    fpn = get_model(f"fpn_{variant}", width=0.125)
    l2s = get_model(f"l2s_{variant}", in_channels=fpn.feature_channels)
    cfg = PipelineConfig(variant=variant, zoom=zoom, sigma=2.0, area_ratio=0.0, region_from="target")
    return AutoScale(fpn, l2s, cfg)


def _example(variant: str, cfg: PipelineConfig):
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(8, 20, size=(12, 2)), rng.uniform(0, 48, size=(4, 2))])
    img = torch.from_numpy(rng.normal(size=(1, 3, 48, 48)).astype(np.float32))
    target = _to_tensor(make_target(variant, pts, (48, 48), cfg), variant, img.device)
    return img, pts, target


@pytest.mark.parametrize("variant", ["regression", "localization"])
def test_joint_loss_gradients_reach_counter_and_l2s(variant):
    model = _tiny(variant)
    model.config.dense_k = 0.5  # make sure an untrained map yields a region
    model.config.class_threshold = 11
    img, pts, target = _example(variant, model.config)
    center = CenterLoss()
    bd = joint_loss(model, img, pts, target, center)
    assert bd.region is not None and bd.scale is not None
    assert torch.isfinite(bd.total)
    bd.total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.counter.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.l2s.parameters())


@pytest.mark.parametrize("closeness", ["distance", "people_number"])
def test_joint_loss_closeness_measure(closeness):
    """The centre loss sees Eq. 1's mean NN distance or the people-number spacing sqrt(area / N)
    of the annotated heads in the chosen region (brute force here)."""
    model = _tiny("regression")
    model.config.dense_k = 0.5
    model.config.closeness = closeness
    img, pts, target = _example("regression", model.config)
    center = CenterLoss()
    bd = joint_loss(model, img, pts, target, center)
    r = bd.region
    inside = pts[(pts[:, 0] >= r.x) & (pts[:, 0] < r.x + r.w) & (pts[:, 1] >= r.y) & (pts[:, 1] < r.y + r.h)]
    assert len(inside) >= 2
    if closeness == "distance":
        d = np.sqrt(((inside[:, None] - inside[None]) ** 2).sum(-1)) + np.diag(np.full(len(inside), np.inf))
        expected = d.min(1).mean()
    else:
        expected = np.sqrt(r.w * r.h / len(inside))
    assert bd.closeness == pytest.approx(expected, rel=1e-6)
    assert bd.center == pytest.approx(0.5 * (expected * bd.scale ** 2 - float(center.center)) ** 2, rel=1e-4)


def test_l2s_gets_no_gradient_through_bilinear_zoom_without_centre_loss():
    model = _tiny("regression", zoom="bilinear")
    model.config.dense_k = 0.5
    img, pts, target = _example("regression", model.config)
    bd = joint_loss(model, img, pts, target, center=None)
    assert bd.region is not None
    bd.total.backward()
    assert all(p.grad is None for p in model.l2s.parameters())


def test_centre_loss_does_not_train_the_counter():
    model = _tiny("regression")
    model.config.dense_k = 0.5
    img, pts, target = _example("regression", model.config)
    out = model.counter(img, return_features=True)
    region = model.dense_regions(target[0, 0].numpy())[0]
    s = model.scale_for(out.features.detach(), region)
    CenterLoss()(torch.tensor([5.0]), s).backward()
    assert all(p.grad is None for p in model.counter.parameters())


def test_predict_is_deterministic_and_single_pass_matches_counter():
    model = _tiny("regression").eval()
    model.config.dense_k = 0.5
    img = torch.from_numpy(np.random.default_rng(3).normal(size=(1, 3, 37, 45)).astype(np.float32))
    a, b = model.predict(img), model.predict(img)
    assert a.count == b.count and np.array_equal(a.map, b.map)
    single = model.predict(img, single_pass=True)
    with torch.no_grad():
        direct = model.counter(img).final[0, 0].numpy()
    assert single.count == pytest.approx(float(direct.sum(dtype=np.float64)), rel=1e-6)
    assert single.regions == []


def test_divided_kernel_refines_the_region_at_its_own_size():
    img = torch.full((1, 3, 40, 60), 0.01)
    img[:, :, 5:25, 10:40] = 1.0
    cfg = PipelineConfig(variant="regression", fixed_scale=2.0, kernel="divided")
    res = AutoScale(DensityIsChannel0(), None, cfg).predict(img)
    # Not zoomed: the re-prediction of the 20 x 30 block equals its first-pass count.
    assert res.regions[0].zoomed_map.shape == (20, 30)
    assert res.count == pytest.approx(res.first_count, rel=1e-6)


class _FullFeatures(nn.Module):
    """The old path: the counter asked for its full-resolution L2S feature (never "lazy")."""

    def __init__(self, counter):
        super().__init__()
        self.inner = counter
        self.feature_channels = counter.feature_channels

    def forward(self, x, return_features=False):
        return self.inner(x, return_features=bool(return_features))


def _lite(variant: str) -> AutoScale:
    torch.manual_seed(0)
    fpn = get_model(f"fpn_{variant}", backbone="efficientnet_lite0", width=0.25)
    l2s = get_model(f"l2s_{variant}", in_channels=fpn.feature_channels)
    cfg = PipelineConfig(variant=variant, zoom="stn", sigma=2.0, area_ratio=0.0, region_from="target",
                         dense_k=0.5, class_threshold=11)
    return AutoScale(fpn, l2s, cfg)


@pytest.mark.parametrize("variant", ["regression", "localization"])
def test_predict_with_lazy_features_equals_full_features(variant):
    """predict reads the L2S feature lazily (only the dense region's pixels): under bf16 autocast
    + channels_last (the CPU inference default) every output is bit-identical to the old full
    feature; in fp32 the scale agrees to float32 rounding."""
    model = _lite(variant).eval()
    old = AutoScale(_FullFeatures(model.counter), model.l2s, model.config)
    img = torch.from_numpy(np.random.default_rng(5).normal(size=(1, 3, 61, 83)).astype(np.float32))
    for bf16 in (True, False):
        m, o, x = model, old, img
        if bf16:
            m, o = model.to(memory_format=torch.channels_last), old.to(memory_format=torch.channels_last)
            x = img.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            got, ref = m.predict(x), o.predict(x)
        assert ref.regions, "the test needs a refined region"
        assert [r.region for r in got.regions] == [r.region for r in ref.regions]
        if bf16:
            assert [r.scale for r in got.regions] == [r.scale for r in ref.regions]
            assert got.count == ref.count and np.array_equal(got.map, ref.map)
        else:
            assert [r.scale for r in got.regions] == pytest.approx([r.scale for r in ref.regions], rel=1e-6)


@pytest.mark.parametrize("variant", ["regression", "localization"])
def test_joint_loss_reads_full_resolution_features(variant):
    """Training reads the full-resolution L2S feature (never "lazy", whose pooling differs by
    float32 rounding): losses, scale and gradients are bit-identical to a counter that can only
    give the full feature."""
    model = _lite(variant).train()
    old = AutoScale(_FullFeatures(model.counter), model.l2s, model.config)
    img, pts, target = _example(variant, model.config)
    grads = []
    for m in (model, old):
        m.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        bd = joint_loss(m, img, pts, target, CenterLoss())
        bd.total.backward()
        grads.append((bd, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = grads
    assert a.region == b.region and a.region is not None
    assert a.scale == b.scale and float(a.total) == float(b.total)
    assert ga.keys() == gb.keys() and any(n.startswith("l2s.") for n in ga)
    for n in ga:
        assert torch.equal(ga[n], gb[n]), n


def test_a_region_too_small_for_batchnorm_gets_no_reprediction_term_but_its_centre_loss():
    """The Lite0 localization FPN has BatchNorm in its head; in training mode a zoomed input of
    at most 32 px per side leaves it one value per channel (torch raises). Such a step keeps the
    first-pass and centre losses and skips the re-prediction (seen with ``pipeline.zoom=bilinear``,
    where L2S shrank sparse regions; ``autoscale train`` crashed)."""
    torch.manual_seed(0)
    fpn = get_model("fpn_localization", backbone="efficientnet_lite0", width=0.25)
    l2s = get_model("l2s_localization", in_channels=fpn.feature_channels)
    model = AutoScale(fpn, l2s, PipelineConfig(variant="localization", zoom="bilinear", region_from="target")).train()
    img, pts, target = _example("localization", model.config)
    for box, refined in [((6, 6, 20, 20), False), ((0, 0, 40, 40), True)]:
        model.dense_regions = lambda first_map, b=box: [Region(*b, b[2] * b[3], 0.3)]
        model.zero_grad()
        bd = joint_loss(model, img, pts, target, CenterLoss())
        assert (bd.refine > 0) == refined and bd.center > 0 and torch.isfinite(bd.total)
        bd.total.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.l2s.parameters())


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_joint_loss_refine_weight_scales_the_re_prediction_term(weight):
    """Eq. 6 with a weight w on the re-prediction loss: total = first + w * refine + lambda * centre,
    the reported ``refine`` unweighted; a weight of 0 leaves the counter's gradient that of the
    first-pass loss alone."""
    model = _tiny("regression")
    model.config.dense_k = 0.5
    img, pts, target = _example("regression", model.config)
    ref = joint_loss(model, img, pts, target, CenterLoss())
    model.config.refine_weight = weight
    bd = joint_loss(model, img, pts, target, CenterLoss())
    assert bd.region == ref.region and bd.refine == pytest.approx(ref.refine, rel=1e-6) and bd.refine > 0
    expected = bd.first + weight * bd.refine + model.config.center_weight * bd.center
    assert float(bd.total) == pytest.approx(expected, rel=1e-5)
    if weight == 0.0:
        bd.total.backward()
        got = [p.grad.clone() for p in model.counter.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        first = joint_loss(model, img, pts, target, None, refine=False).total
        first.backward()
        want = [p.grad for p in model.counter.parameters() if p.grad is not None]
        assert len(got) == len(want) and all(torch.allclose(a, b, atol=1e-7) for a, b in zip(got, want))
