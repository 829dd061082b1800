"""``autoscale evaluate``: evaluate a checkpoint on a dataset split and write a report.

``--points-from-density-peaks`` scores a regression model's density-map peaks as points;
``--regions-from OTHER/per_image.csv`` scores GT and predicted counts inside the region boxes
another evaluation refined (the Table 8 protocol across two models).

Data come either from a training config / preset (``--config CONFIG|PRESET [key=value ...]``,
:func:`autoscale.engine.config.load_config`: ``data.format``, ``data.root``, ``data.resize``,
``data.outside``) or directly from ``--format F --root DIR``. Any checkpoint can be evaluated on any
dataset (cross-dataset evaluation). Outputs: ``OUT/metrics.json``, ``OUT/per_image.csv``,
``OUT/report.md`` (+ figures); see :mod:`autoscale.engine.evaluate`.
"""
from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Add the ``evaluate`` command."""
    p = subparsers.add_parser(
        "evaluate",
        help=summary,
        description="Evaluate a checkpoint on a dataset split: counting metrics and groups, localization "
                    "P/R/F1 (localization checkpoints), dense-region metrics (Table 8), scale factors.",
    )
    p.add_argument("--checkpoint", required=True, help="autoscale checkpoint (.pt)")
    p.add_argument("--config", default=None, help="training config file or preset name (its data section is used)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (with --config)")
    p.add_argument("--format", default=None, help="dataset format (instead of --config)")
    p.add_argument("--root", default=None, help="dataset root (instead of --config, or overriding it)")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--resize", default=None,
                   help="resize rule (default: the config's, else the one the checkpoint was trained with, "
                        "else the format's paper rule)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--single-pass", action="store_true", help="first pass only (FPN baseline)")
    p.add_argument("--pipeline-from-config", action="store_true",
                   help="use the config's pipeline section instead of the checkpoint's")
    p.add_argument("--sigmas", default="4,8,16", help="fixed localization radii in pixels (comma separated)")
    p.add_argument("--no-knn", action="store_true", help="skip the KNN-threshold localization metrics")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--skip-unannotated", action="store_true",
                   help="leave out images that have no annotation file (stray files in a dataset folder), with a "
                        "one-line notice, instead of stopping with an error (also config key data.skip_unannotated); "
                        "their number goes to metrics.json as skipped_stray")
    p.add_argument("--points-from-density-peaks", action="store_true",
                   help="regression models: score the density map's local maxima as points (P/R/F1, "
                        "Table 12's density-peaks baseline); counts stay density sums")
    p.add_argument("--regions-from", metavar="PER_IMAGE_CSV", default=None,
                   help="another evaluation's per_image.csv: count GT heads and this model's prediction inside "
                        "that evaluation's refined-region boxes (Table 8 across models; given_regions in metrics.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autoscale.data.formats import get_format, read_dataset, skipped_notice
    from autoscale.device import bounded_heap
    from autoscale.engine.evaluate import evaluate
    from autoscale.errors import ConfigError, DataError

    bounded_heap()  # the network's activations reused from the heap image after image

    pipeline = None
    outside = "drop"
    skip_unannotated = bool(args.skip_unannotated)
    if args.config is not None:
        from autoscale.engine.config import load_config

        overrides = list(args.overrides)
        if args.root is not None:
            overrides.append(f"data.root={args.root}")
        if args.format is not None:
            overrides.append(f"data.format={args.format}")
        cfg = load_config(args.config, overrides)
        fmt, root, resize, outside = cfg.data.format, cfg.data.root, cfg.data.resize, cfg.data.outside
        skip_unannotated = skip_unannotated or cfg.data.skip_unannotated
        if args.pipeline_from_config:
            pipeline = cfg.pipeline
    else:
        if args.overrides:
            raise ConfigError(f"key=value overrides need --config (got {' '.join(args.overrides)})")
        if args.format is None or args.root is None:
            raise ConfigError("give --config CONFIG|PRESET, or both --format and --root")
        fmt, root, resize = args.format, args.root, None
        try:
            get_format(fmt)
        except ConfigError as exc:
            raise ConfigError(f"--format: {exc}") from None
    if not (args.resize or resize):  # the resolution the model was trained at, else the format's paper rule
        from autoscale.models.registry import load_checkpoint
        from autoscale.predict import trained_resize

        resize = trained_resize(load_checkpoint(args.checkpoint))
    resize = args.resize or resize or get_format(fmt).resize_rule
    try:
        sigmas = tuple(float(s) for s in args.sigmas.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--sigmas must be comma-separated numbers, got {args.sigmas!r}") from None
    given = None
    if args.regions_from is not None:
        from autoscale.engine.evaluate import read_region_boxes

        given = read_region_boxes(args.regions_from)
    skipped: list[Path] = []
    records = read_dataset(fmt, root, args.split, outside=outside, skip_unannotated=skip_unannotated, skipped=skipped)
    if skipped:
        print(f"autoscale: notice: {skipped_notice(skipped, get_format(fmt).split_path(root, args.split))}",
              file=sys.stderr, flush=True)
    if args.limit:
        records = records[: args.limit]
    if not any(r.annotated for r in records):
        what = "no images" if not records else f"no annotated images ({len(records)} without ground truth)"
        raise DataError(get_format(fmt).split_path(root, args.split),
                        f"split {args.split!r} of format {fmt!r} has {what}; nothing to evaluate")
    m = evaluate(args.checkpoint, records, pipeline_cfg=pipeline, out_dir=args.out, resize=resize,
                 single_pass=args.single_pass, sigmas=sigmas, knn=not args.no_knn, device=args.device,
                 progress=not args.no_progress and sys.stderr.isatty(),
                 points_from_density_peaks=args.points_from_density_peaks, given_regions=given,
                 skipped_stray=len(skipped))
    c = m["counting"]
    summary = {"images": m["num_images"], "mae": c["mae"], "rmse": c["rmse"], "nae": c["nae"]}
    if "localization" in m:
        summary["f1"] = {k: v["f1"] for k, v in m["localization"].items()}
    if "given_regions" in m:
        summary["given_regions"] = {k: m["given_regions"][k] for k in ("mae", "rmse", "n")}
    print(json.dumps(summary))
    print(f"report: {args.out}/report.md", file=sys.stderr)
    return 0
