"""The Learning-to-Scale (L2S) network and the region zoom (paper §3.3).

:class:`L2S` keeps the authors' ``RATEnet`` layout and parameter names (official-code-facts §1c):
``des_dimension.0`` (3x3 conv C -> 64, ReLU), ``ROI_feat.0`` / ``ROI_feat.3`` (3x3 conv -> 32, ReLU,
2x2 pool, twice: a 14x14 region feature becomes 3x3, i.e. 288 values) and the head ``output``:

* ``head="paper"`` (paper, authors' localization): Linear(288 -> 10), ReLU, Linear(10 -> 1), i.e. the
  paper's "three 3x3 conv layers and two fully connected layers";
* ``head="official_regression"`` (authors' regression code): a single Linear(288 -> 1), then ``abs``.

The raw output is bounded into a scale factor ``s``:

* ``bound="paper"``: ``s = 0.5 + 2.5 * sigmoid(raw)``, in (0.5, 3) (the paper limits ``s`` to
  [0.5, 3]; a smooth bound keeps gradients everywhere);
* ``bound="official"``: ``s = sqrt(clamp(raw, lo, hi))`` with ``(lo, hi)`` bounds on the *squared*
  scale: regression ``(0.5, 9)`` applied to ``|raw|`` (s in [0.707, 3]), localization ``(0.5, 5)``
  (s in [0.707, 2.236]) (facts §3).

The region feature (:func:`roi_features`) is the authors': slice the full-resolution multi-level
feature with the integer region ``(x, y, w, h)`` and ``F.adaptive_avg_pool2d`` it to 14x14.

:func:`zoom_region` rescales an image region by ``s``. ``method="bilinear"`` crops and resizes
(align_corners=False; no gradient reaches ``s``, as in the authors' code). ``method="stn"`` samples
the FULL image with ``F.affine_grid`` / ``F.grid_sample`` (a spatial transformer, as the paper
says), so the zoom is differentiable with respect to ``s``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autoscale.targets import zoomed_size

__all__ = [
    "FIXED_SCALES",
    "FixedScale",
    "L2S",
    "OFFICIAL_CLAMPS",
    "ROI_SIZE",
    "roi_features",
    "zoom_region",
]

ROI_SIZE = 14
#: fixed zoom factors of the paper's ablation (a constant scale instead of L2S).
FIXED_SCALES = (1.5, 2.0, 2.5, 3.0)
#: the authors' clamp on the squared scale, per head (facts §3).
OFFICIAL_CLAMPS = {"official_regression": (0.5, 9.0), "paper": (0.5, 5.0)}
PAPER_RANGE = (0.5, 3.0)

Box = tuple[int, int, int, int]


def _check_box(box: Box, H: int, W: int) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in box)
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > W or y + h > H:
        raise ValueError(f"region (x={x}, y={y}, w={w}, h={h}) is empty or outside the {H}x{W} map")
    return x, y, w, h


def roi_features(features: torch.Tensor, box: Box, size: int = ROI_SIZE) -> torch.Tensor:
    """The L2S input: ``features[..., y:y+h, x:x+w]`` average-pooled adaptively to ``size x size``.

    ``features`` is ``(B, C, H, W)`` (the FPN's full-resolution multi-level feature); ``box`` is an
    integer region ``(x, y, w, h)`` in its pixels. Returns ``(B, C, size, size)``. This is the
    authors' slice + ``adaptive_avg_pool2d`` (no ROI-Align). ``features`` may also be an FPN's
    :class:`~autoscale.models.fpn.LazyFeatures` (``return_features="lazy"``): the region is then
    pooled from the native-resolution levels without upsampling the region (``pool``; the same
    values up to float32 rounding, in float32).
    """
    x, y, w, h = _check_box(box, *features.shape[-2:])
    if not isinstance(features, torch.Tensor):
        return features.pool((x, y, w, h), size)
    return F.adaptive_avg_pool2d(features[..., y:y + h, x:x + w], (size, size))


class L2S(nn.Module):
    """Predicts one zoom factor per region feature: ``forward((B, C, 14, 14)) -> (B,)``."""

    def __init__(
        self,
        in_channels: int = 152,
        *,
        head: str = "paper",
        bound: str = "paper",
        pool: str = "max",
        clamp: tuple[float, float] | None = None,
    ):
        super().__init__()
        if head not in ("paper", "official_regression"):
            raise ValueError(f"head must be 'paper' or 'official_regression', got {head!r}")
        if bound not in ("paper", "official"):
            raise ValueError(f"bound must be 'paper' or 'official', got {bound!r}")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        self.head, self.bound, self.pool = head, bound, pool
        self.clamp = tuple(clamp) if clamp is not None else OFFICIAL_CLAMPS[head]
        if not 0 < self.clamp[0] <= self.clamp[1]:
            raise ValueError(f"clamp must satisfy 0 < lo <= hi, got {self.clamp}")
        Pool = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
        self.des_dimension = nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1), nn.ReLU())
        self.ROI_feat = nn.Sequential(
            nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(), Pool(2, 2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), Pool(2, 2),
        )
        flat = 32 * 3 * 3
        if head == "paper":
            self.output = nn.Sequential(nn.Linear(flat, 10), nn.ReLU(), nn.Linear(10, 1))
        else:
            self.output = nn.Sequential(nn.Linear(flat, 1))
        self.in_channels = in_channels

    @property
    def scale_range(self) -> tuple[float, float]:
        """The closed range ``s`` can take (the paper bound's ends are approached, not reached)."""
        if self.bound == "paper":
            return PAPER_RANGE
        return (self.clamp[0] ** 0.5, self.clamp[1] ** 0.5)

    def raw(self, roi_feats: torch.Tensor) -> torch.Tensor:
        """The unbounded network output ``(B,)`` (after ``abs`` for the official regression head)."""
        if roi_feats.shape[-2:] != (ROI_SIZE, ROI_SIZE):
            raise ValueError(f"L2S expects {ROI_SIZE}x{ROI_SIZE} region features, got {tuple(roi_feats.shape)}")
        z = self.ROI_feat(self.des_dimension(roi_feats))
        out = self.output(torch.flatten(z, 1)).squeeze(1)
        return out.abs() if self.head == "official_regression" else out

    def bound_scale(self, raw: torch.Tensor) -> torch.Tensor:
        """Map raw outputs to scale factors according to ``self.bound``."""
        if self.bound == "paper":
            lo, hi = PAPER_RANGE
            return lo + (hi - lo) * torch.sigmoid(raw)
        return torch.sqrt(torch.clamp(raw, *self.clamp))

    def forward(self, roi_feats: torch.Tensor) -> torch.Tensor:
        """``(B, C, 14, 14)`` region features -> ``(B,)`` scale factors."""
        return self.bound_scale(self.raw(roi_feats))

    def predict_scale(self, features: torch.Tensor, box: Box) -> torch.Tensor:
        """Scale factor(s) ``(B,)`` for region ``box`` of the full-resolution feature map."""
        return self(roi_features(features, box))


class FixedScale(nn.Module):
    """Drop-in for :class:`L2S` returning a constant factor (the paper's fixed-scale ablation)."""

    def __init__(self, scale: float = 2.0):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = float(scale)

    def forward(self, roi_feats: torch.Tensor) -> torch.Tensor:
        return torch.full((roi_feats.shape[0],), self.scale, dtype=roi_feats.dtype, device=roi_feats.device)

    def predict_scale(self, features: torch.Tensor, box: Box) -> torch.Tensor:
        return self(features)


def zoom_region(
    image: torch.Tensor,
    box: Box,
    scale: float | torch.Tensor,
    *,
    method: str = "stn",
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize region ``box = (x, y, w, h)`` of ``image (B, C, H, W)`` by ``scale``.

    The output is ``(B, C, H', W')`` with ``(H', W') = size`` or :func:`autoscale.targets.zoomed_size`,
    and output pixel ``(i, j)`` samples the continuous image point ``(x + (j + 0.5) w / W', y + (i + 0.5) h / H')``
    (the architecture's zoom mapping; bilinear resize with align_corners=False).

    ``method="bilinear"``: crop then ``F.interpolate``; ``scale`` only sets the size (no gradient).
    ``method="stn"``: ``F.affine_grid`` + ``F.grid_sample`` (bilinear, align_corners=False, border
    padding) over the whole image, with theta selecting the box. The box extent is multiplied by
    ``k = s.detach() / s``: ``k == 1`` in the forward pass, so values equal sampling exactly the box
    (identical to ``bilinear`` except on the border pixels, where the STN interpolates with the real
    neighbours outside the box instead of clamping), while ``d output / d s`` flows back into ``s``
    (a larger ``s`` zooms into a smaller extent about the box centre).
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (B, C, H, W), got {tuple(image.shape)}")
    B, _, H, W = image.shape
    x, y, w, h = _check_box(box, H, W)
    out_hw = tuple(size) if size is not None else zoomed_size((0, 0, w, h), scale)
    if method == "bilinear":
        crop = image[..., y:y + h, x:x + w]
        return F.interpolate(crop, size=out_hw, mode="bilinear", align_corners=False)
    if method != "stn":
        raise ValueError(f"method must be 'stn' or 'bilinear', got {method!r}")
    dtype, dev = (image.dtype if image.is_floating_point() else torch.float32), image.device
    s = torch.as_tensor(scale, dtype=dtype, device=dev).reshape(-1)[:1].reshape(())
    k = s.detach() / s
    theta = torch.zeros(B, 2, 3, dtype=dtype, device=dev)
    ex = torch.tensor([w / W, h / H], dtype=dtype, device=dev) * k  # half-extent in [-1, 1] units
    centre = torch.tensor([(2 * x + w) / W - 1, (2 * y + h) / H - 1], dtype=dtype, device=dev)
    theta = theta + torch.stack([
        torch.stack([ex[0], torch.zeros_like(ex[0]), centre[0]]),
        torch.stack([torch.zeros_like(ex[1]), ex[1], centre[1]]),
    ])
    grid = F.affine_grid(theta, [B, image.shape[1], *out_hw], align_corners=False)
    return F.grid_sample(image.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)
