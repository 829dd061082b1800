"""Prediction for users: the :class:`Predictor` API (the runner behind ``autoscale predict`` is :mod:`autoscale.runner`).

Python API::

    from autoscale.predict import Predictor
    predictor = Predictor.from_checkpoint("model.pt")          # device="cpu", max_side="auto"
    pred = predictor("crowd.jpg")                               # path, PIL image or uint8 array
    pred.count, pred.map, pred.points, pred.regions

Conventions of a :class:`Prediction`:

* **Input orientation.** An image given by *path* is decoded with its EXIF orientation applied
  (:func:`autoscale.data.image_io.read_image` with ``exif=True``), so maps and points refer to the
  image *as displayed* (a phone photo stored sideways is counted upright). A PIL image is
  EXIF-transposed too; a numpy array is used as given. (Dataset evaluation, in contrast, never
  applies EXIF: annotations refer to the stored pixel grid.)
* **Large-image rule.** When the longer side of the input exceeds ``max_side`` (default 2048, as
  the paper's QNRF/JHU/NWPU protocol), the image is downscaled so its longer side equals
  ``max_side`` (aspect kept; each side ``max(1, round(side * max_side / longer))``; ``cv2.INTER_AREA``;
  :class:`autoscale.data.preprocess.ResizeRule`). The network runs on the downscaled image; points
  and regions come back through the exact per-axis factors ``x = x' * W / W'``,
  ``y = y' * H / H'``; the map is resized back to the input resolution (bilinear for density maps,
  nearest for class maps). A density map is then rescaled so that ``map.sum() == count`` (up to
  float32 rounding): multiplicatively when both are positive, otherwise by spreading the residual
  uniformly. ``max_side=None`` disables the rule. :meth:`Predictor.from_checkpoint` defaults to
  ``max_side="auto"``: the longer-side cap the model was trained at (its config's resize rule,
  e.g. 512 px for the ``*_lite0`` ShanghaiTech B presets), else 2048.
* **Big files.** An image given by *path* whose longer side exceeds :data:`READ_SIDE` (4096 px) and
  ``max_side`` is never decoded at full resolution: :meth:`Predictor.read` decodes it straight to
  a longer side of ``max(READ_SIDE, max_side)`` (JPEG: the decoder's 1/2-1/8 reduction, then an
  exact area average; :func:`autoscale.data.image_io.read_image` ``size=``), and the large-image
  rule then takes that to the network size. Geometry is unchanged (factors relative to the
  file's own size); pixels differ from a full decode by about one grey level. A 12000 x 8000
  JPEG then costs ~0.1 GiB to decode instead of ~0.3 GiB (plus Pillow's own buffer), and the
  runner's prefetch of big photos stays small. Maps still come back at the file's resolution.
* ``map``: density (float32, people per pixel) for regression checkpoints, distance-class map
  (uint8, 0 = at a head ... 10 = background) for localization checkpoints, at the input resolution;
  dense regions show their second-pass re-prediction resized into the box (paper Sec. 4.4).
* ``points``: ``(N, 2)`` float64 ``(x, y)`` in input-image pixels (pixel-centre convention,
  ``docs/architecture.md``): regional minima for localization; for regression, density peaks
  (:func:`autoscale.postprocess.density_peaks`) when ``points="peaks"``, else empty.
* ``regions``: one dict per refined dense region: ``x, y, w, h`` (float, input-image pixels),
  ``scale`` (the zoom factor), ``count_before`` (first pass, in the box), ``count_after`` (second
  pass).

Checkpoints: our format (:mod:`autoscale.models.registry`). A training checkpoint carries a
``"pipeline"`` dict of :class:`autoscale.pipeline.PipelineConfig` fields; one converted from the
authors' release has none and gets the paper defaults for its variant with ``zoom="bilinear"``. A
checkpoint without L2S weights (``method: "fpn"``, the baseline) predicts single-pass unless its
pipeline sets ``fixed_scale``.

Precision and engine: ``precision="auto"`` (the default of the API and of ``autoscale predict``)
is fp32; on the CPU the network runs channels_last (oneDNN's fastest layout: lite0 ~1.5x faster
than NCHW here, the same values). ``precision="bf16"`` (bf16 autocast + channels_last) is 2-3x
faster again on a CPU with native bfloat16 (AVX512-BF16 or AMX-BF16:
:func:`autoscale.device.cpu_has_native_bf16`) but opt-in: on 20 ShanghaiTech B test photos a
trained lite0 regression FPN counted +2.2 % more in bf16 than in fp32 on average (up to 4.9 %) at
its training size 384x512, +5.4 % (up to 15 %) at 768x1024, also with every BatchNorm unfolded:
the rounding noise of the early, high-resolution activations, passed through many ReLU6s, biases
the density upwards (``benchmarks/results/inference.json``, ``bf16_count_check``). That fails the
0.5 % rule for a default. ``engine="onnxruntime"`` runs both passes of the counter in onnxruntime
(fp32; counts within 1e-3 of torch fp32), the rest of the pipeline unchanged.

The file / folder / video runner (:func:`predict_paths`, ``autoscale predict``), its output layout
and ``--resume`` live in :mod:`autoscale.runner`; :func:`predict_paths`, :data:`IMAGE_EXTS` and
:data:`VIDEO_EXTS` are re-exported here.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch

from autoscale.data.image_io import image_size, read_image, to_rgb_array
from autoscale.device import cpu_has_native_bf16, resolve_device
from autoscale.data.preprocess import ResizeRule
from autoscale.errors import AutoScaleError, CheckpointError, ConfigError, DataError
from autoscale.models.registry import build_from_checkpoint, check_checkpoint, load_checkpoint
from autoscale.pipeline import AutoScale, PipelineConfig, PipelineResult
from autoscale.postprocess import density_peaks
from autoscale.runner import IMAGE_EXTS, VIDEO_EXTS, predict_paths

__all__ = [
    "IMAGE_EXTS",
    "VIDEO_EXTS",
    "Prediction",
    "Predictor",
    "load_autoscale",
    "trained_max_side",
    "trained_resize",
    "pipeline_config_from_checkpoint",
    "resolve_precision",
    "predict_paths",
    "resize_for_inference",
    "restore_map",
]

PointsMode = Literal["auto", "peaks", "none"]
Precision = Literal["auto", "bf16", "fp32"]
Engine = Literal["torch", "onnxruntime"]
_HEADER_KEYS = ("format", "version", "variant", "method", "model", "l2s", "normalization", "pipeline", "epoch", "step",
                "metrics", "code_version")


# ---------------------------------------------------------------------------------- loading
def pipeline_config_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> PipelineConfig:
    """The :class:`PipelineConfig` stored in a checkpoint's ``"pipeline"`` dict.

    Without that key (converted official checkpoints): paper defaults for the checkpoint's variant
    with ``zoom="bilinear"`` (the authors' inference zoom). Unknown keys (a newer trainer) are
    ignored with a warning; a variant that contradicts the checkpoint's is a :class:`CheckpointError`.
    """
    variant = ckpt.get("variant")
    raw = ckpt.get("pipeline")
    if raw is None:
        return PipelineConfig(variant=variant, zoom="bilinear")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: 'pipeline' must be a dict of PipelineConfig fields, got {type(raw).__name__}")
    from autoscale.engine.config import _build  # the config files' typed builder: same checks, same messages

    known = {f.name for f in fields(PipelineConfig)}
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        warnings.warn(f"{source}: ignoring unknown pipeline keys {unknown}", stacklevel=2)
    kw = {k: v for k, v in raw.items() if k in known}
    kw.setdefault("variant", variant)
    try:
        cfg = _build(PipelineConfig, kw, "pipeline.", f"{source}: checkpoint ")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    if cfg.variant != variant:
        raise CheckpointError(f"{source}: pipeline variant {cfg.variant!r} contradicts checkpoint variant {variant!r}")
    return cfg


def _device(device: str | torch.device) -> torch.device:
    return resolve_device(device, "device")


def resolve_precision(precision: Precision, device: torch.device, engine: Engine = "torch") -> str:
    """``"bf16"`` or ``"fp32"`` for a requested ``precision`` (module docstring, *Precision*).

    ``"auto"`` is fp32: bf16 moved a trained model's counts by more than 0.5 % (module docstring)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    if engine == "onnxruntime":
        if precision == "bf16":
            raise ConfigError("precision 'bf16' needs the torch engine (onnxruntime runs fp32): use --precision fp32 or auto")
        return "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("precision bf16 on a CPU without native bfloat16 (no AVX512-BF16 or AMX): oneDNN "
                      "emulates it, many times slower than fp32 here",
                      RuntimeWarning, stacklevel=2)
    return "fp32" if precision == "auto" else precision


