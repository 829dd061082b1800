"""The main job: ``autoscale demo`` trains and compares FPN and AutoScale on synthetic crowds.

:func:`run_demo` (CPU, a few minutes with the ``default`` budget on 2 cores):

1. draws a synthetic crowd dataset (:func:`autoscale.data.synth.generate_dataset`, train/test
   splits) into ``OUT/data``;
2. for each variant (``regression``: density maps, ``localization``: distance-label maps with the
   DCE loss) trains two models from scratch (narrow VGG16-FPN, Kaiming init, Adam, cosine learning
   rate, random horizontal flips, batch 1):

   * ``fpn_<variant>``: the counter alone, first-pass pixel loss (Eq. 5 / Eq. 7), for
     ``epochs`` epochs;
   * ``autoscale_<variant>``: branches off the FPN run after ``branch_epoch`` epochs (counter
     weights and Adam state copied), adds a fresh L2S network and the centre loss, and trains the
     remaining ``epochs - branch_epoch`` epochs with the joint loss (Eq. 6 / Eq. 8, dense region
     on the first prediction, STN zoom). Both models therefore see the same number of epochs and
     the same learning-rate schedule; the dense-region re-prediction is only meaningful once the
     counter finds dense regions, hence the warm start;

3. writes ``OUT/checkpoints/<name>.pt`` (our checkpoint format, accepted by ``autoscale predict``),
   evaluates every checkpoint on the test split with :func:`autoscale.engine.evaluate.evaluate`,
   and writes ``OUT/results.json`` and ``OUT/report.md`` (+ ``OUT/figures/*.png`` when matplotlib
   is installed).

Regression training detail: a density map holds ~1e-3 people per pixel, far below what a
from-scratch network outputs comfortably, so during training the counter's outputs are multiplied
by ``1 / density_scale`` (the network learns ``density_scale`` x density) and targets stay in
people per pixel (summed squared error, Eq. 5). At save time the factor is folded into the output
convolutions (``dsn2..dsn5`` weights and biases and the ``dsn6`` bias), so the checkpoint is a
plain FPN predicting people per pixel.

``results.json``::

    {"mean_baseline_mae": MAE of always predicting the mean train count,
     "methods": {name: {"mae", "rmse", "dense_mae", ["precision", "recall", "f1"]}},
     "checkpoints": {name: path}, "budget": {...}, "dataset": {...}, "seconds": {...}}

``dense_mae`` is the MAE over the densest third of the test images (highest ground-truth counts);
precision/recall/F1 are micro-averaged with a fixed 8-pixel matching radius (also reported at 4 px
and at the KNN radius in ``report.md``).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from os import PathLike
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from autoscale.data.formats import read_dataset
from autoscale.data.image_io import read_image
from autoscale.data.synth import generate_dataset
from autoscale.errors import ConfigError
from autoscale.losses import CenterLoss
from autoscale.models.fpn import FPNOutput
from autoscale.models.registry import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, get_model
from autoscale.models.vgg import normalize
from autoscale.pipeline import AutoScale, PipelineConfig, _to_tensor, joint_loss, make_target, pixel_loss

__all__ = ["DemoBudget", "BUDGETS", "METHODS", "run_demo", "mean_baseline_mae", "fold_output_scale", "ScaledCounter",
           "kaiming_init", "new_fpn_run", "branch_optimizer", "load_samples", "train_epochs"]

METHODS = ("fpn_regression", "autoscale_regression", "fpn_localization", "autoscale_localization")
LOC_RADIUS = 8.0  # px, headline localization matching radius


@dataclass(frozen=True)
class DemoBudget:
    """What the demo trains on and for how long.

    Attributes:
        size: synthetic image size ``(H, W)`` in pixels.
        n_train, n_test: images in the train / test splits.
        width: channel multiplier of the VGG16-FPN (1 = the paper's network).
        epochs: epochs of the FPN runs (one epoch = every train image once, batch 1).
        branch_epoch: epoch after which the AutoScale runs branch off the FPN runs.
            ``epochs``/``branch_epoch`` apply to regression; ``loc_epochs``/``loc_branch_epoch``
            to localization (a step costs ~2.5x more there, and it needs fewer epochs).
        lr: peak Adam learning rate (cosine decay to ``lr * min_lr_ratio`` over ``epochs``).
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        weight_decay: Adam L2 weight decay.
        density_scale: regression output factor used in training (see the module docstring).
        sigma: density kernel sigma in pixels.
        threads: torch CPU threads (None = leave torch's default).
        max_head_class: localization minima above this class are not counted (see
            :func:`autoscale.postprocess.count_people`); from-scratch models leave shallow folds.
    """

    size: tuple[int, int] = (128, 160)
    n_train: int = 100
    n_test: int = 30
    width: float = 0.25
    epochs: int = 24
    branch_epoch: int = 18
    loc_epochs: int = 16
    loc_branch_epoch: int = 12
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    density_scale: float = 100.0
    sigma: float = 4.0
    threads: int | None = None
    max_head_class: int | None = 2

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
    # a seconds-long run for tests: tiny images, a very narrow network, a few steps
    "smoke": DemoBudget(size=(64, 80), n_train=6, n_test=4, width=0.0625, epochs=2, branch_epoch=1,
                        loc_epochs=2, loc_branch_epoch=1),
}


# ------------------------------------------------------------------------------------ helpers
class ScaledCounter(nn.Module):
    """Wraps an FPN so every output map is multiplied by ``factor`` (regression training)."""

    def __init__(self, counter: nn.Module, factor: float):
        super().__init__()
        self.counter = counter
        self.factor = float(factor)
        self.feature_channels = counter.feature_channels

    def forward(self, x: torch.Tensor, return_features: bool = False) -> FPNOutput:
        out = self.counter(x, return_features=return_features)
        f = self.factor
        return FPNOutput(out.final * f, [s * f for s in out.side], out.features)


def fold_output_scale(fpn: nn.Module, factor: float) -> nn.Module:
    """Multiply a :class:`~autoscale.models.fpn.RegressionFPN`'s outputs by ``factor`` in place by
    scaling its ``dsn2..dsn5`` weights and biases and the ``dsn6`` bias (every side output is
    linear in its 1x1 head, and ``dsn6`` is linear in the side outputs). Returns ``fpn``."""
    with torch.no_grad():
        for name in ("dsn2", "dsn3", "dsn4", "dsn5"):
            conv = getattr(fpn, name)
            conv.weight.mul_(factor)
            conv.bias.mul_(factor)
        fpn.dsn6.bias.mul_(factor)
    return fpn


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal (ReLU gain) weights and zero biases for every convolution of ``model``, in place."""
    # From scratch, the authors' N(0, 0.01) init makes a deep ReLU net without BN start with
    # vanishing activations (and slow CPU denormals); Kaiming init trains several times faster.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def mean_baseline_mae(train_counts: Any, test_counts: Any) -> float:
    """MAE on the test counts of always predicting the mean train count."""
    tr = np.asarray(train_counts, dtype=np.float64)
    te = np.asarray(test_counts, dtype=np.float64)
    return float(np.abs(te - tr.mean()).mean())


def _lr_at(step: int, total: int, b: DemoBudget) -> float:
    """Cosine decay from ``lr`` to ``lr * min_lr_ratio`` over ``total`` steps."""
    t = min(max(step / max(total, 1), 0.0), 1.0)
    lo = b.lr * b.min_lr_ratio
    return lo + 0.5 * (b.lr - lo) * (1.0 + math.cos(math.pi * t))


@dataclass
class _Sample:
    image: torch.Tensor  # (1, 3, H, W) normalised
    points: np.ndarray  # (N, 2) x, y
    target: torch.Tensor


def new_fpn_run(variant: str, cfg: PipelineConfig, b: DemoBudget, seed: int) -> tuple[AutoScale, torch.optim.Adam]:
    """A from-scratch FPN (seeded, Kaiming init; regression outputs scaled by ``1 / density_scale``)
    wrapped as a single-pass :class:`AutoScale`, and its Adam optimiser."""
    torch.manual_seed(seed)
    fpn = get_model(f"fpn_{variant}", width=b.width)
    kaiming_init(fpn)
    counter: nn.Module = ScaledCounter(fpn, 1.0 / b.density_scale) if variant == "regression" else fpn
    base = AutoScale(counter, None, cfg)
    return base, torch.optim.Adam(base.parameters(), lr=b.lr, weight_decay=b.weight_decay)


def branch_optimizer(counter: nn.Module, l2s: nn.Module | None, opt_state: dict[str, Any],
                     b: DemoBudget) -> torch.optim.Adam:
    """Adam for an AutoScale run branching off an FPN run: the FPN's optimiser state at the branch
    point for ``counter`` (deep-copied: ``load_state_dict`` keeps the same tensors, which the FPN run
    goes on updating in place) and a new parameter group for a fresh ``l2s``."""
    opt = torch.optim.Adam(counter.parameters(), lr=b.lr, weight_decay=b.weight_decay)
    opt.load_state_dict(copy.deepcopy(opt_state))
    if l2s is not None:
        opt.add_param_group({"params": list(l2s.parameters()), "lr": b.lr, "weight_decay": b.weight_decay})
    return opt


def load_samples(records: list, variant: str, cfg: PipelineConfig) -> tuple[list[_Sample], list[_Sample]]:
    """Every train image and its horizontal mirror (the flip augmentation), tensors prepared once."""
    plain, flipped = [], []
    dev = torch.device("cpu")
    for r in records:
        img = read_image(r.image_path)
        pts = np.asarray(r.points, dtype=np.float64).reshape(-1, 2)
        for flip, dst in ((False, plain), (True, flipped)):
            im, p = img, pts
            if flip:
                im = np.ascontiguousarray(img[:, ::-1])
                p = pts.copy()
                p[:, 0] = img.shape[1] - p[:, 0]
            else:
                im = np.ascontiguousarray(img)
            t = _to_tensor(make_target(variant, p, im.shape[:2], cfg), variant, dev)
            dst.append(_Sample(normalize(im), p, t))
    return plain, flipped


def train_epochs(model: AutoScale, opt: torch.optim.Optimizer, data: tuple[list[_Sample], list[_Sample]],
                 *, method: str, first_epoch: int, last_epoch: int, b: DemoBudget, seed: int,
                 center: CenterLoss | None, log: list[dict[str, Any]], tag: str,
                 say: Callable[[str], None]) -> None:
    """Train epochs ``first_epoch .. last_epoch - 1``; data order and flips come from
    ``(seed, epoch)`` so a branch continues exactly the schedule of its parent."""
    plain, flipped = data
    n = len(plain)
    total = b.epochs * n
    cfg = model.config
    model.train()
    for epoch in range(first_epoch, last_epoch):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n)
        flips = rng.random(n) < 0.5
        t0 = time.perf_counter()
        sums = np.zeros(3)
        n_regions = 0
        for k, (i, fl) in enumerate(zip(order, flips)):
            for g in opt.param_groups:
                g["lr"] = _lr_at(epoch * n + k, total, b)
            s = (flipped if fl else plain)[i]
            if method == "fpn":
                loss = pixel_loss(cfg.variant, model.counter(s.image), s.target, cfg, "sum")
                terms = (float(loss.detach()), 0.0, 0.0)
            else:
                bd = joint_loss(model, s.image, s.points, s.target, center, reduction="sum", refine=True)
                loss = bd.total
                terms = (bd.first, bd.refine, bd.center)
                n_regions += bd.region is not None
            opt.zero_grad(set_to_none=True)
            # Regression: undo the 1/density_scale output factor in the loss's magnitude, so the
            # gradients are not swamped by Adam's epsilon (the loss values logged stay unscaled).
            (loss * (b.density_scale ** 2 if cfg.variant == "regression" else 1.0)).backward()
            opt.step()
            sums += terms
        if center is not None:
            center.step_center()  # T = 1 epoch (paper Eq. 4)
        row = {"model": tag, "epoch": epoch + 1, "loss_first": sums[0] / n, "loss_refine": sums[1] / n,
               "loss_center": sums[2] / n, "regions": n_regions, "seconds": time.perf_counter() - t0}
        log.append(row)
        say(f"  {tag} epoch {epoch + 1}/{b.epochs}: first-pass loss {row['loss_first']:.4g}"
            + (f", refine {row['loss_refine']:.4g}, centre {row['loss_center']:.3g}, regions {n_regions}/{n}"
               if method == "autoscale" else "") + f" ({row['seconds']:.1f} s)")


def _pipeline_dict(cfg: PipelineConfig) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def _checkpoint(counter: nn.Module, l2s: nn.Module | None, cfg: PipelineConfig, method: str,
                b: DemoBudget, seed: int) -> dict[str, Any]:
    variant = cfg.variant
    kwargs: dict[str, Any] = {"backbone": "vgg16", "width": float(b.width)}
    if variant == "localization":
        kwargs["num_classes"] = len(cfg.edges)
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "variant": variant,
        "model": {"name": f"fpn_{variant}", "kwargs": kwargs},
        "state_dict": {k: v.detach().cpu().clone() for k, v in counter.state_dict().items()},
        "l2s_state_dict": None if l2s is None else {k: v.detach().cpu().clone() for k, v in l2s.state_dict().items()},
        "l2s": None if l2s is None else {"head": l2s.head, "bound": l2s.bound, "pool": l2s.pool},
        "pipeline": _pipeline_dict(cfg), "method": method,
        "config": {"demo_budget": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(b).items()},
                   "seed": int(seed)},
    }


