"""Preprocessing: the image resize rules of the paper and of the authors' scripts.

A :class:`ResizeRule` first caps the longer side at ``max_long`` (when it exceeds it), then raises
the shorter side of the capped image to ``min_short`` (when it is below it); the aspect ratio is
kept. Points are scaled by the exact per-axis factors ``new_w / old_w`` and ``new_h / old_h``
(continuous coordinates, pixel column ``c`` covers ``[c, c+1)``; this is consistent with a
``cv2.resize`` / bilinear resize with ``align_corners=False``, see ``docs/architecture.md``).

Which rule each dataset uses (paper vs the official code, see
``reference/official-code-facts.md`` sections 2 and 7):

=====================  ==============================  ==========================================
dataset                paper (default, Sec. 4.2)        official code (named option)
=====================  ==============================  ==========================================
ShanghaiTech A / B     ``none`` (original size)         ``none``
UCF-QNRF               ``paper_2048``                   localization ``long2048_short512``
                                                        (strict ``>`` / ``<``); regression
                                                        ``long1024`` (``>=``)
JHU-Crowd++            ``paper_2048``                   localization and regression
                                                        ``long2048_short512_ge`` (``>=`` / ``<=``)
NWPU-Crowd             ``paper_2048``                   localization ``long2048`` (pre-resized
                                                        ``images_2048``, script not released);
                                                        regression ``long1024`` (``images_1024``)
TRANCOS, VGG cells,    ``none``                         (not in the official code)
generic
=====================  ==============================  ==========================================

The paper says "setting the longer side size to 2048 while maintaining the ratio"; we read it as a
cap (images already smaller are kept), which is what every official script does. With equality
(longer side exactly ``max_long``) strict and inclusive comparisons give the same size; the
``long_inclusive`` / ``short_inclusive`` flags only record the official semantics.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from autoscale.errors import ConfigError

__all__ = ["ResizeRule", "RESIZE_RULES", "get_resize_rule"]


@dataclass(frozen=True)
class ResizeRule:
    """Cap the longer side, then raise the shorter side; sizes in pixels.

    Attributes:
        name: registry name.
        max_long: the longer side is scaled down to this when it exceeds it (``None``: no cap).
        min_short: afterwards the shorter side is scaled up to this when below it (``None``: no
            minimum). The longer side may then exceed ``max_long`` again (as in the official code).
        long_inclusive: the cap also applies when the longer side equals ``max_long`` (``>=``,
            JHU scripts) rather than only when it exceeds it (``>``, QNRF localization script).
        short_inclusive: likewise ``<=`` instead of ``<`` for the short-side minimum.
    """

    name: str
    max_long: int | None = None
    min_short: int | None = None
    long_inclusive: bool = False
    short_inclusive: bool = False

    def __post_init__(self) -> None:
        for key in ("max_long", "min_short"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"resize rule {self.name!r}: {key} must be a positive integer, got {v!r}")

    def scale_for(self, width: int, height: int) -> float:
        """Overall scale factor for an image of ``width x height`` pixels (1.0 when nothing applies)."""
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        scale = 1.0
        long_side = max(width, height)
        if self.max_long is not None:
            over = long_side >= self.max_long if self.long_inclusive else long_side > self.max_long
            if over:
                scale = self.max_long / long_side
        if self.min_short is not None:
            short_side = min(width, height) * scale
            under = short_side <= self.min_short if self.short_inclusive else short_side < self.min_short
            if under:
                scale *= self.min_short / short_side
        return scale

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """``(new_width, new_height)``: ``max(1, round(side * scale))`` per side."""
        s = self.scale_for(width, height)
        if s == 1.0:
            return int(width), int(height)
        return max(1, round(width * s)), max(1, round(height * s))

    def apply(self, image: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Resize ``image`` (``(H, W)`` or ``(H, W, C)``) and its ``(N, 2)`` points ``(x, y)``.

        Shrinking uses ``cv2.INTER_AREA``, enlarging ``cv2.INTER_LINEAR``. Points are multiplied by
        ``scale_x = new_w / old_w`` and ``scale_y = new_h / old_h``.

        Returns ``(image, points, scale_x, scale_y)``; the inputs are not modified.
        """
        img = np.asarray(image)
        if img.ndim not in (2, 3):
            raise ValueError(f"image must be (H, W) or (H, W, C), got shape {img.shape}")
        h, w = img.shape[:2]
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        new_w, new_h = self.output_size(w, h)
        if (new_w, new_h) == (w, h):
            return img.copy(), pts.copy(), 1.0, 1.0
        interp = cv2.INTER_AREA if new_w * new_h < w * h else cv2.INTER_LINEAR
        out = cv2.resize(img, (new_w, new_h), interpolation=interp)
        if img.ndim == 3 and out.ndim == 2:  # cv2 drops a singleton channel axis
            out = out[..., None]
        sx, sy = new_w / w, new_h / h
        return out, pts * np.array([sx, sy]), sx, sy


RESIZE_RULES: dict[str, ResizeRule] = {
    r.name: r
    for r in (
        ResizeRule("none"),
        # Paper Sec. 4.2: QNRF / JHU / NWPU "longer side to 2048" (read as a cap).
        ResizeRule("paper_2048", max_long=2048),
        # Official localization QNRF (distance_generate_QNRF.py): strict comparisons.
        ResizeRule("long2048_short512", max_long=2048, min_short=512),
        # Official JHU scripts (localization and regression): inclusive comparisons.
        ResizeRule("long2048_short512_ge", max_long=2048, min_short=512, long_inclusive=True, short_inclusive=True),
        # Official localization NWPU (pre-resized images_2048).
        ResizeRule("long2048", max_long=2048, long_inclusive=True),
        # Official regression QNRF (>= 1024 -> 1024) and NWPU (images_1024).
        ResizeRule("long1024", max_long=1024, long_inclusive=True),
        # CPU presets (``*_lite0``): longer side capped at 512 / 768 px.
        ResizeRule("long512", max_long=512),
        ResizeRule("long768", max_long=768),
    )
}


def get_resize_rule(name: str) -> ResizeRule:
    """Look up a rule of :data:`RESIZE_RULES`; :class:`ConfigError` listing the valid names otherwise."""
    try:
        return RESIZE_RULES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown resize rule {name!r}; valid rules: {', '.join(sorted(RESIZE_RULES))}") from None
