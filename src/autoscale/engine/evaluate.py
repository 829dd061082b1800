"""Evaluation of a trained model on a dataset: counting, groups, localization, dense regions.

:func:`evaluate` runs the AutoScale pipeline on every annotated record and writes
``out/metrics.json``, ``out/per_image.csv`` and ``out/report.md`` (plus figures as PNG when
matplotlib is installed). Protocols (``reference/protocols-and-formats.md`` §B, paper §4.3-4.4):

* **Input.** The image is decoded as stored (no EXIF rotation; annotations refer to the stored
  grid) and resized by the dataset preset's rule (:mod:`autoscale.data.preprocess`); the GT points
  are scaled by the same per-axis factors. Any checkpoint runs on any dataset (cross-dataset).
* **GT count** = number of annotated points inside the image (never a density-map sum).
* **Counting**: MAE, RMSE (reported also as the field's "mse") and NAE
  (:func:`autoscale.metrics.counting_metrics`) for the final count and for the first pass
  (the FPN baseline). Groups: JHU density group of the GT count (low <= 50 < medium <= 500 < high)
  always; NWPU ``level`` / ``illumination`` and JHU ``weather`` when every record has them in meta.
* **Localization** (localization variant): predicted points are mapped back to original-image
  pixels and matched to the GT with maximum-cardinality matching (:func:`autoscale.metrics.match_points_multi`)
  at fixed radii ``sigmas`` (pixels, ShanghaiTech sigma = 4/8/16) and at the KNN radius (half the
  nearest-neighbour GT distance, :func:`autoscale.metrics.knn_thresholds`); P/R/F1 micro-averaged.
* **Dense regions** (Table 8): over the images where a region was refined, the GT count inside
  the region(s) (network-input frame) against the first-pass count there (baseline) and the
  second-pass count (AutoScale); MAE and RMSE for both.
* **Scales / densities** (Fig. 9, 10): every refined region's scale factor; region density
  = GT people / region area (pixels) before, and / (area x s^2) after scaling.

``per_image.csv`` columns: ``image, gt, pred, first_pred, width, height`` (stored image),
``input_width, input_height`` (after the resize rule), ``abs_err``, ``group_<name>``,
``tp_/fp_/fn_<threshold>`` (localization), ``n_regions``, ``scales`` and ``region_boxes``
(``;``-separated, boxes ``x y w h`` in network-input pixels), ``region_gt``, ``region_baseline``,
``region_autoscale`` (summed over the image's refined regions; empty when none).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoscale import targets as T
from autoscale.data.image_io import read_image
from autoscale.data.preprocess import ResizeRule, get_resize_rule
from autoscale.data.record import ImageRecord, inside_mask
from autoscale.errors import ConfigError, DataError
from autoscale.metrics import (
    counting_metrics,
    grouped_counting_metrics,
    jhu_density_group,
    knn_thresholds,
    localization_metrics,
    match_points_multi,
)
from autoscale.models.vgg import normalize
from autoscale.pipeline import AutoScale, PipelineConfig

__all__ = ["evaluate", "default_groups", "write_report"]

GroupFn = Callable[[ImageRecord, int], Hashable | None]


def default_groups(records: Sequence[ImageRecord]) -> dict[str, GroupFn]:
    """Density group always; ``level``/``illumination`` (NWPU) and ``weather`` (JHU) when every
    record's meta has the key."""
    out: dict[str, GroupFn] = {"density": lambda rec, gt: jhu_density_group(gt)}
    for key in ("level", "illumination", "weather"):
        if records and all(key in r.meta for r in records):
            out[key] = lambda rec, gt, _k=key: rec.meta[_k]
    return out