def _plain_counter(model: AutoScale, variant: str, b: DemoBudget) -> nn.Module:
    """The bare FPN of a training model, with the regression output factor folded in."""
    c = model.counter
    if isinstance(c, ScaledCounter):
        c = fold_output_scale(copy.deepcopy(c.counter), c.factor)
    return c


def _train_variant(variant: str, train_recs: list, b: DemoBudget, seed: int, ckpt_dir: Path,
                   log: list[dict[str, Any]], say: Callable[[str], None]) -> dict[str, Path]:
    H, W = b.size
    # Bound the zoomed region to 4x the image area so one step never costs more than ~5 first passes.
    if variant == "localization":
        b = replace(b, epochs=b.loc_epochs, branch_epoch=b.loc_branch_epoch)
    cfg = PipelineConfig(variant=variant, sigma=b.sigma, max_zoom_pixels=4 * H * W,
                         max_head_class=b.max_head_class if variant == "localization" else None)
    data = load_samples(train_recs, variant, cfg)
    base, opt = new_fpn_run(variant, cfg, b, seed)
    common = dict(b=b, seed=seed, log=log, say=say)
    train_epochs(base, opt, data, method="fpn", first_epoch=0, last_epoch=b.branch_epoch, center=None,
                 tag=f"fpn_{variant}", **common)
    # Branch: AutoScale starts from the FPN's weights and Adam state at branch_epoch.
    as_counter = copy.deepcopy(base.counter)
    torch.manual_seed(seed + 1)
    l2s = get_model(f"l2s_{variant}", in_channels=as_counter.feature_channels)
    auto = AutoScale(as_counter, l2s, cfg)
    as_opt = branch_optimizer(as_counter, l2s, opt.state_dict(), b)
    train_epochs(base, opt, data, method="fpn", first_epoch=b.branch_epoch, last_epoch=b.epochs, center=None,
                 tag=f"fpn_{variant}", **common)
    center = CenterLoss("paper")
    train_epochs(auto, as_opt, data, method="autoscale", first_epoch=b.branch_epoch, last_epoch=b.epochs,
                 center=center, tag=f"autoscale_{variant}", **common)
    paths = {}
    for method, model in (("fpn", base), ("autoscale", auto)):
        name = f"{method}_{variant}"
        ck = _checkpoint(_plain_counter(model, variant, b), model.l2s, cfg, method, b, seed)
        if center is not None and method == "autoscale":
            ck["center"] = float(center.center)
        paths[name] = ckpt_dir / f"{name}.pt"
        torch.save(ck, paths[name])
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
            res = model.predict(normalize(img))
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
    lines = [
        "# autoscale demo",
        "",
        "FPN and AutoScale (paper: Xu, Liang et al., IJCV 2021) trained **from scratch on synthetic crowds** "
        "on the CPU for a small fixed budget. These numbers show that the pipeline learns; they are not "
        "comparable with the paper's (ImageNet-initialised full-width networks on real benchmarks).",
        "",
        "## Setup",
        "",
        f"- data: `autoscale.data.synth`, seed {results['seed']}, {ds['n_train']} train / {ds['n_test']} test images "
        f"of {ds['size'][0]}x{ds['size'][1]} px; test heads per image mean {ds['test_mean_count']:.1f} "
        f"(min {ds['test_min_count']}, max {ds['test_max_count']})",
        f"- network: VGG16-FPN at width {b['width']} (Kaiming init), Adam lr {b['lr']:g} with cosine decay "
        f"to {b['lr'] * b['min_lr_ratio']:g}, batch 1, random horizontal flips, summed pixel losses "
        f"(MSE for regression, DCE for localization), density sigma {b['sigma']:g} px",
        f"- budget: FPN {b['epochs']} epochs (regression) / {b['loc_epochs']} (localization); AutoScale branches "
        f"off the FPN run after {b['branch_epoch']} / {b['loc_branch_epoch']} epochs and trains the remaining "
        f"{b['epochs'] - b['branch_epoch']} / {b['loc_epochs'] - b['loc_branch_epoch']} with the joint loss (Eq. 6 / Eq. 8)",
        f"- wall time: {sec['total']:.0f} s in total (data {sec['data']:.1f} s, regression {sec['train_regression']:.0f} s, "
        f"localization {sec['train_localization']:.0f} s, evaluation {sec['evaluate']:.0f} s)",
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
def run_demo(out: str | PathLike[str], *, seed: int = 0, budget: str | DemoBudget = "default",
             workers: int = 1, figures: bool = True, verbose: bool = True, **overrides: Any) -> dict[str, Any]:
    """Generate data, train the four models, evaluate them and write the report (see module doc).

    Args:
        out: output folder (created; an existing demo output is overwritten file by file).
        seed: dataset and training seed.
        budget: ``"default"``, ``"smoke"`` or a :class:`DemoBudget`; ``overrides`` replace its fields
            (e.g. ``epochs=20``).
        workers: processes for drawing the synthetic images.
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
        for variant in ("regression", "localization"):
            say(f"training fpn_{variant} and autoscale_{variant} ...")
            t0 = time.perf_counter()
            paths.update(_train_variant(variant, train_recs, b, seed, ckpt_dir, log, say))
            seconds[f"train_{variant}"] = time.perf_counter() - t0
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
