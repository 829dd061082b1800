"""Built-in synthetic crowds: procedural scenes with long-tailed local density.

The demo and the tests must run on a fresh machine with no dataset download, so autoscale draws
its own crowds. The scenes are built for what AutoScale is about: a few very dense clusters of
small, partially overlapping heads far from the camera, many sparse areas, and round head-like
distractors that must not be counted.

Scene model (all sizes in pixels of the generated image):

* a ground plane seen in perspective below a horizon row ``h``; a head whose centre is at row
  ``y`` has radius ``r(y) = slope * (y - h)`` (times a small per-person jitter), so heads grow
  linearly with the distance below the horizon and become smaller and denser towards it. No head
  is placed where ``r(y)`` would be below ``min_head_radius``;
* clustered crowds: cluster sizes from a Pareto law (a few large clusters, many small ones), the
  largest clusters packed the tightest, plus scattered individuals. A cluster is an anisotropic
  Gaussian whose spread (px) scales with the local head size, and all heads obey a
  Poisson-disc-like minimum spacing ``min_spacing * (r_i + r_j) / 2`` so heads overlap partially
  but stay distinguishable;
* people are drawn as a head (skin circle with a hair cap, sometimes a hat or a back view) over
  head-and-shoulder ellipses in clothing colours, painted far to near (increasing ``y``) so nearer
  people occlude farther ones;
* backgrounds: sky gradient (and building silhouettes) above the horizon, smooth multi-octave
  noise and pavement lines in perspective on the ground; optional Gaussian blur and pixel noise;
* distractors: balls and lamp globes with head-like colours and sizes but no shoulders; they keep
  clear of every person and are never annotated.

Annotations follow docs/architecture.md: a head centre is a continuous ``(x, y)`` in pixels
(pixel column ``c`` covers ``[c, c + 1)``); only people whose head centre lies inside the image
(``0 <= x < W``, ``0 <= y < H``) are annotated. A head box is ``(x1, y1, x2, y2)`` around the head
circle, clipped to ``[0, W] x [0, H]``.

Image ``i`` of a dataset is drawn from ``numpy.random.default_rng(SeedSequence(seed,
spawn_key=(i,)))``, so it is identical whatever ``n`` is and however many workers are used.
"""
from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
from scipy.spatial import cKDTree

from autoscale.data.formats import write_generic_annotation, write_generic_list
from autoscale.errors import ConfigError, DataError
from autoscale.io import atomic_write_text

GENERATOR_NAME = "autoscale.synth"
GENERATOR_VERSION = 1
REFERENCE_SIZE = (384, 512)
DEFAULT_SPLITS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
_NAME_RE = re.compile(r"^synth_\d+\.(png|json)$")

# cv2 draws with integer coordinates scaled by 2**_SHIFT (sub-pixel accuracy).
_SHIFT = 4
_ONE = 1 << _SHIFT

