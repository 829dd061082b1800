"""Diagnostics behind the ShanghaiTech Part B numbers of ``bench_shanghaitech.py``.

1. *Representation limit* (no network): the regional minima of the ground-truth distance-label
   maps at several resolutions, matched to the heads at 4 px — how many heads a perfect
   localization network could find at the benchmark's resolution.
2. *Where the counts go* (needs the regression checkpoints saved with ``bench_shanghaitech.py
   --save-dir DIR``): per model, the mean first-pass count error (bias) on the training and the
   test images, and on the test images the predicted people more than 20 px (benchmark pixels)
   from any annotated head ("background mass"); predicted with the prediction API
   (:class:`autoscale.predict.Predictor`, single pass, on the photos resized as the benchmark does).

    .venv/bin/python benchmarks/bench_shanghaitech.py --part B --variant regression --save-dir /tmp/w
    .venv/bin/python benchmarks/analyze_shanghaitech.py --weights /tmp/w

Writes ``results/shanghaitech_b_analysis.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_shanghaitech as S  # noqa: E402

from autoscale import targets as T  # noqa: E402
from autoscale.data.formats import read_dataset  # noqa: E402
from autoscale.data.image_io import read_image  # noqa: E402
from autoscale.metrics import match_points_multi  # noqa: E402
from autoscale.postprocess import count_people  # noqa: E402
from autoscale.predict import Predictor  # noqa: E402

FAR_PX = 20.0


def label_map_oracle(records: list, scales: Sequence[float]) -> dict[str, Any]:
    """Minima of the GT distance-label maps (every minimum counted) vs the heads, per scale."""
    out = {}
    for s in scales:
        n_gt = n_min = tp = 0
        nn = []
        for r in records:
            h, w = round(r.height * s), round(r.width * s)
            pts = np.asarray(r.points, dtype=np.float64).reshape(-1, 2) * np.array([w / r.width, h / r.height])
            _, found = count_people(T.distance_label_map(pts, (h, w)), background=len(T.DISTANCE_EDGES) - 1,
                                    num_classes=len(T.DISTANCE_EDGES))
            found = np.asarray(found, dtype=np.float64).reshape(-1, 2)
            n_gt, n_min = n_gt + len(pts), n_min + len(found)
            tp += match_points_multi(found, pts, [4.0])[0].tp
            if len(pts) > 1:
                nn.append(float(np.median(T.nearest_neighbour_distances(pts))))
        out[f"x{s:g}"] = {"heads": n_gt, "minima": n_min, "recall_at_4px": tp / max(n_gt, 1),
                          "precision_at_4px": tp / max(n_min, 1), "median_nn_distance_px": float(np.median(nn))}
    return out


def count_diagnostics(weights: Path, records_train: list, records_test: list, scale: float) -> dict[str, Any]:
    """First-pass bias (train, test) and background mass (test) of each saved regression model,
    predicted with :class:`autoscale.predict.Predictor` (single pass) on the resized photos."""
    def load(recs):
        for r in recs:
            img = read_image(r.image_path)
            h, w = round(r.height * scale), round(r.width * scale)
            pts = np.asarray(r.points, dtype=np.float64).reshape(-1, 2) * np.array([w / r.width, h / r.height])
            yield cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA), pts

    out = {}
    for name in ("fpn_regression", "autoscale_regression"):
        path = weights / f"{name}.pt"
        if not path.exists():
            continue
        predictor = Predictor.from_checkpoint(str(path), variant="regression", single_pass=True, max_side=None)
        res: dict[str, Any] = {}
        for split, recs in (("train", records_train), ("test", records_test)):
            err, far = [], []
            for img, pts in load(recs):
                pred = predictor.predict_array(img)
                err.append(pred.first_count - len(pts))
                if split == "test":
                    m = pred.map.astype(np.float64)
                    d = T.distance_map(pts, m.shape) if len(pts) else np.full(m.shape, np.inf)
                    far.append(m[d > FAR_PX].sum())
            res[f"first_pass_bias_{split}"] = float(np.mean(err))
            res[f"first_pass_mae_{split}"] = float(np.mean(np.abs(err)))
            if split == "test":
                res["test_background_mass"] = float(np.mean(far))
        out[name] = res
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=S.SHARED)
    ap.add_argument("--weights", type=Path, help="folder written by bench_shanghaitech.py --save-dir")
    ap.add_argument("--scale", type=float, default=0.25, help="the benchmark's resize factor")
    ap.add_argument("--smoke", action="store_true", help="3 images per split")
    ap.add_argument("--out", type=Path, default=C.RESULTS)
    a = ap.parse_args(argv)
    if not (a.root / "part_B").is_dir():
        raise SystemExit(f"analyze_shanghaitech: {a.root / 'part_B'} not found (pass --root)")
    command = " ".join(["python benchmarks/analyze_shanghaitech.py", *(sys.argv[1:] if argv is None else argv)])
    t0 = time.perf_counter()
    n = 3 if a.smoke else None
    train = read_dataset("shanghaitech", a.root / "part_B", "train")[:n]
    test = read_dataset("shanghaitech", a.root / "part_B", "test")[:n]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result: dict[str, Any] = {"command": command, "seed": None, "scale": a.scale,
                                  "label_map_oracle_test": label_map_oracle(test, (a.scale, 0.5, 1.0))}
        if a.weights is not None:
            result["regression_counts"] = count_diagnostics(a.weights, train, test, a.scale)
            result["background_definition"] = f"predicted people > {FAR_PX:g} px (benchmark pixels) from every head"
    finally:
        torch.set_num_threads(threads)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "shanghaitech_b_analysis.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# ShanghaiTech Part B: diagnostics", "", f"Command: `{command}` ({result['seconds']:.0f} s).", "",
             "Minima of the ground-truth distance-label maps (test split) vs the heads:", "",
             "| resolution | heads | minima | recall @4 px | precision @4 px | median NN distance (px) |",
             "|---|---|---|---|---|---|"]
    for k, v in result["label_map_oracle_test"].items():
        lines.append(f"| {k} | {v['heads']} | {v['minima']} | {v['recall_at_4px']:.3f} | {v['precision_at_4px']:.3f} | "
                     f"{v['median_nn_distance_px']:.1f} |")
    if "regression_counts" in result:
        lines += ["", "| model | first-pass bias train | first-pass bias test | first-pass MAE test | background mass test |",
                  "|---|---|---|---|---|"]
        for k, v in result["regression_counts"].items():
            lines.append(f"| {k} | {v['first_pass_bias_train']:+.1f} | {v['first_pass_bias_test']:+.1f} | "
                         f"{v['first_pass_mae_test']:.2f} | {v['test_background_mass']:.1f} |")
    (a.out / "shanghaitech_b_analysis.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
