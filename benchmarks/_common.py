"""Shared machinery of ``bench_synthetic.py`` and ``bench_ablations.py``.

Training follows :mod:`autoscale.demo` (its budget dataclass, sample preparation, epoch loop,
Kaiming init and regression output factor are imported from there): narrow VGG16-FPN from
scratch, Adam with a cosine learning rate over ``epochs`` epochs, batch 1, random horizontal
flips, summed pixel losses. A *trunk* FPN is trained for ``branch_epoch`` epochs; the FPN
baseline continues it to ``epochs``; every AutoScale-type model *branches* off the trunk at
``branch_epoch`` (counter weights and Adam state copied, fresh L2S) and trains the remaining
epochs with the joint loss (Eq. 6 / Eq. 8). All compared models therefore see the same number of
optimiser steps, the same network width and the same learning-rate schedule.

Evaluation is done here (not with :func:`autoscale.engine.evaluate.evaluate`) because the
Table 8 protocol compares *two* models on the *same* regions: per test image we keep the GT,
the predicted count, the first-pass map or points and every refined region, and
:func:`dense_region_errors` scores any model inside another model's regions.

Coordinates: points ``(x, y)`` in pixels of the (un-resized) synthetic images; regions integer
``(x, y, w, h)`` boxes in the same pixels.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from autoscale import targets as T
from autoscale.data.formats import read_dataset
from autoscale.data.image_io import read_image
from autoscale.data.synth import generate_dataset
from autoscale.demo import DemoBudget
from autoscale.models.init import ScaledCounter

try:  # the demo's own training loop, which these scripts' trunk/branch training is built on
    from autoscale.demo import branch_optimizer, load_samples, new_fpn_run, train_epochs
except ImportError:  # gone since the demo trains through autoscale.engine.train (b3e1d6a)
    def _demo_loop_removed(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("benchmarks/_common.py: autoscale.demo no longer has its own training loop "
                           "(train_epochs, load_samples, new_fpn_run, branch_optimizer); this training path "
                           "must be ported to autoscale.engine.train")

    branch_optimizer = load_samples = new_fpn_run = train_epochs = _demo_loop_removed
from autoscale.losses import CenterLoss
from autoscale.metrics import counting_metrics, match_points_multi
from autoscale.models.registry import get_model
from autoscale.models.vgg import normalize
from autoscale.pipeline import AutoScale, PipelineConfig

RESULTS = Path(__file__).resolve().parent / "results"
SIGMAS = (4.0, 8.0)  # localization matching radii (px)

#: Default sizes: 192x256 crowds (5-100 people, long-tailed local density), width 1/4.
FULL = DemoBudget(size=(192, 256), n_train=100, n_test=40, width=0.25, epochs=12, branch_epoch=8)
#: Seconds-long run for the tests.
SMOKE = DemoBudget(size=(64, 80), n_train=5, n_test=3, width=0.0625, epochs=2, branch_epoch=1)


def add_budget_args(ap: Any) -> None:
    """``--smoke`` and overrides of the default budget's fields (recorded in ``command``)."""
    ap.add_argument("--smoke", action="store_true", help="tiny seconds-long run (tests)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the results files")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--n-train", type=int, help=f"train images (default {FULL.n_train})")
    ap.add_argument("--n-test", type=int, help=f"test images (default {FULL.n_test})")
    ap.add_argument("--epochs", type=int, help=f"epochs (default {FULL.epochs})")
    ap.add_argument("--branch-epoch", type=int, help=f"AutoScale branch epoch (default {FULL.branch_epoch})")


def budget_from_args(a: Any) -> DemoBudget:
    b = SMOKE if a.smoke else FULL
    kw = {k: getattr(a, k) for k in ("n_train", "n_test", "epochs", "branch_epoch") if getattr(a, k) is not None}
    return replace(b, **kw) if kw else b


def budget_dict(b: DemoBudget) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(b).items()}


def machine_info() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__, "load_average_at_start": list(os.getloadavg()),
            "note": "2-core machine shared with other engineers; times are indicative"}


# ------------------------------------------------------------------------------------ data
@dataclass
class Data:
    train: list  # ImageRecord
    test: list
    test_images: list[torch.Tensor]  # (1, 3, H, W) normalised
    info: dict[str, Any]