# RGB palettes (uint8 values); per-person colours are jittered around them.
_SKIN = np.array(
    [[255, 224, 196], [241, 194, 125], [224, 172, 105], [198, 134, 66], [141, 85, 36], [92, 58, 38]],
    dtype=np.float64,
)
_HAIR = np.array(
    [[28, 24, 20], [58, 40, 26], [105, 72, 40], [196, 166, 98], [158, 156, 150], [140, 66, 30]],
    dtype=np.float64,
)
_HAIR_P = np.array([0.34, 0.26, 0.16, 0.1, 0.08, 0.06])
_GROUND = np.array(
    [[118, 118, 122], [165, 152, 128], [150, 96, 80], [96, 122, 84], [190, 184, 170], [84, 86, 92]],
    dtype=np.float64,
)


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic crowd generator.

    Sizes are in pixels of the generated image unless named ``*_frac`` (fraction of the image
    height) or given in head radii.

    Attributes:
        size: image size ``(H, W)``.
        count_range: range of the target number of people per image (sampled log-uniformly);
            the annotated count is somewhat lower because heads outside the image are not
            annotated and the minimum spacing rejects some candidates.
        horizon_frac: range of the horizon row as a fraction of ``H``.
        bottom_head_radius_frac: range of the head radius at the bottom row, as a fraction of ``H``.
        min_head_radius: smallest head radius drawn (px); rows nearer the horizon stay empty.
        head_radius_jitter: relative per-person radius jitter (uniform ``1 +- jitter``).
        cluster_range: range of the number of clusters per image.
        cluster_pareto_alpha: Pareto shape of the cluster-size weights (smaller = heavier tail).
        scattered_frac: range of the fraction of people scattered outside clusters.
        cluster_spacing: range of the typical neighbour spacing inside clusters, in head radii;
            the largest cluster gets the low end (densest).
        cluster_aspect: range of cluster aspect ratios (minor/major axis).
        min_spacing: minimum centre distance between two heads, in units of their mean radius.
        placement_rounds: dart-throwing rounds that re-draw what the spacing rejected.
        distractor_range: range of the number of head-like distractors (balls, lamp globes).
        blur_prob, blur_sigma: probability and sigma range (px) of a final Gaussian blur.
        noise_prob, noise_sigma: probability and sigma range (grey levels) of additive noise.
        pavement_prob: probability of pavement lines on the ground.
        building_prob: probability of building silhouettes above the horizon.
    """

    size: tuple[int, int] = REFERENCE_SIZE
    count_range: tuple[int, int] = (20, 400)
    horizon_frac: tuple[float, float] = (0.12, 0.32)
    bottom_head_radius_frac: tuple[float, float] = (0.022, 0.04)
    min_head_radius: float = 2.0
    head_radius_jitter: float = 0.08
    cluster_range: tuple[int, int] = (2, 9)
    cluster_pareto_alpha: float = 1.0
    scattered_frac: tuple[float, float] = (0.08, 0.25)
    cluster_spacing: tuple[float, float] = (1.7, 5.0)
    cluster_aspect: tuple[float, float] = (0.45, 1.0)
    min_spacing: float = 1.45
    placement_rounds: int = 4
    distractor_range: tuple[int, int] = (2, 10)
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.4, 0.9)
    noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (2.0, 6.0)
    pavement_prob: float = 0.7
    building_prob: float = 0.5

    def __post_init__(self) -> None:
        h, w = self.size
        if int(h) != h or int(w) != w or h < 32 or w < 32:
            raise ConfigError(f"synth size must be two integers >= 32 (H, W), got {self.size!r}")
        for name in ("count_range", "horizon_frac", "bottom_head_radius_frac", "cluster_range",
                     "scattered_frac", "cluster_spacing", "cluster_aspect", "distractor_range",
                     "blur_sigma", "noise_sigma"):
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi):
                raise ConfigError(f"synth {name} must be a range 0 <= low <= high, got {(lo, hi)!r}")
        if self.count_range[0] < 1:
            raise ConfigError(f"synth count_range must start at >= 1, got {self.count_range!r}")
        if self.cluster_range[0] < 1:
            raise ConfigError(f"synth cluster_range must start at >= 1, got {self.cluster_range!r}")
        if not self.horizon_frac[1] < 0.8:
            raise ConfigError(f"synth horizon_frac must stay below 0.8, got {self.horizon_frac!r}")
        if self.min_head_radius <= 0 or self.min_spacing <= 0 or self.cluster_pareto_alpha <= 0:
            raise ConfigError("synth min_head_radius, min_spacing and cluster_pareto_alpha must be > 0")

    @classmethod
    def for_size(cls, size: tuple[int, int], **overrides: Any) -> "SynthConfig":
        """Defaults for ``size = (H, W)``, with people and distractor counts scaled by image area
        relative to the 384x512 reference (so density stays comparable)."""
        k = (size[0] * size[1]) / (REFERENCE_SIZE[0] * REFERENCE_SIZE[1])
        base = cls()
        scaled = {
            "size": (int(size[0]), int(size[1])),
            "count_range": tuple(max(1, round(v * k)) for v in base.count_range),
            "distractor_range": tuple(max(0, round(v * k)) for v in base.distractor_range),
        }
        scaled.update(overrides)
        return cls(**scaled)


# ---------------------------------------------------------------------------------------------
# layout


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)


def _greedy_min_spacing(xy: np.ndarray, r: np.ndarray, factor: float, order: np.ndarray) -> np.ndarray:
    """Indices kept by greedy dart throwing in ``order``: a candidate is kept unless a kept one
    lies closer than ``factor * (r_i + r_j) / 2``. Returns kept indices in ``order`` order."""
    n = len(xy)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pairs = cKDTree(xy).query_pairs(float(factor * r.max()), output_type="ndarray")
    if len(pairs):
        d = np.linalg.norm(xy[pairs[:, 0]] - xy[pairs[:, 1]], axis=1)
        pairs = pairs[d < factor * 0.5 * (r[pairs[:, 0]] + r[pairs[:, 1]])]
    # symmetric CSR adjacency
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    srt = np.argsort(src, kind="stable")
    dst = dst[srt]
    start = np.searchsorted(src[srt], np.arange(n + 1))
    blocked = np.zeros(n, dtype=bool)
    kept = []
    for i in order.tolist():
        if not blocked[i]:
            kept.append(i)
            blocked[dst[start[i]:start[i + 1]]] = True
    return np.asarray(kept, dtype=np.int64)


def _layout(cfg: SynthConfig, rng: np.random.Generator) -> dict[str, Any]:
    """Head positions and radii of every person drawn (also those outside the image)."""
    H, W = cfg.size
    horizon = rng.uniform(*cfg.horizon_frac) * H
    r_bottom = max(rng.uniform(*cfg.bottom_head_radius_frac) * H, 2.0 * cfg.min_head_radius)
    slope = r_bottom / (H - horizon)
    y_top = horizon + cfg.min_head_radius / slope  # first row where a head is big enough
    y_bot = H + 0.6 * r_bottom  # heads slightly below the frame are drawn (partly visible)

    target = int(round(_loguniform(rng, max(cfg.count_range[0], 1), max(cfg.count_range[1], 1))))
    n_clusters = int(rng.integers(cfg.cluster_range[0], cfg.cluster_range[1] + 1))
    n_scatter = int(round(target * rng.uniform(*cfg.scattered_frac)))
    weights = rng.pareto(cfg.cluster_pareto_alpha, n_clusters) + 1.0
    sizes = np.sort(rng.multinomial(target - n_scatter, weights / weights.sum()))[::-1]
    spacings = np.sort(rng.uniform(np.log(cfg.cluster_spacing[0]), np.log(cfg.cluster_spacing[1]),
                                   n_clusters))
    spacings = np.exp(spacings)  # largest cluster -> smallest spacing (densest)

    shapes = []  # per cluster: centre, axis sigmas (px), rotation
    centres = []
    for k in range(n_clusters):
        # cluster centres are uniform over the ground area that can hold heads
        cx, cy = rng.uniform(0, W), rng.uniform(y_top, H)
        r0 = slope * (cy - horizon)
        # Gaussian peak density n / (2 pi sx sy) = 1 / (spacing * r0)^2
        area = max(int(sizes[k]), 1) * (spacings[k] * r0) ** 2 / (2 * np.pi)
        aspect = rng.uniform(*cfg.cluster_aspect)
        theta = rng.uniform(-0.3, 0.3) * np.pi  # mostly horizontal (ground foreshortening)
        shapes.append((cx, cy, np.sqrt(area / aspect), np.sqrt(area * aspect), np.cos(theta), np.sin(theta)))
        centres.append([float(cx), float(cy), int(sizes[k]), float(spacings[k])])

    # Dart throwing in rounds: a dense Gaussian core saturates under the minimum spacing, so
    # each round re-draws the clusters' (and the scattered people's) deficits; the surplus
    # spreads into the cluster's outskirts, giving a packed core with a fading rim.
    need = np.append(sizes, n_scatter).astype(np.int64)  # last entry: scattered individuals
    ax = np.zeros(0)
    ay = np.zeros(0)
    ar = np.zeros(0)
    acid = np.zeros(0, dtype=np.int64)
    for _ in range(cfg.placement_rounds):
        if need.sum() == 0:
            break
        xs, ys, cs = [], [], []
        for k in np.flatnonzero(need[:-1]):
            cx, cy, sx, sy, c, s = shapes[k]
            u = rng.standard_normal((int(np.ceil(need[k] * 1.5)) + 1, 2)) * (sx, sy)
            xs.append(cx + c * u[:, 0] - s * u[:, 1])
            ys.append(cy + s * u[:, 0] + c * u[:, 1])
            cs.append(np.full(len(u), k))
        m = int(np.ceil(need[-1] * 1.2)) + (need[-1] > 0)
        xs.append(rng.uniform(-0.5 * r_bottom, W + 0.5 * r_bottom, m))
        ys.append(rng.uniform(y_top, y_bot, m))
        cs.append(np.full(m, -1))
        x, y, cid = np.concatenate(xs), np.concatenate(ys), np.concatenate(cs)
        r = slope * np.maximum(y - horizon, 0) * rng.uniform(
            1 - cfg.head_radius_jitter, 1 + cfg.head_radius_jitter, len(x))
        ok = (y >= y_top) & (y < y_bot) & (x > -r_bottom) & (x < W + r_bottom)
        x, y, r, cid = x[ok], y[ok], r[ok], cid[ok]
        n_old = len(ax)
        # people already placed go first (they are compatible), then new darts in random order
        order = np.concatenate([np.arange(n_old), n_old + rng.permutation(len(x))])
        kept = _greedy_min_spacing(np.stack([np.append(ax, x), np.append(ay, y)], 1),
                                   np.append(ar, r), cfg.min_spacing, order)
        new = kept[kept >= n_old] - n_old
        # keep at most the deficit of each group, in dart order
        grp = np.where(cid[new] < 0, len(need) - 1, cid[new])
        rank = np.zeros(len(new), dtype=np.int64)
        for g in np.unique(grp):
            sel = np.flatnonzero(grp == g)
            rank[sel] = np.arange(len(sel))
        new = new[rank < need[grp]]
        need -= np.bincount(np.where(cid[new] < 0, len(need) - 1, cid[new]), minlength=len(need))
        ax, ay, ar = np.append(ax, x[new]), np.append(ay, y[new]), np.append(ar, r[new])
        acid = np.append(acid, cid[new])
    return {
        "horizon": float(horizon), "slope": float(slope), "y_top": float(y_top),
        "r_bottom": float(r_bottom), "x": ax, "y": ay, "r": ar,
        "cluster": acid, "clusters": centres, "target": target,
    }


def _distractors(cfg: SynthConfig, rng: np.random.Generator, lay: dict[str, Any]) -> dict[str, np.ndarray]:
    """Head-like blobs (balls, lamp globes) kept clear of every person and of each other."""
    H, W = cfg.size
    n = int(rng.integers(cfg.distractor_range[0], cfg.distractor_range[1] + 1))
    m = 4 * n + 4
    x = rng.uniform(0, W, m)
    y = rng.uniform(lay["y_top"], H, m)
    r = lay["slope"] * (y - lay["horizon"]) * rng.uniform(0.6, 1.15, m)
    kind = rng.integers(0, 2, m)  # 0 ball, 1 lamp
    colour_src = rng.integers(0, 3, m)  # 0 skin-like, 1 hair-like, 2 light
    colours = np.where(
        (colour_src == 0)[:, None], _SKIN[rng.integers(0, len(_SKIN), m)],
        np.where((colour_src == 1)[:, None], _HAIR[rng.integers(0, len(_HAIR), m)],
                 rng.uniform(200, 255, (m, 3))),
    ) + rng.uniform(-12, 12, (m, 3))
    ok = np.ones(m, dtype=bool)
    if len(lay["x"]):
        # clear of people: no overlap with any head (sizes differ by at most ~2x here)
        d, j = cKDTree(np.stack([lay["x"], lay["y"]], 1)).query(np.stack([x, y], 1))
        ok &= d > 1.5 * (r + lay["r"][j]) + 1.0
    cand = np.flatnonzero(ok)
    keep = cand[_greedy_min_spacing(np.stack([x[cand], y[cand]], 1), r[cand] + 1.0, 2.5,
                                    np.arange(len(cand)))][:n]
    keep = np.sort(keep)
    return {"x": x[keep], "y": y[keep], "r": r[keep], "kind": kind[keep],
            "colour": np.clip(colours[keep], 0, 255)}


def _appearance(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    skin = _SKIN[rng.integers(0, len(_SKIN), n)] + rng.uniform(-12, 12, (n, 3))
    hair = _HAIR[rng.choice(len(_HAIR), n, p=_HAIR_P)] + rng.uniform(-10, 10, (n, 3))
    # clothing: random hue, mostly muted; converted from HSV with OpenCV (H in [0, 180))
    hsv = np.stack([rng.uniform(0, 180, n), rng.uniform(20, 230, n), rng.uniform(40, 235, n)], 1)
    cloth = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0].astype(np.float64)
    hat = rng.uniform(0, 255, (n, 3))
    style = rng.choice(3, n, p=[0.62, 0.28, 0.10])  # 0 face + hair cap, 1 back view, 2 hat
    return {"skin": np.clip(skin, 0, 255), "hair": np.clip(hair, 0, 255), "cloth": cloth,
            "hat": hat, "style": style}


# ---------------------------------------------------------------------------------------------
# rendering


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Smooth zero-mean noise of unit-ish amplitude: coarse Gaussian grid, cubic upsampling."""
    H, W = shape
    g = rng.standard_normal((H // cell + 3, W // cell + 3)).astype(np.float32)
    big = cv2.resize(g, ((W // cell + 3) * cell, (H // cell + 3) * cell), interpolation=cv2.INTER_CUBIC)
    oy, ox = cell, cell
    return big[oy:oy + H, ox:ox + W]


def _background(cfg: SynthConfig, rng: np.random.Generator, horizon: float, slope: float) -> np.ndarray:
    H, W = cfg.size
    hz = int(round(horizon))
    ground = _GROUND[rng.integers(0, len(_GROUND))] + rng.uniform(-15, 15, 3)
    tex = (rng.uniform(6, 16) * _smooth_noise(rng, (H, W), 32)
           + rng.uniform(3, 8) * _smooth_noise(rng, (H, W), 6)
           + rng.uniform(1, 4) * _smooth_noise(rng, (H, W), 2))
    rows = np.arange(H, dtype=np.float32)
    # ground is a little hazier/brighter towards the horizon
    haze = np.clip(1.0 - (rows - horizon) / max(H - horizon, 1.0), 0, 1)[:, None, None] * rng.uniform(0, 25)
    img = ground[None, None, :].astype(np.float32) + tex[:, :, None] + haze
    # sky: vertical gradient from zenith colour to a pale horizon colour
    top = np.array([rng.uniform(60, 140), rng.uniform(110, 170), rng.uniform(180, 240)])
    bottom = np.array([rng.uniform(190, 235)] * 3) + rng.uniform(-10, 10, 3)
    t = (rows[:hz] / max(hz, 1))[:, None, None]
    img[:hz] = top * (1 - t) + bottom * t + 0.3 * tex[:hz, :, None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    if hz > 4 and rng.uniform() < cfg.building_prob:
        x = 0.0
        while x < W:
            w = rng.uniform(0.06, 0.2) * W
            top_row = hz - rng.uniform(0.2, 1.0) * hz
            col = tuple(float(v) for v in rng.uniform(70, 190) + rng.uniform(-20, 20, 3))
            cv2.rectangle(img, (int(x), int(top_row)), (int(x + w), hz), col, -1)
            x += w + rng.uniform(0, 0.08) * W
    if rng.uniform() < cfg.pavement_prob:
        line = tuple(float(v) for v in np.clip(ground * rng.uniform(0.55, 0.8), 0, 255))
        vx = rng.uniform(0.2, 0.8) * W  # vanishing point on the horizon
        step = rng.uniform(2.5, 7.0) * slope * (H - horizon)  # spacing at the bottom row (px)
        k = np.arange(-int(W / step) - 2, int(W / step) + 3)
        bx = vx + k * step  # bottom-row crossings of lines through the vanishing point
        # start the lines where neighbours are >= 3 px apart (no solid fan at the vanishing point)
        t0 = min(1.0, 3.0 / step)
        for b in bx:
            start = (vx + t0 * (b - vx), horizon + t0 * (H - 1 - horizon))
            cv2.line(img, (int(start[0] * _ONE), int(start[1] * _ONE)), (int(b * _ONE), (H - 1) * _ONE),
                     line, 1, cv2.LINE_AA, _SHIFT)
        # transverse lines equally spaced in depth: y - h = c / z
        z0 = 1.0
        dz = rng.uniform(0.15, 0.6)
        z = z0 + dz * np.arange(0, 200)
        yy = horizon + (H - horizon) * z0 / z
        yy = yy[np.append(np.abs(np.diff(yy)) >= 3.0, False)]  # drop lines denser than 3 px
        for yv in yy:
            cv2.line(img, (0, int(yv * _ONE)), ((W - 1) * _ONE, int(yv * _ONE)), line, 1,
                     cv2.LINE_AA, _SHIFT)
    return img


def _pt(x: float, y: float) -> tuple[int, int]:
    # continuous (x, y) -> cv2 fixed-point; cv2 puts pixel (c, r)'s centre at integer (c, r)
    return int(round((x - 0.5) * _ONE)), int(round((y - 0.5) * _ONE))


def _ax(a: float, b: float) -> tuple[int, int]:
    return max(1, int(round(a * _ONE))), max(1, int(round(b * _ONE)))


def _col(c: np.ndarray) -> tuple[float, float, float]:
    return float(c[0]), float(c[1]), float(c[2])


def _draw_person(img: np.ndarray, x: float, y: float, r: float, app: dict[str, np.ndarray], i: int) -> None:
    aa = cv2.LINE_AA
    cloth = app["cloth"][i]
    body = _col(cloth * 0.8)
    # torso then shoulders (ellipses below the head), then the head on top
    cv2.ellipse(img, _pt(x, y + 3.7 * r), _ax(1.55 * r, 2.3 * r), 0, 0, 360, body, -1, aa, _SHIFT)
    cv2.ellipse(img, _pt(x, y + 1.9 * r), _ax(1.95 * r, 1.05 * r), 0, 0, 360, _col(cloth), -1, aa, _SHIFT)
    style = app["style"][i]
    if style == 1:  # back view: all hair
        cv2.circle(img, _pt(x, y), int(round(r * _ONE)), _col(app["hair"][i]), -1, aa, _SHIFT)
    else:
        cv2.circle(img, _pt(x, y), int(round(r * _ONE)), _col(app["skin"][i]), -1, aa, _SHIFT)
        cap = app["hair"][i] if style == 0 else app["hat"][i]
        cv2.ellipse(img, _pt(x, y - 0.12 * r), _ax(r * 1.02, r * 0.9), 0, 180, 360, _col(cap), -1, aa, _SHIFT)
    if r >= 3.5:  # a darker rim keeps overlapping heads separable
        rim = _col((app["hair"][i] if style == 1 else app["skin"][i]) * 0.55)
        cv2.circle(img, _pt(x, y), int(round(r * _ONE)), rim, 1, aa, _SHIFT)


def _draw_distractor(img: np.ndarray, x: float, y: float, r: float, kind: int, colour: np.ndarray) -> None:
    aa = cv2.LINE_AA
    if kind == 1:  # lamp: thin pole below a round globe
        pole = (60.0, 60.0, 64.0)
        cv2.line(img, _pt(x, y + r), _pt(x, y + 7 * r), pole, max(1, int(round(0.3 * r))), aa, _SHIFT)
    cv2.circle(img, _pt(x, y), int(round(r * _ONE)), _col(colour), -1, aa, _SHIFT)
    if r >= 3:  # specular highlight of a ball / glass globe
        cv2.circle(img, _pt(x - 0.35 * r, y - 0.35 * r), int(round(0.25 * r * _ONE)),
                   _col(np.minimum(colour * 1.3 + 30, 255)), -1, aa, _SHIFT)


def generate_scene(
    cfg: SynthConfig,
    rng: np.random.Generator,
    *,
    draw_people: bool = True,
    draw_distractors: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Draw one synthetic crowd scene.

    Args:
        cfg: generator parameters (``cfg.size = (H, W)``).
        rng: the random source; the scene is a deterministic function of its state.
        draw_people, draw_distractors: leave people / distractors out of the *picture* (for
            diagnostics and tests); the random draws, annotations and meta are unchanged.

    Returns:
        ``(image, points, boxes, meta)``: ``image`` uint8 ``(H, W, 3)`` RGB; ``points`` float64
        ``(N, 2)`` head centres ``(x, y)`` in continuous pixel coordinates, all inside the image,
        sorted by ``y`` (drawing order); ``boxes`` float64 ``(N, 4)`` ``(x1, y1, x2, y2)`` around
        each head circle, clipped to ``[0, W] x [0, H]``; ``meta`` a JSON-serialisable dict
        (``horizon`` row, ``head_radius_slope``, ``radii`` of the annotated heads in px,
        ``clusters`` as ``[cx, cy, target size, spacing in head radii]``, ``distractors`` as
        ``[x, y, r]``, ``blur_sigma``, ``noise_sigma``, ...).
    """
    H, W = cfg.size
    lay = _layout(cfg, rng)
    dis = _distractors(cfg, rng, lay)
    app = _appearance(rng, len(lay["x"]))
    blur = float(rng.uniform(*cfg.blur_sigma)) if rng.uniform() < cfg.blur_prob else 0.0
    noise = float(rng.uniform(*cfg.noise_sigma)) if rng.uniform() < cfg.noise_prob else 0.0
    noise_rng = np.random.default_rng(rng.integers(0, 2**63))
    img = _background(cfg, rng, lay["horizon"], lay["slope"])

    # round positions to what the annotation file stores, so drawing and labels agree exactly
    px = np.round(lay["x"], 3)
    py = np.round(lay["y"], 3)
    pr = lay["r"]
    # one occlusion order for people and distractors: far to near (increasing y)
    items = [(float(py[i]), 0, i) for i in range(len(px))]
    items += [(float(dis["y"][j]), 1, j) for j in range(len(dis["x"]))]
    items.sort()
    for _, what, i in items:
        if what == 0 and draw_people:
            _draw_person(img, float(px[i]), float(py[i]), float(pr[i]), app, i)
        elif what == 1 and draw_distractors:
            _draw_distractor(img, float(dis["x"][i]), float(dis["y"][i]), float(dis["r"][i]),
                             int(dis["kind"][i]), dis["colour"][i])
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    if noise > 0:
        n = noise_rng.standard_normal(img.shape, dtype=np.float32) * noise
        img = np.clip(img.astype(np.float32) + n, 0, 255).astype(np.uint8)

    inside = (px >= 0) & (px < W) & (py >= 0) & (py < H)
    order = np.argsort(py[inside], kind="stable")
    pts = np.stack([px[inside], py[inside]], 1)[order]
    rad = pr[inside][order]
    boxes = np.stack([
        np.clip(pts[:, 0] - rad, 0, W), np.clip(pts[:, 1] - rad, 0, H),
        np.clip(pts[:, 0] + rad, 0, W), np.clip(pts[:, 1] + rad, 0, H),
    ], 1).round(3)
    meta = {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "size": [H, W],
        "horizon": round(lay["horizon"], 3),
        "head_radius_slope": round(lay["slope"], 6),
        "min_head_row": round(lay["y_top"], 3),
        "count": int(len(pts)),
        "people_drawn": int(len(px)),
        "target_count": int(lay["target"]),
        "n_clusters": len(lay["clusters"]),
        "clusters": [[round(a, 2), round(b, 2), int(c), round(d, 3)] for a, b, c, d in lay["clusters"]],
        "radii": [round(float(v), 3) for v in rad],
        "distractors": [[round(float(a), 3), round(float(b), 3), round(float(c), 3)]
                        for a, b, c in zip(dis["x"], dis["y"], dis["r"])],
        "distractor_kinds": ["lamp" if k else "ball" for k in dis["kind"].tolist()],
        "blur_sigma": round(blur, 4),
        "noise_sigma": round(noise, 4),
    }
    return img, pts, boxes, meta


# ---------------------------------------------------------------------------------------------
# dataset


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The random source of image ``index`` of a dataset with ``seed`` (independent of ``n``)."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def split_counts(n: int, splits: Mapping[str, float]) -> dict[str, int]:
    """Images per split: fractions normalised to sum 1, largest-remainder rounding (sums to ``n``).

    Images are assigned in index order: the first ``counts[first split]`` images go to the first
    split, and so on.
    """
    if not splits:
        raise ConfigError("synth splits: at least one split is needed")
    frac = np.array([float(v) for v in splits.values()])
    if (frac < 0).any() or frac.sum() <= 0:
        raise ConfigError(f"synth splits: fractions must be >= 0 with a positive sum, got {dict(splits)}")
    exact = frac / frac.sum() * n
    counts = np.floor(exact).astype(int)
    rest = n - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:rest]] += 1
    return dict(zip(splits.keys(), counts.tolist()))


def _render_one(job: tuple[str, SynthConfig, int, int]) -> dict[str, Any]:
    out, cfg, seed, i = job
    root = Path(out)
    img, pts, boxes, meta = generate_scene(cfg, image_rng(seed, i))
    meta = {"seed": int(seed), "index": int(i), **meta}
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover - cv2 failure
        raise DataError(root / "images" / f"synth_{i:04d}.png", "PNG encoding failed")
    (root / "images" / f"synth_{i:04d}.png").write_bytes(buf.tobytes())
    write_generic_annotation(root / "annotations" / f"synth_{i:04d}.json", pts, boxes, meta)
    return {"index": i, "count": int(len(pts)), "distractors": len(meta["distractors"])}


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty directory that is not a previous synth output (unless ``overwrite``);
    remove stale ``synth_*`` files of a previous synth output."""
    if out.exists() and not out.is_dir():
        raise DataError(out, "output path exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        previous = False
        ds = out / "dataset.json"
        if ds.is_file():
            try:
                previous = json.loads(ds.read_text()).get("generator") == GENERATOR_NAME
            except (OSError, ValueError, AttributeError):
                previous = False
        if not previous and not overwrite:
            raise DataError(out, "output directory is not empty and is not a previous `autoscale data "
                                 "synth` output; choose an empty directory or pass --overwrite")
        if previous:
            for sub in ("images", "annotations"):
                d = out / sub
                if d.is_dir():
                    for f in d.iterdir():
                        if f.is_file() and _NAME_RE.match(f.name):
                            f.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)


def generate_dataset(
    out: str | os.PathLike[str],
    n: int = 200,
    size: tuple[int, int] = REFERENCE_SIZE,
    seed: int = 0,
    splits: Mapping[str, float] | None = None,
    workers: int = 1,
    config: SynthConfig | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``n`` synthetic images in the generic format under ``out``.

    Layout: ``out/images/synth_0000.png`` (RGB PNG), ``out/annotations/synth_0000.json``,
    ``out/<split>.txt`` (lines ``images/synth_0000.png annotations/synth_0000.json``) and
    ``out/dataset.json`` (generator parameters, split counts, count statistics).

    Args:
        out: output directory; must be empty, missing, or a previous synth output (whose stale
            ``synth_*`` files are removed) unless ``overwrite``.
        n: number of images.
        size: ``(H, W)`` in pixels; ignored when ``config`` is given (``config.size`` is used).
        seed: dataset seed; image ``i`` uses :func:`image_rng` ``(seed, i)``.
        splits: ``{name: fraction}`` (default train 0.7 / val 0.1 / test 0.2), see :func:`split_counts`.
        workers: processes used for drawing and encoding.
        config: generator parameters; default :meth:`SynthConfig.for_size` ``(size)``.
        overwrite: write into a non-empty foreign directory (existing files are left alone
            except those we rewrite).

    Returns:
        The summary also stored in ``dataset.json`` (plus ``seconds``).
    """
    if int(n) < 1:
        raise ConfigError(f"synth n must be >= 1, got {n}")
    cfg = config if config is not None else SynthConfig.for_size(tuple(size))
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    for name in splits:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name == "dataset":
            raise ConfigError(f"synth splits: bad split name {name!r}")
    counts = split_counts(int(n), splits)
    root = Path(out)
    _prepare_out(root, overwrite)
    t0 = time.perf_counter()
    jobs = [(str(root), cfg, int(seed), i) for i in range(int(n))]
    if workers > 1 and n > 1:
        with ProcessPoolExecutor(max_workers=int(workers)) as ex:
            results = list(ex.map(_render_one, jobs, chunksize=max(1, n // (4 * workers))))
    else:
        results = [_render_one(j) for j in jobs]
    seconds = time.perf_counter() - t0

    start = 0
    for name, c in counts.items():
        write_generic_list(root, name, [(f"images/synth_{i:04d}.png", f"annotations/synth_{i:04d}.json")
                                        for i in range(start, start + c)])
        start += c
    cnt = np.array([r["count"] for r in results])
    summary = {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "format": "generic",
        "n": int(n),
        "size": [int(cfg.size[0]), int(cfg.size[1])],
        "seed": int(seed),
        "splits": {k: float(v) for k, v in splits.items()},
        "split_counts": counts,
        "config": asdict(cfg),
        "count_stats": {
            "total": int(cnt.sum()), "min": int(cnt.min()), "max": int(cnt.max()),
            "mean": round(float(cnt.mean()), 2), "median": float(np.median(cnt)),
        },
    }
    atomic_write_text(root / "dataset.json", json.dumps(summary, separators=(",", ":")) + "\n", "dataset summary")
    return {**summary, "seconds": round(seconds, 3)}


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"HxW"`` (e.g. ``384x512``) into ``(H, W)``."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"size must be HxW, e.g. 384x512, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_splits(text: str) -> dict[str, float]:
    """Parse ``"train=0.7,val=0.1,test=0.2"`` into ``{name: fraction}`` (order kept)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, val = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(val)
        except ValueError:
            raise ConfigError(f"splits must look like train=0.7,val=0.1,test=0.2, got {text!r}") from None
    if not out:
        raise ConfigError(f"splits must look like train=0.7,val=0.1,test=0.2, got {text!r}")
    return out


__all__ = [
    "SynthConfig", "generate_scene", "generate_dataset", "image_rng", "split_counts",
    "parse_size", "parse_splits", "DEFAULT_SPLITS",
]
