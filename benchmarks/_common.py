"""Shared machinery of ``bench_synthetic.py``, ``bench_ablations.py``, ``bench_shanghaitech.py``
(and the training config of ``bench_cells.py``): the benchmarks train and score only with the
functions behind the user's commands, :func:`autoscale.engine.trainer.train` (``autoscale train``)
and :func:`autoscale.engine.evaluate.evaluate` (``autoscale evaluate``).

Training: every model is one ``train`` call whose :class:`~autoscale.engine.config.TrainConfig`
comes from :func:`train_config`: the demo's run (:func:`autoscale.demo.train_config`: generic-format
data, no resize, random horizontal flips, Kaiming init, regression outputs learned x
``density_scale`` (``model.output_scale``, folded into the saved weights), Adam with a cosine
learning rate from ``lr`` to ``lr * min_lr_ratio`` over ``epochs``, batch 1, summed pixel losses)
with the benchmark's pipeline settings (:func:`pipeline`) and ``section.key`` overrides. An FPN run
(:func:`train_fpn`) trains ``epochs`` epochs and keeps its checkpoint at ``branch_epoch``
(``keep_epochs``); every AutoScale-type model (:func:`branch`) starts from that checkpoint
(``init_from``: the counter weights, a copy of the Adam state and the position in the schedule;
a fresh L2S) and trains the remaining epochs with the joint loss (Eq. 6 / Eq. 8) and its own
pipeline settings. All compared models therefore see the same optimiser steps, network width and
learning-rate schedule. The benchmarks' budgets (:func:`bench_budget`) are :class:`DemoBudget`\\ s
with a VGG16 backbone from scratch (no ImageNet weights here) and the same epochs for both variants.

Evaluation (:func:`evaluate_run`): ``evaluate`` on the test records (no resize) with its per-image
rows. The Table 8 protocol compares a model inside *another* model's regions: the boxes the
AutoScale model refined (:func:`regions_of`) are passed as ``given_regions`` when the other model is
evaluated (GT heads in the boxes vs that model's density sum / points in them); an AutoScale
model's own re-predicted and first-pass counts in its regions are evaluate's ``dense_regions``.

Per-image rows (JSON): ``image``, ``gt``, ``pred`` (final count), ``first`` (first-pass count),
``regions`` (``[x, y, w, h, scale]`` per refined region: box in image pixels), ``region_gt`` /
``region_first`` / ``region_refined`` (GT heads, first-pass and re-predicted counts summed over the
image's regions; None without a region), ``tp_4 / fp_4 / fn_4`` and ``_8`` (point methods),
``given_gt`` / ``given_pred`` (the counts inside another model's boxes), for density peaks
``density_sum`` (the map sum; ``pred`` and ``first`` count the peaks), and in smoke runs
``points`` (the predicted points, from :class:`autoscale.predict.Predictor` on the same checkpoint,
for the tests' independent matching check).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from autoscale.data.formats import read_dataset
from autoscale.data.synth import generate_dataset
from autoscale.demo import DemoBudget
from autoscale.demo import train_config as demo_train_config
from autoscale.engine.config import TrainConfig, config_from_dict, config_to_dict
from autoscale.engine.evaluate import evaluate
from autoscale.engine.trainer import train
from autoscale.pipeline import PipelineConfig

RESULTS = Path(__file__).resolve().parent / "results"
SIGMAS = (4.0, 8.0)  # localization matching radii (px)


#: The benchmarks' training recipe, pinned here (not taken from DemoBudget's defaults, which the
#: demo may retune): VGG16-FPN from scratch, Adam lr 1e-3 cosine to 5 % without weight decay,
#: regression outputs learned x 100, density sigma 4 px, fp32, every localization minimum counted.
RECIPE = {"backbone": "vgg16", "imagenet": None, "lr": 1e-3, "min_lr_ratio": 0.05, "weight_decay": 0.0,
          "density_scale": 100.0, "sigma": 4.0, "bf16": False, "threads": None, "max_head_class": None}


def bench_budget(**kw: Any) -> DemoBudget:
    """A benchmark budget: :class:`DemoBudget` with :data:`RECIPE` (unless ``kw`` says otherwise)
    and ``epochs`` / ``branch_epoch`` for both variants."""
    kw = {**RECIPE, **kw}
    return DemoBudget(loc_epochs=kw["epochs"], loc_branch_epoch=kw["branch_epoch"], **kw)


def with_epochs(b: DemoBudget, epochs: int | None = None, branch_epoch: int | None = None, **kw: Any) -> DemoBudget:
    """``b`` with other epochs / branch epoch (both variants) and other fields ``kw``."""
    e = b.epochs if epochs is None else epochs
    k = b.branch_epoch if branch_epoch is None else branch_epoch
    return replace(b, epochs=e, branch_epoch=k, loc_epochs=e, loc_branch_epoch=k, **kw)


#: Default sizes: 192x256 crowds (5-100 people, long-tailed local density), width 1/4.
FULL = bench_budget(size=(192, 256), n_train=100, n_test=40, width=0.25, epochs=12, branch_epoch=8)
#: Seconds-long run for the tests.
SMOKE = bench_budget(size=(64, 80), n_train=5, n_test=3, width=0.0625, epochs=2, branch_epoch=1)


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
    kw = {k: getattr(a, k) for k in ("n_train", "n_test") if getattr(a, k) is not None}
    return with_epochs(b, a.epochs, a.branch_epoch, **kw)


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
    """A generic-format dataset at ``root`` (splits ``train``, ``test``) and its records."""

    root: Path
    train: list  # ImageRecord
    test: list
    info: dict[str, Any]


def make_data(root: Path, b: DemoBudget, seed: int) -> Data:
    """Draw ``n_train + n_test`` synthetic crowds (seed ``seed``) into ``root`` (train/test)."""
    n = b.n_train + b.n_test
    generate_dataset(root, n=n, size=b.size, seed=seed, splits={"train": b.n_train / n, "test": b.n_test / n},
                     overwrite=True)
    train_recs, test = read_dataset("generic", root, "train"), read_dataset("generic", root, "test")
    cnt = np.array([r.count for r in test], dtype=float)
    tr = np.array([r.count for r in train_recs], dtype=float)
    info = {"generator": "autoscale.data.synth.generate_dataset", "seed": seed, "size_hw": list(b.size),
            "n_train": len(train_recs), "n_test": len(test), "test_counts": cnt.astype(int).tolist(),
            "train_count_mean": float(tr.mean()), "test_count_mean": float(cnt.mean()),
            "test_count_max": int(cnt.max()), "test_count_min": int(cnt.min()),
            "mean_baseline_mae": float(np.abs(cnt - tr.mean()).mean())}
    return Data(Path(root), train_recs, test, info)


# ------------------------------------------------------------------------------------ training
#: Smoke runs barely train, so their first-pass maps rarely pass the dense-region gate; to still
#: exercise every refinement code path the smoke configs take training regions from the target
#: and use density > 1 x mean with no area gate J. The full runs use the paper's settings.
SMOKE_PIPELINE = {"region_from": "target", "area_ratio": 0.0, "dense_k": 1.0}


def pipeline(variant: str, b: DemoBudget, **kw: Any) -> PipelineConfig:
    """The paper's pipeline settings for ``variant`` with density sigma ``b.sigma`` and ``kw``."""
    extra = dict(SMOKE_PIPELINE) if b.size == SMOKE.size else {}
    extra.update(kw)
    return PipelineConfig(variant=variant, sigma=extra.pop("sigma", b.sigma), **extra)


