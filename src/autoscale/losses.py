"""All training losses of AutoScale.

* regression: :func:`density_mse` (Eq. 5) and :func:`deep_supervision_mse` (official: sum MSE
  with equal weight on the side outputs d2..d6);
* localization: :func:`dynamic_cross_entropy` (DCE, Eq. 7, the paper's loss) and the Table 12
  ablation losses :func:`cross_entropy`, :func:`focal_loss`, :func:`ordinal_regression_loss`,
  with :func:`decode_classes` turning logits into a class map for each;
* L2S: :class:`CenterLoss` (Eq. 2-4) and :func:`centre_loss_grad` (Eq. 3);
* point supervision: :func:`bayesian_loss` (Ma et al. ICCV 2019, the BL counter of Table 9) with
  its posterior :func:`bayesian_posterior`.

Shapes: logits ``(B, K, H, W)``, class targets ``(B, H, W)`` long in ``0..K-1``, density maps
``(B, 1, H, W)`` (any matching shapes work for the MSE losses). ``reduction="sum"`` sums over
pixels (and the batch); ``"mean"`` divides that sum by the number of (non-ignored) pixels.
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import numpy as np

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autoscale.errors import ConfigError

__all__ = [
    "density_mse",
    "deep_supervision_mse",
    "dynamic_cross_entropy",
    "cross_entropy",
    "focal_loss",
    "ordinal_regression_loss",
    "ordinal_decode",
    "decode_classes",
    "num_output_channels",
    "CLASS_LOSSES",
    "get_class_loss",
    "CenterLoss",
    "centre_loss_grad",
    "bayesian_posterior",
    "bayesian_loss",
    "sum_cells",
]

Reduction = Literal["sum", "mean"]


def _check_reduction(reduction: str) -> None:
    if reduction not in ("sum", "mean"):
        raise ConfigError(f"loss reduction must be 'sum' or 'mean', got {reduction!r}")


# ----------------------------------------------------------------------------------- regression
def density_mse(pred: Tensor, target: Tensor, *, reduction: Reduction = "sum") -> Tensor:
    """``||D - D_hat||^2`` (Eq. 5): squared error summed over all elements (official
    ``MSELoss(size_average=False)``), or its mean with ``reduction="mean"``."""
    _check_reduction(reduction)
    if pred.shape != target.shape:
        raise ValueError(f"density_mse: prediction {tuple(pred.shape)} != target {tuple(target.shape)}")
    se = (pred - target).pow(2)
    return se.sum() if reduction == "sum" else se.mean()


def deep_supervision_mse(
    outputs: Sequence[Tensor],
    target: Tensor,
    weights: Sequence[float] | None = None,
    *,
    reduction: Reduction = "sum",
) -> Tensor:
    """``sum_j w_j * density_mse(outputs[j], target)``; equal weights 1 by default (official:
    d2..d6 with weight 1 each)."""
    if len(outputs) == 0:
        raise ValueError("deep_supervision_mse: no outputs")
    if weights is None:
        weights = [1.0] * len(outputs)
    if len(weights) != len(outputs):
        raise ValueError(f"deep_supervision_mse: {len(weights)} weights for {len(outputs)} outputs")
    total = outputs[0].new_zeros(())
    for w, o in zip(weights, outputs):
        total = total + w * density_mse(o, target, reduction=reduction)
    return total


# ------------------------------------------------------------------------------- classification
def _valid_mask(logits: Tensor, target: Tensor, ignore_index: int | None, n_classes: int) -> Tensor:
    if logits.dim() != 4 or target.dim() != 3 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"expected logits (B, K, H, W) and target (B, H, W), got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    t = target[valid]
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        raise ValueError(f"class targets must lie in 0..{n_classes - 1}, got {int(t.min())}..{int(t.max())}")
    return valid


def _reduce(per_pixel: Tensor, valid: Tensor, reduction: str) -> Tensor:
    _check_reduction(reduction)
    s = (per_pixel * valid).sum()
    return s if reduction == "sum" else s / valid.sum().clamp(min=1)


def dynamic_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    reduction: Reduction = "sum",
    detach_weight: bool = False,
    ignore_index: int | None = None,
) -> Tensor:
    """Dynamic cross-entropy (paper Eq. 7).

    ``L = -sum_p (sum_i (|C(p) - i| + 1) * Pr(p)_i) * log Pr(p)_{C(p)}``, with
    ``Pr = softmax(logits)`` over the K classes. The per-pixel weight lies in ``[1, K]``: it is 1
    when all predicted mass is on the true class and grows with the mass on far classes, so a
    wrong prediction two classes away costs more than one next door, where plain CE sees no
    difference.

    The weight depends on the prediction ("dynamic"). By default gradients flow through it, as
    the equation is written; ``detach_weight=True`` treats it as a per-pixel constant (a
    re-weighted CE). Paper Eq. 7 sums over pixels (``reduction="sum"``); ``"mean"`` divides by
    the number of non-ignored pixels.
    """
    K = logits.shape[1]
    valid = _valid_mask(logits, target, ignore_index, K)
    t = torch.where(valid, target, torch.zeros_like(target)).long()
    logp = F.log_softmax(logits, dim=1)
    prob = logp.exp()
    cls = torch.arange(K, device=logits.device, dtype=logits.dtype).view(1, K, 1, 1)
    dist = (t.unsqueeze(1).to(logits.dtype) - cls).abs() + 1.0
    weight = (dist * prob).sum(dim=1)
    if detach_weight:
        weight = weight.detach()
    nll = -logp.gather(1, t.unsqueeze(1)).squeeze(1)
    return _reduce(weight * nll, valid, reduction)


def cross_entropy(
    logits: Tensor, target: Tensor, *, reduction: Reduction = "sum", ignore_index: int | None = None
) -> Tensor:
    """Plain per-pixel cross-entropy (Table 12 "CE loss"), same reductions as DCE."""
    valid = _valid_mask(logits, target, ignore_index, logits.shape[1])
    t = torch.where(valid, target, torch.zeros_like(target)).long()
    nll = F.cross_entropy(logits, t, reduction="none")
    return _reduce(nll, valid, reduction)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    reduction: Reduction = "sum",
    ignore_index: int | None = None,
) -> Tensor:
    """Focal loss (Lin et al.) ``-(1 - p_t)^gamma * log p_t`` per pixel (Table 12 "Focal loss");
    ``gamma=0`` is plain cross-entropy."""
    valid = _valid_mask(logits, target, ignore_index, logits.shape[1])
    t = torch.where(valid, target, torch.zeros_like(target)).long()
    logpt = F.log_softmax(logits, dim=1).gather(1, t.unsqueeze(1)).squeeze(1)
    pt = logpt.exp()
    per = -((1.0 - pt).clamp(min=0) ** gamma) * logpt
    return _reduce(per, valid, reduction)


def ordinal_regression_loss(
    logits: Tensor, target: Tensor, *, reduction: Reduction = "sum", ignore_index: int | None = None
) -> Tensor:
    """Ordinal regression loss (Fu et al., DORN; Table 12).

    ``logits`` has ``K - 1`` channels; channel ``k`` is the logit of ``P(C > k)``, trained by
    binary cross-entropy against ``[C > k]``. The per-pixel loss is the sum over the K-1
    channels; ``"mean"`` divides by the number of pixels (not channels).
    """
    K = logits.shape[1] + 1
    valid = _valid_mask(logits, target, ignore_index, K)
    t = torch.where(valid, target, torch.zeros_like(target)).long()
    ks = torch.arange(K - 1, device=logits.device).view(1, K - 1, 1, 1)
    bin_t = (t.unsqueeze(1) > ks).to(logits.dtype)
    per = F.binary_cross_entropy_with_logits(logits, bin_t, reduction="none").sum(dim=1)
    return _reduce(per, valid, reduction)


def ordinal_decode(logits: Tensor) -> Tensor:
    """Class map of ordinal logits ``(B, K-1, H, W)``: the number of channels with
    ``sigmoid > 0.5`` (i.e. logit > 0). Returns ``(B, H, W)`` long."""
    return (logits > 0).sum(dim=1)


CLASS_LOSSES: dict[str, Callable[..., Tensor]] = {
    "dce": dynamic_cross_entropy,
    "ce": cross_entropy,
    "focal": focal_loss,
    "ordinal": ordinal_regression_loss,
}


def get_class_loss(name: str) -> Callable[..., Tensor]:
    """The classification loss called ``name`` (one of :data:`CLASS_LOSSES`)."""
    try:
        return CLASS_LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown classification loss {name!r}; choose from {sorted(CLASS_LOSSES)}") from None


def num_output_channels(loss_kind: str, num_classes: int = 11) -> int:
    """Head channels a loss needs: ``num_classes`` (CE-type) or ``num_classes - 1`` (ordinal)."""
    get_class_loss(loss_kind)
    return num_classes - 1 if loss_kind == "ordinal" else num_classes


def decode_classes(logits: Tensor, loss_kind: str = "dce") -> Tensor:
    """Class map ``(B, H, W)`` from logits: argmax for CE-type losses, :func:`ordinal_decode`
    for ``"ordinal"``."""
    get_class_loss(loss_kind)
    if loss_kind == "ordinal":
        return ordinal_decode(logits)
    # max(dim).indices is argmax (first maximum on ties) and, on a (B, K, H, W) float32 map,
    # 6x faster than argmax(dim=1) here (15 vs 90 ms at 11 x 768 x 1024)
    return logits.max(dim=1).indices


# ---------------------------------------------------------------------------------- centre loss
def centre_loss_grad(S: Tensor, r: Tensor, C: float | Tensor, p: float = 2.0) -> Tensor:
    """``dL_s/dr_i`` of ``L_s = 1/2 sum_i (S_i r_i^p - C)^2``:
    ``p * S_i * r_i^(p-1) * (S_i r_i^p - C)``; for ``p = 2`` this is Eq. 3,
    ``2 S_i (S_i r_i^3 - C r_i)``."""
    return p * S * r.pow(p - 1) * (S * r.pow(p) - C)


class CenterLoss(nn.Module):
    """Centre loss on closeness levels for the L2S module (paper Eq. 2-4).

    ``forward(S, r)`` takes the closeness levels ``S`` (Eq. 1: mean nearest-neighbour distance
    of the heads in each region, pixels; ground truth, no gradient) and the predicted scale
    factors ``r``, both shape ``(M,)``.

    ``mode="paper"``: ``L_s = 1/2 sum_i (S_i r_i^p - C)^2`` with ``p = exponent`` (default 2,
    Eq. 2 as printed). The centre ``C`` is a buffer, initialised to ``init`` (+ ``N(0,
    init_noise^2)``; the paper initialises randomly) and *not* trained by the optimiser: in
    training mode each forward accumulates ``S_i r_i^p`` (detached) and the trainer calls
    :meth:`step_center` every T iterations, which applies Eq. 4,
    ``dC = sum_i (C - S_i r_i^p) / (1 + M)``, ``C <- C - alpha * dC`` over the M accumulated
    samples and resets the accumulator. Gradient flows to ``r`` only.

    ``mode="official"`` (the authors' ``centerloss.py``): ``C`` is an ``nn.Parameter``
    (``init`` + ``|N(0, init_noise^2)|``) learned by the optimiser every iteration and
    ``L = sum_i clamp((S_i r_i^p - C)^2, 1e-12, 1e12) / M`` with ``p`` defaulting to 1 (the
    authors feed ``S * s`` with ``s`` already the sqrt of the network's output).
    """

    def __init__(
        self,
        mode: Literal["paper", "official"] = "paper",
        *,
        exponent: float | None = None,
        init: float = 18.0,
        init_noise: float = 0.0,
        seed: int | None = 0,
        alpha: float = 1e-3,
    ) -> None:
        super().__init__()
        if mode not in ("paper", "official"):
            raise ConfigError(f"centre-loss mode must be 'paper' or 'official', got {mode!r}")
        self.mode = mode
        self.exponent = float(exponent if exponent is not None else (2.0 if mode == "paper" else 1.0))
        self.alpha = float(alpha)
        noise = 0.0
        if init_noise:
            g = torch.Generator().manual_seed(0 if seed is None else seed)
            noise = float(torch.randn((), generator=g)) * init_noise
            if mode == "official":
                noise = abs(noise)
        c0 = torch.tensor(float(init) + noise)
        if mode == "paper":
            self.register_buffer("center", c0)
            self.register_buffer("acc_sum", torch.zeros((), dtype=torch.float64))
            self.register_buffer("acc_count", torch.zeros((), dtype=torch.long))
        else:
            self.center = nn.Parameter(c0)

    def forward(self, S: Tensor, r: Tensor) -> Tensor:
        S = S.reshape(-1).detach().to(r.dtype)
        r = r.reshape(-1)
        if S.shape != r.shape:
            raise ValueError(f"CenterLoss: {S.numel()} closeness levels for {r.numel()} scale factors")
        v = S * r.pow(self.exponent)
        if self.mode == "official":
            return ((v - self.center).pow(2).clamp(1e-12, 1e12)).sum() / max(v.numel(), 1)
        if self.training:
            with torch.no_grad():
                self.acc_sum += v.detach().double().sum()
                self.acc_count += v.numel()
        return 0.5 * (v - self.center.detach()).pow(2).sum()

    @torch.no_grad()
    def step_center(self) -> float:
        """Paper mode: apply Eq. 4 to the samples accumulated since the last call, reset the
        accumulator and return ``dC`` (0 when nothing was accumulated)."""
        if self.mode != "paper":
            raise ConfigError("step_center is for mode='paper'; in 'official' mode the optimiser updates C")
        M = int(self.acc_count)
        if M == 0:
            return 0.0
        c = float(self.center)
        delta = (M * c - float(self.acc_sum)) / (1 + M)
        self.center.fill_(c - self.alpha * delta)
        self.acc_sum.zero_()
        self.acc_count.zero_()
        return delta

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, exponent={self.exponent}, alpha={self.alpha}"


# ------------------------------------------------------------------------------ Bayesian loss
def sum_cells(density: Tensor, stride: int) -> Tensor:
    """Sum a ``(..., H, W)`` map over ``stride x stride`` cells from the top-left corner (the map is
    zero-padded at the bottom / right to whole cells): ``(..., ceil(H/s), ceil(W/s))``."""
    if stride == 1:
        return density
    H, W = density.shape[-2:]
    ph, pw = (-H) % stride, (-W) % stride
    if ph or pw:
        density = F.pad(density, (0, pw, 0, ph))
    *lead, h, w = density.shape
    return density.reshape(*lead, h // stride, stride, w // stride, stride).sum(dim=(-3, -1))


def bayesian_posterior(
    points: Tensor,
    shape: tuple[int, int],
    stride: int = 1,
    *,
    sigma: float = 8.0,
    background: bool = True,
    d: float | None = None,
) -> Tensor:
    """Posterior ``p(y_n | x_m)`` of each annotated head ``n`` (and the background) for each cell
    ``m`` of an ``(h, w)`` grid of ``stride``-px cells (BL paper Eq. 8-9; BL+ with background, §4.2).

    Cell ``(i, j)`` covers input pixels ``[j s, (j+1) s) x [i s, (i+1) s)``; its centre
    ``x_m = ((j + 0.5) s, (i + 0.5) s)`` (the authors' ``arange(0, size, s) + s / 2``). ``points``:
    ``(N, 2)`` heads ``(x, y)`` in input pixels. The likelihood of a cell for head ``n`` is
    ``N(x_m; z_n, sigma^2 I)`` with equal priors, so the posterior is the softmax over the heads of
    ``-|x_m - z_n|^2 / (2 sigma^2)``. Background (``background=True``): a dummy head whose squared
    distance to cell ``m`` is ``(d - min_n |x_m - z_n|)^2``, ``d`` = ``background_ratio x`` the
    image's shorter side (default ``d`` = the grid's shorter side in pixels). Returns ``(N[+1], h*w)``:
    one row per head (the background last), one column per cell (row-major), each column sums to 1."""
    h, w = int(shape[0]), int(shape[1])
    pts = points.to(torch.float32).reshape(-1, 2)
    cx = (torch.arange(w, dtype=torch.float32, device=pts.device) + 0.5) * stride
    cy = (torch.arange(h, dtype=torch.float32, device=pts.device) + 0.5) * stride
    dx = (pts[:, :1] - cx[None]) ** 2  # (N, w)
    dy = (pts[:, 1:] - cy[None]) ** 2  # (N, h)
    dist = (dy[:, :, None] + dx[:, None, :]).reshape(len(pts), h * w)
    if background:
        if d is None:
            d = float(min(h, w) * stride)
        nearest = dist.min(dim=0, keepdim=True).values.clamp(min=0.0)
        dist = torch.cat([dist, (float(d) - nearest.sqrt()) ** 2], 0)
    return torch.softmax(-dist / (2.0 * float(sigma) ** 2), dim=0)


def bayesian_loss(
    density: Tensor,
    points: Tensor | np.ndarray,
    *,
    stride: int = 1,
    sigma: float = 8.0,
    background: bool = True,
    background_ratio: float = 1.0,
    st_size: float | None = None,
    reduction: Reduction = "sum",
) -> Tensor:
    """Bayesian loss for one image (Ma et al., "Bayesian Loss for Crowd Count Estimation with Point
    Supervision", ICCV 2019, Eq. 10; with ``background`` the BL+ loss of Eq. 13).

    ``density``: ``(h, w)`` (or ``(1, 1, h, w)``) people per cell of a ``stride``-px grid (the BL
    network's stride-8 map; :func:`sum_cells` of a full-resolution map). ``points``: ``(N, 2)``
    heads ``(x, y)`` in input pixels. With the posterior ``P`` (:func:`bayesian_posterior`,
    ``sigma``, ``d = background_ratio x st_size``, ``st_size`` default: the grid's shorter side in
    pixels; the authors use the image's shorter side), the expected count of head ``n`` is
    ``E[c_n] = sum_m P(n | m) D(m)`` and the loss is ``sum_n |1 - E[c_n]|`` plus ``|0 - E[c_bg]|``
    for the background. An image without heads: ``|0 - sum_m D(m)|`` (the authors' code).
    ``reduction="mean"`` divides by the number of terms (``N`` + 1 with background; 1 without heads).
    Gradients flow to ``density`` only. The authors' defaults: ``sigma`` 8, ``background_ratio`` 1.
    """
    _check_reduction(reduction)
    dens = density.reshape(density.shape[-2:]) if density.dim() > 2 else density
    if dens.dim() != 2:
        raise ValueError(f"bayesian_loss: density must be (h, w) or (1, 1, h, w), got {tuple(density.shape)}")
    pts = torch.as_tensor(np.asarray(points, dtype=np.float64) if not isinstance(points, Tensor) else points,
                          device=dens.device).reshape(-1, 2)
    dens = dens.float()
    if len(pts) == 0:
        return dens.sum().abs()
    h, w = dens.shape
    d = None if st_size is None else float(background_ratio) * float(st_size)
    if d is None and background:
        d = float(background_ratio) * float(min(h, w) * stride)
    prob = bayesian_posterior(pts, (h, w), stride, sigma=sigma, background=background, d=d)
    expected = prob @ dens.reshape(-1)
    target = torch.ones(len(pts), dtype=expected.dtype, device=expected.device)
    if background:
        target = torch.cat([target, target.new_zeros(1)])
    per = (target - expected).abs()
    return per.sum() if reduction == "sum" else per.mean()

