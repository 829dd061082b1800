"""ONNX export of the single-pass counting network (the FPN): normalised image -> final map.

The exported graph takes ``image``: float32 ``(1, 3, H, W)``, normalised as the checkpoint says
(``x = (rgb / 255 - mean) / std``: ImageNet's mean/std for VGG, 0.5/0.5 for EfficientNet-Lite;
the values are stored in the ONNX file's metadata as ``normalization_mean`` /
``normalization_std`` JSON lists and returned by :func:`export_onnx`), and returns ``map``: ``(1, 1, H, W)`` density (people per
pixel; the count is its sum) for regression or ``(1, K, H, W)`` class logits for localization
(argmax = distance class; heads are the regional minima, :func:`autoscale.postprocess.count_people`).
H and W are dynamic axes when the exporter keeps them dynamic (checked at two sizes after export).
The two-pass refinement (dense region + L2S zoom) is data-dependent control flow and is not
exported: run it in Python (:mod:`autoscale.predict`).

Uses PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, opset 17),
which works offline; onnx / onnxruntime are the optional extra ``pip install autoscale[onnx]``.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import warnings
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoscale.errors import AutoScaleError
from autoscale.io import atomic_path
from autoscale.pipeline import PipelineConfig

__all__ = ["FinalMap", "MapAndFeatures", "OrtCounter", "export_onnx", "check_onnx"]


def _no_side(counter: nn.Module) -> dict[str, Any]:
    """The forward keywords that make ``counter`` skip full-resolution side maps (FPNs have them;
    the other counters never compute any), so the traced graph holds only what ``final`` needs."""
    return {"side_outputs": False} if "side_outputs" in inspect.signature(counter.forward).parameters else {}


class FinalMap(nn.Module):
    """Wrap an FPN so ``forward(image) -> final map`` (no side outputs, no features)."""

    def __init__(self, fpn: nn.Module):
        super().__init__()
        self.fpn = fpn
        self._kw = _no_side(fpn)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fpn(image, **self._kw).final


class MapAndFeatures(nn.Module):
    """Wrap a counter so ``forward(image) -> (final map, L2S feature)`` (the first pass of the
    two-pass pipeline; ``features``: ``(1, C, H, W)``, what :func:`autoscale.models.l2s.roi_features` pools)."""

    def __init__(self, fpn: nn.Module):
        super().__init__()
        self.fpn = fpn
        self._kw = _no_side(fpn)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fpn(image, return_features=True, **self._kw)
        return out.final, out.features


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise AutoScaleError(f"ONNX export / the onnxruntime engine need the optional packages onnx and onnxruntime: "
                             f"pip install autoscale[onnx] (missing: {module})") from None


class OrtCounter(nn.Module):
    """A counter (the interface :class:`autoscale.pipeline.AutoScale` calls) that runs in onnxruntime.

    ``forward(image, return_features=False)`` takes the normalised float32 ``(1, 3, H, W)`` tensor
    (any H, W: dynamic axes) and returns an :class:`autoscale.models.fpn.FPNOutput` with ``final``
    (and ``features`` when asked; ``side`` empty) as float32 CPU tensors. The map-only graph serves
    the zoomed second pass; the graph with the L2S feature serves the first pass.
    """

    def __init__(self, map_session: Any, features_session: Any | None = None):
        super().__init__()
        self._map = map_session
        self._feat = features_session

    @classmethod
    def from_counter(cls, counter: nn.Module, *, features: bool = True, threads: int | None = None) -> "OrtCounter":
        """Export ``counter`` (fp32, dynamic H, W, opset 17) to a temporary folder, load the graphs
        into onnxruntime sessions (``threads``: intra-op threads, default torch's) and delete the files."""
        import tempfile

        ort = _require("onnxruntime")
        _require("onnx")
        module = counter.float().eval()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        sessions = []
        with tempfile.TemporaryDirectory(prefix="autoscale-onnx-") as tmp:
            wrappers = [("map", FinalMap(module), ["map"])]
            if features:
                wrappers.append(("features", MapAndFeatures(module), ["map", "features"]))
            for name, wrapper, outputs in wrappers:
                path = Path(tmp) / f"{name}.onnx"
                _export(wrapper, path, outputs)
                sessions.append(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]))
        return cls(sessions[0], sessions[1] if features else None)

    def forward(self, image: torch.Tensor, return_features: bool = False) -> Any:
        from autoscale.models.fpn import FPNOutput

        x = image.detach().float().contiguous().cpu().numpy()
        if return_features:
            if self._feat is None:
                raise AutoScaleError("this onnxruntime counter was made without the L2S feature output")
            final, feats = self._feat.run(None, {"image": x})
            return FPNOutput(torch.from_numpy(final), [], torch.from_numpy(feats))
        return FPNOutput(torch.from_numpy(self._map.run(None, {"image": x})[0]), [], None)


