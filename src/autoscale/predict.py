"""Prediction for users: a small Python API and the file/folder/video runner behind ``autoscale predict``.

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

Output layout of :func:`predict_paths` (``DIR``)::

    counts.csv            image,count           (written last)
    counts.json           per-image counts, regions, settings, "errors" (written last)
    maps/<name>.npy       map at the input resolution
    points/<name>.csv     x,y head points, input-image pixels
    overlays/<name>.png   heatmap + dense-region box + points with KNN boxes
    nwpu_counts.txt       "id count" (with nwpu=True; id = numeric file stem)
    nwpu_loc.txt          "id num x y ..." (with nwpu=True; integer coordinates, floor)

Every file is written to a temporary name and renamed into place. ``DIR`` is only touched once the
first image has been counted: then the stale ``counts.*`` of an earlier run are removed, so an
interrupted run never leaves a file that looks complete. A run that counts nothing (its only input,
or every input, unreadable) fails with one :class:`DataError` and leaves ``DIR`` as it was.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch

from autoscale.data.formats import natural_key
from autoscale.data.image_io import check_pixels, read_image, to_rgb_array
from autoscale.data.preprocess import ResizeRule
from autoscale.errors import AutoScaleError, CheckpointError, ConfigError, DataError
from autoscale.models.registry import build_from_checkpoint, check_checkpoint, load_checkpoint
from autoscale.pipeline import AutoScale, PipelineConfig, PipelineResult
from autoscale.postprocess import density_peaks

__all__ = [
    "IMAGE_EXTS",
    "VIDEO_EXTS",
    "Prediction",
    "Predictor",
    "load_autoscale",
    "trained_max_side",
    "trained_resize",
    "pipeline_config_from_checkpoint",
    "predict_paths",
    "resize_for_inference",
    "restore_map",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm")
VIDEO_EXTS = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
PointsMode = Literal["auto", "peaks", "none"]

# A corrupt video makes OpenCV's FFmpeg backend print FFmpeg's own log lines ("moov atom not
# found") before our one-line report. FFmpeg's level is read once, when OpenCV first uses FFmpeg:
# quiet it before any video is opened; an explicit setting in the environment wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


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
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    return dev


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
        bf16: run under ``torch.autocast`` with bfloat16 (maps are returned as float32).
        max_side: large-image rule; ``None`` disables it.
        points: ``"auto"`` (localization minima; nothing for regression), ``"peaks"`` (also density
            peaks for regression), ``"none"``.
    """

    def __init__(self, model: AutoScale, *, device: str | torch.device = "cpu", single_pass: bool = False,
                 bf16: bool = False, max_side: int | None = 2048, points: PointsMode = "auto",
                 checkpoint: dict[str, Any] | None = None):
        if points not in ("auto", "peaks", "none"):
            raise ConfigError(f"points must be 'auto', 'peaks' or 'none', got {points!r}")
        if max_side is not None and int(max_side) < 1:
            raise ConfigError(f"max_side must be a positive integer or None, got {max_side!r}")
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.variant = model.config.variant
        # A baseline without L2S weights (and no fixed scale) can only run single-pass.
        self.refines = model.l2s is not None or model.config.fixed_scale is not None
        self.single_pass = bool(single_pass) or not self.refines
        self.bf16 = bool(bf16)
        if self.bf16:  # bf16 autocast pays off with channels_last (oneDNN/AMX on CPU, tensor cores on GPU)
            self.model = self.model.to(memory_format=torch.channels_last)
        self.max_side = None if max_side is None else int(max_side)
        self.points_mode = points
        meta = checkpoint or {}
        self.info = {k: meta.get(k) for k in ("variant", "method", "code_version") if k in meta}

    @classmethod
    def from_checkpoint(cls, path: str | PathLike[str] | dict[str, Any], *, variant: str | None = None,
                        device: str | torch.device = "cpu", single_pass: bool = False, bf16: bool = False,
                        max_side: int | Literal["auto"] | None = "auto", points: PointsMode = "auto",
                        pipeline: PipelineConfig | None = None) -> "Predictor":
        """Load a checkpoint (path or dict). Corrupt file, foreign format or a variant other than
        the requested ``variant`` raise :class:`CheckpointError` (one line). ``max_side="auto"``:
        :func:`trained_max_side` of the checkpoint, else 2048."""
        model, ckpt = load_autoscale(path, variant=variant, pipeline=pipeline, device=device)
        if max_side == "auto":
            max_side = trained_max_side(ckpt) or 2048
        return cls(model, device=device, single_pass=single_pass, bf16=bf16, max_side=max_side,
                   points=points, checkpoint=ckpt)

    def run_network_frame(self, image: np.ndarray) -> PipelineResult:
        """The pipeline on an RGB ``uint8`` image exactly as given (no resize); network-frame result."""
        x = self.model.prepare(np.ascontiguousarray(image))
        if self.bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            return self.model.predict(x, single_pass=self.single_pass)

    def __call__(self, image: Any, name: str | None = None) -> Prediction:
        """Count one image: a path, a PIL image or a ``uint8`` ``(H, W)`` / ``(H, W, 3|4)`` array."""
        rgb, default_name = _as_rgb(image)
        return self.predict_array(rgb, name=default_name if name is None else name)

    def predict_array(self, rgb: np.ndarray, name: str = "") -> Prediction:
        """Count a decoded ``uint8 (H, W, 3)`` RGB image (the large-image rule applies)."""
        H, W = rgb.shape[:2]
        small, sx, sy = resize_for_inference(rgb, self.max_side)
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
        """:func:`predict_paths` with this predictor."""
        return predict_paths(self, inputs, out_dir, **kwargs)


