"""The two-pass AutoScale pipeline (paper Fig. 2, sections 3.4 and 3.5).

1. First pass: the counter (the paper's FPN, or any network meeting the counter interface of
   :mod:`autoscale.models.counter`, e.g. the Table 9 counters MCNN, CSRNet, CAN, SFCN, BL) predicts
   a density map (regression) or 11-class distance-label logits (localization) for the whole
   image, plus the feature L2S reads (the FPN's multi-level feature).
2. Dense region: the largest dense connected region of the first prediction, boxed
   (:mod:`autoscale.dense_region`), kept only if its box covers more than J of the image.
3. Learning to Scale: the L2S network reads the region's 14x14-pooled feature and predicts a
   scale factor ``r``; the image region is zoomed by ``r`` (:func:`autoscale.models.l2s.zoom_region`).
4. Second pass: the same counter re-predicts the zoomed region.
5. Composition: regression ``N = sum(Y_i) - sum(Y_i[box]) + sum(Y'_d)`` (no 1/r^2 correction: the
   zoomed ground truth is regenerated so each person still integrates to 1); localization: the
   regional minima outside the box plus the minima of the zoomed map mapped back to original
   image coordinates.

Training (Eq. 6 / Eq. 8) uses :func:`joint_loss`: first-pass loss + re-prediction loss on the
zoomed region against targets regenerated from the scaled points (:func:`autoscale.targets.region_target`)
+ lambda x centre loss on the region's closeness level. The regression pixel loss is the MSE of
Eq. 5 or, with ``density_loss="bayesian"``, the Bayesian loss of the BL counter (Table 9), which
takes the annotated points (zoomed with the region for the second pass) instead of a density map.

All points are ``(x, y)`` in pixels of the network input image (docs/architecture.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
import torch
from torch import nn

from autoscale import targets as T
from autoscale.dense_region import Region, dense_mask_localization, dense_mask_regression, select_dense_regions
from autoscale.losses import (CenterLoss, bayesian_loss, cross_entropy, decode_classes, deep_supervision_mse,
                              dynamic_cross_entropy, focal_loss, ordinal_regression_loss, sum_cells)
from autoscale.models.l2s import roi_features, zoom_region
from autoscale.models.vgg import IMAGENET_MEAN, IMAGENET_STD, normalize
from autoscale.postprocess import Minima, count_people_outside, find_minima, map_points_back

Variant = Literal["regression", "localization"]


@dataclass
class PipelineConfig:
    """Settings of the two-pass pipeline; defaults follow the paper (Table 1, sections 3.4/3.5).

    Attributes:
        variant: ``regression`` (density maps) or ``localization`` (distance-label maps).
        dense_k: regression threshold, density > k x image mean (paper 2, official code 4).
        dense_method: ``paper`` (plain threshold) or ``official`` (the authors' uint8 rule).
        class_threshold: localization threshold, predicted class < c (paper c = 8).
        area_ratio: gate J on box area / image area; None = 0.1 regression, 0.02 localization.
        top_k: number of disjoint dense regions refined (paper 1; Table 15 tries 2).
        criterion: ``area`` (largest component, paper) or ``official`` (area x contour vertices).
        zoom: ``stn`` (differentiable in the scale, paper) or ``bilinear`` (official inference).
        fixed_scale: a constant zoom factor instead of L2S (Fig. 10c ablation), or None.
        exclude_background: localization counting ignores plateaus of the background class.
        max_head_class: localization counting ignores minima whose class exceeds this
            (None: every minimum counts, paper); see :func:`autoscale.postprocess.count_people`.
            The limit is a distance in pixels of the input image (below ``edges[max_head_class + 1]``):
            in a region zoomed by ``r`` it becomes ``r`` times as many pixels
            (:func:`zoomed_class_limit`).
        loss: localization loss, ``dce`` (Eq. 7), ``ce``, ``focal`` or ``ordinal`` (Table 12).
        density_loss: regression pixel loss, ``mse`` (Eq. 5, deep-supervised) or ``bayesian``
            (Ma et al. ICCV 2019, the BL counter of Table 9: :func:`autoscale.losses.bayesian_loss`
            on the map summed over the counter's ``output_stride`` cells, from the annotated points).
        bl_sigma: the Bayesian loss's Gaussian sigma in input pixels (BL: 8).
        bl_background: the BL+ background term (BL: on).
        bl_background_ratio: the background distance ``d`` as a fraction of the image's shorter
            side (BL: 1; the input's shorter side stands for BL's original-image side: our choice).
        kernel: target regeneration for the zoomed region, ``fixed``/``multiplied``/``divided`` (Table 11).
        sigma: density kernel sigma in pixels (the trainer sets it from the dataset's sigma).
        edges: distance-label bin edges in pixels.
        center_weight: lambda in Eq. 6 / Eq. 8.
        refine_weight: weight of the zoomed region's re-prediction loss in Eq. 6 / Eq. 8 (paper: 1,
            a plain sum with the first-pass loss); an option, not in the paper, for studying how
            the re-prediction term shifts the shared counter's calibration.
        closeness: the region density measure S the centre loss (Eq. 2) compares with the zoom:
            ``distance`` (Eq. 1, mean nearest-neighbour distance of the region's people, px; paper)
            or ``people_number`` (Table 10's "average people number" of the conference version,
            expressed as the spacing ``sqrt(area / N)`` px so Eq. 2 keeps its form; see
            :func:`autoscale.targets.people_number_spacing`).
        min_region_people: a region with fewer annotated people gets no centre-loss term.
        region_from: in training, choose the dense region on the first ``prediction`` (paper,
            official) or on the ground-truth ``target`` (an option for early training and tests).
    """

    variant: Variant = "regression"
    dense_k: float = 2.0
    dense_method: Literal["paper", "official"] = "paper"
    class_threshold: int = 8
    area_ratio: float | None = None
    top_k: int = 1
    criterion: Literal["area", "official"] = "area"
    zoom: Literal["stn", "bilinear"] = "stn"
    fixed_scale: float | None = None
    exclude_background: bool = True
    max_head_class: int | None = None
    loss: Literal["dce", "ce", "focal", "ordinal"] = "dce"
    density_loss: Literal["mse", "bayesian"] = "mse"
    bl_sigma: float = 8.0
    bl_background: bool = True
    bl_background_ratio: float = 1.0
    kernel: Literal["fixed", "multiplied", "divided"] = "fixed"
    sigma: float = 4.0
    edges: tuple[float, ...] = T.DISTANCE_EDGES
    center_weight: float = 1.0
    refine_weight: float = 1.0
    closeness: Literal["distance", "people_number"] = "distance"
    min_region_people: int = 2
    max_zoom_pixels: int = 2048 * 2048
    region_from: Literal["prediction", "target"] = "prediction"

    @property
    def gate(self) -> float:
        if self.area_ratio is not None:
            return float(self.area_ratio)
        return 0.1 if self.variant == "regression" else 0.02


@dataclass
class RegionResult:
    """One refined dense region: its box in input-image pixels, the scale used and the counts."""

    region: Region
    scale: float
    count_before: float
    count_after: float
    zoomed_map: np.ndarray


@dataclass
class PipelineResult:
    """Output of :meth:`AutoScale.predict` for one image.

    ``first_map``/``map`` are density maps (float32) or class maps (uint8) at input resolution;
    ``map`` has each refined region replaced by its re-prediction resized back (for display).
    ``points`` are (x, y) in input-image pixels (localization, or density peaks when asked).
    """

    count: float
    first_count: float
    first_map: np.ndarray
    map: np.ndarray
    regions: list[RegionResult] = field(default_factory=list)
    points: np.ndarray | None = None


def zoomed_class_limit(edges: tuple[float, ...], max_class: int | None, scale: float) -> int | None:
    """The ``max_head_class`` of a map zoomed by ``scale``: ``max_class`` allows minima nearer than
    ``edges[max_class + 1]`` px to a head in the input image; zoomed, that distance is ``scale``
    times as many pixels, so the limit is the highest class whose lower edge lies below it."""
    if max_class is None or max_class + 1 >= len(edges):
        return max_class
    limit = scale * edges[max_class + 1]
    return max(k for k in range(len(edges)) if edges[k] < limit)


def _output_map(variant: Variant, final: torch.Tensor, cfg: PipelineConfig) -> np.ndarray:
    """The numpy map of one network output ``(1, C, H, W)``: density (float32) or classes (uint8)."""
    if variant == "regression":
        return final[0, 0].detach().float().cpu().numpy()
    return decode_classes(final.detach().float(), cfg.loss)[0].cpu().numpy().astype(np.uint8)


def _map_count(variant: Variant, final: torch.Tensor, cfg: PipelineConfig,
               scale: float = 1.0) -> tuple[float, np.ndarray, Minima | None]:
    """Count, numpy map and (localization) minima of one network output ``(1, C, H, W)``
    (``scale``: the zoom of the input it saw)."""
    m = _output_map(variant, final, cfg)
    if variant == "regression":
        return float(m.sum(dtype=np.float64)), m, None
    n_classes = len(cfg.edges)
    minima = find_minima(m, background=n_classes - 1, num_classes=n_classes, exclude_background=cfg.exclude_background,
                         max_class=zoomed_class_limit(cfg.edges, cfg.max_head_class, scale))
    return float(minima.count), m, minima


class AutoScale(nn.Module):
    """The counter plus the L2S network, wired as the paper's two-pass pipeline.

    ``counter``: any module meeting the counter interface (:mod:`autoscale.models.counter`): the
    FPNs, the Table 9 counters (``get_model("csrnet_regression")``, ...) or a user's network wrapped
    by :func:`autoscale.models.counter.as_counter`. ``l2s``: an :class:`~autoscale.models.l2s.L2S`
    with ``in_channels = counter.feature_channels``, or None with ``config.fixed_scale``.
    """

    def __init__(self, counter: nn.Module, l2s: nn.Module | None, config: PipelineConfig | None = None,
                 normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None):
        super().__init__()
        self.counter = counter
        self.l2s = l2s
        self.config = config or PipelineConfig()
        self._normalization = normalization

    # -- pieces -------------------------------------------------------------------------------
    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` of the counter's input in [0, 1] RGB units: as given (a checkpoint's
        ``normalization``), else the counter's, else ImageNet's."""
        if self._normalization is not None:
            return self._normalization
        counter = getattr(self.counter, "module", self.counter)
        return getattr(counter, "normalization", (IMAGENET_MEAN, IMAGENET_STD))

    def prepare(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """An RGB image (``uint8 (H, W, 3)`` array, or a ``(3, H, W)``/``(1, 3, H, W)`` tensor,
        uint8 or float in [0, 1]) as the normalised ``(1, 3, H, W)`` float32 input of the counter,
        on the counter's device."""
        device = next(self.counter.parameters()).device
        return normalize(image, *self.normalization).to(device)

    def dense_regions(self, first_map: np.ndarray) -> list[Region]:
        """Dense regions of a first-pass map (density or class map), gated by J."""
        cfg = self.config
        if cfg.variant == "regression":
            mask = dense_mask_regression(first_map, k=cfg.dense_k, method=cfg.dense_method)
        else:
            mask = dense_mask_localization(first_map, c=cfg.class_threshold, method=cfg.dense_method)
        return select_dense_regions(mask, area_ratio=cfg.gate, top_k=cfg.top_k, criterion=cfg.criterion)

    def scale_for(self, features: torch.Tensor | None, region: Region) -> torch.Tensor:
        """The zoom factor for a region: L2S on its pooled feature, or the fixed factor."""
        cfg = self.config
        if cfg.fixed_scale is not None or self.l2s is None:
            if cfg.fixed_scale is None:
                raise ValueError("AutoScale without an L2S network needs config.fixed_scale")
            return torch.tensor([float(cfg.fixed_scale)], device=features.device if features is not None else None)
        feats = roi_features(features, (region.x, region.y, region.w, region.h))
        return self.l2s(feats).reshape(-1)[:1]

    def _safe_scale(self, region: Region, s: torch.Tensor) -> torch.Tensor:
        # Bound the zoomed area so a huge region at a large scale cannot exhaust memory.
        limit = (self.config.max_zoom_pixels / max(1, region.w * region.h)) ** 0.5
        return torch.clamp(s, max=max(limit, 1e-3))

    # -- inference ----------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, image: torch.Tensor, *, single_pass: bool = False) -> PipelineResult:
        """Run the pipeline on one normalised image ``(1, 3, H, W)`` (in inference mode: the FPNs
        then skip their full-resolution side maps)."""
        cfg = self.config
        if image.ndim != 4 or image.shape[0] != 1:
            raise ValueError(f"predict expects one image of shape (1, 3, H, W), got {tuple(image.shape)}")
        # "lazy": an FPN keeps its L2S feature at the levels' native resolution and computes only
        # the dense region's pixels (same values); other counters take it as True.
        out = self.counter(image, return_features=False if single_pass else "lazy")
        first_count, first_map, first_minima = _map_count(cfg.variant, out.final, cfg)
        first_pts = None if first_minima is None else first_minima.points
        result = PipelineResult(count=first_count, first_count=first_count, first_map=first_map,
                                map=first_map.copy(), points=first_pts)
        if single_pass:
            return result
        regions = self.dense_regions(first_map)
        if not regions:
            return result
        count = first_count
        display = first_map.copy()
        refined_pts: list[np.ndarray] = []
        for region in regions:
            s = self._safe_scale(region, self.scale_for(out.features, region))
            if cfg.kernel == "divided":  # Table 11: the region keeps its size (kernel / r in training)
                zoomed = image[:, :, region.y:region.y + region.h, region.x:region.x + region.w]
            else:
                zoomed = zoom_region(image, (region.x, region.y, region.w, region.h), s, method="bilinear")
            if image.is_contiguous(memory_format=torch.channels_last):  # the layout the counter was given
                zoomed = zoomed.contiguous(memory_format=torch.channels_last)
            z_out = self.counter(zoomed)
            zoom = 1.0 if cfg.kernel == "divided" else float(s.reshape(-1)[0])
            z_count, z_map, z_minima = _map_count(cfg.variant, z_out.final, cfg, scale=zoom)
            ys, xs = slice(region.y, region.y + region.h), slice(region.x, region.x + region.w)
            if cfg.variant == "regression":
                before = float(first_map[ys, xs].sum(dtype=np.float64))
                count += z_count - before
                back = cv2.resize(z_map, (region.w, region.h), interpolation=cv2.INTER_AREA)
                total = float(back.sum(dtype=np.float64))
                display[ys, xs] = back * (z_count / total) if abs(total) > 1e-12 else back
            else:
                box = (region.x, region.y, region.w, region.h)
                before = float(len(T.region_points(first_pts, box)))
                refined_pts.append(map_points_back(z_minima.points, box, z_map.shape))
                display[ys, xs] = cv2.resize(z_map, (region.w, region.h), interpolation=cv2.INTER_NEAREST)
            result.regions.append(RegionResult(region, float(s.reshape(-1)[0]), before, z_count, z_map))
        if cfg.variant == "localization":
            # Minima outside the refined boxes: the official rule sets the box to the background
            # class and counts minima of the whole map again (the same, reusing the first count).
            _, outside = count_people_outside(
                first_map, [(r.region.x, r.region.y, r.region.w, r.region.h) for r in result.regions],
                first=first_minima, background=len(cfg.edges) - 1, num_classes=len(cfg.edges),
                exclude_background=cfg.exclude_background, max_class=cfg.max_head_class)
            pts = np.concatenate([outside.reshape(-1, 2), *[p.reshape(-1, 2) for p in refined_pts]], axis=0)
            result.points = pts
            count = float(len(pts))
        result.count = count
        result.map = display
        return result


# -- training (Eq. 6 / Eq. 8) -----------------------------------------------------------------
@dataclass
class LossBreakdown:
    """Loss terms of one image; ``total`` is what is back-propagated."""

    total: torch.Tensor
    first: float
    refine: float = 0.0
    center: float = 0.0
    scale: float | None = None
    region: Region | None = None
    closeness: float | None = None


def pixel_loss(variant: Variant, out, target: torch.Tensor, cfg: PipelineConfig, reduction: str = "mean",
               points: np.ndarray | None = None) -> torch.Tensor:
    """First/second-pass pixel loss: deep-supervised MSE (Eq. 5), the Bayesian loss
    (``cfg.density_loss="bayesian"``: needs ``points``, the image's heads ``(x, y)`` in input
    pixels; summed over the side outputs like the MSE) or the chosen classification loss.

    Always computed in float32, also under bf16 autocast: pixel sums in bf16 lose the count.
    """
    maps = [m.float() for m in (*out.side, out.final)]
    with torch.autocast(device_type=target.device.type, enabled=False):
        if variant == "regression" and cfg.density_loss == "bayesian":
            if points is None:
                raise ValueError("the Bayesian loss needs the image's annotated points")
            if out.final.shape[0] != 1:
                raise ValueError(f"the Bayesian loss takes one image at a time, got a batch of {out.final.shape[0]}")
            stride = int(getattr(out, "output_stride", 1))
            H, W = out.final.shape[-2:]
            return sum(bayesian_loss(sum_cells(m[0, 0], stride), points, stride=stride, sigma=cfg.bl_sigma,
                                     background=cfg.bl_background, background_ratio=cfg.bl_background_ratio,
                                     st_size=min(H, W), reduction=reduction) for m in maps)
        if variant == "regression":
            return deep_supervision_mse(maps, target.float(), reduction=reduction)
        fn = {"dce": dynamic_cross_entropy, "ce": cross_entropy, "focal": focal_loss,
              "ordinal": ordinal_regression_loss}[cfg.loss]
        return sum(fn(lg, target, reduction=reduction) for lg in maps) / len(maps)


def make_target(variant: Variant, points: np.ndarray, shape: tuple[int, int], cfg: PipelineConfig,
                sigma: float | None = None, edges: tuple[float, ...] | None = None) -> np.ndarray:
    """Whole-image target: density map (float32) or distance-label map (uint8)."""
    if variant == "regression":
        return T.density_map(points, shape, sigma=cfg.sigma if sigma is None else sigma)
    return T.distance_label_map(points, shape, edges=cfg.edges if edges is None else edges)


def _to_tensor(target: np.ndarray, variant: Variant, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(target)).to(device)
    return t[None, None].float() if variant == "regression" else t[None].long()


def joint_loss(model: AutoScale, image: torch.Tensor, points: np.ndarray, target: torch.Tensor,
               center: CenterLoss | None, *, reduction: str = "mean", refine: bool = True) -> LossBreakdown:
    """Eq. 6 (regression) / Eq. 8 (localization) for one image ``(1, 3, H, W)``.

    ``points`` are the image's annotated heads (input-image pixels); ``target`` the first-pass
    target tensor (``(1,1,H,W)`` density or ``(1,H,W)`` class labels). The dense region is chosen
    on the (detached) first prediction; its closeness level (Eq. 1) comes from the annotated
    points inside it; the zoomed region's target is regenerated from the scaled points.
    """
    cfg = model.config
    # Training reads the full-resolution feature (not "lazy" as predict does): the lazy pooling
    # differs from it by float32 rounding, and the demo's 3-epoch localization AutoScale branch
    # lands at MAE 3.23 instead of 2.10 with that difference - it is sensitive to the last bits.
    out = model.counter(image, return_features=refine)
    l_first = pixel_loss(cfg.variant, out, target, cfg, reduction, points=points)
    bd = LossBreakdown(total=l_first, first=float(l_first.detach()))
    if not refine:
        return bd
    if cfg.region_from == "target":
        first_map = target.detach()[0, 0 if cfg.variant == "regression" else slice(None)].cpu().numpy()
        first_map = first_map.astype(np.float32 if cfg.variant == "regression" else np.uint8)
    else:
        first_map = _output_map(cfg.variant, out.final, cfg)
    regions = model.dense_regions(first_map)
    if not regions:
        return bd
    region = regions[0]
    box = (region.x, region.y, region.w, region.h)
    # L2S reads detached features: the counter is trained by the pixel losses, L2S by the
    # centre loss and (through the STN zoom) by the re-prediction loss.
    s = model._safe_scale(region, model.scale_for(out.features.detach(), region))
    bd.region, bd.scale = region, float(s.detach().reshape(-1)[0])
    s_val = bd.scale
    if cfg.kernel == "divided":
        zoomed = image[:, :, region.y:region.y + region.h, region.x:region.x + region.w]
    else:
        zoomed = zoom_region(image, box, s, method=cfg.zoom)
    try:
        z_out = model.counter(zoomed)
    except ValueError as exc:
        # BatchNorm in training mode cannot normalise one value per channel: a region zoomed so
        # small (e.g. a sparse region shrunk by L2S) that a BN layer's map is 1x1 gets no
        # re-prediction term this step; its centre loss below still trains L2S.
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        z_out = None
    total = l_first
    if z_out is not None:
        h2, w2 = zoomed.shape[-2:]
        kind = "density" if cfg.variant == "regression" else "distance"
        z_target = T.region_target(points, box, s_val, kind=kind, sigma=cfg.sigma, edges=cfg.edges, kernel=cfg.kernel)
        if z_target.shape != (h2, w2):
            raise RuntimeError(f"regenerated target {z_target.shape} does not match zoomed region {(h2, w2)}")
        z_points = T.zoom_points(points, box, (h2, w2)) if cfg.density_loss == "bayesian" else None
        l_refine = pixel_loss(cfg.variant, z_out, _to_tensor(z_target, cfg.variant, image.device), cfg, reduction,
                              points=z_points)
        total = l_first + cfg.refine_weight * l_refine
        bd.refine = float(l_refine.detach())  # unweighted, as the history's loss_refine
    inside = T.region_points(points, box)
    if center is not None and model.l2s is not None and cfg.fixed_scale is None and len(inside) >= cfg.min_region_people:
        if cfg.closeness == "people_number":
            closeness = T.people_number_spacing(inside, region.w * region.h)
        else:
            closeness = T.closeness_level(inside)
        if np.isfinite(closeness):
            S = torch.tensor([closeness], dtype=s.dtype, device=s.device)
            l_center = center(S, s.reshape(-1))
            total = total + cfg.center_weight * l_center
            bd.center, bd.closeness = float(l_center.detach()), float(closeness)
    bd.total = total
    return bd
