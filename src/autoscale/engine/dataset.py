"""Training / validation dataset: images, points and on-the-fly targets with augmentation.

One sample is prepared as (training augmentations only when ``train=True``):

1. decode the image (``uint8 (H, W, 3)`` RGB) and apply the dataset's resize rule
   (:mod:`autoscale.data.preprocess`); points are scaled by the same per-axis factors;
2. random scaling by ``f ~ U(scale_range)`` (image resized to ``round(W f) x round(H f)``,
   points multiplied by the exact per-axis factors);
3. random crop of ``crop = (h, w)``; points outside the crop are dropped, the rest shifted.
   **Rule for small images:** where the image is smaller than the crop along an axis, it is
   padded at the bottom/right to the crop size with the ImageNet mean colour (zero after
   normalisation) - no head lies in the padding, so targets there are empty/background;
4. horizontal flip with p = 0.5: ``x -> W - x`` (a point exactly on an integer column is nudged
   by one ulp towards 0 so that its pixel ``floor(x)`` maps to ``W - 1 - floor(x)``: the target
   of the flipped image is then exactly the flipped target);
5. noise with probability ``noise_prob``: ``salt_pepper`` (official ``dataset.py``: a fraction
   ``U(0.4 %, 1.5 %)`` of the pixels set to black or white, 50/50) or ``gaussian``
   (``N(0, 10^2)`` grey levels added, clipped to 0..255);
6. the backbone's input normalisation and the target from the final points: a density map
   (:func:`autoscale.targets.density_map`, ``sigma``) or a distance-label map
   (:func:`autoscale.targets.distance_label_map`, ``edges``).

All random draws come from ``np.random.default_rng((seed, epoch, index))``, so a sample depends
only on ``(seed, epoch, index)`` - not on workers, ranks or what was drawn before: resuming an
interrupted epoch reproduces the same samples. Call :meth:`CrowdDataset.set_epoch` every epoch.

Points are ``(x, y)`` in pixels of the returned image (docs/architecture.md).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from autoscale import targets as T
from autoscale.data.image_io import read_image
from autoscale.data.preprocess import ResizeRule, get_resize_rule
from autoscale.data.record import ImageRecord
from autoscale.errors import ConfigError, DataError
from autoscale.models.registry import backbone_normalization
from autoscale.models.vgg import normalize

__all__ = ["CrowdDataset", "collate", "build_dataset", "resolve_sigma", "resolve_resize"]


def _flip_x(x: np.ndarray, width: int) -> np.ndarray:
    out = width - x
    on_edge = out == np.floor(out)
    out[on_edge] = np.nextafter(out[on_edge], -np.inf)
    return out


class CrowdDataset(Dataset):
    """Samples of ``records`` as dicts (see the module docstring for the preparation steps).

    Each item: ``image`` float32 ``(3, H, W)`` ImageNet-normalised; ``points`` float64 ``(N, 2)``
    ``(x, y)`` in the returned image's pixels (only heads inside it); ``target`` float32
    ``(1, H, W)`` density (regression) or int64 ``(H, W)`` class map (localization); ``name``;
    ``count`` (int, heads in the returned image); ``orig_size`` ``(H, W)`` of the image file;
    ``resize_scale`` ``(sx, sy)`` of the resize rule (returned-image pixels per file pixel, before
    augmentation); ``index``.

    Args:
        records: the split's :class:`ImageRecord` s.
        variant: ``regression`` or ``localization``.
        sigma: density kernel sigma in pixels (regression).
        edges: distance-label bin edges in pixels (localization).
        resize_rule: rule name, :class:`ResizeRule` or None (no resize).
        train: apply the random augmentations.
        crop: ``(h, w)`` random crop (train only) or None.
        scale_range: ``(lo, hi)`` random scale factor (train only) or None.
        flip: random horizontal flip (train only).
        noise_prob: probability of noise (train only); ``noise``: ``salt_pepper`` | ``gaussian``.
        seed: augmentation seed.
        normalization: ``(mean, std)`` of the network input in [0, 1] RGB units (None = ImageNet).
        cache: keep decoded, resized images in memory (one copy per record).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        variant: str,
        *,
        sigma: float = 4.0,
        edges: Sequence[float] = T.DISTANCE_EDGES,
        resize_rule: str | ResizeRule | None = None,
        train: bool = False,
        crop: tuple[int, int] | None = None,
        scale_range: tuple[float, float] | None = None,
        flip: bool = False,
        noise_prob: float = 0.0,
        noise: str = "salt_pepper",
        seed: int = 0,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        cache: bool = False,
    ) -> None:
        if variant not in ("regression", "localization"):
            raise ConfigError(f"variant must be 'regression' or 'localization', got {variant!r}")
        if noise not in ("salt_pepper", "gaussian"):
            raise ConfigError(f"noise must be 'salt_pepper' or 'gaussian', got {noise!r}")
        self.records = list(records)
        self.variant = variant
        self.sigma = float(sigma)
        self.edges = tuple(edges)
        self.resize_rule = get_resize_rule(resize_rule) if isinstance(resize_rule, str) else resize_rule
        self.train = bool(train)
        self.crop = None if crop is None else (int(crop[0]), int(crop[1]))
        self.scale_range = None if scale_range is None else (float(scale_range[0]), float(scale_range[1]))
        self.flip = bool(flip)
        self.noise_prob = float(noise_prob)
        self.noise = noise
        self.seed = int(seed)
        self.epoch = 0
        self.normalization = normalization
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, float, float]] | None = {} if cache else None

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (also works across DataLoader workers when
        called before the loader's iterator is created)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, int(index)))

    # -- augmentation steps ---------------------------------------------------------------------
    @staticmethod
    def _scale(img: np.ndarray, pts: np.ndarray, f: float) -> tuple[np.ndarray, np.ndarray]:
        h, w = img.shape[:2]
        nw, nh = max(1, round(w * f)), max(1, round(h * f))
        if (nw, nh) == (w, h):
            return img, pts
        interp = cv2.INTER_AREA if nw * nh < w * h else cv2.INTER_LINEAR
        return cv2.resize(img, (nw, nh), interpolation=interp), pts * np.array([nw / w, nh / h])

    @staticmethod
    def _crop(img: np.ndarray, pts: np.ndarray, crop: tuple[int, int], rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        h, w = img.shape[:2]
        ch, cw = crop
        y0 = int(rng.integers(0, h - ch + 1)) if h > ch else 0
        x0 = int(rng.integers(0, w - cw + 1)) if w > cw else 0
        img = img[y0:y0 + ch, x0:x0 + cw]
        pts = pts - np.array([x0, y0], dtype=np.float64)
        return img, pts, (ch, cw)

    def _noise(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = img.copy()
        h, w = img.shape[:2]
        if self.noise == "salt_pepper":
            frac = rng.uniform(0.004, 0.015)
            n = int(round(frac * h * w))
            idx = rng.choice(h * w, size=min(n, h * w), replace=False)
            val = np.where(rng.random(len(idx)) < 0.5, 0, 255).astype(np.uint8)
            img.reshape(h * w, 3)[idx] = val[:, None]
            return img
        noisy = img.astype(np.float32) + rng.normal(0.0, 10.0, img.shape).astype(np.float32)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)

    # -- item -----------------------------------------------------------------------------------
    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, float, float]:
        """The decoded image after the resize rule, its points and the rule's factors (cached)."""
        if self._cache is not None and index in self._cache:
            img, pts, sx, sy = self._cache[index]
            return img, pts.copy(), sx, sy
        rec = self.records[index]
        img = read_image(rec.image_path)
        pts = np.asarray(rec.points, dtype=np.float64).reshape(-1, 2)
        sx = sy = 1.0
        if self.resize_rule is not None:
            img, pts, sx, sy = self.resize_rule.apply(img, pts)
        if self._cache is not None:
            img = np.ascontiguousarray(img)
            img.flags.writeable = False  # augmentations copy; the cached image never changes
            self._cache[index] = (img, pts.copy(), sx, sy)
        return img, pts, sx, sy

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        img, pts, sx, sy = self._load(index)
        pad_to: tuple[int, int] | None = None
        if self.train:
            rng = self.rng(index)
            if self.scale_range is not None:
                img, pts = self._scale(img, pts, float(rng.uniform(*self.scale_range)))
            if self.crop is not None:
                img, pts, pad_to = self._crop(img, pts, self.crop, rng)
            h, w = img.shape[:2]
            pts = pts[(pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)]
            if self.flip and rng.random() < 0.5:
                img = np.ascontiguousarray(img[:, ::-1])
                pts = np.column_stack([_flip_x(pts[:, 0].copy(), w), pts[:, 1]])
            if self.noise_prob > 0 and rng.random() < self.noise_prob:
                img = self._noise(img, rng)
        h, w = img.shape[:2]
        pts = pts[(pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)]
        img = np.ascontiguousarray(img) if img.flags.writeable else np.array(img)
        image = normalize(img, *(self.normalization or ()))[0].float()
        if pad_to is not None and (h < pad_to[0] or w < pad_to[1]):
            image = torch.nn.functional.pad(image, (0, max(0, pad_to[1] - w), 0, max(0, pad_to[0] - h)))
        H, W = image.shape[-2:]
        if self.variant == "regression":
            target = torch.from_numpy(T.density_map(pts, (H, W), sigma=self.sigma))[None]
        else:
            target = torch.from_numpy(T.distance_label_map(pts, (H, W), edges=self.edges).astype(np.int64))
        return {
            "image": image.contiguous(), "points": pts, "target": target, "name": rec.name,
            "count": int(len(pts)), "orig_size": (int(rec.height), int(rec.width)),
            "resize_scale": (float(sx), float(sy)), "index": int(index),
        }


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: ``image``/``target`` stacked into ``(B, ...)`` tensors when all samples
    have the same size (crops), else kept as lists of per-sample tensors (batch of variable-size
    whole images); every other key becomes a list (``count`` a float64 tensor)."""
    out: dict[str, Any] = {k: [b[k] for b in batch] for k in batch[0]}
    for k in ("image", "target"):
        shapes = {tuple(t.shape) for t in out[k]}
        if len(shapes) == 1:
            out[k] = torch.stack(out[k])
    out["count"] = torch.tensor(out["count"], dtype=torch.float64)
    return out


# ---------------------------------------------------------------------------- config helpers
def resolve_sigma(data_cfg: Any) -> float:
    """``data.sigma``, else the format's default for ``data.root`` (ShanghaiTech A 4 / B 8, ...)."""
    from autoscale.data.formats import get_format

    if data_cfg.sigma is not None:
        return float(data_cfg.sigma)
    return float(get_format(data_cfg.format).sigma_for(data_cfg.root))


def resolve_resize(data_cfg: Any) -> str:
    """``data.resize``, else the format's paper default rule name."""
    from autoscale.data.formats import get_format

    return data_cfg.resize if data_cfg.resize is not None else get_format(data_cfg.format).resize_rule


def build_dataset(cfg: Any, split: str, *, train: bool, limit: int | None = None, quiet: bool = False) -> CrowdDataset:
    """The :class:`CrowdDataset` of ``split`` for a :class:`~autoscale.engine.config.TrainConfig`
    (training augmentations only when ``train``). ``limit``: keep the first N records.
    ``data.skip_unannotated``: images without an annotation file are left out, with a one-line
    notice on stderr (unless ``quiet``), instead of an error."""
    import sys
    from pathlib import Path

    from autoscale.data.formats import get_format, read_dataset, skipped_notice

    d = cfg.data
    if not Path(d.root).is_dir():
        raise DataError(d.root, "dataset root not found (config key 'data.root'; expected a directory)")
    skipped: list[Path] = []
    records = read_dataset(d.format, d.root, split, outside=d.outside, skip_unannotated=d.skip_unannotated,
                           skipped=skipped)
    if skipped and not quiet:
        print(f"autoscale: notice: {skipped_notice(skipped, get_format(d.format).split_path(d.root, split))}",
              file=sys.stderr, flush=True)
    records = [r for r in records if r.annotated] if train else records
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ConfigError(f"{get_format(d.format).split_path(d.root, split)}: split {split!r} of format "
                          f"{d.format!r} has no usable images")
    return CrowdDataset(
        records, cfg.model.variant, sigma=resolve_sigma(d), edges=tuple(cfg.pipeline.edges),
        resize_rule=resolve_resize(d), train=train, crop=d.crop if train else None,
        scale_range=d.scale_range if train else None, flip=d.flip and train,
        noise_prob=d.noise_prob if train else 0.0, noise=d.noise, seed=cfg.seed,
        normalization=backbone_normalization(cfg.model.backbone), cache=d.cache,
    )
