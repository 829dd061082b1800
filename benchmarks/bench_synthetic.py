"""Benchmark: does our AutoScale learn, and do the paper's effects appear? (synthetic crowds)

Trains, from scratch at one fixed budget (same optimiser steps, width, learning-rate schedule;
see ``benchmarks/_common.py``), on a seeded synthetic long-tailed crowd dataset
(:func:`autoscale.data.synth.generate_dataset`) and scores on its held-out test split:

* ``fpn_regression`` vs ``autoscale_regression`` (density maps, Eq. 5 / Eq. 6);
* ``fpn_localization`` vs ``autoscale_localization`` (distance-label maps + DCE, Eq. 7 / Eq. 8);
* ``fpn_localization_ce``: the localization FPN trained with plain cross-entropy (Table 12);
* ``fpn_density_peaks_sigma2``: a regression FPN trained on sigma = 2 px density maps whose
  local maxima (:func:`autoscale.postprocess.density_peaks`, default settings) are the points
  and whose count is the number of peaks (Table 12's density-map localization).

Metrics: MAE, RMSE; ``dense_mae`` by the Table 8 protocol: over the test images where the
AutoScale model of the same kind (regression models: ``autoscale_regression``; localization
models and density peaks: ``autoscale_localization``) refines a dense region, the GT heads inside
that region vs each model's count inside the *same* region (FPN baselines: first-pass count in
the box; AutoScale: the re-predicted count of the zoomed region); localization P/R/F1 at fixed
radii 4 and 8 px (maximum-cardinality matching, :mod:`autoscale.metrics`).

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


def run(out: Path, b: Any, *, smoke: bool, seed: int, verbose: bool, command: str) -> dict[str, Any]:
    t_start = time.perf_counter()
    result: dict[str, Any] = {"command": command, "seed": seed, "machine": C.machine_info(),
                              "budget": C.budget_dict(b), "mode": "smoke" if smoke else "full",
                              "pipeline_overrides": C.SMOKE_PIPELINE if smoke else {}}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        t0 = time.perf_counter()
        data = C.make_data(Path(tmp) / "data", b, seed)
        seconds["data"] = time.perf_counter() - t0
        models: dict[str, tuple[Any, bool, str]] = {}  # name -> (model, single_pass, points_from)
        train_info: dict[str, Any] = {}
        for variant, loss in (("regression", "dce"), ("localization", "dce")):
            cfg = C.pipeline(variant, b, loss=loss)
            trunk = C.train_trunk(variant, data, b, seed, cfg, f"fpn_{variant}", verbose)
            auto, info = C.branch(trunk, cfg, b, seed, f"autoscale_{variant}", verbose=verbose)
            fpn = C.finish_fpn(trunk, b, seed, f"fpn_{variant}", verbose)
            models[f"fpn_{variant}"] = (fpn, True, "model")
            models[f"autoscale_{variant}"] = (auto, False, "model")
            train_info[f"fpn_{variant}"] = {"seconds": trunk.seconds}
            train_info[f"autoscale_{variant}"] = info
        for name, variant, cfg, pf in (
                ("fpn_localization_ce", "localization", C.pipeline("localization", b, loss="ce"), "model"),
                ("fpn_density_peaks_sigma2", "regression", C.pipeline("regression", b, sigma=2.0), "density_peaks")):
            # an FPN-only run: the trunk continued to the full budget
            trunk = C.train_trunk(variant, data, b, seed, cfg, name, verbose)
            models[name] = (C.finish_fpn(trunk, b, seed, name, verbose), True, pf)
            train_info[name] = {"seconds": trunk.seconds}
        seconds["train"] = time.perf_counter() - t0 - seconds["data"]

        t0 = time.perf_counter()
        rows = {name: C.predict_rows(m, data, single_pass=sp, points_from=pf, keep_points=smoke)
                for name, (m, sp, pf) in models.items()}
        seconds["evaluate"] = time.perf_counter() - t0

    methods: dict[str, Any] = {}
    for name in METHODS:
        ref = "autoscale_regression" if name in ("fpn_regression", "autoscale_regression") else "autoscale_localization"
        m = C.summarize(rows[name])
        d = C.dense_region_errors(rows[name], rows[ref], mode="refined" if name == ref else "box")
        m.update(dense_mae=d["mae"], dense_rmse=d["rmse"], dense_images=d["n"], dense_regions_from=ref)
        if name.startswith("autoscale"):
            own_first = C.dense_region_errors(rows[name], rows[ref], mode="own_first")
            m["dense_mae_own_first_pass"] = own_first["mae"]
        m["train"] = train_info[name]
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
                   "per_image": {k: C.public_rows(v) for k, v in rows.items()}})
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
        f"Training (every model the same budget): VGG16-FPN width {b['width']}, from scratch (Kaiming), Adam lr {b['lr']:g} "
        f"cosine to {b['lr'] * b['min_lr_ratio']:g}, {b['epochs']} epochs x {b['n_train']} steps, batch 1, flips; AutoScale "
        f"models branch off their FPN at epoch {b['branch_epoch']} and train the last {b['epochs'] - b['branch_epoch']} "
        f"epochs with the joint loss. Density sigma {b['sigma']:g} px (2 px for the density-peak model).", "",
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
