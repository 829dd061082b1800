"""Pictures: prediction overlays (OpenCV) and report figures (matplotlib, optional).

* :func:`draw_overlay` blends a colour-mapped map on the image, draws each refined dense region's
  box and the head points with KNN boxes (:func:`autoscale.postprocess.knn_boxes`, as the authors'
  README/LSC-CNN visualisations). Everything is in pixels of the image passed in.
* :func:`scale_histogram_figure` (paper Fig. 10a/b): histogram of the learned scale factors.
* :func:`region_density_figure` (paper Fig. 9): density of the selected dense regions before and
  after scaling, density = people in the region / region area (pixels); after zooming by ``s`` the
  area is ``area * s**2``.

matplotlib is an optional extra (``pip install autoscale[viz]``); :func:`have_matplotlib` says
whether figures can be drawn. The Agg backend is used, so no display is needed.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from autoscale.postprocess import knn_boxes

__all__ = [
    "OVERLAY_ENCODINGS",
    "colorize_map",
    "draw_overlay",
    "encode_picture",
    "have_matplotlib",
    "region_densities",
    "region_density_figure",
    "scale_histogram_figure",
]

REGION_COLOR = (255, 40, 40)  # RGB
POINT_COLOR = (40, 255, 40)
BOX_COLOR = (40, 200, 40)


#: picture file type -> ``cv2.imencode`` parameters: JPEG quality 92, PNG at OpenCV's default
#: (fast) compression. The one table for ``autoscale predict``'s overlay files and the server's
#: overlay answers.
OVERLAY_ENCODINGS: dict[str, list[int]] = {"png": [], "jpg": [cv2.IMWRITE_JPEG_QUALITY, 92]}


def encode_picture(rgb: np.ndarray, fmt: str) -> bytes:
    """``uint8 (H, W, 3)`` RGB encoded as ``fmt`` (a key of :data:`OVERLAY_ENCODINGS`); raises
    ValueError when OpenCV cannot encode it."""
    ok, buf = cv2.imencode(f".{fmt}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), OVERLAY_ENCODINGS[fmt])
    if not ok:  # pragma: no cover - OpenCV fails only on absurd inputs
        raise ValueError(f"{fmt.upper()} encoding failed")
    return buf.tobytes()


def colorize_map(m: np.ndarray, *, variant: str, num_classes: int = 11) -> np.ndarray:
    """``uint8 (H, W, 3)`` RGB JET rendering of a map: density scaled by its maximum (negative
    values as 0); class maps by closeness to a head, ``(K-1 - class) / (K-1)`` (heads red)."""
    a = np.asarray(m)
    # in place on one float32 copy: a 768x1024 map 5.5 -> 1.4 ms against fresh arrays per step
    if variant == "regression":
        v = np.maximum(a, 0, dtype=np.float32)
        mx = float(v.max()) if v.size else 0.0
        if mx > 0:
            v /= mx
        else:
            v[...] = 0
    else:
        k = max(1, num_classes - 1)
        v = np.subtract(k, a, dtype=np.float32)
        v /= k
        np.clip(v, 0, 1, out=v)
    v *= 255
    u8 = np.rint(v, out=v).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def draw_overlay(
    image: np.ndarray,
    m: np.ndarray | None,
    *,
    variant: str,
    regions: Sequence[Mapping[str, float]] = (),
    points: np.ndarray | None = None,
    knn: bool = True,
    alpha: float = 0.45,
    num_classes: int = 11,
) -> np.ndarray:
    """Overlay for one image (all geometry in pixels of ``image``).

    Args:
        image: ``uint8 (H, W, 3)`` RGB.
        m: the predicted map (resized to the image if its shape differs), or None.
        regions: dicts with ``x, y, w, h`` (dense-region boxes, drawn as rectangles).
        points: ``(N, 2)`` ``(x, y)`` heads, drawn as dots, with KNN boxes when ``knn``.
        alpha: weight of the heatmap.

    Returns:
        A new ``uint8 (H, W, 3)`` RGB image.
    """
    img = np.ascontiguousarray(image, dtype=np.uint8)
    H, W = img.shape[:2]
    out = img.copy() if m is None else img  # addWeighted below writes a new image
    if m is not None:
        mm = np.asarray(m)
        if mm.shape != (H, W):
            interp = cv2.INTER_LINEAR if variant == "regression" else cv2.INTER_NEAREST
            mm = cv2.resize(mm, (W, H), interpolation=interp)
        out = cv2.addWeighted(img, 1.0 - alpha, colorize_map(mm, variant=variant, num_classes=num_classes), alpha, 0)
    thick = max(1, round(min(H, W) / 300))
    for r in regions:
        x1, y1 = int(round(r["x"])), int(round(r["y"]))
        x2, y2 = int(round(r["x"] + r["w"])) - 1, int(round(r["y"] + r["h"])) - 1
        cv2.rectangle(out, (x1, y1), (x2, y2), REGION_COLOR, thick + 1)
    if points is not None and len(points):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if knn:
            for x1, y1, x2, y2 in knn_boxes(pts, (H, W), clip=True):
                cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), BOX_COLOR, 1)
        rad = max(1, thick + 1)
        for x, y in pts:
            cv2.circle(out, (int(x), int(y)), rad, POINT_COLOR, -1)
    return out


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def region_densities(people: Sequence[float], areas: Sequence[float], scales: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Fig. 9 densities: ``before = people / area``, ``after = people / (area * s**2)``
    (people per pixel; areas in pixels of the network input)."""
    p = np.asarray(people, dtype=np.float64)
    a = np.asarray(areas, dtype=np.float64)
    s = np.asarray(scales, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return p / a, p / (a * s**2)


def scale_histogram_figure(scales: Sequence[float], path: str | PathLike[str], *, title: str = "learned scale factors",
                           bins: int = 20) -> Path:
    """Fig. 10(a/b): histogram of scale factors, saved as PNG at ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    s = np.asarray(scales, dtype=np.float64)
    ax.hist(s[np.isfinite(s)], bins=bins, color="#3b75af", edgecolor="white")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("scale factor")
    ax.set_ylabel("regions")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def region_density_figure(before: Sequence[float], after: Sequence[float], path: str | PathLike[str], *,
                          title: str = "dense-region density before / after scaling") -> Path:
    """Fig. 9: per-region density (people per pixel) before and after L2S scaling, regions sorted
    by their original density; saved as PNG."""
    plt = _pyplot()
    b = np.asarray(before, dtype=np.float64)
    a = np.asarray(after, dtype=np.float64)
    order = np.argsort(b)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    idx = np.arange(len(b))
    ax.scatter(idx, b[order], s=8, label="original region", color="#d9534f")
    ax.scatter(idx, a[order], s=8, label="rescaled region", color="#3b75af")
    ax.set_xlabel("region (sorted by original density)")
    ax.set_ylabel("people / pixel")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
