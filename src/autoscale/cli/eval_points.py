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
import importlib
import json
import math
import os
import threading

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


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Add the ``eval-points`` command."""
    p = subparsers.add_parser(
        "eval-points",
        help=summary,
        description="Score point predictions against localization ground truth (NWPU-Crowd "
                    "file formats): micro precision/recall/F1 within each GT point's threshold, "
                    "plus MAE/RMSE/NAE from the per-image point counts.",
    )
    p.add_argument("--gt", required=True, help="GT file: 'id num x y sigma_s sigma_l level ...' lines")
    p.add_argument("--pred", required=True, help="prediction file: 'id num x y ...' lines")
    p.add_argument("--sigma", type=_sigma, nargs="+", default=["large"], metavar="SIGMA",
                   help="match threshold(s): 'small' (each GT point's sigma_s), 'large' (sigma_l, the "
                        "NWPU leaderboard number; default) or a fixed number of pixels; several values "
                        "(e.g. --sigma small large 4 8) are scored in one pass over the files, and --json "
                        "then prints one object keyed by sigma")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def _clean(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def sigma_key(sigma: str | float) -> str:
    """The key of ``sigma`` in a multi-sigma result: ``"small"``, ``"large"`` or e.g. ``"4"``, ``"2.5"``."""
    return sigma if isinstance(sigma, str) else f"{float(sigma):g}"


def _import_matcher() -> None:
    """Import the matcher ahead of use; a failure is left to the import where it is used."""
    try:
        importlib.import_module("autoscale.metrics.localization")
    except Exception:  # noqa: BLE001 - reported by score_loc's own import
        pass


def evaluate_many(gt_path: str, pred_path: str, sigmas: list[str | float]) -> dict[str, dict]:
    """:func:`evaluate` for several thresholds, reading and matching the files once: ``{sigma_key: result}``
    in the order given (a repeated sigma is scored once)."""
    sigmas = list(dict.fromkeys(sigmas))
    # SciPy's import (~0.4 s) overlaps the reading: numpy's parsing mostly runs without the GIL
    warm = threading.Thread(target=_import_matcher, daemon=True)
    warm.start()
    gt = read_loc_gt(gt_path)
    pred = read_loc_pred(pred_path)
    warm.join()
    # two processes where there are two cores: this command has started no threads (no torch)
    res = score_loc(gt, pred, sigmas, pred_path=pred_path, workers=min(2, os.cpu_count() or 1))
    cnt = res["counting"]
    out: dict[str, dict] = {}
    for sigma, loc in zip(sigmas, res["loc"].values()):
        row = {"sigma": sigma, "n_images": cnt["n"]}
        row |= {k: loc[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn")}
        row |= {k: cnt[k] for k in ("mae", "rmse", "mse", "nae")}
        row |= {"per_level_recall": loc["per_level_recall"], "mean_level_recall": loc["mean_level_recall"]}
        out[sigma_key(sigma)] = {k: _clean(v) for k, v in row.items()}
    return out


def evaluate(gt_path: str, pred_path: str, sigma: str | float) -> dict:
    """The flat result dict the command prints for one threshold (NaN as None)."""
    return next(iter(evaluate_many(gt_path, pred_path, [sigma]).values()))


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
    many = evaluate_many(args.gt, args.pred, args.sigma)
    # built in full first: never half a report
    if len(many) == 1:
        out = next(iter(many.values()))
        print(json.dumps(out) if args.json else report(out))
    else:
        print(json.dumps(many) if args.json else "\n\n".join(report(r) for r in many.values()))
    return 0
