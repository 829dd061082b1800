"""``autoscale eval-points``: score point predictions against localization ground truth.

Both files use the NWPU-Crowd localization formats (:mod:`autoscale.metrics.nwpu`):
GT ``id num x y sigma_s sigma_l level ...``, predictions ``id num x y ...``. Counting metrics use
the per-image point counts (the ``num`` fields), as the official scorer does.

An empty GT file is an error (it lists no image). An empty prediction file is a valid input: every
GT image absent from the predictions counts as predicting nobody, so it scores tp 0 (precision
n/a). The report is computed in full before anything is printed.
"""
from __future__ import annotations

import argparse
import json
import math

from autoscale.metrics.nwpu import read_loc_gt, read_loc_pred, score_loc


def _sigma(value: str) -> str | float:
    if value in ("small", "large"):
        return value
    try:
        s = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'small', 'large' or a number of pixels, got {value!r}") from None
    if not math.isfinite(s) or s < 0:
        raise argparse.ArgumentTypeError(f"sigma must be a finite number >= 0, got {value!r}")
    return s


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval-points`` command."""
    p = subparsers.add_parser(
        "eval-points",
        help="localization P/R/F1 and counting MAE/RMSE/NAE from NWPU-format point files",
        description="Score point predictions against localization ground truth (NWPU-Crowd "
                    "file formats): micro precision/recall/F1 within each GT point's threshold, "
                    "plus MAE/RMSE/NAE from the per-image point counts.",
    )
    p.add_argument("--gt", required=True, help="GT file: 'id num x y sigma_s sigma_l level ...' lines")
    p.add_argument("--pred", required=True, help="prediction file: 'id num x y ...' lines")
    p.add_argument("--sigma", type=_sigma, default="large",
                   help="match threshold: 'small' (each GT point's sigma_s), 'large' (sigma_l, the "
                        "NWPU leaderboard number; default) or a fixed number of pixels")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def _clean(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def evaluate(gt_path: str, pred_path: str, sigma: str | float) -> dict:
    """The flat result dict the command prints (NaN as None)."""
    gt = read_loc_gt(gt_path)
    pred = read_loc_pred(pred_path)
    res = score_loc(gt, pred, [sigma], pred_path=pred_path)
    loc = next(iter(res["loc"].values()))
    cnt = res["counting"]
    out = {"sigma": sigma, "n_images": cnt["n"]}
    out |= {k: loc[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn")}
    out |= {k: cnt[k] for k in ("mae", "rmse", "mse", "nae")}
    out |= {"per_level_recall": loc["per_level_recall"], "mean_level_recall": loc["mean_level_recall"]}
    return {k: _clean(v) for k, v in out.items()}


def _num(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def report(out: dict) -> str:
    """The text report of :func:`evaluate`'s result (undefined metrics as ``n/a``)."""
    return "\n".join([
        f"images {out['n_images']}  sigma {out['sigma']}",
        f"precision {_num(out['precision'], 5)}  recall {_num(out['recall'], 5)}  f1 {_num(out['f1'], 5)}  "
        f"(tp {out['tp']}, fp {out['fp']}, fn {out['fn']})",
        f"mae {_num(out['mae'], 2)}  rmse {_num(out['rmse'], 2)}  nae {_num(out['nae'], 4)}",
    ])


def run(args: argparse.Namespace) -> int:
    out = evaluate(args.gt, args.pred, args.sigma)
    print(json.dumps(out) if args.json else report(out))  # built in full first: never half a report
    return 0