def load_autoscale(
    checkpoint: str | PathLike[str] | dict[str, Any],
    *,
    variant: str | None = None,
    pipeline: PipelineConfig | None = None,
    device: str | torch.device = "cpu",
) -> tuple[AutoScale, dict[str, Any]]:
    """Build the :class:`AutoScale` pipeline (eval mode, on ``device``) from a checkpoint.

    Args:
        checkpoint: path or loaded checkpoint dict (our format).
        variant: when given, the checkpoint must be of this variant (else :class:`CheckpointError`).
        pipeline: overrides the checkpoint's pipeline settings (its variant must match).

    Returns:
        ``(model, checkpoint dict)``. Corrupt / foreign files raise :class:`CheckpointError`.
    """
    source = "<checkpoint dict>" if isinstance(checkpoint, dict) else str(checkpoint)
    try:
        ckpt = check_checkpoint(checkpoint, source) if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    except CheckpointError as exc:  # torch's unpickling messages span many lines: keep one
        msg = " ".join(str(exc).split())
        raise CheckpointError(msg if len(msg) <= 300 else msg[:297] + "...") from None
    ck_variant = ckpt.get("variant")
    if ck_variant not in ("regression", "localization"):
        raise CheckpointError(f"{source}: unknown variant {ck_variant!r}")
    if variant is not None and variant != ck_variant:
        raise CheckpointError(f"{source}: a {ck_variant} checkpoint, but {variant} was requested")
    cfg = pipeline if pipeline is not None else pipeline_config_from_checkpoint(ckpt, source)
    if cfg.variant != ck_variant:
        raise CheckpointError(f"{source}: a {ck_variant} checkpoint, but the pipeline config is {cfg.variant}")
    try:
        fpn, l2s = build_from_checkpoint(ckpt, source=source)
    except AutoScaleError:
        raise
    except Exception as exc:  # noqa: BLE001 - foreign model kwargs, torch's own load errors
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(f"{source}: cannot build the model ({type(exc).__name__}: {first})") from None
    model = AutoScale(fpn, l2s, cfg, normalization=_normalization(ckpt, source)).to(_device(device)).eval()
    return model, ckpt