def make_data(root: Path, b: DemoBudget, seed: int) -> Data:
    """Draw ``n_train + n_test`` synthetic crowds (seed ``seed``) into ``root`` (train/test)."""
    n = b.n_train + b.n_test
    generate_dataset(root, n=n, size=b.size, seed=seed, splits={"train": b.n_train / n, "test": b.n_test / n},
                     overwrite=True)
    train, test = read_dataset("generic", root, "train"), read_dataset("generic", root, "test")
    cnt = np.array([r.count for r in test], dtype=float)
    tr = np.array([r.count for r in train], dtype=float)
    info = {"generator": "autoscale.data.synth.generate_dataset", "seed": seed, "size_hw": list(b.size),
            "n_train": len(train), "n_test": len(test), "test_counts": cnt.astype(int).tolist(),
            "train_count_mean": float(tr.mean()), "test_count_mean": float(cnt.mean()),
            "test_count_max": int(cnt.max()), "test_count_min": int(cnt.min()),
            "mean_baseline_mae": float(np.abs(cnt - tr.mean()).mean())}
    imgs = [normalize(read_image(r.image_path)) for r in test]
    return Data(train, test, imgs, info)


# ------------------------------------------------------------------------------------ training
@dataclass
class Trunk:
    """An FPN trained to ``branch_epoch``: its state and everything needed to continue/branch."""

    variant: str
    cfg: PipelineConfig
    samples: tuple
    counter: nn.Module  # snapshot at branch_epoch (deep copy)
    opt_state: dict[str, Any]
    fpn: AutoScale  # the baseline, continued to ``epochs`` by :func:`finish_fpn`
    opt: torch.optim.Optimizer
    log: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _say(verbose: bool) -> Callable[[str], None]:
    return (lambda s: print(s, flush=True)) if verbose else (lambda s: None)


def train_trunk(variant: str, data: Data, b: DemoBudget, seed: int, cfg: PipelineConfig, tag: str,
                verbose: bool = True) -> Trunk:
    """Train an FPN (``cfg``: variant, sigma, loss) for ``branch_epoch`` epochs."""
    t0 = time.perf_counter()
    samples = load_samples(data.train, variant, cfg)
    base, opt = new_fpn_run(variant, cfg, b, seed)
    log: list[dict[str, Any]] = []
    train_epochs(base, opt, samples, method="fpn", first_epoch=0, last_epoch=b.branch_epoch, b=b, seed=seed,
                 center=None, log=log, tag=tag, say=_say(verbose))
    tr = Trunk(variant, cfg, samples, copy.deepcopy(base.counter), copy.deepcopy(opt.state_dict()), base, opt, log)
    tr.seconds = time.perf_counter() - t0
    return tr


def finish_fpn(trunk: Trunk, b: DemoBudget, seed: int, tag: str, verbose: bool = True) -> AutoScale:
    """Continue the trunk's FPN from ``branch_epoch`` to ``epochs`` (the baseline)."""
    t0 = time.perf_counter()
    train_epochs(trunk.fpn, trunk.opt, trunk.samples, method="fpn", first_epoch=b.branch_epoch, last_epoch=b.epochs,
                 b=b, seed=seed, center=None, log=trunk.log, tag=tag, say=_say(verbose))
    trunk.seconds += time.perf_counter() - t0
    return trunk.fpn.eval()


def branch(trunk: Trunk, cfg: PipelineConfig, b: DemoBudget, seed: int, tag: str, *,
           verbose: bool = True) -> tuple[AutoScale, dict[str, Any]]:
    """An AutoScale model branched off ``trunk`` at ``branch_epoch`` and trained with the joint
    loss to ``epochs``. ``cfg.fixed_scale`` set: no L2S, no centre loss. The centre loss's
    density measure is ``cfg.closeness`` (Eq. 1 distance or Table 10 people number)."""
    t0 = time.perf_counter()
    counter = copy.deepcopy(trunk.counter)
    fpn = counter.counter if isinstance(counter, ScaledCounter) else counter
    l2s = None
    if cfg.fixed_scale is None:
        torch.manual_seed(seed + 1)
        l2s = get_model(f"l2s_{trunk.variant}", in_channels=fpn.feature_channels)
    model = AutoScale(counter, l2s, cfg)
    opt = branch_optimizer(counter, l2s, trunk.opt_state, b)
    center = CenterLoss("paper") if l2s is not None else None
    log: list[dict[str, Any]] = []
    train_epochs(model, opt, trunk.samples, method="autoscale", first_epoch=b.branch_epoch, last_epoch=b.epochs, b=b,
                 seed=seed, center=center, log=log, tag=tag, say=_say(verbose))
    info = {"seconds": time.perf_counter() - t0, "center": None if center is None else float(center.center),
            "regions_per_epoch": [r["regions"] for r in log]}
    return model.eval(), info


