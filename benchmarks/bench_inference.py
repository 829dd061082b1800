"""Benchmark: inference time of the two-pass AutoScale pipeline (regression, VGG16 FPN, batch 1, CPU).

What is measured (seconds; ``--warmup`` untimed rounds, then ``--repeats`` timed rounds, each round
timing every case back to back so drifting load from other jobs hits all cases alike; median and
minimum reported):

* ``first_pass``: ``counter(x, return_features=True)`` - the first pass with the L2S feature;
* ``single_pass``: ``AutoScale.predict(x, single_pass=True)`` (forward without features + count);
* ``second_pass_s2``: ``zoom_region(x, box, 2.0, bilinear)`` + ``counter(zoomed)`` on the region;
* ``second_pass_l2s``: L2S on the region's pooled first-pass feature (``scale_for`` + ``_safe_scale``),
  then the same zoom + counter at that scale;
* ``full_l2s`` / ``full_s2``: ``AutoScale.predict(x)`` end to end (first pass with features, dense
  mask + region selection on the predicted map, L2S or the fixed scale 2, zoom, second pass,
  composition). ``AutoScale.dense_regions`` is wrapped on the instance: it still computes the real
  mask and components on the predicted map (their cost is included) but returns the forced
  representative region, because untrained weights rarely yield a dense region.

Second-pass overhead = ``(full - first_pass) / first_pass``, from the medians, from the minima, and
paired per round (median over rounds; the target uses this one).

The representative region: the dense region found by :func:`autoscale.dense_region.find_dense_regions`
(paper rule, k = 2, gate J = 0.1) on the ground-truth density (sigma 8) of a ShanghaiTech B test
image. By default the image is the one whose region area ratio is the median among the test images
that pass the gate (so the region is typical of images AutoScale actually refines).

Weights: VGG16 FPN with the authors' initialisation (seeded), untrained. An untrained FPN outputs a
near-zero-mean signed map, so its count cannot be compared in relative terms. We therefore refit
only the final 1x1 fusion ``dsn6`` (4 weights, no bias) by least squares in fp32 so the first-pass
map best fits the image's ground-truth density: the count is then a weighted sum of the network's
side outputs (every layer contributes, no constant term), like a trained model. This "linear probe"
changes no cost. Raw-map agreement (relative L2 error, relative change of the L1 mass) is reported too.

Configurations: ``fp32`` (contiguous) and, where oneDNN supports bf16 (AVX512-BF16 / AMX),
``bf16_cl``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around each call, model and input in
``torch.channels_last``. Each configuration runs in its own subprocess so ``ru_maxrss`` (peak RSS)
is per configuration. Run from the project root:

    .venv/bin/python benchmarks/bench_inference.py            # full benchmark (minutes), writes results/
    .venv/bin/python benchmarks/bench_inference.py --tiny     # seconds-long smoke run, in-process
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from autoscale.data.formats import read_dataset
from autoscale.data.image_io import read_image
from autoscale.data.synth import SynthConfig, generate_scene
from autoscale.dense_region import Region, find_dense_regions
from autoscale.models.l2s import zoom_region
from autoscale.models.registry import get_model
from autoscale.models.vgg import normalize
from autoscale.pipeline import AutoScale, PipelineConfig
from autoscale.targets import density_map

RESULTS = Path(__file__).resolve().parent / "results"
SHB = Path(__file__).resolve().parents[2] / "shared" / "data" / "shanghaitech" / "part_B"
GT_SIGMA = 8.0
GATE = 0.1
TARGET_OVERHEAD = 0.60
TARGET_SPEEDUP = 3.5
TARGET_COUNT_REL = 0.01
CONFIGS = ("fp32", "bf16_cl")


# -- inputs -------------------------------------------------------------------------------------
def _region_of(points: np.ndarray, shape: tuple[int, int], gate: float) -> Region | None:
    d = density_map(points, shape, GT_SIGMA)
    regions = find_dense_regions(d, "regression", k=2.0, area_ratio=gate)
    return regions[0] if regions else None


def choose_input(data: Path | None, image: str | None, size: tuple[int, int], seed: int) -> dict[str, Any]:
    """The image (uint8 RGB), its points, the representative region and where they came from."""
    info: dict[str, Any] = {}
    if data is not None and data.is_dir():
        recs = read_dataset("shanghaitech", data, "test")
        if image is None:  # median area ratio among images whose GT region passes the gate
            found = [(r, _region_of(r.points, (r.height, r.width), GATE)) for r in recs]
            passing = sorted([(g.area_ratio, r.name) for r, g in found if g is not None])
            info["scan"] = {"images": len(recs), "passing_gate": len(passing),
                            "median_area_ratio_passing": float(np.median([a for a, _ in passing]))}
            image = passing[len(passing) // 2][1]
        rec = next((r for r in recs if r.name == image), None)
        if rec is None:
            raise SystemExit(f"{data}: no test image named {image!r}")
        img = read_image(rec.image_path)
        pts = rec.points
        info.update(source=f"shanghaitech part_B test {rec.name} ({rec.image_path})", gt_count=rec.count)
    else:
        cfg = SynthConfig.for_size(size)
        img, pts, _, _ = generate_scene(cfg, np.random.default_rng(seed))
        info.update(source=f"synthetic scene autoscale.data.synth.generate_scene size={list(size)} seed={seed}",
                    gt_count=len(pts))
    H, W = img.shape[:2]
    region = _region_of(pts, (H, W), GATE)
    info["region_passes_gate"] = region is not None
    if region is None:  # fall back to the largest dense component, whatever its size
        region = _region_of(pts, (H, W), 0.0)
    if region is None:
        region = Region(W // 4, H // 4, W // 2, H // 2, (W // 2) * (H // 2), 0.25)
    info["region"] = {"x": region.x, "y": region.y, "w": region.w, "h": region.h,
                      "area_ratio": region.area_ratio,
                      "gt_people_inside": int(((pts[:, 0] >= region.x) & (pts[:, 0] < region.x + region.w)
                                               & (pts[:, 1] >= region.y) & (pts[:, 1] < region.y + region.h)).sum())}
    info["image_size"] = [H, W]
    return {"image": img, "points": pts, "region": region, "info": info}


def build_model(seed: int, width: float) -> AutoScale:
    torch.manual_seed(seed)
    fpn = get_model("fpn_regression", backbone="vgg16", width=width)
    l2s = get_model("l2s_regression", in_channels=fpn.feature_channels)
    return AutoScale(fpn, l2s, PipelineConfig()).eval()


def calibrate_dsn6(model: AutoScale, x: torch.Tensor, points: np.ndarray, ridge: float = 1e-2) -> dict[str, Any]:
    """Refit dsn6 (4 weights, no bias) so the fp32 first-pass map fits the GT density (sigma 8).

    Ridge least squares on the side outputs d2..d5 scaled to unit RMS (``ridge`` x pixels on the
    diagonal), so a near-constant or near-zero side output cannot get an enormous weight whose
    cancellation would make any count comparison meaningless.
    """
    H, W = x.shape[-2:]
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model.counter(x, return_features=True)
        seconds = time.perf_counter() - t0
    A = torch.cat(out.side, 1)[0].reshape(4, -1).double().numpy().T
    b = density_map(points, (H, W), GT_SIGMA).astype(np.float64).ravel()
    rms = np.sqrt((A * A).mean(0))
    rms[rms == 0] = 1.0
    As = A / rms
    ws = np.linalg.solve(As.T @ As + ridge * len(b) * np.eye(4), As.T @ b)
    w = ws / rms
    resid = A @ w - b
    r2 = float(1 - resid @ resid / ((b - b.mean()) @ (b - b.mean())))
    return {"dsn6_weight": w.tolist(), "ridge": ridge, "r2": r2,
            "fp32_single_forward_seconds_cold": seconds, "calibrated_count": float((A @ w).sum()),
            "gt_density_count": float(b.sum()), "uncalibrated_count": float(out.final.double().sum())}


def set_dsn6(model: AutoScale, weight: list[float]) -> None:
    with torch.no_grad():
        model.counter.dsn6.weight.copy_(torch.tensor(weight, dtype=torch.float32).reshape(1, 4, 1, 1))
        model.counter.dsn6.bias.zero_()


# -- one configuration --------------------------------------------------------------------------
def run_config(spec: dict[str, Any]) -> dict[str, Any]:
    """Time every measurement for one configuration (``spec["config"]``); returns a JSON-able dict."""
    torch.set_num_threads(spec["threads"])
    bf16 = spec["config"] == "bf16_cl"
    model = build_model(spec["seed"], spec["width"])
    set_dsn6(model, spec["dsn6_weight"])
    fixed = AutoScale(model.counter, None, PipelineConfig(fixed_scale=2.0)).eval()
    x = normalize(np.load(spec["image_npy"]))
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    region = Region(**spec["region"])
    box = region.box

    def with_region(m: AutoScale) -> None:
        original = m.dense_regions
        m.dense_regions = lambda first_map: (original(first_map), [region])[1]  # real cost, forced region

    def count(t: torch.Tensor) -> float:
        return float(t.detach().double().sum())

    with torch.no_grad(), ctx():
        natural = model.predict(x) if not bf16 else None  # unpatched pipeline: does it find a region?
        out = model.counter(x, return_features=True)  # features the timed second_pass_l2s reads
    first_map = out.final[0, 0].float().numpy()

    def second_l2s() -> tuple[Any, float]:
        s = model._safe_scale(region, model.scale_for(out.features, region))
        return model.counter(zoom_region(x, box, s, method="bilinear")), float(s.reshape(-1)[0])

    with_region(model)
    with_region(fixed)
    # name -> (call, count of its result, scale of its result or None)
    cases: dict[str, tuple[Callable[[], Any], Callable[[Any], float], Callable[[Any], float | None]]] = {
        "first_pass": (lambda: model.counter(x, return_features=True), lambda o: count(o.final), lambda o: None),
        "single_pass": (lambda: model.predict(x, single_pass=True), lambda r: r.count, lambda r: None),
        "second_pass_s2": (lambda: model.counter(zoom_region(x, box, 2.0, method="bilinear")),
                           lambda o: count(o.final), lambda o: 2.0),
        "second_pass_l2s": (second_l2s, lambda r: count(r[0].final), lambda r: r[1]),
        "full_l2s": (lambda: model.predict(x), lambda r: r.count, lambda r: r.regions[0].scale if r.regions else None),
        "full_s2": (lambda: fixed.predict(x), lambda r: r.count, lambda r: r.regions[0].scale if r.regions else None),
    }
    # Interleaved (round-robin) timing: load from other jobs drifts over minutes, so each round
    # times every case back to back and the overhead is also computed per round (paired).
    times: dict[str, list[float]] = {k: [] for k in cases}
    last: dict[str, Any] = {}
    for rnd in range(spec["warmup"] + spec["repeats"]):
        for name, (fn, _, _) in cases.items():
            t0 = time.perf_counter()
            with torch.no_grad(), ctx():
                last[name] = fn()
            if rnd >= spec["warmup"]:
                times[name].append(time.perf_counter() - t0)
    rows = {name: {"median_s": statistics.median(times[name]), "min_s": min(times[name]), "runs_s": times[name],
                   "count": cnt(last[name]), "scale": sc(last[name])}
            for name, (_, cnt, sc) in cases.items()}
    full = last["full_l2s"]
    np.save(Path(spec["tmp"]) / f"{spec['config']}_first.npy", first_map)
    np.save(Path(spec["tmp"]) / f"{spec['config']}_full.npy", full.map)
    return {
        "config": spec["config"],
        "threads": torch.get_num_threads(),
        "autocast": "bfloat16" if bf16 else None,
        "memory_format": "channels_last" if bf16 else "contiguous",
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "natural_regions": None if natural is None else [list(r.region.box) for r in natural.regions],
        "param_checksum": float(sum(p.detach().double().sum() for p in model.parameters())),
        "timings": rows,
        "paired_overhead": {k: statistics.median((f - p) / p for f, p in zip(times[k], times["first_pass"]))
                            for k in ("full_l2s", "full_s2")},
    }


def _worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    Path(spec["result"]).write_text(json.dumps(run_config(spec)))


# -- report -------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    model_name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                model_name = line.split(":", 1)[1].strip()
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    try:
        bf16_ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16_ok = False
    return {
        "cpu_model": model_name, "cpu_count": os.cpu_count(),
        "amx": sorted(f for f in flags if f.startswith("amx")), "avx512_bf16": "avx512_bf16" in flags,
        "onednn_bf16_supported": bf16_ok, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
        "platform": platform.platform(), "load_average_start": list(os.getloadavg()),
    }


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b != 0 else float("inf")


def compare(results: dict[str, dict], tmp: Path) -> dict[str, Any]:
    """Overheads per configuration; bf16-vs-fp32 speedups, count and map agreement."""
    out: dict[str, Any] = {"overhead": {}}
    for name, r in results.items():
        t = r["timings"]
        first = t["first_pass"]["median_s"]
        out["overhead"][name] = {k: (t[k]["median_s"] - first) / first for k in ("full_l2s", "full_s2")}
        first_min = t["first_pass"]["min_s"]
        out["overhead"][name].update({f"{k}_from_min": (t[k]["min_s"] - first_min) / first_min
                                      for k in ("full_l2s", "full_s2")})
        out["overhead"][name].update({f"{k}_paired_median": v for k, v in r["paired_overhead"].items()})
        out["overhead"][name]["second_pass_s2_over_first"] = t["second_pass_s2"]["median_s"] / first
        out["overhead"][name]["second_pass_l2s_over_first"] = t["second_pass_l2s"]["median_s"] / first
    if "fp32" in results and "bf16_cl" in results:
        f, b = results["fp32"]["timings"], results["bf16_cl"]["timings"]
        out["speedup_bf16"] = {k: f[k]["median_s"] / b[k]["median_s"] for k in f}
        out["speedup_bf16_from_min"] = {k: f[k]["min_s"] / b[k]["min_s"] for k in f}
        out["count_rel_diff_bf16"] = {k: _rel(b[k]["count"], f[k]["count"]) for k in f}
        maps = {}
        for kind in ("first", "full"):
            mf = np.load(tmp / f"fp32_{kind}.npy").astype(np.float64)
            mb = np.load(tmp / f"bf16_cl_{kind}.npy").astype(np.float64)
            maps[kind] = {"rel_l2_error": float(np.linalg.norm(mb - mf) / np.linalg.norm(mf)),
                          "l1_mass_rel_diff": _rel(np.abs(mb).sum(), np.abs(mf).sum())}
        out["map_agreement_bf16"] = maps
        out["param_checksums_equal"] = results["fp32"]["param_checksum"] == results["bf16_cl"]["param_checksum"]
    return out


def write_markdown(res: dict[str, Any], path: Path) -> None:
    m, inp = res["machine"], res["input"]
    reg = inp["region"]
    lines = [
        "# AutoScale inference time: two-pass pipeline, VGG16 FPN (regression), batch 1, CPU",
        "",
        f"Command: `{res['command']}`; seed {res['seed']}; total {res['seconds']:.0f} s. "
        f"{m['cpu_model']} ({m['cpu_count']} CPUs, shared with other jobs: timings are noisy, medians "
        f"of {res['repeats']} runs after {res['warmup']} warm-up), torch {m['torch']}, {res['threads']} threads, "
        f"AMX: {', '.join(m['amx']) or 'no'}, oneDNN bf16: {m['onednn_bf16_supported']}.",
        "",
        f"Input: {inp['source']}, {inp['image_size'][1]}x{inp['image_size'][0]} (W x H), width {res['width']}; "
        f"{inp['gt_count']} annotated people. Region (GT density sigma {GT_SIGMA:g}, k 2, J {GATE}): "
        f"x {reg['x']}, y {reg['y']}, w {reg['w']}, h {reg['h']}, area ratio {reg['area_ratio']:.3f} "
        f"(passes gate: {inp['region_passes_gate']}), {reg['gt_people_inside']} people inside.",
        "",
        "| measurement | " + " | ".join(f"{c} median / min (s)" for c in res["results"]) + " | "
        + " | ".join(f"{c} count" for c in res["results"]) + " |",
        "|---" * (1 + 2 * len(res["results"])) + "|",
    ]
    names = list(next(iter(res["results"].values()))["timings"])
    for n in names:
        cells = [f"{r['timings'][n]['median_s']:.3f} / {r['timings'][n]['min_s']:.3f}" for r in res["results"].values()]
        counts = []
        for r in res["results"].values():
            t = r["timings"][n]
            s = f"{t['count']:.2f}"
            if t.get("scale") is not None:
                s += f" (s={t['scale']:.3f})"
            counts.append(s)
        lines.append(f"| {n} | " + " | ".join(cells) + " | " + " | ".join(counts) + " |")
    lines += ["", "Second-pass overhead (full - first_pass) / first_pass: from medians / paired per round "
              "(median) / from minima.", "",
              "| config | peak RSS (MiB) | overhead full_l2s | overhead full_s2 |", "|---|---|---|---|"]
    for c, r in res["results"].items():
        o = res["comparison"]["overhead"][c]
        cell = lambda k: f"{o[k]:.1%} / {o[k + '_paired_median']:.1%} / {o[k + '_from_min']:.1%}"  # noqa: E731
        lines.append(f"| {c} | {r['peak_rss_mib']:.0f} | {cell('full_l2s')} | {cell('full_s2')} |")
    cmp_ = res["comparison"]
    if "speedup_bf16" in cmp_:
        lines += ["", "| measurement | bf16_cl speedup vs fp32 (medians / minima) | count rel. diff |", "|---|---|---|"]
        for n in names:
            lines.append(f"| {n} | {cmp_['speedup_bf16'][n]:.2f}x / {cmp_['speedup_bf16_from_min'][n]:.2f}x | "
                         f"{cmp_['count_rel_diff_bf16'][n]:.3%} |")
        ma = cmp_["map_agreement_bf16"]
        lines += ["", f"Map agreement bf16 vs fp32: first-pass rel. L2 error {ma['first']['rel_l2_error']:.3%}, "
                  f"L1-mass rel. diff {ma['first']['l1_mass_rel_diff']:.3%}; full-pipeline map rel. L2 error "
                  f"{ma['full']['rel_l2_error']:.3%}."]
    cal = res["calibration"]
    lines += [
        "",
        f"Weights: seeded authors' init, untrained; dsn6 refit by least squares to the GT density "
        f"(weights {', '.join(f'{v:.3g}' for v in cal['dsn6_weight'])}, R^2 {cal['r2']:.3f}; uncalibrated "
        f"count {cal['uncalibrated_count']:.2f}). Overhead = (full - first_pass) / first_pass; full_* force "
        "the region above through a wrapped `dense_regions` that still computes the real mask.",
        "",
        "Targets: " + ", ".join(f"{k}: {v}" for k, v in res["targets_met"].items()) + ".",
        "",
    ]
    path.write_text("\n".join(lines))


def _parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", 
                    help="48x64 synthetic image, width 1/32, no warm-up, in-process (smoke)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=float, default=1.0, help="FPN channel multiplier (1 = VGG16)")
    ap.add_argument("--size", type=_parse_size, default=(768, 1024), help="HxW of the synthetic fallback")
    ap.add_argument("--data", type=Path, default=SHB, help="ShanghaiTech part_B root (synthetic if absent)")
    ap.add_argument("--image", default=None, help="test image name (default: median-area-ratio image)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma list of fp32,bf16_cl")
    ap.add_argument("--inprocess", action="store_true", help="no subprocess per config (peak RSS is cumulative)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for inference.json / inference.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return {}
    if args.tiny:
        args.size, args.width, args.data, args.image, args.inprocess = (48, 64), 1 / 32, None, None, True
        args.repeats, args.warmup = 1, 0
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    machine = machine_info()
    inp = choose_input(args.data, args.image, args.size, args.seed)
    model = build_model(args.seed, args.width)
    cal = calibrate_dsn6(model, normalize(inp["image"]), inp["points"])
    configs = [c for c in args.configs.split(",") if c]
    if "bf16_cl" in configs and not machine["onednn_bf16_supported"]:
        configs.remove("bf16_cl")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        np.save(tmp / "image.npy", inp["image"])
        reg = inp["region"]
        for c in configs:
            spec = {"config": c, "seed": args.seed, "width": args.width, "threads": args.threads,
                    "repeats": args.repeats, "warmup": args.warmup, "dsn6_weight": cal["dsn6_weight"], "tmp": tmpdir,
                    "image_npy": str(tmp / "image.npy"), "result": str(tmp / f"{c}.json"),
                    "region": {"x": reg.x, "y": reg.y, "w": reg.w, "h": reg.h, "area": reg.area,
                               "area_ratio": reg.area_ratio}}
            if args.inprocess:
                results[c] = run_config(spec)
            else:
                (tmp / f"{c}_spec.json").write_text(json.dumps(spec))
                subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(tmp / f"{c}_spec.json")],
                               check=True)
                results[c] = json.loads((tmp / f"{c}.json").read_text())
        comparison = compare(results, tmp)
    targets: dict[str, bool] = {
        f"second_pass_overhead<={TARGET_OVERHEAD:.0%} ({c}, full_l2s, paired median)":
            o["full_l2s_paired_median"] <= TARGET_OVERHEAD
        for c, o in comparison["overhead"].items()}
    if "speedup_bf16" in comparison:
        for k in ("full_l2s", "first_pass"):
            targets[f"bf16_speedup>={TARGET_SPEEDUP}x ({k})"] = comparison["speedup_bf16"][k] >= TARGET_SPEEDUP
        targets[f"bf16_counts_within_{TARGET_COUNT_REL:.0%}"] = all(
            comparison["count_rel_diff_bf16"][k] <= TARGET_COUNT_REL for k in ("first_pass", "full_l2s", "full_s2"))
    machine["load_average_end"] = list(os.getloadavg())
    result = {
        "benchmark": "inference",
        "command": " ".join(["python benchmarks/bench_inference.py", *argv]),
        "seed": args.seed,
        "seconds": time.perf_counter() - t0,
        "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads, "width": args.width,
        "machine": machine,
        "input": inp["info"],
        "calibration": cal,
        "results": results,
        "comparison": comparison,
        "targets_met": targets,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inference.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "inference.md")
    if not args.tiny:
        print((args.out / "inference.md").read_text())
    return result


if __name__ == "__main__":
    main()
