"""The L2S scale network, its bounds, the region feature and the region zoom (bilinear / STN)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoscale.models import FIXED_SCALES, L2S, FixedScale, roi_features, zoom_region, zoomed_size


def bilinear_ref(img: np.ndarray, box, out_hw, *, clamp_to_box: bool) -> np.ndarray:
    """Brute-force bilinear sampling of ``img (H, W)`` at the zoom mapping's pixel centres.

    Output pixel (i, j) samples continuous point (x0 + (j+.5) w/W', y0 + (i+.5) h/H'); the
    neighbouring pixel indices are clamped to the box (crop + resize) or to the image (STN).
    """
    x0, y0, w, h = box
    Ho, Wo = out_hw
    H, W = img.shape
    lo_x, hi_x, lo_y, hi_y = (x0, x0 + w - 1, y0, y0 + h - 1) if clamp_to_box else (0, W - 1, 0, H - 1)
    out = np.zeros(out_hw)
    for i in range(Ho):
        for j in range(Wo):
            sx = x0 + (j + 0.5) * w / Wo - 0.5  # in pixel-index units
            sy = y0 + (i + 0.5) * h / Ho - 0.5
            if clamp_to_box:  # F.interpolate clamps negative source positions to the first pixel
                sx, sy = max(sx, x0), max(sy, y0)
            fx, fy = math.floor(sx), math.floor(sy)
            ax, ay = sx - fx, sy - fy
            val = 0.0
            for yy, wy in ((fy, 1 - ay), (fy + 1, ay)):
                for xx, wx in ((fx, 1 - ax), (fx + 1, ax)):
                    val += wy * wx * img[min(max(yy, lo_y), hi_y), min(max(xx, lo_x), hi_x)]
            out[i, j] = val
    return out


def test_l2s_layout_and_param_counts():
    loc = L2S(152, head="paper", pool="max")
    reg = L2S(152, head="official_regression", bound="official", pool="avg")
    # des 152*64*9+64, ROI 64*32*9+32, 32*32*9+32, head 288*10+10 + 10+1 (or 288+1)
    body = 152 * 64 * 9 + 64 + 64 * 32 * 9 + 32 + 32 * 32 * 9 + 32
    assert sum(p.numel() for p in loc.parameters()) == body + 288 * 10 + 10 + 10 + 1 == 118_229
    assert sum(p.numel() for p in reg.parameters()) == body + 288 + 1 == 115_617
    assert set(reg.state_dict()) == {"des_dimension.0.weight", "des_dimension.0.bias", "ROI_feat.0.weight",
                                     "ROI_feat.0.bias", "ROI_feat.3.weight", "ROI_feat.3.bias",
                                     "output.0.weight", "output.0.bias"}
    assert isinstance(loc.ROI_feat[2], torch.nn.MaxPool2d) and isinstance(reg.ROI_feat[5], torch.nn.AvgPool2d)
    s = loc(torch.randn(5, 152, 14, 14))
    assert s.shape == (5,)
    with pytest.raises(ValueError):
        loc(torch.randn(1, 152, 7, 7))


@pytest.mark.parametrize("raw,expect", [(-1e4, 0.5), (1e4, 3.0), (0.0, 1.75)])
def test_paper_bound(raw, expect):
    m = L2S(8)
    s = m.bound_scale(torch.tensor([raw]))
    assert s.item() == pytest.approx(expect, abs=1e-6)  # 0.5 + 2.5 * sigmoid(raw)


def test_official_bounds():
    reg = L2S(8, head="official_regression", bound="official")
    loc = L2S(8, head="paper", bound="official")
    raw = torch.tensor([-1e6, 0.0, 0.3, 4.0, 1e6])
    # regression: sqrt(clamp(|raw|, 0.5, 9)) -- the head applies abs before the bound
    np.testing.assert_allclose(reg.bound_scale(raw.abs()).numpy(), np.sqrt([9, 0.5, 0.5, 4, 9]), rtol=1e-6)
    np.testing.assert_allclose(loc.bound_scale(raw).numpy(), np.sqrt([0.5, 0.5, 0.5, 4, 5]), rtol=1e-6)
    assert reg.scale_range == pytest.approx((math.sqrt(0.5), 3.0))
    assert loc.scale_range == pytest.approx((math.sqrt(0.5), math.sqrt(5)))


@pytest.mark.parametrize("bound,head", [("paper", "paper"), ("official", "official_regression"), ("official", "paper")])
def test_bounds_respected_through_forward(bound, head):
    m = L2S(4, head=head, bound=bound)
    lo, hi = m.scale_range
    x = torch.randn(6, 4, 14, 14)
    for big in (-1e5, 1e5):
        with torch.no_grad():
            m.output[-1].bias.fill_(big)
        s = m(x)
        assert torch.all(s >= lo - 1e-6) and torch.all(s <= hi + 1e-6)
    raw = m.raw(x)
    if head == "official_regression":
        assert torch.all(raw >= 0)  # abs


def test_roi_features_is_block_mean():
    f = torch.randn(2, 3, 50, 40)
    box = (7, 5, 28, 42)  # x, y, w, h -> exactly 3x2 blocks per output cell
    out = roi_features(f, box)
    crop = f[:, :, 5:47, 7:35].numpy()
    expect = crop.reshape(2, 3, 14, 3, 14, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-5, atol=1e-6)
    assert roi_features(f, (0, 0, 1, 1)).shape == (2, 3, 14, 14)  # tiny box replicates
    for bad in [(35, 0, 10, 5), (0, 0, 0, 3), (-1, 0, 3, 3)]:
        with pytest.raises(ValueError):
            roi_features(f, bad)


def test_zoomed_size():
    assert zoomed_size((0, 0, 7, 10), 2.0) == (20, 14)
    assert zoomed_size((0, 0, 5, 3), 0.1) == (1, 1)
    # round(10.5) = 10 (half to even); a tensor scale (L2S output) is read without detaching the graph
    assert zoomed_size((0, 0, 7, 10), torch.tensor(1.5, requires_grad=True)) == (15, 10)
    with pytest.raises(ValueError):
        zoomed_size((0, 0, 3, 3), 0.0)


@pytest.mark.parametrize("scale", [0.6, 1.0, 1.75, 2.5])
def test_zoom_matches_bruteforce(scale):
    g = torch.Generator().manual_seed(1)
    img = torch.rand(1, 2, 17, 23, generator=g)
    box = (4, 3, 9, 7)
    out_hw = zoomed_size(box, scale)
    bil = zoom_region(img, box, scale, method="bilinear")
    stn = zoom_region(img, box, torch.tensor(scale), method="stn")
    assert bil.shape == stn.shape == (1, 2, *out_hw)
    for c in range(2):
        ref_crop = bilinear_ref(img[0, c].numpy(), box, out_hw, clamp_to_box=True)
        ref_full = bilinear_ref(img[0, c].numpy(), box, out_hw, clamp_to_box=False)
        np.testing.assert_allclose(bil[0, c].numpy(), ref_crop, atol=1e-5)
        np.testing.assert_allclose(stn[0, c].numpy(), ref_full, atol=1e-5)
    # interior: identical; border (scale > 1): STN sees the real neighbours outside the box
    np.testing.assert_allclose(stn[..., 1:-1, 1:-1].numpy(), bil[..., 1:-1, 1:-1].numpy(), atol=1e-5)
    if scale > 1:
        assert (stn - bil).abs().max() > 1e-3


def test_zoom_whole_image_and_identity():
    img = torch.rand(2, 3, 12, 16)
    # s = 1 samples exactly the pixel centres: both methods return the crop itself
    for method in ("stn", "bilinear"):
        torch.testing.assert_close(zoom_region(img, (3, 2, 8, 6), 1.0, method=method), img[..., 2:8, 3:11])
    # on the whole image there is nothing outside, so both methods agree everywhere
    torch.testing.assert_close(zoom_region(img, (0, 0, 16, 12), 2.0, method="stn"),
                               zoom_region(img, (0, 0, 16, 12), 2.0, method="bilinear"), atol=1e-5, rtol=0)


def test_stn_gradient_hand_computed():
    """On a ramp image I(x, y) = x (value at pixel centre = its continuous x), an interior zoom
    returns out_j = c + k (x_j - c) with k = s0/s, so dL/ds for L = sum out_j (x_j - c) is
    -sum (x_j - c)^2 / s."""
    H, W = 20, 30
    ramp = (torch.arange(W, dtype=torch.float64) + 0.5).expand(1, 1, H, W).contiguous()
    box, s0 = (8, 5, 10, 6), 1.7
    s = torch.tensor(s0, dtype=torch.float64, requires_grad=True)
    out = zoom_region(ramp, box, s, method="stn")
    Ho, Wo = out.shape[-2:]
    xj = box[0] + (torch.arange(Wo, dtype=torch.float64) + 0.5) * box[2] / Wo
    c = box[0] + box[2] / 2
    torch.testing.assert_close(out[0, 0], xj.expand(Ho, Wo))  # forward = exact box sampling
    (out[0, 0] * (xj - c)).sum().backward()
    expect = -Ho * ((xj - c) ** 2).sum() / s0
    assert s.grad.item() == pytest.approx(expect.item(), rel=1e-6)


def test_bilinear_zoom_has_no_scale_gradient():
    img = torch.rand(1, 1, 10, 10)
    s = torch.tensor(2.0, requires_grad=True)
    out = zoom_region(img, (1, 1, 5, 5), s, method="bilinear")
    assert not out.requires_grad
    out_stn = zoom_region(img, (1, 1, 5, 5), s, method="stn")
    (g,) = torch.autograd.grad(out_stn.pow(2).sum(), s)
    assert g.abs() > 0
    with pytest.raises(ValueError):
        zoom_region(img, (1, 1, 5, 5), s, method="nearest")


def test_gradient_flows_from_zoom_to_l2s_parameters():
    torch.manual_seed(0)
    m = L2S(6)
    feats = torch.randn(1, 6, 30, 40)
    img = torch.rand(1, 3, 30, 40)
    box = (10, 8, 12, 9)
    s = m.predict_scale(feats, box)
    out = zoom_region(img, box, s, method="stn")
    closeness = torch.tensor(5.0)
    loss = out.sum() + ((closeness * s**2 - 18.0) ** 2).sum()  # a centre-loss-like term too
    loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert grads["output.2.weight"].abs().sum() > 0 and grads["des_dimension.0.weight"].abs().sum() > 0


def test_fixed_scale():
    assert FIXED_SCALES == (1.5, 2.0, 2.5, 3.0)
    f = FixedScale(2.5)
    s = f(torch.randn(3, 152, 14, 14))
    assert s.tolist() == [2.5, 2.5, 2.5]
    assert f.predict_scale(torch.randn(1, 4, 9, 9), (0, 0, 3, 3)).tolist() == [2.5]
    with pytest.raises(ValueError):
        FixedScale(0)


# -- lazily computed FPN features (return_features="lazy") -----------------------------------------
def _boxes(H, W, n, seed):
    rng = np.random.default_rng(seed)
    out = [(0, 0, W, H), (0, 0, 1, 1), (W - 1, H - 1, 1, 1), (0, H - 1, W, 1), (W - 1, 0, 1, H)]
    for _ in range(n):
        w, h = int(rng.integers(1, W + 1)), int(rng.integers(1, H + 1))
        out.append((int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1)), w, h))
    return out


@pytest.mark.parametrize("variant", ["regression", "localization"])
@pytest.mark.parametrize("size", [(37, 53), (64, 96), (101, 77)])
def test_lazy_features_equal_full_features_lite(variant, size):
    """The region of the native-resolution levels equals the slice of the full-resolution feature
    (the old path, computed here): bit for bit under bf16 autocast (the inference default), to
    float32 rounding in fp32 (the fp32 bilinear kernel's vectorisation differs in a window);
    roi_features equals pooling that region in training (autograd on) and, without autograd
    (pooled separably in float32), pooling the float32 region."""
    from autoscale.models.fpn import LazyFeatures, LocalizationFPN, RegressionFPN, _up_corner

    torch.manual_seed(0)
    m = (RegressionFPN if variant == "regression" else LocalizationFPN)("efficientnet_lite0", width=0.25).eval()
    x = torch.randn(1, 3, *size)
    H, W = size
    for bf16, cl in [(True, True), (True, False), (False, False), (False, True)]:
        mm = m.to(memory_format=torch.channels_last) if cl else m
        xx = x.contiguous(memory_format=torch.channels_last) if cl else x
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            full = mm(xx, return_features=True).features
            out = mm(xx, return_features="lazy")
        lazy = out.features
        assert isinstance(lazy, LazyFeatures) and lazy.shape == full.shape and lazy.dtype == full.dtype
        assert torch.equal(lazy.full(), full)  # taken outside the autocast context: the recorded state
        for box in _boxes(H, W, 15, seed=size[0]):
            x0, y0, w, h = box
            ref, ref_pool = full[..., y0:y0 + h, x0:x0 + w], roi_features(full, box)
            got, train_pool = lazy.crop(box), roi_features(lazy, box)  # autograd on: training's path
            with torch.no_grad():
                got_pool = roi_features(lazy, box)
            # The pooled region is computed separably in float32 from the levels, never upsampled:
            # it equals pooling the float32 upsampled region up to float32 rounding, and the old
            # bf16 pooling up to bf16 rounding.
            assert got_pool.dtype == torch.float32
            scale = float(full.abs().max())
            if bf16:
                assert torch.equal(got, ref), box
                assert torch.equal(train_pool, ref_pool), box
                torch.testing.assert_close(got_pool, ref_pool.float(), rtol=1e-2, atol=4e-3 * scale)
                up32 = torch.cat([_up_corner(p.float(), s, H, W) for p, s in zip(lazy.maps, lazy.strides)], 1)
                exact = F.adaptive_avg_pool2d(up32[..., y0:y0 + h, x0:x0 + w], 14)
                torch.testing.assert_close(got_pool, exact, rtol=1e-5, atol=1e-6 * scale)
            else:
                torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * scale)
                torch.testing.assert_close(train_pool, ref_pool, rtol=1e-5, atol=1e-6 * scale)
                torch.testing.assert_close(got_pool, ref_pool, rtol=1e-5, atol=1e-6 * scale)
    with pytest.raises(ValueError, match="outside"):
        roi_features(lazy, (W - 2, 0, 3, 1))


@pytest.mark.parametrize("size", [(40, 52), (37, 61), (101, 77)])
def test_lazy_features_vgg_and_detach(size):
    """VGG FPNs (align_corners=True maps; regression centre-crops each level's x-stride upsampling,
    localization resizes it to the input): crop() slices the full map, identical; pooling without
    autograd (separable, float32, never upsampled) equals pooling the float32 full map up to
    rounding (fp32 and under bf16 autocast), and with autograd it is the old path, identical;
    detach drops the graph."""
    from autoscale.models.fpn import LocalizationFPN, RegressionFPN

    torch.manual_seed(0)
    x = torch.randn(1, 3, *size)
    for cls in (RegressionFPN, LocalizationFPN):
        m = cls("vgg16", width=0.125).eval()
        for bf16 in (False, True):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                full = m(x, return_features=True).features
                lazy = m(x, return_features="lazy").features
            up32 = torch.cat([m._feature(p.float(), s, *size) for p, s in zip(lazy.maps, lazy.strides)], 1)
            scale = float(up32.abs().max())
            for box in _boxes(*size, 12, seed=size[1]):
                x0, y0, w, h = box
                assert torch.equal(lazy.crop(box), full[..., y0:y0 + h, x0:x0 + w])
                with torch.no_grad():
                    got = roi_features(lazy, box)
                assert got.dtype == torch.float32
                exact = F.adaptive_avg_pool2d(up32[..., y0:y0 + h, x0:x0 + w], 14)
                torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-6 * scale)
                if not bf16:
                    assert torch.equal(roi_features(lazy, box), roi_features(full, box))  # autograd on
    m = RegressionFPN("efficientnet_lite0", width=0.25).train()
    lazy = m(x, return_features="lazy").features
    assert lazy.maps[0].requires_grad and not any(t.requires_grad for t in lazy.detach().maps)
    assert not roi_features(lazy.detach(), (3, 4, 20, 30)).requires_grad