def _normalization(ckpt: dict[str, Any], source: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The checkpoint's input normalisation ``(mean, std)``, checked; None when it records none
    (older and converted checkpoints: the backbone's own)."""
    raw = ckpt.get("normalization")
    if raw is None:
        return None
    try:
        if not isinstance(raw, dict):
            raise TypeError(type(raw).__name__)
        mean, std = (tuple(float(v) for v in raw[k]) for k in ("mean", "std"))
    except (TypeError, KeyError, ValueError, IndexError, RuntimeError):
        raise CheckpointError(f"{source}: 'normalization' must be {{'mean': [r, g, b], 'std': [r, g, b]}}") from None
    if len(mean) != 3 or len(std) != 3 or not all(np.isfinite(mean + std)) or min(std) <= 0:
        raise CheckpointError(f"{source}: 'normalization' needs 3 finite means and 3 positive stds, got {raw}")
    return mean, std


def _as_rgb(image: Any) -> tuple[np.ndarray, str]:
    """Decode ``image`` (path, PIL image, numpy array) to ``uint8 (H, W, 3)`` RGB and a name."""
    if isinstance(image, (str, PathLike)):
        return read_image(image, exif=True), Path(image).stem
    try:
        from PIL import Image, ImageOps
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        return np.ascontiguousarray(to_rgb_array(ImageOps.exif_transpose(image))), ""
    if isinstance(image, np.ndarray):
        a = image
        if a.dtype != np.uint8:
            raise DataError(None, f"numpy image must be uint8, got {a.dtype} (convert or pass a file path)")
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        elif a.ndim == 3 and a.shape[2] == 4:
            alpha = a[..., 3:4].astype(np.uint32)
            a = ((a[..., :3].astype(np.uint32) * alpha + 127) // 255).astype(np.uint8)
        if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] == 0 or a.shape[1] == 0:
            raise DataError(None, f"numpy image must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
        return np.ascontiguousarray(a), ""
    raise DataError(None, f"cannot predict on a {type(image).__name__}: give a path, PIL image or uint8 array")


def trained_resize(ckpt: dict[str, Any]) -> str | None:
    """The resize rule name a training checkpoint's images went through (``config.data.resize``),
    or None when it records none (converted or older checkpoints)."""
    cfg = ckpt.get("config")
    data = cfg.get("data") if isinstance(cfg, dict) else None
    rule = data.get("resize") if isinstance(data, dict) else None
    return rule if isinstance(rule, str) else None


def trained_max_side(ckpt: dict[str, Any]) -> int | None:
    """The longer-side cap (pixels) of :func:`trained_resize`, or None."""
    from autoscale.data.preprocess import RESIZE_RULES

    rule = RESIZE_RULES.get(trained_resize(ckpt) or "")
    return rule.max_long if rule is not None else None


#: Path inputs with a longer side above this (and above ``max_side``) are decoded reduced to it
#: (module docstring, "Big files").
READ_SIDE = 4096


def resize_for_inference(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float, float]:
    """Apply the large-image rule (module docstring): ``(image', sx, sy)`` with ``sx = W'/W``."""
    if not max_side:
        return image, 1.0, 1.0
    out, _, sx, sy = ResizeRule("max_side", max_long=int(max_side)).apply(image, np.zeros((0, 2)))
    return out, sx, sy


def restore_map(m: np.ndarray, size: tuple[int, int], variant: str, count: float) -> np.ndarray:
    """Resize a network-frame map back to ``size = (H, W)`` (module docstring's rule).

    Density maps (``variant="regression"``) end with ``sum == count``; class maps use nearest.
    """
    H, W = size
    if variant != "regression":
        if m.shape == (H, W):
            return m
        return cv2.resize(m, (W, H), interpolation=cv2.INTER_NEAREST)
    d = m.astype(np.float32, copy=True)
    if d.shape != (H, W):
        area = (H * W) / float(d.size)
        d = cv2.resize(d, (W, H), interpolation=cv2.INTER_LINEAR) / np.float32(area)
    total = float(d.sum(dtype=np.float64))
    if total > 1e-12 and count > 0:
        d *= np.float32(count / total)
    elif d.size:
        d += np.float32((count - total) / d.size)
    return d


# ---------------------------------------------------------------------------------- prediction
@dataclass
class Prediction:
    """The result for one image (module docstring for conventions).

    Attributes:
        count: predicted people count (two-pass AutoScale count, or the single-pass count).
        map: density (float32) or class map (uint8) at the input image's resolution.
        points: ``(N, 2)`` float64 ``(x, y)`` in input-image pixels.
        regions: refined dense regions (dicts ``x, y, w, h, scale, count_before, count_after``).
        first_count: the first-pass (baseline FPN) count.
        name: image name (file stem for paths, ``""`` otherwise).
        input_size: ``(H, W)`` of the input image; ``network_size``: ``(H', W')`` the network saw.
    """

    count: float
    map: np.ndarray
    points: np.ndarray
    regions: list[dict[str, float]] = field(default_factory=list)
    first_count: float = 0.0
    name: str = ""
    input_size: tuple[int, int] = (0, 0)
    network_size: tuple[int, int] = (0, 0)


class Predictor:
    """An AutoScale model ready to count images (see the module docstring).

    Args:
        model: the :class:`AutoScale` pipeline (put in eval mode here).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        single_pass: first pass only (the FPN baseline), no dense-region refinement.
        precision: ``"auto"`` (default: fp32, :func:`resolve_precision`), ``"bf16"``
            (``torch.autocast`` bfloat16 + channels_last; maps come back as float32; counts can
            move a few percent) or ``"fp32"``. ``bf16=True`` / ``False`` is the older spelling of
            ``"bf16"`` / ``"fp32"``.
        engine: ``"torch"`` or ``"onnxruntime"``: the counter (first and zoomed second pass) runs in
            onnxruntime from an fp32 ONNX export with dynamic H, W made once here (in a temporary
            folder, deleted once loaded); dense regions, L2S (kept in torch: 2 small layers) and
            the composition are the same code. Needs the optional extra ``autoscale[onnx]``.
        max_side: large-image rule; ``None`` disables it.
        points: ``"auto"`` (localization minima; nothing for regression), ``"peaks"`` (also density
            peaks for regression), ``"none"``.

    Attributes:
        precision: the resolved ``"bf16"`` / ``"fp32"``; ``bf16``: ``precision == "bf16"``;
            ``channels_last``: the network's memory layout (CPU or bf16, torch engine).
        info: checkpoint facts (``variant``, ``method``, ``code_version``, ``model`` name, ``backbone``).
        header: the checkpoint's descriptive keys (:data:`_HEADER_KEYS`; no weights), for model cards.
    """

    def __init__(self, model: AutoScale, *, device: str | torch.device = "cpu", single_pass: bool = False,
                 bf16: bool | None = None, max_side: int | None = 2048, points: PointsMode = "auto",
                 checkpoint: dict[str, Any] | None = None, precision: Precision = "auto",
                 engine: Engine = "torch"):
        if points not in ("auto", "peaks", "none"):
            raise ConfigError(f"points must be 'auto', 'peaks' or 'none', got {points!r}")
        if max_side is not None and int(max_side) < 1:
            raise ConfigError(f"max_side must be a positive integer or None, got {max_side!r}")
        if engine not in ("torch", "onnxruntime"):
            raise ConfigError(f"engine must be 'torch' or 'onnxruntime', got {engine!r}")
        if bf16 is not None:  # the older flag: an alias of precision="bf16" / "fp32"
            alias = "bf16" if bf16 else "fp32"
            if precision not in ("auto", alias):
                raise ConfigError(f"bf16={bf16} contradicts precision={precision!r}")
            precision = alias
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.variant = model.config.variant
        # A baseline without L2S weights (and no fixed scale) can only run single-pass.
        self.refines = model.l2s is not None or model.config.fixed_scale is not None
        self.single_pass = bool(single_pass) or not self.refines
        self.engine = engine
        self.precision = resolve_precision(precision, self.device, engine)
        self.bf16 = self.precision == "bf16"
        # channels_last: oneDNN's fastest layout on the CPU (fp32 too), and what bf16 autocast pays
        # off with on a GPU (tensor cores); onnxruntime takes NCHW
        self.channels_last = engine == "torch" and (self.bf16 or self.device.type == "cpu")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._runner = self.model
        if engine == "onnxruntime":
            if self.device.type != "cpu":
                raise ConfigError("engine 'onnxruntime' runs on the CPU here: use --device cpu")
            from autoscale.export import OrtCounter

            counter = OrtCounter.from_counter(self.model.counter, features=not self.single_pass)
            self._runner = AutoScale(counter, self.model.l2s, self.config, normalization=self.model.normalization)
        self.max_side = None if max_side is None else int(max_side)
        self.points_mode = points
        meta = checkpoint or {}
        self.header = {k: meta[k] for k in _HEADER_KEYS if k in meta}
        self.info = {k: meta.get(k) for k in ("variant", "method", "code_version") if k in meta}
        spec = meta.get("model") if isinstance(meta.get("model"), dict) else None
        if spec is not None:
            kwargs = spec.get("kwargs") if isinstance(spec.get("kwargs"), dict) else {}
            self.info["model"] = spec.get("name")
            self.info["backbone"] = kwargs.get("backbone", "vgg16" if str(spec.get("name", "")).startswith("fpn_") else None)

    @classmethod
    def from_checkpoint(cls, path: str | PathLike[str] | dict[str, Any], *, variant: str | None = None,
                        device: str | torch.device = "cpu", single_pass: bool = False, bf16: bool | None = None,
                        max_side: int | Literal["auto"] | None = "auto", points: PointsMode = "auto",
                        pipeline: PipelineConfig | None = None, precision: Precision = "auto",
                        engine: Engine = "torch") -> "Predictor":
        """Load a checkpoint (path or dict). Corrupt file, foreign format or a variant other than
        the requested ``variant`` raise :class:`CheckpointError` (one line). ``max_side="auto"``:
        :func:`trained_max_side` of the checkpoint, else 2048. Other arguments: :class:`Predictor`."""
        model, ckpt = load_autoscale(path, variant=variant, pipeline=pipeline, device=device)
        if max_side == "auto":
            max_side = trained_max_side(ckpt) or 2048
        return cls(model, device=device, single_pass=single_pass, bf16=bf16, max_side=max_side,
                   points=points, checkpoint=ckpt, precision=precision, engine=engine)

    def run_network_frame(self, image: np.ndarray) -> PipelineResult:
        """The pipeline on an RGB ``uint8`` image exactly as given (no resize); network-frame result."""
        x = self.model.prepare(np.ascontiguousarray(image))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            return self._runner.predict(x, single_pass=self.single_pass)

    def __call__(self, image: Any, name: str | None = None) -> Prediction:
        """Count one image: a path, a PIL image or a ``uint8`` ``(H, W)`` / ``(H, W, 3|4)`` array."""
        if isinstance(image, (str, PathLike)):
            rgb, size = self.read(image)
            return self.predict_array(rgb, name=Path(image).stem if name is None else name, input_size=size)
        rgb, default_name = _as_rgb(image)
        return self.predict_array(rgb, name=default_name if name is None else name)

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """``(H', W')`` the network sees for an input of ``height x width`` pixels (large-image rule)."""
        if not self.max_side:
            return int(height), int(width)
        w, h = ResizeRule("max_side", max_long=self.max_side).output_size(int(width), int(height))
        return h, w

    def read(self, path: str | PathLike[str]) -> tuple[np.ndarray, tuple[int, int]]:
        """Decode an image file (EXIF orientation applied) for :meth:`predict_array`:
        ``(rgb, (H, W))`` with ``(H, W)`` the image's own size; ``rgb`` is at that size, or reduced
        to a longer side of ``max(READ_SIDE, max_side)`` for a bigger image (module docstring,
        "Big files"). Raises :class:`DataError` (one line) for unreadable files."""
        W, H = image_size(path, exif=True)
        cap = None if not self.max_side else max(READ_SIDE, self.max_side)
        if cap is None or max(W, H) <= cap:
            return read_image(path, exif=True), (H, W)
        size = ResizeRule("max_side", max_long=cap).output_size(W, H)
        return read_image(path, exif=True, size=size), (H, W)

    def predict_array(self, rgb: np.ndarray, name: str = "", *,
                      input_size: tuple[int, int] | None = None) -> Prediction:
        """Count a decoded ``uint8 (h, w, 3)`` RGB image (the large-image rule applies).

        ``input_size``: ``(H, W)`` of the image ``rgb`` was reduced from (:meth:`read`); outputs
        then refer to that size. None: ``rgb``'s own size."""
        H, W = input_size if input_size is not None else rgb.shape[:2]
        if (H, W) == rgb.shape[:2]:
            small, sx, sy = resize_for_inference(rgb, self.max_side)
        else:
            h, w = self.network_size(H, W)
            small = rgb if rgb.shape[:2] == (h, w) else cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
            sx, sy = w / W, h / H
        res = self.run_network_frame(small)
        inv = np.array([1.0 / sx, 1.0 / sy])
        if res.points is not None and self.points_mode != "none":
            pts = res.points.reshape(-1, 2) * inv
        elif self.variant == "regression" and self.points_mode == "peaks":
            pts = density_peaks(res.map).reshape(-1, 2) * inv
        else:
            pts = np.zeros((0, 2), dtype=np.float64)
        regions = [
            {"x": r.region.x / sx, "y": r.region.y / sy, "w": r.region.w / sx, "h": r.region.h / sy,
             "scale": float(r.scale), "count_before": float(r.count_before), "count_after": float(r.count_after)}
            for r in res.regions
        ]
        m = res.map if not self.single_pass else res.first_map
        return Prediction(count=float(res.count), map=restore_map(m, (H, W), self.variant, float(res.count)),
                          points=pts.astype(np.float64), regions=regions, first_count=float(res.first_count),
                          name=name, input_size=(H, W), network_size=tuple(small.shape[:2]))

    def predict_paths(self, inputs: str | PathLike[str] | Sequence[str | PathLike[str]], out_dir: str | PathLike[str],
                      **kwargs: Any) -> dict[str, Any]:
        """:func:`autoscale.runner.predict_paths` with this predictor (same keyword arguments,
        e.g. ``resume=True``)."""
        return predict_paths(self, inputs, out_dir, **kwargs)