def _export(module: nn.Module, path: Path, outputs: list[str], opset: int = 17, size: tuple[int, int] = (64, 96)) -> None:
    """TorchScript-based ONNX export of ``module`` (input ``image``) with dynamic H, W axes."""
    x = torch.zeros(1, 3, *size)
    axes = {"image": {2: "height", 3: "width"}, **{o: {2: "height", 3: "width"} for o in outputs}}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=opset, input_names=["image"],
                              output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - exporter failures come in many types
        raise AutoScaleError(f"ONNX export failed ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]})") from None


def _fpn_from(obj: Any) -> tuple[nn.Module, str, tuple[Any, Any]]:
    """``(fpn, variant, (mean, std))`` of a checkpoint, an :class:`AutoScale` or an FPN module."""
    from autoscale.pipeline import AutoScale
    from autoscale.predict import load_autoscale

    if not isinstance(obj, AutoScale) and isinstance(obj, nn.Module):
        variant = "localization" if getattr(obj, "num_classes", 1) > 1 else "regression"
        obj = AutoScale(obj, None, PipelineConfig(variant=variant))
    elif not isinstance(obj, AutoScale):
        obj, _ = load_autoscale(obj)
    return obj.counter, obj.config.variant, obj.normalization


def check_onnx(path: str | PathLike[str], module: nn.Module, sizes: list[tuple[int, int]], *, rtol: float = 1e-4,
               atol: float = 1e-5, seed: int = 0) -> list[dict[str, Any]]:
    """Run the ONNX file with onnxruntime and PyTorch on random inputs of each ``(H, W)``.

    Returns per size ``{"size", "max_abs_diff", "ok"}``; raises :class:`AutoScaleError` when the
    outputs differ beyond ``rtol``/``atol`` or a size is rejected by the graph.
    """
    ort = _require("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        x = torch.randn(1, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = module(x).numpy()
        try:
            got = sess.run(None, {name: x.numpy()})[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise AutoScaleError(f"{path}: onnxruntime rejected a {h}x{w} input ({type(exc).__name__}: {exc})") from None
        ok = got.shape == ref.shape and np.allclose(got, ref, rtol=rtol, atol=atol)
        diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        out.append({"size": [h, w], "max_abs_diff": diff, "ok": bool(ok)})
        if not ok:
            raise AutoScaleError(f"{path}: ONNX output differs from PyTorch at {h}x{w} (max abs diff {diff:.3g})")
    return out


def export_onnx(
    checkpoint_or_model: Any,
    out: str | PathLike[str],
    *,
    height: int = 384,
    width: int = 512,
    opset: int = 17,
    dynamic: bool = True,
    check: bool = True,
    check_sizes: list[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Export the single-pass network to ``out`` (ONNX).

    Args:
        checkpoint_or_model: checkpoint path/dict, an :class:`AutoScale` or an FPN module.
        height, width: the example input size used for tracing (pixels).
        dynamic: make H and W dynamic axes.
        check: compare onnxruntime with PyTorch (rtol 1e-4) at the trace size and, when dynamic,
            at a second size (``check_sizes`` overrides).

    Returns:
        ``{"path", "variant", "opset", "dynamic", "input", "output", "checks"}``.
    """
    onnx = _require("onnx")
    if height < 16 or width < 16:
        raise AutoScaleError(f"export size must be at least 16x16 pixels, got {height}x{width}")
    fpn, variant, (mean, std) = _fpn_from(checkpoint_or_model)
    module = FinalMap(fpn).eval().cpu()
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AutoScaleError(f"{path.parent}: cannot create the output directory ({exc.strerror or exc})") from None
    x = torch.zeros(1, 3, height, width)
    axes = {"image": {2: "height", 3: "width"}, "map": {2: "height", 3: "width"}} if dynamic else None
    with atomic_path(path, "ONNX model") as tmp:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["image"],
                                  output_names=["map"], dynamic_axes=axes, do_constant_folding=True)
            proto = onnx.load(str(tmp))
            for key, val in (("normalization_mean", mean), ("normalization_std", std)):
                proto.metadata_props.add(key=key, value=json.dumps([float(v) for v in val]))
            onnx.save(proto, str(tmp))
            onnx.checker.check_model(str(tmp))
            checks: list[dict[str, Any]] = []
            if check:
                sizes = check_sizes or ([(height, width), (height + 24, width - 40 if width > 56 else width + 40)]
                                        if dynamic else [(height, width)])
                checks = check_onnx(tmp, module, sizes)
        except AutoScaleError:
            raise
        except Exception as exc:  # noqa: BLE001 - exporter failures come in many types
            raise AutoScaleError(f"ONNX export failed ({type(exc).__name__}: {exc})") from None
    return {"path": str(path), "variant": variant, "opset": opset, "dynamic": dynamic,
            "input": "image float32 (1, 3, H, W), (rgb / 255 - mean) / std",
            "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
            "output": "map (1, 1, H, W) density" if variant == "regression" else "map (1, K, H, W) class logits",
            "checks": checks}