# ---------------------------------------------------------------------------------- file runner
def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _points_csv(points: np.ndarray) -> bytes:
    lines = ["x,y"] + [f"{x:.3f},{y:.3f}" for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2)]
    return ("\n".join(lines) + "\n").encode()


def _check_out(out_dir: Path) -> None:
    """Refuse an output path that cannot become a writable folder, without creating or changing
    anything (the folder is prepared by :func:`_prepare_out` once there is something to write)."""
    existing = out_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        what = "exists and is not a directory" if existing == out_dir else f"lies under {existing}, not a directory"
        raise DataError(out_dir, f"cannot write the output directory (the path {what})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(out_dir, f"cannot write the output directory ({existing}: permission denied)")


def _prepare_out(out_dir: Path) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("maps", "points", "overlays"):
            (out_dir / sub).mkdir(exist_ok=True)
        probe = out_dir / f".write_test{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        # Stale completion markers of an earlier run must not outlive an interrupted new one.
        for stale in ("counts.csv", "counts.json", "nwpu_counts.txt", "nwpu_loc.txt"):
            (out_dir / stale).unlink(missing_ok=True)
    except OSError as exc:
        raise DataError(out_dir, f"cannot write the output directory ({exc.strerror or exc})") from None
    return out_dir


def _expand_inputs(inputs: str | PathLike[str] | Sequence[str | PathLike[str]]) -> list[tuple[str, Path]]:
    """``[(kind, path)]`` with kind ``image`` / ``video``; folders list their images naturally sorted."""
    items = [inputs] if isinstance(inputs, (str, PathLike)) else list(inputs)
    out: list[tuple[str, Path]] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files = sorted((q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTS
                            and not q.name.startswith(".")), key=lambda q: natural_key(q.name))
            if not files:
                raise DataError(p, f"no images found in folder (extensions {', '.join(IMAGE_EXTS)})")
            out.extend(("image", q) for q in files)
        elif p.is_file():
            out.append(("video" if p.suffix.lower() in VIDEO_EXTS else "image", p))
        else:
            raise DataError(p, "input not found")
    return out


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV's own log lines (``[ WARN:0] ... VIDEOIO(FFMPEG): ...``) silenced meanwhile: the
    failures they describe are reported by us, as one line."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:  # pragma: no cover - every OpenCV 4/5 build has it
        yield
        return
    old = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(old)


def _open_video(path: Path) -> cv2.VideoCapture:
    """Open with the FFmpeg backend when OpenCV has it (no fallback to OpenCV's built-in AVI
    parser, which prints to stderr itself), quietly; :class:`DataError` when it cannot be opened
    or its frames are above the decoding limit (:func:`autoscale.data.image_io.max_pixels`)."""
    with _quiet_opencv():
        api = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
        cap = cv2.VideoCapture(str(path), api)
        opened = cap.isOpened()
    if not opened:
        cap.release()
        raise DataError(path, "cannot open video (unsupported codec or corrupt file)")
    try:
        check_pixels(path, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    except DataError:
        cap.release()
        raise
    return cap


def _video_frames(path: Path, every_n_frames: int | None, fps: float | None) -> Iterator[tuple[int, np.ndarray]]:
    """Sampled ``(frame index, RGB frame)``: every ``every_n_frames``-th frame (default 1), or
    ``fps`` frames per second (step ``max(1, round(video_fps / fps))``; step 1 when the file states
    no frame rate). Frame 0 is always the first sample."""
    cap = _open_video(path)
    try:
        if fps is not None:
            native = cap.get(cv2.CAP_PROP_FPS) or 0.0
            step = max(1, round(native / fps)) if native > 0 else 1
        else:
            step = int(every_n_frames or 1)
        idx = 0
        while True:
            if idx % step == 0:
                with _quiet_opencv():
                    ok, frame = cap.read()
                if not ok:
                    break
                yield idx, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            else:
                with _quiet_opencv():
                    ok = cap.grab()
                if not ok:
                    break
            idx += 1
    finally:
        cap.release()


def predict_paths(
    predictor: Predictor,
    inputs: str | PathLike[str] | Sequence[str | PathLike[str]],
    out_dir: str | PathLike[str],
    *,
    every_n_frames: int | None = None,
    fps: float | None = None,
    nwpu: bool = False,
    overlays: bool = True,
    save_maps: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Count images, folders and videos and write the output layout of the module docstring.

    ``inputs``: an image file, a folder of images (natural order; unreadable files are reported on
    stderr and under ``"errors"`` in counts.json, the rest still run) or a video file (frames named
    ``<stem>_f000123`` by frame index, sampled by ``every_n_frames`` or ``fps``), or a list of them.
    Names repeated across inputs get ``_2``, ``_3``... appended.

    Returns:
        The counts.json content. Raises :class:`DataError` for a missing input, an unwritable
        ``out_dir``, a lone unreadable image or video, or when no input could be read at all; then
        ``out_dir`` is left exactly as it was (an earlier run's outputs stay intact), and the
        notices about skipped inputs are folded into that one error.
    """
    if every_n_frames is not None and fps is not None:
        raise ConfigError("give either every_n_frames or fps, not both")
    if every_n_frames is not None and int(every_n_frames) < 1:
        raise ConfigError(f"every_n_frames must be >= 1, got {every_n_frames}")
    if fps is not None and not fps > 0:
        raise ConfigError(f"fps must be > 0, got {fps}")
    items = _expand_inputs(inputs)
    out_path = Path(out_dir)
    _check_out(out_path)
    out = out_path  # prepared (stale counts.* removed) by the first counted image, not before
    prepared = False
    say = log or (lambda msg: print(msg, file=sys.stderr))
    held: list[str] = []  # notices about skipped inputs, printed once an image has been counted
    failures: list[tuple[Path, str]] = []
    records: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    used: set[str] = set()
    nwpu_counts: dict[int, float] = {}
    nwpu_points: dict[int, np.ndarray] = {}

    def unique(name: str) -> str:
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        return name

    def skipped(path: Path, problem: str, error: str) -> None:
        errors.append({"image": str(path), "error": error})
        failures.append((path, problem))
        msg = f"autoscale: skipped {path}: {problem}"
        if prepared:
            say(msg)
        else:
            held.append(msg)

    def process(rgb: np.ndarray, name: str, source: str) -> None:
        nonlocal prepared
        pred = predictor.predict_array(rgb, name=name)
        if not prepared:
            _prepare_out(out_path)
            prepared = True
            for msg in held:
                say(msg)
            held.clear()
        if save_maps:
            _atomic_write(out / "maps" / f"{name}.npy", _npy_bytes(pred.map))
        _atomic_write(out / "points" / f"{name}.csv", _points_csv(pred.points))
        if overlays:
            from autoscale.viz import draw_overlay

            ov = draw_overlay(rgb, pred.map, variant=predictor.variant, regions=pred.regions, points=pred.points)
            ok, buf = cv2.imencode(".png", cv2.cvtColor(ov, cv2.COLOR_RGB2BGR))
            if not ok:  # pragma: no cover
                raise DataError(out / "overlays" / f"{name}.png", "PNG encoding failed")
            _atomic_write(out / "overlays" / f"{name}.png", buf.tobytes())
        records.append({"image": name, "source": source, "count": pred.count, "first_count": pred.first_count,
                        "num_points": int(len(pred.points)), "height": pred.input_size[0],
                        "width": pred.input_size[1], "regions": pred.regions})
        if nwpu:
            if name.isdigit():
                nwpu_counts[int(name)], nwpu_points[int(name)] = pred.count, pred.points
            else:
                errors.append({"image": source, "error": f"{name!r} is not a numeric NWPU image id; left out of nwpu files"})
                say(f"autoscale: warning: {source}: not a numeric NWPU image id, left out of the NWPU files")

    for kind, path in items:
        if kind == "video":
            n_before = len(records)
            try:
                for idx, frame in _video_frames(path, every_n_frames, fps):
                    process(frame, unique(f"{path.stem}_f{idx:06d}"), f"{path}#frame={idx}")
            except DataError as exc:
                if len(items) == 1 or exc.path != str(path):
                    raise
                skipped(path, exc.problem, str(exc))
                continue
            if len(records) == n_before:
                skipped(path, "no frames could be decoded", "no frames could be decoded")
            continue
        try:
            rgb = read_image(path, exif=True)
        except DataError as exc:
            if len(items) == 1:
                raise
            skipped(path, exc.problem, str(exc))
            continue
        process(rgb, unique(path.stem), str(path))

    if not records:
        if len(failures) == 1:
            raise DataError(*failures[0])
        source = Path(inputs) if isinstance(inputs, (str, PathLike)) else failures[0][0]
        first, problem = failures[0]
        raise DataError(source, f"none of the {len(failures)} inputs could be read (first: {first.name}: {problem}); "
                                f"nothing predicted, {out_path} left as it was")
    if nwpu:
        from autoscale.metrics.nwpu import write_counts, write_loc_pred

        for fname, writer, data in (("nwpu_counts.txt", write_counts, nwpu_counts),
                                    ("nwpu_loc.txt", write_loc_pred, nwpu_points)):
            tmp = out / f".{fname}.tmp{os.getpid()}"
            writer(tmp, dict(sorted(data.items())))
            os.replace(tmp, out / fname)
    summary = {
        "variant": predictor.variant,
        "single_pass": predictor.single_pass,
        "max_side": predictor.max_side,
        "pipeline": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(predictor.config).items()},
        "checkpoint": predictor.info,
        "num_images": len(records),
        "total_count": float(sum(r["count"] for r in records)),
        "images": records,
        "errors": errors,
    }
    _atomic_write(out / "counts.json", (json.dumps(summary, indent=1) + "\n").encode())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "count"])
    w.writerows([r["image"], f"{r['count']:.6f}"] for r in records)
    _atomic_write(out / "counts.csv", buf.getvalue().encode())
    return summary