# ------------------------------------------------------------------------------------ evaluation
def _box(reg: Any) -> tuple[int, int, int, int]:
    return (int(reg.x), int(reg.y), int(reg.w), int(reg.h))


@torch.inference_mode()
def predict_rows(model: AutoScale, data: Data, *, single_pass: bool, points_from: str = "model",
                 keep_points: bool = False) -> list[dict[str, Any]]:
    """Per test image: ``gt``, ``pred`` (final count), ``first`` (first-pass count), ``regions``
    (``[x, y, w, h, scale, count_before, count_after, gt_in_box]``), and, for point methods,
    the predicted points (``points_from="model"``: the pipeline's; ``"density_peaks"``: local
    maxima of the first-pass density map, which then also give ``pred``).

    The first-pass map is kept under the private key ``_map`` (for :func:`dense_region_errors`)."""
    from autoscale.postprocess import density_peaks

    rows = []
    for rec, img in zip(data.test, data.test_images):
        res = model.predict(img, single_pass=single_pass)
        gt = np.asarray(rec.points, dtype=np.float64).reshape(-1, 2)
        row: dict[str, Any] = {"image": rec.name, "gt": int(len(gt)), "pred": float(res.count),
                               "first": float(res.first_count), "_map": res.first_map, "_gt_points": gt}
        row["regions"] = [[*_box(r.region), float(r.scale), float(r.count_before), float(r.count_after),
                           int(len(T.region_points(gt, _box(r.region))))] for r in res.regions]
        pts = None
        if points_from == "density_peaks":
            pts = density_peaks(res.first_map)
            row["density_sum"] = row["pred"]
            row["pred"] = row["first"] = float(len(pts))
        elif res.points is not None:
            pts = np.asarray(res.points, dtype=np.float64).reshape(-1, 2)
        if pts is not None:
            row["_points"] = pts
            for s, mr in zip(SIGMAS, match_points_multi(pts, gt, list(SIGMAS))):
                row[f"tp_{s:g}"], row[f"fp_{s:g}"], row[f"fn_{s:g}"] = int(mr.tp), int(mr.fp), int(mr.fn)
            if keep_points:
                row["points"] = pts.tolist()
        rows.append(row)
    return rows


def count_in_box(row: dict[str, Any], box: Sequence[int]) -> float:
    """A model's first-pass count inside ``box``: density sum (regression) or points inside."""
    x, y, w, h = (int(v) for v in box)
    if "_points" in row:
        return float(len(T.region_points(row["_points"], (x, y, w, h))))
    return float(row["_map"][y:y + h, x:x + w].sum(dtype=np.float64))


def dense_region_errors(rows: list[dict[str, Any]], ref_rows: list[dict[str, Any]], *,
                        mode: str = "box") -> dict[str, Any]:
    """Table 8 protocol on the regions of ``ref_rows`` (the AutoScale model's regions).

    Over the images where ``ref_rows`` refined at least one region: GT heads inside the
    region(s) vs the model's count there. ``mode``: ``refined`` = the model's own second-pass
    count (``count_after``; the model must be the one that chose the regions), ``own_first`` =
    its own first-pass count in its regions (``count_before``), ``box`` = the count of a
    single-pass model's map / points inside the same boxes. Returns ``mae``, ``rmse``, ``n`` and per-image
    ``[gt, pred]`` pairs (``pairs``)."""
    pairs = []
    for row, ref in zip(rows, ref_rows):
        if not ref["regions"]:
            continue
        gt = float(sum(r[7] for r in ref["regions"]))
        if mode == "refined":
            pred = float(sum(r[6] for r in row["regions"]))
        elif mode == "own_first":
            pred = float(sum(r[5] for r in row["regions"]))
        else:
            pred = float(sum(count_in_box(row, r[:4]) for r in ref["regions"]))
        pairs.append([gt, pred])
    p = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    if not len(p):
        return {"mae": None, "rmse": None, "n": 0, "pairs": []}
    m = counting_metrics(p[:, 1], p[:, 0])
    return {"mae": float(m["mae"]), "rmse": float(m["rmse"]), "n": int(len(p)), "pairs": p.tolist()}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """MAE / RMSE of the counts, first-pass MAE, P/R/F1 at :data:`SIGMAS` when rows have points."""
    gt = np.array([r["gt"] for r in rows], dtype=float)
    m = counting_metrics(np.array([r["pred"] for r in rows]), gt)
    out: dict[str, Any] = {"mae": float(m["mae"]), "rmse": float(m["rmse"]),
                           "first_pass_mae": float(counting_metrics(np.array([r["first"] for r in rows]), gt)["mae"]),
                           "images_refined": int(sum(bool(r["regions"]) for r in rows))}
    scales = [reg[4] for r in rows for reg in r["regions"]]
    if scales:
        out["scale_mean"], out["scale_min"], out["scale_max"] = float(np.mean(scales)), float(min(scales)), float(max(scales))
    if rows and "tp_4" in rows[0]:
        for s in SIGMAS:
            k = f"{s:g}"
            tp, fp, fn = (int(sum(r[f"{c}_{k}"] for r in rows)) for c in ("tp", "fp", "fn"))
            p = tp / (tp + fp) if tp + fp else 0.0
            rc = tp / (tp + fn) if tp + fn else 0.0
            out[f"precision_sigma{k}"], out[f"recall_sigma{k}"] = p, rc
            out[f"f1_sigma{k}"] = 2 * p * rc / (p + rc) if p + rc else 0.0
    if rows and "density_sum" in rows[0]:
        out["mae_density_sum"] = float(counting_metrics(np.array([r["density_sum"] for r in rows]), gt)["mae"])
    return out


