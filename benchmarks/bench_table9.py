"""Paper Table 9: L2S on other density counters - MCNN, CSRNet, CAN, SFCN and the Bayesian-loss
counter (BL) - each with and without L2S, on the synthetic long-tailed crowds.

For every seed (the synthetic dataset and the initialisation both follow it) and every counter:
one counter run with its own pixel loss (``method: fpn`` - the baseline "without L2S"; MSE, or the
Bayesian loss for BL) trains ``epochs`` epochs and keeps its checkpoint at ``branch_epoch``; the
"with L2S" run branches off that checkpoint (``init_from``: same weights, Adam state and
schedule; a fresh L2S) and trains the remaining epochs with the joint loss (Eq. 6). Both are
``engine.train`` calls (``autoscale train``) with the benchmarks' recipe (``benchmarks/_common.py``:
Kaiming init from scratch, Adam lr 1e-3 cosine to 5 %, batch 1, flips, sigma 4 px, summed pixel
losses) and scored with ``engine.evaluate`` (``autoscale evaluate``) on the test split:

* ``mae`` / ``rmse``: counts;
* ``dense_mae``: the Table 8 protocol on the dense regions the L2S model refined - GT heads in
  its box(es) vs the L2S model's re-predicted count there (``<counter>_l2s``) and vs the baseline's
  count in the same boxes (``<counter>``, evaluated with them as ``given_regions``).

Means and standard deviations (ddof 1) over the seeds. Per counter (narrow widths for one CPU
core): MCNN width 1/2, CSRNet / CAN / SFCN width 1/4 (VGG16 front end), BL width 1/4 (VGG19) with
the Bayesian loss (``pipeline.density_loss: bayesian``). Each network learns ``output_scale`` x its
density with ``output_scale = 100 / stride^2`` (the recipe's 100 per pixel, i.e. the same raw
output magnitude per cell as the FPN per pixel; folded into the saved weights).

Resumable: the finished (seed, counter) pairs are kept in ``<work>/state.json``; running the
same command again continues with the pairs left (``--fresh`` starts over). Partial results are
written after every pair.

    .venv/bin/python benchmarks/bench_table9.py --work /tmp/table9          # about 35-40 CPU-minutes
    .venv/bin/python benchmarks/bench_table9.py --smoke --out /tmp/t9 --work /tmp/t9w
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

#: paper Table 9 (ShanghaiTech Part A; authors' reproductions with each counter's released code).
PAPER: dict[str, dict[str, float]] = {
    "mcnn": {"mae": 115.5, "mse": 174.1}, "mcnn_l2s": {"mae": 110.5, "mse": 168.4},
    "csrnet": {"mae": 69.2, "mse": 111.5}, "csrnet_l2s": {"mae": 65.8, "mse": 107.8},
    "bl": {"mae": 63.4, "mse": 102.9}, "bl_l2s": {"mae": 60.9, "mse": 100.7},
    "can": {"mae": 66.5, "mse": 108.2}, "can_l2s": {"mae": 63.7, "mse": 100.6},
    "sfcn": {"mae": 68.3, "mse": 103.2}, "sfcn_l2s": {"mae": 64.1, "mse": 100.9},
}

#: counter -> (config overrides, density stride, what). Widths: narrow, for a CPU core.
COUNTERS: dict[str, tuple[dict[str, Any], int, str]] = {
    "mcnn": ({"model.counter": "mcnn", "model.width": 0.5}, 4, "MCNN (Zhang et al. 2016), width 1/2"),
    "csrnet": ({"model.counter": "csrnet", "model.width": 0.25}, 8, "CSRNet-B (Li et al. 2018), VGG16 front end, width 1/4"),
    "can": ({"model.counter": "can", "model.width": 0.25}, 8, "CAN (Liu et al. 2019), VGG16 front end, width 1/4"),
    "sfcn": ({"model.counter": "sfcn", "model.width": 0.25}, 8, "SFCN VGG16 variant (Wang et al. 2019), width 1/4"),
    "bl": ({"model.counter": "bl", "model.backbone": "vgg19", "model.width": 0.25}, 8,
           "BL network (VGG19, width 1/4) + Bayesian loss (Ma et al. 2019)"),
}
PIPELINE_EXTRA = {"bl": {"density_loss": "bayesian"}}

#: The full run: 144x192 crowds, 100 train / 40 test images, 16 epochs, L2S from epoch 8 (8 joint epochs).
FULL = C.bench_budget(size=(144, 192), n_train=100, n_test=40, width=0.25, epochs=16, branch_epoch=8)
#: Seconds-long run for the tests (2 seeds so that the spread over seeds is exercised).
SMOKE = C.SMOKE
FULL_SEEDS, SMOKE_SEEDS = (0, 1, 2), (0, 1)
SMOKE_WIDTHS = {"mcnn": 0.125, "bl": 0.0625}  # the others take the smoke budget's width


def overrides(counter: str, b: Any, smoke: bool) -> dict[str, Any]:
    """Config overrides of ``counter``: its model keys and ``model.output_scale = 100 / stride^2``."""
    over, stride, _ = COUNTERS[counter]
    over = dict(over)
    if smoke:
        over["model.width"] = SMOKE_WIDTHS.get(counter, b.width)
    over["model.output_scale"] = b.density_scale / stride ** 2
    return over


def default_work() -> Path:
    return Path(tempfile.gettempdir()) / "autoscale_bench_table9"


# ------------------------------------------------------------------------------------- one pair
def run_pair(counter: str, seed: int, data: C.Data, b: Any, smoke: bool, work: Path, verbose: bool) -> dict[str, Any]:
    """Train the counter without and with L2S (same trunk), evaluate both; one state entry."""
    t0, c0 = time.perf_counter(), time.process_time()
    pipe = C.pipeline("regression", b, **PIPELINE_EXTRA.get(counter, {}))
    over = overrides(counter, b, smoke)
    runs = work / "runs" / f"{seed}_{counter}"
    base = C.train_fpn(counter, "regression", data, b, seed, pipe, runs, verbose, overrides=over)
    l2s = C.branch(f"{counter}_l2s", base, data, b, seed, pipe, runs, verbose, overrides=over)
    m_l2s, rows_l2s = C.evaluate_run(l2s.checkpoint, data.test)
    m_base, rows_base = C.evaluate_run(base.checkpoint, data.test, given_regions=C.regions_of(rows_l2s))
    s_base, s_l2s = C.summarize(m_base), C.summarize(m_l2s)
    given, own, first = C.dense_given(m_base), C.dense_own(m_l2s), C.dense_own(m_l2s, "baseline")
    entry = {
        "seed": seed, "counter": counter,
        "base": {"mae": s_base["mae"], "rmse": s_base["rmse"], "dense_mae": given["mae"], "dense_rmse": given["rmse"],
                 "dense_images": given["n"], "train": {"cpu_seconds": base.cpu_seconds, "seconds": base.seconds}},
        "l2s": {"mae": s_l2s["mae"], "rmse": s_l2s["rmse"], "first_pass_mae": s_l2s["first_pass_mae"],
                "dense_mae": own["mae"], "dense_rmse": own["rmse"], "dense_images": own["n"],
                "dense_mae_first_pass": first["mae"], "images_refined": s_l2s["images_refined"],
                "scale_mean": s_l2s.get("scale_mean"), "scale_min": s_l2s.get("scale_min"),
                "scale_max": s_l2s.get("scale_max"),
                "train": {"cpu_seconds": l2s.cpu_seconds, "seconds": l2s.seconds,
                          "center": l2s.info().get("center"), "regions_per_epoch": l2s.info().get("regions_per_epoch")}},
        "rows": {"base": rows_base, "l2s": rows_l2s},
        "pair_seconds": round(time.perf_counter() - t0, 2), "pair_cpu_seconds": round(time.process_time() - c0, 2),
    }
    shutil.rmtree(runs, ignore_errors=True)  # the state keeps the numbers; checkpoints are not kept
    return entry


# ------------------------------------------------------------------------------------- results
def _stats(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None, None, 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else 0.0), len(v)


def aggregate(pairs: dict[str, dict[str, Any]], counters: Sequence[str]) -> dict[str, Any]:
    """``methods``: per counter and ``<counter>_l2s``, the means over seeds of the metrics and their std."""
    methods: dict[str, Any] = {}
    for counter in counters:
        done = sorted((p for p in pairs.values() if p["counter"] == counter), key=lambda p: p["seed"])
        for name, key in ((counter, "base"), (f"{counter}_l2s", "l2s")):
            entries = [p[key] for p in done]
            m: dict[str, Any] = {"seeds": [p["seed"] for p in done]}
            keys = ["mae", "rmse", "dense_mae"] + (["first_pass_mae", "dense_mae_first_pass", "scale_mean"]
                                                   if key == "l2s" else [])
            for k in keys:
                mean, std, n = _stats([e.get(k) for e in entries])
                m[k], m[f"{k}_std"] = mean, std
                if k == "dense_mae":
                    m["dense_seeds"] = n
            m["dense_images"] = [e["dense_images"] for e in entries]
            m["per_seed"] = [{k: e.get(k) for k in keys} for e in entries]
            m["paper_shanghaitech_a"] = PAPER[name]
            m["cpu_seconds_mean"] = _stats([e["train"]["cpu_seconds"] for e in entries])[0]
            methods[name] = m
    return methods


def targets(methods: dict[str, Any], counters: Sequence[str]) -> dict[str, Any]:
    """The issue's target: L2S lowers the dense-region MAE of every counter and the MAE of at least
    four of the five (means over seeds)."""
    dense, mae = {}, {}
    for c in counters:
        b, l = methods[c], methods[f"{c}_l2s"]
        dense[c] = None if b["dense_mae"] is None or l["dense_mae"] is None else l["dense_mae"] < b["dense_mae"]
        mae[c] = None if b["mae"] is None or l["mae"] is None else l["mae"] < b["mae"]
    n_mae = sum(1 for v in mae.values() if v)
    return {"dense_lower_every_counter": {"per_counter": dense, "met": all(v is True for v in dense.values())},
            "mae_lower_at_least_four": {"per_counter": mae, "lower": n_mae, "met": n_mae >= min(4, len(counters))}}


def markdown(r: dict[str, Any]) -> str:
    b, f, ms = r["budget"], C.fmt, r["methods"]
    pm = lambda m, k: "–" if m.get(k) is None else f"{m[k]:.2f} ± {m[f'{k}_std']:.2f}"  # noqa: E731
    lines = [
        "# Paper Table 9 on synthetic crowds: L2S on other density counters", "",
        C.command_line(r), "",
        f"Status: {'complete' if r['complete'] else 'PARTIAL'} ({r['pairs_done']} of {r['pairs_total']} (seed, counter) "
        f"pairs; seeds {', '.join(map(str, r['seeds']))}).", "",
        f"Data: synthetic long-tailed crowds, {b['n_train']} train / {b['n_test']} test images of "
        f"{b['size'][0]}x{b['size'][1]} px per seed (the seed also draws the data). Every model: {b['epochs']} epochs "
        f"x {b['n_train']} steps, batch 1, Adam lr {b['lr']:g} cosine to {b['lr'] * b['min_lr_ratio']:g}, from scratch; "
        f"the L2S model branches off its counter's epoch-{b['branch_epoch']} checkpoint and trains the last "
        f"{b['epochs'] - b['branch_epoch']} epochs with the joint loss (Eq. 6; BL: Bayesian loss in both passes).", "",
        "Dense MAE: over the test images where the L2S model refined a region, GT heads in its box(es) vs the "
        "L2S model's re-predicted count (row `+ L2S`) and vs the counter's own count in the same boxes (plain row). "
        "Mean ± std over seeds. Paper: ShanghaiTech A MAE (Table 9), for orientation only (other data, full models).", "",
        "| counter | MAE | RMSE | dense MAE | first-pass MAE | mean zoom | paper MAE (SHA) |",
        "|---|---|---|---|---|---|---|"]
    for c in r["counters"]:
        for name, label in ((c, c), (f"{c}_l2s", f"{c} + L2S")):
            m = ms[name]
            lines.append(f"| {label} | {pm(m, 'mae')} | {pm(m, 'rmse')} | {pm(m, 'dense_mae')} | "
                         f"{pm(m, 'first_pass_mae') if 'first_pass_mae' in m else '–'} | {f(m.get('scale_mean'), 2)} | "
                         f"{m['paper_shanghaitech_a']['mae']} |")
    t = r["targets"]
    lines += ["", "| counter | dense MAE change with L2S | MAE change with L2S |", "|---|---|---|"]
    for c in r["counters"]:
        b0, l0 = ms[c], ms[f"{c}_l2s"]
        dd = None if b0["dense_mae"] in (None, 0) or l0["dense_mae"] is None else (l0["dense_mae"] - b0["dense_mae"]) / b0["dense_mae"]
        dm = None if b0["mae"] in (None, 0) or l0["mae"] is None else (l0["mae"] - b0["mae"]) / b0["mae"]
        lines.append(f"| {c} | {'–' if dd is None else f'{100 * dd:+.1f} %'} | {'–' if dm is None else f'{100 * dm:+.1f} %'} |")
    lines += ["", f"Target: L2S lowers the dense-region MAE of every counter: "
                  f"{'met' if t['dense_lower_every_counter']['met'] else 'not met'}; the MAE of at least four of five: "
                  f"{t['mae_lower_at_least_four']['lower']} of {len(r['counters'])} "
                  f"({'met' if t['mae_lower_at_least_four']['met'] else 'not met'}).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- main
def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def run(out: Path, b: Any, *, smoke: bool, seeds: Sequence[int], counters: Sequence[str], work: Path, fresh: bool,
        verbose: bool, command: str) -> dict[str, Any]:
    say = (lambda s: print(s, flush=True)) if verbose else (lambda s: None)
    t_start = time.perf_counter()
    budget = C.budget_dict(b)
    settings = {"budget": budget, "smoke": smoke,
                "overrides": {c: overrides(c, b, smoke) for c in counters},
                "pipeline": {c: PIPELINE_EXTRA.get(c, {}) for c in counters}}
    state_path = work / "state.json"
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"settings": settings, "pairs": {}}
    if state_path.is_file():
        old = json.loads(state_path.read_text())
        if old.get("settings") != settings:
            raise SystemExit(f"{state_path}: holds pairs of other settings; pass --fresh or another --work")
        state = old
        say(f"resuming: {len(state['pairs'])} pairs done in {state_path}")
    result: dict[str, Any] = {"command": command, "seed": " ".join(map(str, seeds)), "seeds": list(seeds),
                              "counters": list(counters),
                              "machine": C.machine_info(), "budget": budget, "mode": "smoke" if smoke else "full",
                              "settings": settings, "pipeline_overrides": C.SMOKE_PIPELINE if smoke else {},
                              "what": {c: COUNTERS[c][2] for c in counters}, "work": str(work)}

    def publish(complete: bool) -> None:
        pairs = state["pairs"]
        methods = aggregate(pairs, counters)
        result.update({"complete": complete, "pairs_done": len(pairs), "pairs_total": len(seeds) * len(counters),
                       "methods": methods, "targets": targets(methods, counters),
                       "cpu_seconds": round(sum(p["pair_cpu_seconds"] for p in pairs.values()), 1),
                       "pairs": {k: {kk: vv for kk, vv in p.items() if kk != "rows"} for k, p in sorted(pairs.items())},
                       "per_image": {k: p["rows"] for k, p in sorted(pairs.items())}})
        C.finish(result, {}, t_start)
        C.write_results(out, "table9", result, markdown(result))

    for seed in seeds:
        todo = [c for c in counters if f"{seed}/{c}" not in state["pairs"]]
        if not todo:
            continue
        data = C.make_data(work / f"data_{seed}", b, seed)
        for counter in todo:
            say(f"seed {seed}: {counter} without and with L2S ...")
            entry = run_pair(counter, seed, data, b, smoke, work, verbose)
            entry["dataset"] = data.info
            state["pairs"][f"{seed}/{counter}"] = entry
            _write_json_atomic(state_path, state)
            say(f"  {counter}: MAE {entry['base']['mae']:.2f} -> {entry['l2s']['mae']:.2f}, dense MAE "
                f"{C.fmt(entry['base']['dense_mae'])} -> {C.fmt(entry['l2s']['dense_mae'])} "
                f"({entry['pair_cpu_seconds']:.0f} CPU-s)")
            publish(complete=False)
    publish(complete=True)
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny seconds-long run (tests)")
    ap.add_argument("--out", type=Path, default=C.RESULTS, help="folder for table9.json / table9.md")
    ap.add_argument("--work", type=Path, default=None, help=f"resumable work folder (default {default_work()})")
    ap.add_argument("--fresh", action="store_true", help="discard the work folder's finished pairs")
    ap.add_argument("--seeds", type=int, nargs="+", help=f"seeds (default {' '.join(map(str, FULL_SEEDS))})")
    ap.add_argument("--counters", nargs="+", choices=list(COUNTERS), help="a subset of the counters")
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--n-test", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--branch-epoch", type=int)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    b = SMOKE if a.smoke else FULL
    b = C.with_epochs(b, a.epochs, a.branch_epoch,
                      **{k: getattr(a, k) for k in ("n_train", "n_test") if getattr(a, k) is not None})
    seeds = tuple(a.seeds) if a.seeds else (SMOKE_SEEDS if a.smoke else FULL_SEEDS)
    counters = tuple(a.counters) if a.counters else tuple(COUNTERS)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python benchmarks/bench_table9.py", *argv_list])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(a.out, b, smoke=a.smoke, seeds=seeds, counters=counters, work=a.work or default_work(),
                   fresh=a.fresh, verbose=not a.quiet, command=command)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