def train_config(variant: str, method: str, b: DemoBudget, seed: int, data_root: Path, run_dir: Path, *,
                 pipe: PipelineConfig | None = None, init_from: Path | None = None,
                 overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of one benchmark run: :func:`autoscale.demo.train_config` (``b``,
    ``seed``, data in ``data_root``, outputs in ``run_dir``, an FPN run keeps ``epoch_<branch>.pt``)
    with the pipeline ``pipe`` (its ``sigma`` becomes ``data.sigma``) and ``overrides``
    (``{"section.key": value}``, as ``autoscale train section.key=value``), validated."""
    d = config_to_dict(demo_train_config(variant, method, b, seed, Path(data_root), Path(run_dir), init_from=init_from))
    if pipe is not None:
        if pipe.variant != variant:
            raise ValueError(f"pipeline variant {pipe.variant!r} for a {variant} run")
        d["pipeline"] = config_to_dict(pipe)
        d["data"]["sigma"] = float(pipe.sigma)
    for key, value in (overrides or {}).items():
        *sections, name = key.split(".")
        node = d
        for s in sections:
            node = node[s]
        if name not in node:
            raise KeyError(f"train_config: unknown config key {key!r}")
        node[name] = list(value) if isinstance(value, tuple) else value
    return config_from_dict(d, source="benchmark train_config")


@dataclass
class Run:
    """A finished :func:`train` call: its final checkpoint (``last.pt``), the checkpoint kept at
    the branch epoch (FPN runs), its own history rows, wall and CPU seconds, its config and the
    per-step losses of the call."""

    name: str
    checkpoint: Path
    kept: Path | None
    history: list[dict[str, Any]]
    seconds: float
    cpu_seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    step_losses: list[float] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """The ``train`` entry of the results: wall / CPU seconds (an AutoScale run's CPU time
        includes its FPN trunk's to the branch epoch), and for AutoScale runs the final centre C
        and the refined training images per epoch."""
        out: dict[str, Any] = {"seconds": round(self.seconds, 2), "cpu_seconds": round(self.cpu_seconds, 2)}
        if self.config.get("method") == "autoscale":
            last = self.history[-1] if self.history else {}
            out["center"] = last.get("center")
            out["regions_per_epoch"] = [r["regions"] for r in self.history]
        out["config"] = self.config
        return out


def _say(verbose: bool) -> Callable[[str], None]:
    return (lambda s: print(s, flush=True)) if verbose else (lambda s: None)


def run_training(name: str, cfg: TrainConfig, verbose: bool = True) -> Run:
    """One :func:`autoscale.engine.trainer.train` call (a fresh ``cfg.out``); Ctrl-C stops the benchmark."""
    from autoscale.models.registry import load_checkpoint

    say = _say(verbose)
    out = Path(cfg.out)
    if out.exists():
        shutil.rmtree(out)
    total = cfg.optim.epochs

    def on_epoch(row: dict[str, Any]) -> None:
        say(f"  {name} epoch {row['epoch']}/{total}: first-pass loss {row['loss_first']:.4g}"
            + (f", refine {row['loss_refine']:.4g}, centre {row['loss_center']:.3g}, regions {row['regions']}"
               if "regions" in row else "") + f" ({row['time_s']:.1f} s)")

    t0 = time.perf_counter()
    res = train(cfg, on_epoch=on_epoch)
    if res.interrupted:
        raise KeyboardInterrupt(f"{name}: training interrupted (state in {res.last_checkpoint})")
    seconds = time.perf_counter() - t0
    kept = out / f"epoch_{cfg.keep_epochs[0]}.pt" if cfg.keep_epochs else None
    own = [r for r in res.history if r.get("source") != "init_from"]
    cpu = float(load_checkpoint(res.last_checkpoint).get("cpu_seconds", 0.0))
    return Run(name, res.last_checkpoint, kept if kept is not None and kept.is_file() else None, own, seconds, cpu,
               config_to_dict(cfg), list(res.step_losses))


def train_fpn(name: str, variant: str, data: Data, b: DemoBudget, seed: int, pipe: PipelineConfig, work: Path,
              verbose: bool = True, overrides: Mapping[str, Any] | None = None) -> Run:
    """An FPN run (``pipe``: variant, sigma, loss) for ``epochs`` epochs, keeping ``branch_epoch``
    (``overrides``: other config keys, e.g. ``{"model.counter": "csrnet"}`` for another counter)."""
    cfg = train_config(variant, "fpn", b, seed, data.root, work / name, pipe=pipe, overrides=overrides)
    return run_training(name, cfg, verbose)


def branch(name: str, trunk: Run, data: Data, b: DemoBudget, seed: int, pipe: PipelineConfig, work: Path,
           verbose: bool = True, overrides: Mapping[str, Any] | None = None) -> Run:
    """An AutoScale run branched off ``trunk`` at ``branch_epoch`` and trained with the joint loss
    to ``epochs``. ``pipe.fixed_scale`` set: no L2S, no centre loss. The centre loss's density
    measure is ``pipe.closeness`` (Eq. 1 distance or Table 10 people number). ``overrides`` as
    for :func:`train_fpn` (the trunk's model keys: ``init_from`` needs the same model)."""
    if trunk.kept is None:
        raise ValueError(f"{trunk.name}: no checkpoint kept at the branch epoch")
    cfg = train_config(pipe.variant, "autoscale", b, seed, data.root, work / name, pipe=pipe, init_from=trunk.kept,
                       overrides=overrides)
    return run_training(name, cfg, verbose)


# ------------------------------------------------------------------------------------ evaluation
def _split(text: str) -> list[str]:
    return [t for t in (text or "").split(";") if t.strip()]


def _opt_float(v: Any) -> float | None:
    return None if v in ("", None) else float(v)


def bench_row(r: dict[str, Any], *, peaks: bool = False) -> dict[str, Any]:
    """A benchmark per-image row (module docstring) from one of evaluate's ``per_image`` rows."""
    row: dict[str, Any] = {"image": r["image"], "gt": int(r["gt"]), "pred": float(r["pred"]),
                           "first": float(r["first_pred"])}
    boxes = [[int(v) for v in b.split()] for b in _split(r["region_boxes"])]
    row["regions"] = [[*bx, float(s)] for bx, s in zip(boxes, _split(r["scales"]))]
    row.update(region_gt=_opt_float(r["region_gt"]), region_first=_opt_float(r["region_baseline"]),
               region_refined=_opt_float(r["region_autoscale"]))
    for s in SIGMAS:
        k = f"sigma_{s:g}"
        if f"tp_{k}" in r:
            for c in ("tp", "fp", "fn"):
                row[f"{c}_{s:g}"] = int(r[f"{c}_{k}"])
    if peaks:
        row["density_sum"] = row["pred"]
        row["pred"] = row["first"] = float(r["n_points"])
    if "given_gt" in r:
        row.update(given_gt=_opt_float(r["given_gt"]), given_pred=_opt_float(r["given_pred"]))
    return row


def regions_of(rows: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, int, int, int]]]:
    """The boxes each image's model refined (``given_regions`` for another model's evaluation;
    image pixels = evaluate's original-image pixels, as the benchmarks evaluate without resizing)."""
    return {r["image"]: [tuple(reg[:4]) for reg in r["regions"]] for r in rows if r["regions"]}


def evaluate_run(checkpoint: Path, records: list, *, pipe: PipelineConfig | None = None, peaks: bool = False,
                 given_regions: Mapping[str, Sequence[Sequence[float]]] | None = None,
                 keep_points: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """:func:`autoscale.engine.evaluate.evaluate` of ``checkpoint`` (``pipe``: pipeline settings
    overriding the checkpoint's; an FPN checkpoint runs single-pass) on ``records``, no resize,
    P/R/F1 at :data:`SIGMAS` for point methods (``peaks``: a regression model's density peaks);
    returns its metrics and :func:`bench_row` rows (``keep_points``: with the predicted points)."""
    ev_rows: list[dict[str, Any]] = []
    metrics = evaluate(str(checkpoint), records, pipeline_cfg=pipe, resize="none", sigmas=SIGMAS, knn=False,
                       groups={}, figures=False, per_image=ev_rows, points_from_density_peaks=peaks,
                       given_regions=given_regions)
    rows = [bench_row(r, peaks=peaks) for r in ev_rows]
    if keep_points and (peaks or metrics["variant"] == "localization"):
        from autoscale.predict import Predictor

        predictor = Predictor.from_checkpoint(str(checkpoint), pipeline=pipe, max_side=None,
                                              points="peaks" if peaks else "auto")
        by_name = {r.name: r for r in records}
        for row in rows:
            row["points"] = predictor(by_name[row["image"]].image_path).points.tolist()
    return metrics, rows


def summarize(metrics: dict[str, Any], *, peaks: bool = False) -> dict[str, Any]:
    """MAE / RMSE, first-pass MAE, refined images, zoom statistics and P/R/F1 at :data:`SIGMAS`
    from evaluate's metrics (``peaks``: counts are the numbers of peaks, ``mae_density_sum`` the
    map sums')."""
    c = metrics["points_count"] if peaks else metrics["counting"]
    out: dict[str, Any] = {"mae": c["mae"], "rmse": c["rmse"],
                           "first_pass_mae": (c if peaks else metrics["first_pass"])["mae"],
                           "images_refined": int(metrics["dense_regions"]["num_images"])}
    s = metrics["scales"]
    if s["n"]:
        out["scale_mean"], out["scale_min"], out["scale_max"] = s["mean"], s["min"], s["max"]
    for sg in SIGMAS if "localization" in metrics else ():
        k, loc = f"{sg:g}", metrics["localization"][f"sigma_{sg:g}"]
        out[f"precision_sigma{k}"], out[f"recall_sigma{k}"], out[f"f1_sigma{k}"] = (
            loc["precision"], loc["recall"], loc["f1"])
    if peaks:
        out["mae_density_sum"] = metrics["counting"]["mae"]
    return out


def dense_given(metrics: dict[str, Any]) -> dict[str, Any]:
    """Table 8 in another model's regions: evaluate's ``given_regions`` (``mae``, ``rmse``, ``n``)."""
    g = metrics["given_regions"]
    return {"mae": g["mae"], "rmse": g["rmse"], "n": int(g["n"])}


def dense_own(metrics: dict[str, Any], which: str = "autoscale") -> dict[str, Any]:
    """Table 8 in the model's own regions: its re-predicted (``autoscale``) or first-pass
    (``baseline``) counts there, from evaluate's ``dense_regions``."""
    d = metrics["dense_regions"]
    return {"mae": d[which]["mae"], "rmse": d[which]["rmse"], "n": int(d["num_images"])}


# ------------------------------------------------------------------------------------ results
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


__all__ = ["FULL", "SMOKE", "SIGMAS", "RESULTS", "SMOKE_PIPELINE", "Data", "Run", "bench_budget", "with_epochs",
           "make_data", "pipeline", "train_config", "run_training", "train_fpn", "branch", "evaluate_run",
           "bench_row", "regions_of", "summarize", "dense_given", "dense_own", "machine_info", "budget_dict", "fmt",
           "finish", "write_results", "command_line", "bench_main"]


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
