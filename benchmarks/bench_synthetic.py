"""Benchmark: does our AutoScale learn, and do the paper's effects appear? (synthetic crowds)

Trains, from scratch at one fixed budget (same optimiser steps, width, learning-rate schedule;
every model one :func:`autoscale.engine.trainer.train` call, AutoScale models branching off their
FPN with ``init_from``; see ``benchmarks/_common.py``), on a seeded synthetic long-tailed crowd
dataset (:func:`autoscale.data.synth.generate_dataset`) and scores with
:func:`autoscale.engine.evaluate.evaluate` on its held-out test split:

* ``fpn_regression`` vs ``autoscale_regression`` (density maps, Eq. 5 / Eq. 6);
* ``fpn_localization`` vs ``autoscale_localization`` (distance-label maps + DCE, Eq. 7 / Eq. 8);
* ``fpn_localization_ce``: the localization FPN trained with plain cross-entropy (Table 12);
* ``fpn_density_peaks_sigma2``: a regression FPN trained on sigma = 2 px density maps whose
  local maxima (:func:`autoscale.postprocess.density_peaks`, default settings) are the points
  and whose count is the number of peaks (Table 12's density-map localization).

Metrics: MAE, RMSE; ``dense_mae`` by the Table 8 protocol: over the test images where the
AutoScale model of the same kind (regression models: ``autoscale_regression``; localization
models and density peaks: ``autoscale_localization``) refines a dense region, the GT heads inside
that region vs each model's count inside the *same* region (FPN baselines: density sum or points
in the box, evaluated with those boxes as ``given_regions``; AutoScale: the re-predicted count of
the zoomed region, evaluate's ``dense_regions``); localization P/R/F1 at fixed radii 4 and 8 px
(maximum-cardinality matching, :mod:`autoscale.metrics`).

Run from the project root (``--smoke``: seconds; default: ~20 min single-threaded)::

    .venv/bin/python benchmarks/bench_synthetic.py
    .venv/bin/python benchmarks/bench_synthetic.py --smoke --out /tmp/bs
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

METHODS = ("fpn_regression", "autoscale_regression", "fpn_localization", "autoscale_localization",
           "fpn_localization_ce", "fpn_density_peaks_sigma2")
#: The AutoScale model whose refined regions give each method's dense MAE (Table 8).
REGIONS_FROM = {m: "autoscale_regression" if m.endswith("_regression") else "autoscale_localization" for m in METHODS}
PEAKS = ("fpn_density_peaks_sigma2",)


def run(out: Path, b: Any, *, smoke: bool, seed: int, verbose: bool, command: str) -> dict[str, Any]:
    t_start = time.perf_counter()
    result: dict[str, Any] = {"command": command, "seed": seed, "machine": C.machine_info(),
                              "budget": C.budget_dict(b), "mode": "smoke" if smoke else "full",
                              "pipeline_overrides": C.SMOKE_PIPELINE if smoke else {}}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        t0 = time.perf_counter()
        data = C.make_data(Path(tmp) / "data", b, seed)
        work = Path(tmp) / "runs"
        seconds["data"] = time.perf_counter() - t0
        runs: dict[str, C.Run] = {}
        for variant in ("regression", "localization"):
            cfg = C.pipeline(variant, b, loss="dce")
            runs[f"fpn_{variant}"] = C.train_fpn(f"fpn_{variant}", variant, data, b, seed, cfg, work, verbose)
            runs[f"autoscale_{variant}"] = C.branch(f"autoscale_{variant}", runs[f"fpn_{variant}"], data, b, seed, cfg,
                                                    work, verbose)
        # FPN-only runs: plain cross-entropy (Table 12) and sigma 2 density maps for the peaks
        runs["fpn_localization_ce"] = C.train_fpn("fpn_localization_ce", "localization", data, b, seed,
                                                  C.pipeline("localization", b, loss="ce"), work, verbose)
        runs["fpn_density_peaks_sigma2"] = C.train_fpn("fpn_density_peaks_sigma2", "regression", data, b, seed,
                                                       C.pipeline("regression", b, sigma=2.0), work, verbose)
        seconds["train"] = time.perf_counter() - t0 - seconds["data"]

        # every model scored by evaluate(); the FPNs inside the regions of the AutoScale model of their kind
        t0 = time.perf_counter()
        ev: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        for name in sorted(METHODS, key=lambda n: REGIONS_FROM[n] != n):  # the AutoScale models first
            ref = REGIONS_FROM[name]
            given = None if name == ref else C.regions_of(ev[ref][1])
            ev[name] = C.evaluate_run(runs[name].checkpoint, data.test, peaks=name in PEAKS, given_regions=given,
                                      keep_points=smoke)
        seconds["evaluate"] = time.perf_counter() - t0

    methods: dict[str, Any] = {}
    for name in METHODS:
        ref, (metrics, _) = REGIONS_FROM[name], ev[name]
        m = C.summarize(metrics, peaks=name in PEAKS)
        d = C.dense_own(metrics) if name == ref else C.dense_given(metrics)
        m.update(dense_mae=d["mae"], dense_rmse=d["rmse"], dense_images=d["n"], dense_regions_from=ref)
        if name == ref:
            m["dense_mae_own_first_pass"] = C.dense_own(metrics, "baseline")["mae"]
        m["train"] = runs[name].info()
        methods[name] = m

    def rel_gain(base: float | None, new: float | None) -> float | None:
        if base is None or new is None or base == 0:
            return None
        return (base - new) / base

    targets: dict[str, Any] = {}
    for v in ("regression", "localization"):
        base, new = methods[f"fpn_{v}"]["dense_mae"], methods[f"autoscale_{v}"]["dense_mae"]
        g = rel_gain(base, new)
        targets[f"dense_mae_reduction_{v}"] = {
            "target": "AutoScale lowers dense-region MAE by >= 10 % vs the FPN (same regions)",
            "fpn_dense_mae": base, "autoscale_dense_mae": new, "reduction": g,
            "met": bool(g is not None and g >= 0.10)}
    dce, ce = methods["fpn_localization"], methods["fpn_localization_ce"]
    targets["dce_beats_ce_f1"] = {"target": "DCE beats CE on F1 at sigma 8 (FPN, same budget)",
                                  "dce_f1_sigma8": dce["f1_sigma8"], "ce_f1_sigma8": ce["f1_sigma8"],
                                  "dce_f1_sigma4": dce["f1_sigma4"], "ce_f1_sigma4": ce["f1_sigma4"],
                                  "dce_mae": dce["mae"], "ce_mae": ce["mae"],
                                  "met": bool(dce["f1_sigma8"] > ce["f1_sigma8"])}
    dp = methods["fpn_density_peaks_sigma2"]
    targets["distance_label_beats_density_peaks"] = {
        "target": "distance-label localization (FPN, DCE) beats density-map local maxima (sigma 2) on F1 at sigma 8",
        "distance_label_f1_sigma8": dce["f1_sigma8"], "density_peaks_f1_sigma8": dp["f1_sigma8"],
        "distance_label_f1_sigma4": dce["f1_sigma4"], "density_peaks_f1_sigma4": dp["f1_sigma4"],
        "distance_label_mae": dce["mae"], "density_peaks_mae": dp["mae"],
        "met": bool(dce["f1_sigma8"] > dp["f1_sigma8"])}
    C.finish(result, seconds, t_start)
    result.update({"dataset": data.info, "methods": methods, "targets": targets,
                   "dense_protocol": "Table 8: images where the AutoScale model of the same kind refined a region; GT "
                                     "heads in its region(s) vs each model's count in the same box(es): FPN first-pass "
                                     "count (density sum / points inside), AutoScale re-predicted count",
                   "per_image": {k: ev[k][1] for k in METHODS}})
    C.write_results(out, "synthetic", result, markdown(result))
    return result


def markdown(r: dict[str, Any]) -> str:
    b, ds, f = r["budget"], r["dataset"], C.fmt
    lines = [
        "# Synthetic crowds: FPN vs AutoScale, DCE vs CE, distance labels vs density peaks", "",
        C.command_line(r), "",
        f"Data: {ds['n_train']} train / {ds['n_test']} test synthetic images of {ds['size_hw'][0]}x{ds['size_hw'][1]} px "
        f"(test heads per image {ds['test_count_min']}-{ds['test_count_max']}, mean {ds['test_count_mean']:.1f}); "
        f"predicting the mean train count gives MAE {ds['mean_baseline_mae']:.2f}.", "",
        f"Training (every model one `autoscale.engine.trainer.train` call, the same budget): VGG16-FPN width "
        f"{b['width']}, from scratch (Kaiming), Adam lr {b['lr']:g} cosine to {b['lr'] * b['min_lr_ratio']:g}, "
        f"{b['epochs']} epochs x {b['n_train']} steps, batch 1, flips; AutoScale models branch off their FPN's "
        f"epoch-{b['branch_epoch']} checkpoint (`init_from`) and train the last {b['epochs'] - b['branch_epoch']} "
        f"epochs with the joint loss. Density sigma {b['sigma']:g} px (2 px for the density-peak model). "
        "Scored with `autoscale.engine.evaluate.evaluate`.", "",
        "| method | MAE | RMSE | dense MAE (n) | P/R/F1 @4 px | P/R/F1 @8 px | refined imgs | mean zoom |",
        "|---|---|---|---|---|---|---|---|"]
    for name, m in r["methods"].items():
        prf = lambda k: (f"{m[f'precision_sigma{k}']:.3f}/{m[f'recall_sigma{k}']:.3f}/{m[f'f1_sigma{k}']:.3f}"  # noqa: E731
                         if f"f1_sigma{k}" in m else "–")
        lines.append(f"| {name} | {f(m['mae'])} | {f(m['rmse'])} | {f(m['dense_mae'])} ({m['dense_images']}) | {prf(4)} | "
                     f"{prf(8)} | {m['images_refined'] if name.startswith('autoscale') else '–'} | "
                     f"{f(m.get('scale_mean'), 3) if name.startswith('autoscale') else '–'} |")
    lines += ["", f"Dense MAE protocol: {r['dense_protocol']}. Regression methods use `autoscale_regression`'s regions, "
              "localization methods and density peaks use `autoscale_localization`'s regions.", ""]
    for v in ("regression", "localization"):
        m = r["methods"][f"autoscale_{v}"]
        lines.append(f"- autoscale_{v}: first-pass MAE {f(m['first_pass_mae'])}; its own first pass in its regions: "
                     f"dense MAE {f(m['dense_mae_own_first_pass'])}.")
    dp = r["methods"]["fpn_density_peaks_sigma2"]
    lines += [f"- fpn_density_peaks_sigma2: MAE of the density-map sum (not peaks) {f(dp['mae_density_sum'])}.", "",
              "## Targets", ""]
    for k, t in r["targets"].items():
        nums = ", ".join(f"{a} {f(v, 3)}" for a, v in t.items() if a not in ("target", "met"))
        lines.append(f"- **{k}** ({t['target']}): {'met' if t['met'] else 'NOT met'} — {nums}")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return C.bench_main("bench_synthetic.py", __doc__, run, argv)


if __name__ == "__main__":
    main()
