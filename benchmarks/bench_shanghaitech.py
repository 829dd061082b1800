"""Benchmark: ShanghaiTech from scratch on CPU (real photos), FPN vs AutoScale.

No ImageNet weights can be had on this machine, so every model starts from Kaiming-initialised
weights and trains at a reduced input resolution within a stated CPU budget (at most 45 minutes
of one core per model). Every model is one :func:`autoscale.engine.trainer.train` call (the code
behind ``autoscale train``) configured as in ``benchmarks/_common.py`` (the demo's runs: narrow
VGG16-FPN, Adam with cosine learning rate, batch 1, random horizontal flips, summed pixel losses;
the FPN run keeps its ``branch_epoch`` checkpoint and the AutoScale run starts from it with
``init_from`` and trains the rest with the joint loss, so both see the same optimiser steps).
No model selection: the weights after the last epoch are scored, once, with
:func:`autoscale.engine.evaluate.evaluate` (the FPN's dense MAE inside the AutoScale model's
regions, passed as ``given_regions``). ``--save-dir`` keeps the two checkpoints (``<method>.pt``
with their model cards), which ``autoscale predict`` / ``evaluate`` and ``analyze_shanghaitech.py``
read. Train CPU time per model: the process CPU time the engine records in the checkpoint (an
AutoScale model's includes its FPN trunk's up to the branch epoch).

* ``--part B`` (default): ``part_B/train_data`` (400) -> ``part_B/test_data`` (316), every image
  1024x768 resized by ``--scale`` (default 0.25 -> 256x192). Results
  ``results/shanghaitech_b.json``. Anchor: MCNN trained from scratch, MAE 26.4.
* ``--part A``: the dense case. ``part_A/test_data`` is not available here, so a validation split
  of ``--val`` images (default 60, drawn with ``--seed``) is carved out of ``part_A/train_data``;
  the rest trains. Images are resized so the longer side is ``--long-side`` (default 512) px.
  Results ``results/shanghaitech_a_val.json``.

Counts are unaffected by the resize (points are scaled with the image); density sigma is
4 px at the benchmark resolution (the budget's ``sigma``). Localization
P/R/F1 are matched at 4 and 8 px *of the benchmark resolution* (not of the original photo).

``--variant regression|localization`` trains one variant only and merges its methods into the
results file (the two variants were run as two concurrent single-threaded processes).

Run from the project root (``--smoke``: seconds; 3 images per split, a width-1/16 network)::

    .venv/bin/python benchmarks/bench_shanghaitech.py --part B --variant regression
    .venv/bin/python benchmarks/bench_shanghaitech.py --part B --variant localization
    .venv/bin/python benchmarks/bench_shanghaitech.py --part A --variant regression
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from autoscale.data.formats import read_dataset, write_generic_annotation, write_generic_list  # noqa: E402
from autoscale.data.image_io import read_image  # noqa: E402
from autoscale.demo import DemoBudget, mean_baseline_mae  # noqa: E402
from autoscale.errors import DataError  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "shanghaitech"
ANCHOR_MCNN_SHB = 26.4

#: Per variant: epochs / branch epoch, chosen so that each model fits 45 min of one core at the
#: default resolution (measured at 256x192: regression ~0.09 s/step, localization ~0.17 s/step;
#: an AutoScale step ~2x an FPN step). Density sigma 4 px at 1/4 scale ~ the fixed 15 px sigma
#: of MCNN-era ShanghaiTech B maps at full resolution.
BUDGETS = {
    # regression at lr 1e-3 stopped learning on these photos (epoch loss constant to 0.2 % from epoch 5
    # on, consistent with dead ReLUs); 3e-4 keeps training
    "B": {"regression": C.bench_budget(size=(192, 256), n_train=400, n_test=316, width=0.25, epochs=40,
                                       branch_epoch=30, lr=3e-4),
          "localization": C.bench_budget(size=(192, 256), n_train=400, n_test=316, width=0.25, epochs=24,
                                         branch_epoch=18)},
    "A": {"regression": C.bench_budget(size=(384, 512), n_train=240, n_test=60, width=0.25, epochs=20,
                                       branch_epoch=14, lr=3e-4),
          # measured: FPN epoch ~190 s, AutoScale epoch ~580 s (a large region on every image);
          # branching at 7 projected ~51 CPU min, so the branch comes at 9 (~38 min; not yet run)
          "localization": C.bench_budget(size=(384, 512), n_train=240, n_test=60, width=0.25, epochs=10,
                                         branch_epoch=9)},
}
SMOKE = C.bench_budget(size=(64, 80), n_train=3, n_test=2, width=0.0625, epochs=2, branch_epoch=1)
#: Localization counting: minima of class > 2 are not counted (as in the demo: a from-scratch
#: model leaves shallow folds in the distance map between heads).
MAX_HEAD_CLASS = 2


def _resize_split(records: list, out_root: Path, split: str, *, scale: float | None, long_side: int | None,
                  limit: int | None = None) -> list:
    """Write resized copies of ``records`` (PNG + generic JSON points) under ``out_root`` and
    read them back as generic records. Points are scaled per axis like the image."""
    entries = []
    for rec in records[:limit]:
        img = read_image(rec.image_path)
        h, w = img.shape[:2]
        f = scale if scale is not None else min(1.0, long_side / max(h, w))
        nh, nw = max(1, round(h * f)), max(1, round(w * f))
        small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        pts = np.asarray(rec.points, dtype=np.float64).reshape(-1, 2) * np.array([nw / w, nh / h])
        ip = out_root / split / f"{rec.name}.png"
        ip.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(small).save(ip)
        ap = write_generic_annotation(ip.with_suffix(".json"), pts)
        entries.append((ip, ap))
    write_generic_list(out_root, split, entries)
    return read_dataset("generic", out_root, split)


def carve_val(records: list, n_val: int, seed: int) -> tuple[list, list]:
    """Part A's validation split: ``(train, val)`` with the ``n_val`` records at the first positions
    of ``numpy.random.default_rng(seed).permutation`` in val (both kept in the input's order)."""
    val_idx = set(np.random.default_rng(seed).permutation(len(records))[:n_val].tolist())
    return ([r for i, r in enumerate(records) if i not in val_idx],
            [r for i, r in enumerate(records) if i in val_idx])


def make_data(part: str, root: Path, tmp: Path, *, scale: float, long_side: int, n_val: int, seed: int,
              limit: int | None) -> C.Data:
    """Resized train/test (B) or train/val (A) splits of ShanghaiTech ``part``, written as a
    generic-format dataset in ``tmp`` (splits ``train`` and ``test``), as :class:`C.Data`."""
    pdir = root / f"part_{part}"
    if part == "B":
        train = read_dataset("shanghaitech", pdir, "train")
        test = read_dataset("shanghaitech", pdir, "test")
        split_info = {"train": "part_B/train_data", "test": "part_B/test_data", "resize": f"x{scale:g}"}
        kw: dict[str, Any] = {"scale": scale, "long_side": None}
    else:
        train, test = carve_val(read_dataset("shanghaitech", pdir, "train"), n_val, seed)
        split_info = {"train": f"part_A/train_data minus val ({len(train)})",
                      "test": f"val: {len(test)} images of part_A/train_data drawn with numpy default_rng({seed})",
                      "val_images": [r.name for r in test], "resize": f"longer side <= {long_side} px"}
        kw = {"scale": None, "long_side": long_side}
    tr = _resize_split(train, tmp, "train", limit=limit, **kw)
    te = _resize_split(test, tmp, "test", limit=limit, **kw)
    cnt = np.array([r.count for r in te], dtype=float)
    trc = np.array([r.count for r in tr], dtype=float)
    sizes = sorted({(r.height, r.width) for r in te} | {(r.height, r.width) for r in tr})
    info = {"part": part, **split_info, "n_train": len(tr), "n_test": len(te),
            "image_sizes_hw": [list(s) for s in sizes[:5]] + (["..."] if len(sizes) > 5 else []),
            "train_count_mean": float(trc.mean()), "test_count_mean": float(cnt.mean()),
            "test_count_min": int(cnt.min()), "test_count_max": int(cnt.max()),
            "mean_baseline_mae": mean_baseline_mae(trc, cnt)}
    return C.Data(tmp, tr, te, info)


def count_factor(checkpoint: Path, records: list) -> float | None:
    """Count calibration from the training images only (as in bench_cells): sum(gt) / sum(pred)
    of the model's final counts there (None when it predicts nothing: an untrained smoke model)."""
    _, rows = C.evaluate_run(checkpoint, records)
    total = sum(r["pred"] for r in rows)
    return sum(r["gt"] for r in rows) / total if total > 0 else None


def run_variant(variant: str, data: C.Data, b: DemoBudget, seed: int, verbose: bool, work: Path,
                save_dir: Path | None = None) -> dict[str, Any]:
    H, W = max(r.height for r in data.train), max(r.width for r in data.train)
    extra: dict[str, Any] = {"max_zoom_pixels": 4 * H * W}
    if variant == "localization":
        extra["max_head_class"] = MAX_HEAD_CLASS
    cfg = C.pipeline(variant, b, **extra)
    t0 = time.perf_counter()
    runs = {f"fpn_{variant}": C.train_fpn(f"fpn_{variant}", variant, data, b, seed, cfg, work, verbose)}
    runs[f"autoscale_{variant}"] = C.branch(f"autoscale_{variant}", runs[f"fpn_{variant}"], data, b, seed, cfg, work,
                                            verbose)
    train_wall = time.perf_counter() - t0
    ref = f"autoscale_{variant}"
    ev = {ref: C.evaluate_run(runs[ref].checkpoint, data.test)}
    ev[f"fpn_{variant}"] = C.evaluate_run(runs[f"fpn_{variant}"].checkpoint, data.test,
                                          given_regions=C.regions_of(ev[ref][1]))
    if save_dir is not None:  # the checkpoints as trained (autoscale predict / evaluate read them)
        save_dir.mkdir(parents=True, exist_ok=True)
        for name, run in runs.items():
            shutil.copyfile(run.checkpoint, save_dir / f"{name}.pt")
            shutil.copyfile(run.checkpoint.with_suffix(".json"), save_dir / f"{name}.json")
    methods = {}
    for name in runs:  # fpn first, as in the tables
        metrics, rows = ev[name]
        m = C.summarize(metrics)
        d = C.dense_own(metrics) if name == ref else C.dense_given(metrics)
        m.update(dense_mae=d["mae"], dense_rmse=d["rmse"], dense_images=d["n"], dense_regions_from=ref)
        factor = count_factor(runs[name].checkpoint, data.train) if variant == "regression" else None
        if factor is not None:
            gt = np.array([x["gt"] for x in rows], dtype=np.float64)
            cal = np.array([x["pred"] for x in rows], dtype=np.float64) * factor
            m.update(count_factor_from_train=factor, mae_calibrated=float(np.abs(cal - gt).mean()),
                     rmse_calibrated=float(np.sqrt(((cal - gt) ** 2).mean())))
        # process CPU time of the training (an AutoScale model's includes its FPN trunk to the branch epoch)
        m["train_cpu_seconds"] = round(runs[name].cpu_seconds, 1)
        m["epochs"], m["branch_epoch"] = b.epochs, b.branch_epoch
        if name == ref:
            info = runs[name].info()
            m["center"] = info["center"]
            m["regions_per_epoch"] = info["regions_per_epoch"]
        methods[name] = m
    return {"methods": methods, "per_image": {k: ev[k][1] for k in runs},
            "train_wall_seconds": round(train_wall, 1), "pipeline": C.budget_dict(b) | {"pipeline": extra},
            "log": runs[f"fpn_{variant}"].history,
            "train_config": {k: r.config for k, r in runs.items()}}


def markdown(r: dict[str, Any]) -> str:
    ds, f = r["dataset"], C.fmt
    title = ("ShanghaiTech Part B from scratch" if ds["part"] == "B"
             else "ShanghaiTech Part A (validation split carved from train_data) from scratch")
    lines = [f"# {title}", "",
             f"Data: {ds['n_train']} train / {ds['n_test']} {'test' if ds['part'] == 'B' else 'val'} images, "
             f"resize {ds['resize']}; heads per test image {ds['test_count_min']}-{ds['test_count_max']} "
             f"(mean {ds['test_count_mean']:.1f}); predicting the mean train count gives MAE "
             f"{ds['mean_baseline_mae']:.2f}." + (f" Anchor: MCNN from scratch, MAE {ANCHOR_MCNN_SHB}." if ds['part'] == 'B' else ""),
             "", "| method | MAE | RMSE | MAE / RMSE, count calibrated on train | first-pass MAE | dense MAE (n) | P/R/F1 @4 px "
             "| P/R/F1 @8 px | epochs (branch) | train CPU min |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in r["methods"].items():
        prf = lambda k: (f"{m[f'precision_sigma{k}']:.3f}/{m[f'recall_sigma{k}']:.3f}/{m[f'f1_sigma{k}']:.3f}"  # noqa: E731
                         if f"f1_sigma{k}" in m else "–")
        cal = (f"{f(m['mae_calibrated'])} / {f(m['rmse_calibrated'])} (x{m['count_factor_from_train']:.3f})"
               if "mae_calibrated" in m else "–")
        lines.append(f"| {name} | {f(m['mae'])} | {f(m['rmse'])} | {cal} | {f(m['first_pass_mae'])} | {f(m['dense_mae'])} "
                     f"({m['dense_images']}) | {prf(4)} | {prf(8)} | {m['epochs']} ({m['branch_epoch']}) | "
                     f"{m['train_cpu_seconds'] / 60:.1f} |")
    lines += ["", "Commands (seed, wall seconds):", ""]
    for v, run in r["runs"].items():
        lines.append(f"- {v}: `{run['command']}` (seed {run['seed']}, {run['seconds']:.0f} s)")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("A", "B"), default="B")
    ap.add_argument("--variant", choices=("regression", "localization", "both"), default="both")
    ap.add_argument("--root", type=Path, default=SHARED, help="ShanghaiTech folder holding part_A / part_B")
    ap.add_argument("--scale", type=float, default=0.25, help="Part B resize factor")
    ap.add_argument("--long-side", type=int, default=512, help="Part A: longer image side after resizing (px)")
    ap.add_argument("--val", type=int, default=60, help="Part A: validation images carved out of train_data")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--branch-epoch", type=int)
    ap.add_argument("--lr", type=float, help="peak Adam learning rate (default: the budget's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="seconds: 3 train / 3 test images, tiny network")
    ap.add_argument("--out", type=Path, default=C.RESULTS)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--save-dir", type=Path, help="also save the trained weights here (never commit them)")
    a = ap.parse_args(argv)
    if not (a.root / f"part_{a.part}").is_dir():
        raise SystemExit(f"bench_shanghaitech: {a.root / f'part_{a.part}'} not found (pass --root)")
    command = " ".join(["python benchmarks/bench_shanghaitech.py", *(sys.argv[1:] if argv is None else argv)])
    variants = ("regression", "localization") if a.variant == "both" else (a.variant,)
    name = "shanghaitech_b" if a.part == "B" else "shanghaitech_a_val"
    out_json = a.out / f"{name}.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_sht_") as tmp:
            t0 = time.perf_counter()
            limit = 3 if a.smoke else None
            try:
                data = make_data(a.part, a.root, Path(tmp), scale=a.scale, long_side=64 if a.smoke else a.long_side,
                                 n_val=max(2, a.val if not a.smoke else 2), seed=a.seed, limit=limit)
            except DataError as e:
                raise SystemExit(f"bench_shanghaitech: {e}") from None
            data_seconds = time.perf_counter() - t0
            mine: dict[str, Any] = {"methods": {}, "runs": {}, "per_image": {}}
            machine = C.machine_info()
            for v in variants:
                b = SMOKE if a.smoke else BUDGETS[a.part][v]
                b = C.with_epochs(b, a.epochs, a.branch_epoch, **({"lr": a.lr} if a.lr is not None else {}))
                t1 = time.perf_counter()
                res = run_variant(v, data, b, a.seed, not a.quiet, Path(tmp) / "runs", a.save_dir)
                mine["methods"].update(res["methods"])
                mine["per_image"].update(res["per_image"])
                mine["runs"][v] = {"command": command, "seed": a.seed,
                                   "seconds": round(data_seconds + time.perf_counter() - t1, 1),
                                   "train_wall_seconds": res["train_wall_seconds"], "budget": res["pipeline"],
                                   "threads": 1, "load_average_at_end": list(os.getloadavg()), "log": res["log"],
                                   "train_config": res["train_config"]}
        # Merge with the other variant's results (another process may have written them meanwhile).
        result: dict[str, Any] = {"methods": {}, "runs": {}, "per_image": {}}
        if out_json.exists():
            result = json.loads(out_json.read_text())
            if result.get("dataset", {}).get("resize") != data.info["resize"] or result.get("seed") != a.seed:
                result = {"methods": {}, "runs": {}, "per_image": {}}  # a different setting: start afresh
        for k in ("methods", "runs", "per_image"):
            result[k].update(mine[k])
        result.update({"benchmark": name, "dataset": data.info, "machine": machine, "seed": a.seed,
                       "anchor": {"mcnn_from_scratch_mae": ANCHOR_MCNN_SHB} if a.part == "B" else None})
        result["command"] = " && ".join(r["command"] for r in result["runs"].values())
        result["seconds"] = round(sum(r["seconds"] for r in result["runs"].values()), 1)
        if a.part == "B":
            result["targets"] = {k: {"target": f"MAE < {ANCHOR_MCNN_SHB} (MCNN from scratch)", "mae": m["mae"],
                                     "met": bool(m["mae"] < ANCHOR_MCNN_SHB),
                                     "mae_calibrated": m.get("mae_calibrated"),
                                     "met_calibrated": (None if m.get("mae_calibrated") is None
                                                        else bool(m["mae_calibrated"] < ANCHOR_MCNN_SHB))}
                                 for k, m in result["methods"].items()}
        a.out.mkdir(parents=True, exist_ok=True)
        tmp_json = out_json.with_suffix(".json.tmp")
        tmp_json.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp_json, out_json)
        (a.out / f"{name}.md").write_text(markdown(result))
        return result
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