def public_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the private (array) keys, for JSON."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def finish(result: dict[str, Any], seconds: dict[str, float], t_start: float) -> None:
    """Record the total and per-phase wall seconds in ``result``."""
    seconds["total"] = time.perf_counter() - t_start
    result.update({"seconds": round(seconds["total"], 2),
                   "seconds_detail": {k: round(v, 2) for k, v in seconds.items()}})


def write_results(out: Path, name: str, result: dict[str, Any], md: str) -> None:
    """``out/<name>.json`` and ``out/<name>.md``, each written to a temporary file and renamed
    (a reader never sees a half-written file)."""
    out.mkdir(parents=True, exist_ok=True)
    for path, text in ((out / f"{name}.json", json.dumps(result, indent=1) + "\n"), (out / f"{name}.md", md)):
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)


def command_line(r: dict[str, Any]) -> str:
    """The markdown line naming the command, seed, wall time and machine of a results dict."""
    m = r["machine"]
    return (f"Command: `{r['command']}`; seed {r['seed']}; {r['seconds']:.0f} s on {m['machine']} "
            f"({m['cpu_count']} CPUs, shared; torch {m['torch']}, {m['torch_threads']} thread).")


def fmt(v: Any, d: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{d}f}"
    return str(v)


#: Smoke runs barely train, so their first-pass maps rarely pass the dense-region gate; to still
#: exercise every refinement code path the smoke configs take training regions from the target
#: and use density > 1 x mean with no area gate J. The full runs use the paper's settings.
SMOKE_PIPELINE = {"region_from": "target", "area_ratio": 0.0, "dense_k": 1.0}


def pipeline(variant: str, b: DemoBudget, **kw: Any) -> PipelineConfig:
    """The paper's pipeline settings for ``variant`` with density sigma ``b.sigma`` and ``kw``."""
    extra = dict(SMOKE_PIPELINE) if b.size == SMOKE.size else {}
    extra.update(kw)
    return PipelineConfig(variant=variant, sigma=extra.pop("sigma", b.sigma), **extra)


__all__ = ["FULL", "SMOKE", "SIGMAS", "RESULTS", "Data", "Trunk", "make_data", "train_trunk", "finish_fpn", "branch",
           "predict_rows", "dense_region_errors", "summarize", "public_rows", "machine_info", "budget_dict",
           "count_in_box", "fmt", "pipeline", "replace", "finish", "write_results", "command_line"]


def bench_main(script: str, doc: str, run_fn: Callable[..., dict[str, Any]], argv: Sequence[str] | None) -> dict[str, Any]:
    """Shared entry point: parse the budget arguments, run single-threaded, record the command."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_budget_args(ap)
    a = ap.parse_args(argv)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    command = " ".join([f"python benchmarks/{script}", *argv_list])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_fn(a.out, budget_from_args(a), smoke=a.smoke, seed=a.seed, verbose=not a.quiet, command=command)
    finally:
        torch.set_num_threads(threads)
