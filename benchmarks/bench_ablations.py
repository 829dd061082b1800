"""Ablations of AutoScale (regression) on the synthetic crowds of ``bench_synthetic.py``.

Same data (seed), same budget and the same trunk: one regression FPN run (the FPN baseline,
:func:`autoscale.engine.trainer.train`) keeps its checkpoint at ``branch_epoch``; every variant
below is a ``train`` call branching off that checkpoint (``init_from``) with its own pipeline
settings and trains the remaining epochs with the joint loss (Eq. 6), so all variants get the same
steps, width and learning-rate schedule (``benchmarks/_common.py``):

* ``learned``: the paper's AutoScale (L2S, closeness = mean nearest-neighbour distance, Eq. 1;
  dense threshold 2 x mean; fixed kernel; one region);
* ``fixed_1.5`` ... ``fixed_3`` (Fig. 10c): the dense region zoomed by a constant factor
  (``PipelineConfig.fixed_scale``; no L2S, no centre loss) in training and inference;
* ``people_number`` (Table 10): the centre loss on the *average people number* measure instead
  of the mean distance (``PipelineConfig.closeness="people_number"``: ``S = sqrt(area / N)`` px
  so that Eq. 2 keeps its form);
* ``dense_official_4x``: the official code's dense rule (``dense_method="official"``, k = 4 on the
  max-normalised uint8 map) instead of the paper's ``density > 2 x mean``, in training and
  inference;
* ``kernel_multiplied`` / ``kernel_divided`` (Table 11; ``learned`` is "fixed");
* ``top2`` (Table 15): the ``learned`` model evaluated with ``top_k=2`` (the joint loss trains
  on the first region only, so there is nothing else to train).

Per variant, scored with :func:`autoscale.engine.evaluate.evaluate`: MAE, RMSE, and dense MAE
(Table 8 protocol) on the variant's *own* refined regions (``dense_mae``: re-predicted count;
``dense_mae_first_pass``: its own first pass there; ``dense_mae_fpn``: the FPN baseline's count in
the same boxes, the FPN evaluated with the variant's boxes as ``given_regions``).

    .venv/bin/python benchmarks/bench_ablations.py
    .venv/bin/python benchmarks/bench_ablations.py --smoke --out /tmp/ba
"""
from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from autoscale.models.registry import load_checkpoint  # noqa: E402
from autoscale.predict import pipeline_config_from_checkpoint  # noqa: E402

FIXED_SCALES = (1.5, 2.0, 2.5, 3.0)


def checkpoint_pipeline(path: Path) -> Any:
    """The pipeline settings a checkpoint was trained (and is evaluated) with."""
    return pipeline_config_from_checkpoint(load_checkpoint(path), str(path))


def variants(b: Any) -> dict[str, tuple[Any, str, str]]:
    """name -> (pipeline config, what it ablates)."""
    p = lambda **kw: C.pipeline("regression", b, **kw)  # noqa: E731
    out = {"learned": (p(), "paper AutoScale (L2S)")}
    for s in FIXED_SCALES:
        out[f"fixed_{s:g}"] = (p(fixed_scale=s), f"Fig. 10c: fixed zoom x{s:g}")
    out["people_number"] = (p(closeness="people_number"), "Table 10: centre loss on the average people number")
    out["dense_official_4x"] = (p(dense_k=4.0, dense_method="official"),
                                "official dense rule (k = 4, uint8, cap 150/255) vs paper 2 x mean")
    out["kernel_multiplied"] = (p(kernel="multiplied"), "Table 11: sigma x scale, region zoomed")
    out["kernel_divided"] = (p(kernel="divided"), "Table 11: sigma / scale, region kept")
    return out