def _resolve_model(obj: Any, variant: str | None, cfg: PipelineConfig | None, device: torch.device) -> tuple[AutoScale, dict]:
    from autoscale.predict import load_autoscale

    if isinstance(obj, AutoScale):
        if cfg is not None:
            obj = AutoScale(obj.counter, obj.l2s, cfg)
        info: dict = {}
        model = obj
    elif isinstance(obj, tuple) and len(obj) == 2:
        if cfg is None:
            if variant is None:
                raise ConfigError("evaluate: give variant= or pipeline_cfg= with a (fpn, l2s) pair")
            cfg = PipelineConfig(variant=variant)
        model, info = AutoScale(obj[0], obj[1], cfg), {}
    else:
        model, ck = load_autoscale(obj, variant=variant, pipeline=cfg, device=device)
        info = {k: ck.get(k) for k in ("variant", "method", "code_version") if k in ck}
        if not isinstance(obj, dict):
            info["path"] = str(obj)
    if variant is not None and model.config.variant != variant:
        raise ConfigError(f"evaluate: variant {variant!r} requested but the pipeline is {model.config.variant!r}")
    return model.to(device).eval(), info


def _clean(v: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python, tuple -> list, keys -> str."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def evaluate(
    checkpoint_or_models: Any,
    records: Sequence[ImageRecord],
    *,
    variant: str | None = None,
    pipeline_cfg: PipelineConfig | None = None,
    out_dir: str | PathLike[str] | None = None,
    resize: str | ResizeRule = "none",
    single_pass: bool = False,
    sigmas: Sequence[float] = (4, 8, 16),
    knn: bool = True,
    groups: Mapping[str, GroupFn] | None = None,
    device: str | torch.device = "cpu",
    figures: bool = True,
    progress: bool = False,
    per_image: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate a model on ``records`` (see the module docstring for every protocol).

    ``per_image``: if a list is given, the per-image rows (the ``per_image.csv`` columns) are
    appended to it, so callers need not run the model again.

    Args:
        checkpoint_or_models: checkpoint path or dict, an :class:`AutoScale`, or ``(fpn, l2s)``.
        records: annotated images (``annotated=False`` records are skipped and counted).
        variant: expected variant (checked against the checkpoint).
        pipeline_cfg: pipeline settings overriding the checkpoint's.
        out_dir: where metrics.json / per_image.csv / report.md go (None: nothing written).
        resize: the dataset preset's resize rule (name or :class:`ResizeRule`).
        single_pass: first pass only (baseline); dense-region metrics are then empty.
        sigmas: fixed localization radii in original-image pixels.
        knn: also score at the KNN radius.
        groups: ``{name: fn(record, gt_count) -> label | None}``; None = :func:`default_groups`.

    Returns:
        The metrics.json content (NaN written as null).
    """
    from autoscale.predict import _device

    dev = _device(device)
    model, info = _resolve_model(checkpoint_or_models, variant, pipeline_cfg, dev)
    cfg = model.config
    if model.l2s is None and cfg.fixed_scale is None:
        single_pass = True
    rule = get_resize_rule(resize) if isinstance(resize, str) else resize
    recs = [r for r in records if r.annotated]
    skipped = len(records) - len(recs)
    if not recs:
        raise DataError(None, "evaluate: no annotated records to evaluate")
    gfns = default_groups(recs) if groups is None else dict(groups)
    thr_names = [f"sigma_{g:g}" for g in sigmas] + (["knn"] if knn else [])
    loc = cfg.variant == "localization"
    match_results: dict[str, list] = {n: [] for n in thr_names}
    rows: list[dict[str, Any]] = []
    scales: list[float] = []
    reg_people: list[float] = []
    reg_area: list[float] = []
    dense: list[tuple[float, float, float]] = []  # (gt, baseline, autoscale) per refined image
    it = recs
    if progress:
        from tqdm import tqdm

        it = tqdm(recs, desc="evaluate", unit="img")
    for rec in it:
        img = read_image(rec.image_path)
        H, W = img.shape[:2]
        gt = np.asarray(rec.points, dtype=np.float64).reshape(-1, 2)
        gt = gt[inside_mask(gt, W, H)]
        img_r, gt_r, sx, sy = rule.apply(img, gt)
        with torch.inference_mode():
            res = model.predict(normalize(img_r).to(dev), single_pass=single_pass)
        row: dict[str, Any] = {"image": rec.name, "gt": len(gt), "pred": float(res.count),
                               "first_pred": float(res.first_count), "width": W, "height": H,
                               "input_width": img_r.shape[1], "input_height": img_r.shape[0]}
        row["abs_err"] = abs(row["pred"] - row["gt"])
        for gname, fn in gfns.items():
            row[f"group_{gname}"] = fn(rec, len(gt))
        if loc:
            pred_pts = (res.points.reshape(-1, 2) / np.array([sx, sy])) if res.points is not None else np.zeros((0, 2))
            thr = [float(s) for s in sigmas] + ([knn_thresholds(gt)] if knn else [])
            for name, mr in zip(thr_names, match_points_multi(pred_pts, gt, thr)):
                match_results[name].append(mr)
                row[f"tp_{name}"], row[f"fp_{name}"], row[f"fn_{name}"] = mr.tp, mr.fp, mr.fn
        rg = rb = ra = 0.0
        for r in res.regions:
            box = (r.region.x, r.region.y, r.region.w, r.region.h)
            n_in = float(len(T.region_points(gt_r, box)))
            rg, rb, ra = rg + n_in, rb + r.count_before, ra + r.count_after
            scales.append(float(r.scale))
            reg_people.append(n_in)
            reg_area.append(float(r.region.w * r.region.h))
        row["n_regions"] = len(res.regions)
        row["scales"] = ";".join(f"{r.scale:.4f}" for r in res.regions)
        row["region_boxes"] = ";".join(f"{r.region.x} {r.region.y} {r.region.w} {r.region.h}" for r in res.regions)
        if res.regions:
            dense.append((rg, rb, ra))
            row.update(region_gt=rg, region_baseline=rb, region_autoscale=ra)
        else:
            row.update(region_gt="", region_baseline="", region_autoscale="")
        rows.append(row)

    pred = np.array([r["pred"] for r in rows])
    first = np.array([r["first_pred"] for r in rows])
    gts = np.array([r["gt"] for r in rows], dtype=np.float64)
    metrics: dict[str, Any] = {
        "variant": cfg.variant,
        "single_pass": bool(single_pass),
        "num_images": len(rows),
        "skipped_unannotated": skipped,
        "counting": counting_metrics(pred, gts),
        "first_pass": counting_metrics(first, gts),
        "groups": {},
    }
    for gname in gfns:
        labels = [r[f"group_{gname}"] for r in rows]
        keep = [i for i, lab in enumerate(labels) if lab is not None]
        metrics["groups"][gname] = grouped_counting_metrics(pred[keep], gts[keep], [labels[i] for i in keep])
    if loc:
        metrics["localization"] = {n: localization_metrics(match_results[n]) for n in thr_names}
    d = np.asarray(dense, dtype=np.float64).reshape(-1, 3)
    bm, am = counting_metrics(d[:, 1], d[:, 0]), counting_metrics(d[:, 2], d[:, 0])
    metrics["dense_regions"] = {
        "num_images": int(len(d)),
        "baseline": {"mae": bm["mae"], "rmse": bm["rmse"], "mse": bm["mse"]},
        "autoscale": {"mae": am["mae"], "rmse": am["rmse"], "mse": am["mse"]},
    }
    before = np.asarray(reg_people) / np.maximum(np.asarray(reg_area), 1.0)
    after = before / np.maximum(np.asarray(scales) ** 2, 1e-12)
    s = np.asarray(scales, dtype=np.float64)
    metrics["scales"] = {"values": s, "n": int(s.size),
                         "mean": float(s.mean()) if s.size else float("nan"),
                         "median": float(np.median(s)) if s.size else float("nan"),
                         "min": float(s.min()) if s.size else float("nan"),
                         "max": float(s.max()) if s.size else float("nan")}
    metrics["region_density"] = {"before": before, "after": after}
    metrics["settings"] = {"resize": rule.name, "sigmas": list(sigmas), "knn": bool(knn),
                           "pipeline": asdict(cfg), "checkpoint": info, "device": str(dev)}
    metrics = _clean(metrics)
    if out_dir is not None:
        write_report(metrics, rows, Path(out_dir), figures=figures)
    if per_image is not None:
        per_image.extend(rows)
    return metrics


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_report(metrics: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], out: Path, *, figures: bool = True) -> None:
    """Write ``per_image.csv``, the figures (if matplotlib is there), ``report.md`` and, last,
    ``metrics.json`` into ``out`` (each via a temporary file + rename)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(out, f"cannot create the output directory ({exc.strerror or exc})") from None
    (out / "metrics.json").unlink(missing_ok=True)
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", restval="")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else ("" if v is None else v)) for k, v in r.items()})
    _atomic_text(out / "per_image.csv", buf.getvalue())

    figs: list[tuple[str, str]] = []
    if figures and metrics["scales"]["n"]:
        from autoscale import viz

        if viz.have_matplotlib():
            viz.scale_histogram_figure(metrics["scales"]["values"], out / "scales_hist.png",
                                       title=f"learned scale factors ({metrics['variant']})")
            viz.region_density_figure(metrics["region_density"]["before"], metrics["region_density"]["after"],
                                      out / "region_density.png")
            figs = [("Scale factors (Fig. 10a/b)", "scales_hist.png"),
                    ("Dense-region density before / after scaling (Fig. 9)", "region_density.png")]

    c, f = metrics["counting"], metrics["first_pass"]
    lines = [f"# Evaluation report ({metrics['variant']})", "",
             f"{metrics['num_images']} images; resize rule `{metrics['settings']['resize']}`; "
             f"{'single pass' if metrics['single_pass'] else 'two-pass AutoScale'}.", "",
             "## Counting", "", "| model | MAE | RMSE (MSE) | NAE |", "|---|---|---|---|",
             f"| first pass (FPN baseline) | {_fmt(f['mae'])} | {_fmt(f['rmse'])} | {_fmt(f['nae'], 4)} |",
             f"| final | {_fmt(c['mae'])} | {_fmt(c['rmse'])} | {_fmt(c['nae'], 4)} |", ""]
    for gname, table in metrics["groups"].items():
        lines += [f"### By {gname}", "", "| group | n | MAE | RMSE |", "|---|---|---|---|"]
        lines += [f"| {lab} | {m['n']} | {_fmt(m['mae'])} | {_fmt(m['rmse'])} |" for lab, m in table.items()]
        lines.append("")
    if "localization" in metrics:
        lines += ["## Localization (original-image pixels, micro-averaged)", "",
                  "| threshold | P | R | F1 | TP | FP | FN |", "|---|---|---|---|---|---|---|"]
        for name, m in metrics["localization"].items():
            lines.append(f"| {name} | {_fmt(m['precision'], 4)} | {_fmt(m['recall'], 4)} | {_fmt(m['f1'], 4)} "
                         f"| {m['tp']} | {m['fp']} | {m['fn']} |")
        lines.append("")
    dr = metrics["dense_regions"]
    lines += ["## Dense regions (Table 8 protocol)", "",
              f"{dr['num_images']} images with a refined region.", "",
              "| model | MAE | RMSE (MSE) |", "|---|---|---|",
              f"| baseline (first pass in region) | {_fmt(dr['baseline']['mae'])} | {_fmt(dr['baseline']['rmse'])} |",
              f"| AutoScale (re-prediction) | {_fmt(dr['autoscale']['mae'])} | {_fmt(dr['autoscale']['rmse'])} |", ""]
    s = metrics["scales"]
    lines += ["## Scale factors", "", f"n = {s['n']}, mean {_fmt(s['mean'], 3)}, median {_fmt(s['median'], 3)}, "
              f"min {_fmt(s['min'], 3)}, max {_fmt(s['max'], 3)}.", ""]
    for title, fname in figs:
        lines += [f"### {title}", "", f"![{title}]({fname})", ""]
    _atomic_text(out / "report.md", "\n".join(lines))
    _atomic_text(out / "metrics.json", json.dumps(metrics, indent=1, allow_nan=False) + "\n")
