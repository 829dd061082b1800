"""Overlay pictures (autoscale.viz): the colour mapping against a plain per-pixel formula, JET's
end colours, and the blend leaving the caller's image untouched."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from autoscale.viz import colorize_map, draw_overlay, encode_picture


def _plain(m: np.ndarray, variant: str, k: int = 10) -> np.ndarray:
    """The mapping written out: density / max (negatives as 0) or (k - class) / k clipped to
    [0, 1], times 255, rounded half to even, then OpenCV's JET (BGR -> RGB)."""
    a = np.asarray(m).astype(np.float32)
    if variant == "regression":
        a = np.clip(a, 0, None)
        v = a / a.max() if a.size and a.max() > 0 else np.zeros_like(a)
    else:
        v = np.clip((np.float32(k) - a) / np.float32(k), 0, 1)
    return cv2.applyColorMap(np.round(v * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_colorize_regression_matches_the_plain_formula(dtype):
    rng = np.random.default_rng(0)
    for m in (rng.normal(size=(50, 60)), rng.gamma(0.3, size=(96, 128)), np.zeros((5, 5)), -np.ones((4, 4))):
        m = m.astype(dtype)
        assert np.array_equal(colorize_map(m, variant="regression"), _plain(m, "regression"))
    d = np.zeros((3, 3), dtype)
    d[1, 1] = 2.5
    got = colorize_map(d, variant="regression")
    assert tuple(got[1, 1]) == (128, 0, 0) and tuple(got[0, 0]) == (0, 0, 128)  # JET: max dark red, 0 dark blue


def test_colorize_localization_matches_the_plain_formula():
    rng = np.random.default_rng(1)
    for m in (rng.integers(0, 11, (40, 30)), rng.integers(0, 11, (40, 30)).astype(np.uint8), rng.uniform(-2, 13, (20, 20))):
        assert np.array_equal(colorize_map(m, variant="localization"), _plain(m, "localization"))
    assert tuple(colorize_map(np.zeros((1, 1), np.int64), variant="localization")[0, 0]) == (128, 0, 0)  # a head


def test_overlay_blends_without_touching_the_image():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    before = img.copy()
    m = rng.gamma(0.5, size=(24, 32)).astype(np.float32)
    out = draw_overlay(img, m, variant="regression", alpha=0.45)
    assert np.array_equal(img, before) and out is not img
    want = np.clip(np.rint(img * 0.55 + colorize_map(m, variant="regression") * 0.45), 0, 255)
    assert np.abs(out.astype(int) - want.astype(int)).max() <= 1  # OpenCV's rounding of the blend
    plain = draw_overlay(img, None, variant="regression")
    assert np.array_equal(plain, img) and plain is not img


def test_encode_picture_round_trips():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    png = cv2.imdecode(np.frombuffer(encode_picture(img, "png"), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert np.array_equal(png, img)  # lossless, RGB order kept
    jpg = cv2.imdecode(np.frombuffer(encode_picture(img, "jpg"), np.uint8), cv2.IMREAD_COLOR)
    assert jpg.shape == img.shape
