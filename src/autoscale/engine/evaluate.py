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
* **Density peaks as points** (``points_from_density_peaks``, Table 12's density-map
  localization baseline): a regression model's people are the local maxima
  (:func:`autoscale.postprocess.density_peaks`, its defaults) of its final density map (the map
  :class:`autoscale.predict.Predictor` gives with ``points="peaks"``: the first-pass map with each
  refined region replaced by its re-prediction). They are scored like a localization model's
  points; the counting metrics stay the density sums, and the number of peaks per image is
  scored separately (``points_count``).
* **Given regions** (``given_regions``, Table 8 across models): boxes ``(x, y, w, h)`` in
  original-image pixels per image name, e.g. the regions another model refined
  (:func:`read_region_boxes` reads them from that evaluation's ``per_image.csv``). Each box is
  mapped into the network-input frame (corners multiplied by the resize factors, rounded, clipped
  to the image) and, summed over the image's boxes, the GT heads inside (the resized GT points,
  the same rule as ``region_gt``) are compared with the evaluated model's count inside: the sum
  of its final density map there (regression) or its points inside (localization, or density
  peaks). Images without a box are not scored. Summary ``given_regions: {mae, rmse, n, ...}``.

``per_image.csv`` columns: ``image, gt, pred, first_pred, width, height`` (stored image),
``input_width, input_height`` (after the resize rule), ``abs_err``, ``group_<name>``,
``tp_/fp_/fn_<threshold>`` (localization), ``n_regions``, ``scales`` and ``region_boxes``
(``;``-separated, boxes ``x y w h`` in network-input pixels), ``region_gt``, ``region_baseline``,
``region_autoscale`` (summed over the image's refined regions; empty when none),
``region_boxes_orig`` (the same boxes in original-image pixels, ``x y w h`` each divided by the
resize factors; what ``given_regions`` / ``autoscale evaluate --regions-from`` read);
``n_points`` (density-peaks mode), ``given_gt`` / ``given_pred`` (given regions; empty for an
image without a box).
"""
from __future__ import annotations

import csv
import io
import json
import math
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
from autoscale.io import atomic_write_text
from autoscale.metrics import (
    counting_metrics,
    grouped_counting_metrics,
    jhu_density_group,
    knn_thresholds,
    localization_metrics,
    match_points_multi,
)
from autoscale.pipeline import AutoScale, PipelineConfig
from autoscale.postprocess import density_peaks

__all__ = ["evaluate", "default_groups", "write_report", "read_region_boxes"]

GroupFn = Callable[[ImageRecord, int], Hashable | None]


def default_groups(records: Sequence[ImageRecord]) -> dict[str, GroupFn]:
    """Density group always; ``level``/``illumination`` (NWPU) and ``weather`` (JHU) when every
    record's meta has the key."""
    out: dict[str, GroupFn] = {"density": lambda rec, gt: jhu_density_group(gt)}
    for key in ("level", "illumination", "weather"):
        if records and all(key in r.meta for r in records):
            out[key] = lambda rec, gt, _k=key: rec.meta[_k]
    return out


def _resolve_model(obj: Any, variant: str | None, cfg: PipelineConfig | None,
                   device: torch.device) -> tuple[AutoScale, dict, bool]:
    """``(model, info, loaded)``: ``loaded`` is True when the model was loaded here from a checkpoint
    (ours to change), False for a model or ``(fpn, l2s)`` pair the caller passed in (shared)."""
    from autoscale.predict import load_autoscale

    if isinstance(obj, AutoScale):
        if cfg is not None:
            obj = AutoScale(obj.counter, obj.l2s, cfg)
        info: dict = {}
        model, loaded = obj, False
    elif isinstance(obj, tuple) and len(obj) == 2:
        if cfg is None:
            if variant is None:
                raise ConfigError("evaluate: give variant= or pipeline_cfg= with a (fpn, l2s) pair")
            cfg = PipelineConfig(variant=variant)
        model, info, loaded = AutoScale(obj[0], obj[1], cfg), {}, False
    else:
        model, ck = load_autoscale(obj, variant=variant, pipeline=cfg, device=device)
        loaded = True
        info = {k: ck.get(k) for k in ("variant", "method", "code_version") if k in ck}
        if not isinstance(obj, dict):
            info["path"] = str(obj)
    if variant is not None and model.config.variant != variant:
        raise ConfigError(f"evaluate: variant {variant!r} requested but the pipeline is {model.config.variant!r}")
    return model.to(device).eval(), info, loaded


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


Box = tuple[float, float, float, float]


def _num(v: float) -> str:
    """Compact exact-enough text of a pixel coordinate (4 decimals, trailing zeros dropped)."""
    return f"{v:.4f}".rstrip("0").rstrip(".")


def read_region_boxes(per_image_csv: str | PathLike[str]) -> dict[str, list[Box]]:
    """Refined-region boxes per image name from an evaluation's ``per_image.csv``, as
    ``(x, y, w, h)`` in original-image pixels: the ``region_boxes_orig`` column, or (files written
    before it existed) ``region_boxes`` divided by the ``input_width / width`` and
    ``input_height / height`` factors. Images without a region get an empty list."""
    path = Path(per_image_csv)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DataError(path, f"cannot read per-image CSV ({exc.strerror or exc})") from None
    if not rows or "image" not in rows[0]:
        raise DataError(path, "not an evaluation per_image.csv (no 'image' column or no rows)")
    orig = "region_boxes_orig" in rows[0]
    if not orig and not {"region_boxes", "width", "height", "input_width", "input_height"} <= set(rows[0]):
        raise DataError(path, "per_image.csv has no region_boxes_orig / region_boxes columns")
    out: dict[str, list[Box]] = {}
    for lineno, r in enumerate(rows, start=2):
        text = (r["region_boxes_orig"] if orig else r["region_boxes"]) or ""
        fx = fy = 1.0
        if not orig and text.strip():
            fx = float(r["width"]) / float(r["input_width"])
            fy = float(r["height"]) / float(r["input_height"])
        boxes: list[Box] = []
        for part in text.split(";"):
            if not part.strip():
                continue
            try:
                x, y, w, h = (float(v) for v in part.split())
            except ValueError:
                raise DataError(path, f"line {lineno}: bad box {part!r} (expected 'x y w h')") from None
            boxes.append((x * fx, y * fy, w * fx, h * fy))
        out[r["image"]] = boxes
    return out


def _input_box(box: Box, sx: float, sy: float, width: int, height: int) -> tuple[int, int, int, int] | None:
    """An original-pixel box in the network-input frame (corners scaled, rounded, clipped), or
    None when nothing of it is left."""
    x, y, w, h = box
    x0, y0 = min(max(round(x * sx), 0), width), min(max(round(y * sy), 0), height)
    x1, y1 = min(max(round((x + w) * sx), 0), width), min(max(round((y + h) * sy), 0), height)
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


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
    points_from_density_peaks: bool = False,
    given_regions: Mapping[str, Sequence[Box]] | None = None,
    skipped_stray: int = 0,
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
        points_from_density_peaks: score a regression model's density peaks as points
            (module docstring); P/R/F1 in ``localization``, peak counts in ``points_count``.
        given_regions: ``{image name: [(x, y, w, h), ...]}`` boxes in original-image pixels
            (:func:`read_region_boxes`); GT and model counts inside them per image
            (``given_gt`` / ``given_pred``) and ``given_regions: {mae, rmse, n}`` in the metrics.
        skipped_stray: how many images of the split the reader left out because their annotation
            file is missing (``skip_unannotated``), recorded as ``skipped_stray``; apart from
            ``skipped_unannotated``, the records given with ``annotated=False`` (ground truth
            withheld, e.g. NWPU test).

    Returns:
        The metrics.json content (NaN written as null).
    """
    from autoscale.predict import _device

    dev = _device(device)
    model, info, loaded = _resolve_model(checkpoint_or_models, variant, pipeline_cfg, dev)
    # A model loaded here runs channels_last on the CPU, as in Predictor (oneDNN's fastest fp32
    # layout, the same values); a model passed in (the trainer's live one) is left as it is.
    channels_last = loaded and dev.type == "cpu"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
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
    if points_from_density_peaks and cfg.variant != "regression":
        raise ConfigError("evaluate: points from density peaks need a regression model, "
                          f"this one is {cfg.variant}")
    loc = cfg.variant == "localization" or points_from_density_peaks
    match_results: dict[str, list] = {n: [] for n in thr_names}
    rows: list[dict[str, Any]] = []
    scales: list[float] = []
    reg_people: list[float] = []
    reg_area: list[float] = []
    dense: list[tuple[float, float, float]] = []  # (gt, baseline, autoscale) per refined image
    given: list[tuple[float, float]] = []  # (gt, model) inside the given boxes, per image with a box
    n_given_boxes = 0
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
        x = model.prepare(img_r)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            res = model.predict(x, single_pass=single_pass)
        row: dict[str, Any] = {"image": rec.name, "gt": len(gt), "pred": float(res.count),
                               "first_pred": float(res.first_count), "width": W, "height": H,
                               "input_width": img_r.shape[1], "input_height": img_r.shape[0]}
        row["abs_err"] = abs(row["pred"] - row["gt"])
        for gname, fn in gfns.items():
            row[f"group_{gname}"] = fn(rec, len(gt))
        pts_in = None  # predicted points in the network-input frame
        if points_from_density_peaks:
            pts_in = density_peaks(res.map).reshape(-1, 2)
            row["n_points"] = len(pts_in)
        elif res.points is not None:
            pts_in = res.points.reshape(-1, 2)
        if loc:
            pred_pts = pts_in / np.array([sx, sy]) if pts_in is not None else np.zeros((0, 2))
            thr = [float(s) for s in sigmas] + ([knn_thresholds(gt)] if knn else [])
            for name, mr in zip(thr_names, match_points_multi(pred_pts, gt, thr)):
                match_results[name].append(mr)
                row[f"tp_{name}"], row[f"fp_{name}"], row[f"fn_{name}"] = mr.tp, mr.fp, mr.fn
        if given_regions is not None:
            boxes = given_regions.get(rec.name) or []
            if boxes:
                hi, wi = img_r.shape[:2]
                g_gt = g_pred = 0.0
                for b in boxes:
                    ib = _input_box(tuple(float(v) for v in b), sx, sy, wi, hi)
                    if ib is None:
                        continue
                    bx, by, bw, bh = ib
                    g_gt += float(len(T.region_points(gt_r, ib)))
                    if pts_in is not None:
                        g_pred += float(len(T.region_points(pts_in, ib)))
                    else:
                        g_pred += float(res.map[by:by + bh, bx:bx + bw].sum(dtype=np.float64))
                n_given_boxes += len(boxes)
                given.append((g_gt, g_pred))
                row.update(given_gt=g_gt, given_pred=g_pred)
            else:
                row.update(given_gt="", given_pred="")
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
        row["region_boxes_orig"] = ";".join(
            " ".join(_num(v) for v in (r.region.x / sx, r.region.y / sy, r.region.w / sx, r.region.h / sy))
            for r in res.regions)
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
        "skipped_stray": int(skipped_stray),
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
    if points_from_density_peaks:
        metrics["points_count"] = counting_metrics(np.array([r["n_points"] for r in rows], dtype=np.float64), gts)
    if given_regions is not None:
        gv = np.asarray(given, dtype=np.float64).reshape(-1, 2)
        gm = counting_metrics(gv[:, 1], gv[:, 0])
        metrics["given_regions"] = {"mae": gm["mae"], "rmse": gm["rmse"], "n": int(len(gv)),
                                    "boxes": n_given_boxes,
                                    "count_from": "points" if (loc or points_from_density_peaks) else "density"}
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
                           "points_from": "density_peaks" if points_from_density_peaks else ("model" if loc else None),
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
    atomic_write_text(out / "per_image.csv", buf.getvalue(), "per-image results")

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
    if "points_count" in metrics:
        pc = metrics["points_count"]
        lines += ["## Density peaks as points", "",
                  f"Count = number of peaks: MAE {_fmt(pc['mae'])}, RMSE {_fmt(pc['rmse'])}.", ""]
    if "given_regions" in metrics:
        g = metrics["given_regions"]
        lines += ["## Given regions", "",
                  f"{g['n']} images with {g['boxes']} given box(es); GT heads inside vs the model's count there "
                  f"({g['count_from']}): MAE {_fmt(g['mae'])}, RMSE {_fmt(g['rmse'])}.", ""]
    s = metrics["scales"]
    lines += ["## Scale factors", "", f"n = {s['n']}, mean {_fmt(s['mean'], 3)}, median {_fmt(s['median'], 3)}, "
              f"min {_fmt(s['min'], 3)}, max {_fmt(s['max'], 3)}.", ""]
    for title, fname in figs:
        lines += [f"### {title}", "", f"![{title}]({fname})", ""]
    atomic_write_text(out / "report.md", "\n".join(lines), "report")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1, allow_nan=False) + "\n", "metrics")
