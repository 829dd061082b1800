"""Resize rules: hand-computed scales, rounding, point/image consistency, registry errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscale.data.preprocess import RESIZE_RULES, ResizeRule, get_resize_rule
from autoscale.errors import ConfigError


def test_registry_has_required_rules():
    for name in ("none", "paper_2048", "long2048_short512", "long2048_short512_ge", "long1024", "long2048"):
        assert get_resize_rule(name).name == name
    assert RESIZE_RULES["paper_2048"].min_short is None  # paper: cap only
    with pytest.raises(ConfigError, match="paper_2048") as ei:
        get_resize_rule("long999")
    assert "long999" in str(ei.value)


@pytest.mark.parametrize(
    "rule,w,h,scale,size",
    [
        ("none", 5000, 300, 1.0, (5000, 300)),
        ("paper_2048", 4096, 1000, 0.5, (2048, 500)),
        ("paper_2048", 1000, 800, 1.0, (1000, 800)),  # never enlarged
        ("paper_2048", 3000, 4000, 2048 / 4000, (1536, 2048)),
        # cap to 0.5 gives short side 400 < 512, then x 512/400: total 0.64
        ("long2048_short512", 4096, 800, 0.64, (2621, 512)),
        ("long2048_short512", 600, 300, 512 / 300, (1024, 512)),
        ("long1024", 2048, 1536, 0.5, (1024, 768)),
        ("long1024", 1024, 768, 1.0, (1024, 768)),
    ],
)
def test_scale_for_hand_cases(rule, w, h, scale, size):
    r = get_resize_rule(rule)
    assert r.scale_for(w, h) == pytest.approx(scale, rel=1e-12)
    assert r.output_size(w, h) == size


def test_strict_vs_inclusive_comparisons():
    strict = ResizeRule("s", max_long=2048, min_short=512)
    incl = ResizeRule("i", max_long=2048, min_short=512, long_inclusive=True, short_inclusive=True)
    # equality: both leave the size unchanged (scale exactly 1 for either semantics)
    for r in (strict, incl):
        assert r.output_size(2048, 512) == (2048, 512)
        assert r.scale_for(2048, 1000) == pytest.approx(1.0)
    assert strict.scale_for(2049, 1000) == pytest.approx(2048 / 2049)
    assert incl.scale_for(2047, 1000) == 1.0


def test_output_size_at_least_one():
    r = ResizeRule("tiny", max_long=10)
    assert r.output_size(10000, 1) == (10, 1)
    with pytest.raises(ConfigError):
        ResizeRule("bad", max_long=0)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 9000), st.integers(1, 9000))
def test_rule_invariants(w, h):
    cap = get_resize_rule("paper_2048")
    nw, nh = cap.output_size(w, h)
    assert max(nw, nh) <= 2048
    assert (nw, nh) == (w, h) or max(w, h) > 2048
    both = get_resize_rule("long2048_short512")
    s = both.scale_for(w, h)
    assert min(w, h) * s >= 512 - 1e-6 or s == pytest.approx(min(1.0, 2048 / max(w, h)))
    # when the short side was raised it is exactly 512 (up to rounding)
    if min(w, h) * min(1.0, 2048 / max(w, h)) < 512:
        assert min(both.output_size(w, h)) == 512


def _centroid(img):
    ys, xs = np.mgrid[: img.shape[0], : img.shape[1]]
    m = img.astype(np.float64)
    # pixel centres at +0.5 (continuous coordinates)
    return np.array([((xs + 0.5) * m).sum() / m.sum(), ((ys + 0.5) * m).sum() / m.sum()])


def test_apply_shrink_points_follow_content():
    img = np.zeros((60, 100, 3), dtype=np.uint8)
    img[20:30, 40:50] = 200  # block centred on continuous point (45, 25)
    pts = np.array([[45.0, 25.0], [0.0, 0.0], [99.9, 59.9]])
    out, p2, sx, sy = ResizeRule("r", max_long=50).apply(img, pts)
    assert out.shape == (30, 50, 3) and out.dtype == np.uint8
    assert (sx, sy) == (0.5, 0.5)
    np.testing.assert_allclose(p2, pts * 0.5)
    np.testing.assert_allclose(_centroid(out[..., 0]), p2[0], atol=1e-9)
    assert out[..., 0].sum() * 4 == img[..., 0].sum()  # INTER_AREA at factor 2 averages 2x2 blocks


def test_apply_per_axis_factors_and_enlarge():
    img = np.zeros((61, 101), dtype=np.uint8)
    img[10:20, 30:40] = 255
    pts = np.array([[35.0, 15.0]])
    out, p2, sx, sy = ResizeRule("r", max_long=50).apply(img, pts)
    assert out.shape == (30, 50)
    assert sx == 50 / 101 and sy == 30 / 61
    np.testing.assert_allclose(p2, [[35 * 50 / 101, 15 * 30 / 61]])
    # enlarging with linear interpolation keeps a symmetric blob centred on the scaled point
    small = np.zeros((20, 40), dtype=np.uint8)
    small[8:12, 18:22] = 255
    big, q, sx, sy = ResizeRule("up", min_short=60).apply(small, np.array([[20.0, 10.0]]))
    assert big.shape == (60, 120) and (sx, sy) == (3.0, 3.0)
    np.testing.assert_allclose(_centroid(big), q[0], atol=1e-6)


def test_apply_identity_returns_copies():
    img = np.ones((4, 5, 3), dtype=np.uint8)
    pts = np.array([[1.0, 2.0]])
    out, p2, sx, sy = get_resize_rule("none").apply(img, pts)
    assert (sx, sy) == (1.0, 1.0)
    out[0, 0, 0] = 9
    p2[0, 0] = 9
    assert img[0, 0, 0] == 1 and pts[0, 0] == 1.0
    out, p2, _, _ = get_resize_rule("paper_2048").apply(np.zeros((3000, 10, 1), np.uint8), np.zeros((0, 2)))
    assert out.shape == (2048, 7, 1) and p2.shape == (0, 2)