def run(out: Path, b: Any, *, smoke: bool, seed: int, verbose: bool, command: str) -> dict[str, Any]:
    t_start = time.perf_counter()
    result: dict[str, Any] = {"command": command, "seed": seed, "machine": C.machine_info(),
                              "budget": C.budget_dict(b), "mode": "smoke" if smoke else "full",
                              "pipeline_overrides": C.SMOKE_PIPELINE if smoke else {}}
    seconds: dict[str, float] = {}
    specs = variants(b)
    with tempfile.TemporaryDirectory(prefix="bench_abl_") as tmp:
        t0 = time.perf_counter()
        data = C.make_data(Path(tmp) / "data", b, seed)
        work = Path(tmp) / "runs"
        seconds["data"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fpn = C.train_fpn("fpn", "regression", data, b, seed, specs["learned"][0], work, verbose)
        runs = {name: C.branch(name, fpn, data, b, seed, cfg, work, verbose) for name, (cfg, _) in specs.items()}
        seconds["train"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        ev = {name: C.evaluate_run(run.checkpoint, data.test) for name, run in runs.items()}
        learned = runs["learned"].checkpoint
        ev["top2"] = C.evaluate_run(learned, data.test, pipe=replace(checkpoint_pipeline(learned), top_k=2))
        # the FPN baseline inside each variant's own regions (its row: inside those of `learned`)
        fpn_in = {name: C.evaluate_run(fpn.checkpoint, data.test, given_regions=C.regions_of(rows))
                  for name, (_, rows) in ev.items()}
        seconds["evaluate"] = time.perf_counter() - t0

    table: dict[str, Any] = {}
    rows = {"fpn": fpn_in["learned"][1], **{name: r for name, (_, r) in ev.items()}}
    m = C.summarize(fpn_in["learned"][0])
    d = C.dense_given(fpn_in["learned"][0])
    m.update(dense_mae=d["mae"], dense_rmse=d["rmse"], dense_images=d["n"],
             note="FPN baseline; dense MAE in the regions of `learned`", train=fpn.info())
    table["fpn"] = m
    for name, (metrics, rr) in ev.items():
        m = C.summarize(metrics)
        own, first, base = C.dense_own(metrics), C.dense_own(metrics, "baseline"), C.dense_given(fpn_in[name][0])
        m.update(dense_mae=own["mae"], dense_rmse=own["rmse"], dense_images=own["n"],
                 dense_mae_first_pass=first["mae"], dense_mae_fpn=base["mae"],
                 dense_gain_vs_fpn=(None if not base["mae"] or own["mae"] is None
                                    else (base["mae"] - own["mae"]) / base["mae"]),
                 images_with_two_regions=int(sum(len(r["regions"]) >= 2 for r in rr)))
        if name == "top2":
            m.update(note="Table 15: `learned` evaluated with top_k=2", train=None)
        else:
            m.update(note=specs[name][1], train=runs[name].info())
        table[name] = m
    C.finish(result, seconds, t_start)
    result.update({"dataset": data.info, "variants": table, "per_image": rows})
    C.write_results(out, "ablations", result, markdown(result))
    return result


def markdown(r: dict[str, Any]) -> str:
    b, ds, f = r["budget"], r["dataset"], C.fmt
    lines = [
        "# AutoScale ablations (regression) on synthetic crowds", "",
        C.command_line(r), "",
        f"Data: the `bench_synthetic.py` dataset ({ds['n_train']} train / {ds['n_test']} test images of "
        f"{ds['size_hw'][0]}x{ds['size_hw'][1]} px, test heads {ds['test_count_min']}-{ds['test_count_max']}, "
        f"mean {ds['test_count_mean']:.1f}; mean-count baseline MAE {ds['mean_baseline_mae']:.2f}). "
        f"Budget: width {b['width']}, {b['epochs']} epochs, every variant branches off one FPN trunk at epoch "
        f"{b['branch_epoch']} (same steps and learning-rate schedule).", "",
        "Dense MAE: over the test images where the variant refined a region, GT heads in its region(s) vs its "
        "re-predicted count; `first pass` = its own first pass in the same boxes; `FPN` = the FPN baseline in the "
        "same boxes; gain = (FPN - variant) / FPN.", "",
        "| variant | MAE | RMSE | dense MAE | dense first pass | dense FPN | gain | n | mean zoom | what |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in r["variants"].items():
        lines.append(f"| {name} | {f(m['mae'])} | {f(m['rmse'])} | {f(m['dense_mae'])} | {f(m.get('dense_mae_first_pass'))} | "
                     f"{f(m.get('dense_mae_fpn'))} | {f(m.get('dense_gain_vs_fpn'), 3)} | {m['dense_images']} | "
                     f"{f(m.get('scale_mean'), 3)} | {m['note']} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return C.bench_main("bench_ablations.py", __doc__, run, argv)


if __name__ == "__main__":
    main()
