"""Benchmark: inference speed of the two-pass AutoScale pipeline where users wait (CPU, batch 1).

Everything goes through the user's API, :class:`autoscale.predict.Predictor` (``run_network_frame``
for the network, :func:`autoscale.runner.predict_paths` for folders), in a process with the
``autoscale predict`` command's malloc settings (:func:`autoscale.device.bounded_heap`;
``--default-heap``: glibc's defaults). Per method
(backbone x variant x precision x engine x size; seconds, medians of ``--repeats`` rounds after
``--warmup``):

* ``first_pass_s``: the counter with the L2S feature, in the predictor's precision / engine;
* ``total_s``: ``Predictor.run_network_frame`` end to end (first pass, dense mask and region
  selection on the predicted map, L2S, zoom, second pass, composition/counting);
  ``second_pass_s = total_s - first_pass_s``. The dense region is forced to the representative
  region (paper rule on the ground-truth density of the photo) through a wrapper of
  ``dense_regions`` that still computes the real mask: untrained weights rarely yield one;
* FLOPs of the fp32 torch pipeline (``torch.utils.flop_counter.FlopCounterMode``; convolutions
  and matmuls), ``gflops_per_s = flops / total_s``; ``floor_s = flops / peak``, with the peak
  measured just before the method by a large ``torch.matmul`` in its precision (bf16 for bf16,
  fp32 for fp32 and onnxruntime; best of 10 / 5) and saved as its ``peak_gflops_per_s``;
  ``ratio_to_floor = total_s / floor_s``;
* localization: ``count_s``, the time of the regional-minima counting (``find_minima``,
  ``count_people_outside``) inside ``total_s``, and ``count_share = count_s / (total_s - count_s)``;
  the same counting on the ground-truth class map (what a well-trained network outputs) is
  ``count_share_gt_map``.

Also: the CSRNet peer (``csrnet_regression``, fp32, single pass); folder throughput
(``predict_paths`` on ``--folder-images`` real photos with maps, points and overlays, streamed and
sequential with the default JPEG overlays, streamed with PNG overlays) over network-only
throughput (``predict_array`` on the same decoded images, measured before and after each folder
run; ratios are medians of ``--folder-rounds`` rounds); bf16 vs
fp32 first-pass counts on ``--check-images`` real photos (lite0 with an ImageNet backbone and
untrained head, and ``--trained`` checkpoints when given).

Weights: the trainer's ``build_model`` (official init, seeded; lite0 with its installed ImageNet
weights when present). The machine is shared: compare ratios measured in one run.

    .venv/bin/python benchmarks/bench_inference.py            # full run (minutes), writes results/
    .venv/bin/python benchmarks/bench_inference.py --tiny     # seconds-long smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import autoscale.pipeline as P
from autoscale.data.formats import read_dataset
from autoscale.data.image_io import read_image
from autoscale.dense_region import Region, find_dense_regions
from autoscale.device import HEAP_MMAP_THRESHOLD, HEAP_TRIM_THRESHOLD, bounded_heap, cpu_has_native_bf16
from autoscale.models.registry import get_model
from autoscale.postprocess import count_people
from autoscale.predict import Predictor
from autoscale.runner import predict_paths
from autoscale.targets import density_map, distance_label_map

RESULTS = Path(__file__).resolve().parent / "results"
SHB = Path(__file__).resolve().parents[2] / "shared" / "data" / "shanghaitech" / "part_B"
IMAGE = "IMG_23"
TARGETS = {"vgg16_two_pass_bf16_ratio_to_floor": 2.0, "lite0_two_pass_images_per_s": 6.0,
           "localization_count_share": 0.10, "folder_throughput_ratio": 0.90}


# -- inputs -------------------------------------------------------------------------------------
def load_photo(size: tuple[int, int]) -> dict[str, Any]:
    """The ShanghaiTech B test photo (resized to ``size`` = (H, W)), its points and GT region."""
    rec = next(r for r in read_dataset("shanghaitech", SHB, "test") if r.name == IMAGE)
    img = read_image(rec.image_path)
    H0, W0 = img.shape[:2]
    H, W = size
    if (H, W) != (H0, W0):
        img = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA if H < H0 else cv2.INTER_LINEAR)
    pts = rec.points * np.array([W / W0, H / H0])
    regions = find_dense_regions(density_map(pts, (H, W), 8.0 * H / H0), "regression", k=2.0, area_ratio=0.1)
    region = regions[0] if regions else Region(W // 4, H // 4, W // 2, H // 2, (W // 2) * (H // 2), 0.25)
    return {"image": img, "points": pts, "region": region, "source": str(rec.image_path), "gt_count": rec.count}


def make_checkpoint(backbone: str, variant: str, width: float, seed: int = 0) -> dict[str, Any]:
    """A checkpoint dict by the trainer's own ``build_model`` / ``model_checkpoint``."""
    from autoscale.engine.config import config_from_dict
    from autoscale.engine.trainer import build_model, model_checkpoint
    from autoscale.models.efficientnet_lite import imagenet_weights_path

    model: dict[str, Any] = {"variant": variant, "backbone": backbone, "width": width}
    if backbone.startswith("efficientnet"):
        with contextlib.suppress(Exception):
            imagenet_weights_path(backbone)
            model["imagenet"] = "auto"
    tmp = tempfile.gettempdir()
    cfg = config_from_dict({"data": {"root": tmp}, "method": "autoscale", "seed": seed, "out": f"{tmp}/unused_bench",
                            "model": model})
    return model_checkpoint(build_model(cfg).eval(), cfg)


# -- measurement helpers ------------------------------------------------------------------------
def _median_time(fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), runs


def matmul_peak(dtype: torch.dtype, n: int, repeats: int = 3) -> float:
    """Achieved GFLOP/s of an ``n x n`` matmul in ``dtype`` (best of ``repeats``)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = min(_median_time(lambda: torch.matmul(a, b), 1, 0)[0] for _ in range(repeats))
    return 2.0 * n ** 3 / best / 1e9


def peaks_now(n: int) -> dict[str, float]:
    """Both matmul peaks, measured now: each method's floor uses the peaks measured just before
    it, since the shared host's speed drifts within a run (a run's start measured the bf16 peak at
    1,987 GFLOP/s in one run and 2,560 in the next, fp32 at 333 and 227)."""
    return {"fp32": matmul_peak(torch.float32, n, repeats=5), "bf16": matmul_peak(torch.bfloat16, n, repeats=10)}


def force_region(predictor: Predictor, region: Region) -> None:
    """Make the pipeline refine ``region``: the real mask and components are still computed."""
    runner = predictor._runner
    real = runner.dense_regions

    def forced(first_map: np.ndarray) -> list[Region]:
        real(first_map)
        return [region]

    runner.dense_regions = forced  # type: ignore[method-assign]


def first_pass(predictor: Predictor, x: torch.Tensor) -> Any:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if predictor.bf16 else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        return predictor._runner.counter(x, return_features="lazy")


@contextlib.contextmanager
def timed_counting() -> Any:
    """Accumulate the seconds spent in the pipeline's regional-minima counting (the first and the
    zoomed map's :func:`find_minima`, the minima outside the refined box)."""
    names = ("find_minima", "count_people_outside")
    real = {n: getattr(P, n) for n in names}
    acc = {"s": 0.0, "calls": 0}

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                acc["s"] += time.perf_counter() - t
                acc["calls"] += 1
        return wrapper

    for n in names:
        setattr(P, n, timed(real[n]))
    try:
        yield acc
    finally:
        for n in names:
            setattr(P, n, real[n])


def count_flops(predictor: Predictor, img: np.ndarray) -> dict[str, int]:
    """FLOPs (2 x MACs) of the first pass and of the whole pipeline, fp32 torch."""
    x = predictor.model.prepare(img)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        predictor._runner.counter(x, return_features=True)
    first = int(fc.get_total_flops())
    with FlopCounterMode(display=False) as fc:
        predictor.run_network_frame(img)
    return {"first_pass": first, "total": int(fc.get_total_flops())}


def measure_method(ckpt: dict[str, Any], photo: dict[str, Any], *, precision: str, engine: str,
                   flops: dict[str, int], peaks: dict[str, float], repeats: int, warmup: int) -> dict[str, Any]:
    p = Predictor.from_checkpoint(ckpt, precision=precision, engine=engine, max_side=None)
    force_region(p, photo["region"])
    img = photo["image"]
    x = p.model.prepare(img)
    if p.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    first_s, first_runs = _median_time(lambda: first_pass(p, x), repeats, warmup)
    res = p.run_network_frame(img)
    with timed_counting() as acc:  # warm: the second pass's shapes are new to oneDNN at first
        total_s, total_runs = _median_time(lambda: p.run_network_frame(img), repeats, warmup)
    count_s = acc["s"] / max(1, repeats + warmup)
    peak = peaks["bf16" if p.bf16 else "fp32"]
    floor_s = flops["total"] / (peak * 1e9)
    out = {"backbone": ckpt["model"]["kwargs"].get("backbone", "vgg16"), "variant": p.variant,
           "precision": p.precision, "engine": engine, "size": list(img.shape[:2]),
           "total_s": total_s, "first_pass_s": first_s, "second_pass_s": total_s - first_s,
           "total_runs_s": total_runs, "first_pass_runs_s": first_runs,
           "flops_total": flops["total"], "flops_first_pass": flops["first_pass"],
           "gflops_per_s": flops["total"] / total_s / 1e9, "peak_gflops_per_s": peak, "floor_s": floor_s,
           "ratio_to_floor": total_s / floor_s, "images_per_s": 1.0 / total_s,
           "count": float(res.count), "first_count": float(res.first_count),
           "scale": float(res.regions[0].scale) if res.regions else None}
    if p.variant == "localization":
        out.update(count_s=count_s, count_calls_per_image=acc["calls"] / max(1, repeats + warmup),
                   count_share=count_s / max(1e-12, total_s - count_s))
        gt = distance_label_map(photo["points"], img.shape[:2])
        t, _ = _median_time(lambda: count_people(gt, background=10, num_classes=11), 3, 1)
        out.update(count_gt_map_s=t, count_share_gt_map=t / max(1e-12, total_s - count_s))
    return out


def measure_csrnet(img: np.ndarray, peaks: dict[str, float], repeats: int, warmup: int) -> dict[str, Any]:
    torch.manual_seed(0)
    net = get_model("csrnet_regression").eval()
    from autoscale.models.vgg import normalize

    x = normalize(img)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        net(x)
    flops = int(fc.get_total_flops())

    def run() -> None:
        with torch.inference_mode():
            net(x)

    t, runs = _median_time(run, repeats, warmup)
    floor_s = flops / (peaks["fp32"] * 1e9)
    return {"backbone": "vgg16 (CSRNet)", "variant": "regression", "precision": "fp32", "engine": "torch",
            "size": list(img.shape[:2]), "total_s": t, "first_pass_s": t, "second_pass_s": 0.0, "total_runs_s": runs,
            "flops_total": flops, "gflops_per_s": flops / t / 1e9, "peak_gflops_per_s": peaks["fp32"],
            "floor_s": floor_s, "ratio_to_floor": t / floor_s, "images_per_s": 1.0 / t}


def measure_folder(ckpt: dict[str, Any], n: int, size: tuple[int, int] | None, work: Path,
                   rounds: int = 3) -> dict[str, Any]:
    """Folder images/s (streamed with JPEG overlays, the default; sequential; streamed with PNG
    overlays) over network-only images/s, same images. Each folder run is bracketed by
    network-only runs and its ratio taken to their mean, so a drift of the shared machine's speed
    between the runs does not enter the ratio; ratios are medians over ``rounds`` rounds."""
    src = SHB / "test_data" / "images"
    folder = work / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"IMG_{i}.jpg" for i in range(1, n + 1)]
    for name in names:
        if size is None:
            shutil.copy(src / name, folder / name)
        else:
            small = cv2.resize(read_image(src / name), (size[1], size[0]), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / name), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    p = Predictor.from_checkpoint(ckpt, max_side=None)
    imgs = [read_image(folder / name, exif=True) for name in names]
    p.predict_array(imgs[0])  # warm-up

    def network_only() -> float:
        t = time.perf_counter()
        for img in imgs:
            p.predict_array(img)
        return n / (time.perf_counter() - t)

    modes = (("streamed", 3, "jpg"), ("sequential", 0, "jpg"), ("streamed_png", 3, "png"))
    rates: dict[str, list[float]] = {k: [] for k in ("network_only", *(m[0] for m in modes))}
    ratios: dict[str, list[float]] = {m[0]: [] for m in modes}
    rates["network_only"].append(network_only())
    for r in range(rounds):
        for mode, prefetch, fmt in modes:
            t = time.perf_counter()
            predict_paths(p, folder, work / f"out_{mode}_{r}", prefetch=prefetch, overlay_format=fmt,
                          log=lambda m: None)
            rates[mode].append(n / (time.perf_counter() - t))
            rates["network_only"].append(network_only())
            ratios[mode].append(rates[mode][-1] / statistics.fmean(rates["network_only"][-2:]))
    out: dict[str, Any] = {"images": n, "size": list(imgs[0].shape[:2]), "precision": p.precision,
                           "backbone": ckpt["model"]["kwargs"].get("backbone", "vgg16"), "rounds": rounds}
    for k, v in rates.items():
        out[f"{k}_images_per_s"] = statistics.median(v)
        out[f"{k}_images_per_s_rounds"] = v
    for key, mode in (("throughput_ratio", "streamed"), ("throughput_ratio_sequential", "sequential"),
                      ("throughput_ratio_png_overlays", "streamed_png")):
        out[key] = statistics.median(ratios[mode])
        out[f"{key}_rounds"] = ratios[mode]
    return out


def bf16_count_check(ckpts: dict[str, Any], n: int, max_side: int) -> dict[str, Any]:
    """Relative |bf16 - fp32| / fp32 of first-pass counts on ``n`` real test photos per checkpoint."""
    recs = read_dataset("shanghaitech", SHB, "test")[:n]
    out = {}
    for label, ck in ckpts.items():
        f = Predictor.from_checkpoint(ck, precision="fp32", max_side=max_side, single_pass=True)
        b = Predictor.from_checkpoint(ck, precision="bf16", max_side=max_side, single_pass=True)
        signed = []
        for r in recs:
            cf, cb = f(r.image_path).count, b(r.image_path).count
            signed.append((cb - cf) / abs(cf))
        diffs = [abs(d) for d in signed]
        out[label] = {"images": [r.name for r in recs], "max_side": max_side, "rel_diffs": diffs,
                      "max_rel_diff": max(diffs), "mean_signed_rel_diff": statistics.fmean(signed)}
    return out


# -- report -------------------------------------------------------------------------------------
def machine_info(threads: int | None = None) -> dict[str, Any]:
    """The machine and torch build (``threads``: default torch's current thread count)."""
    threads = torch.get_num_threads() if threads is None else threads
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
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = False
    return {"cpu_model": model_name, "cpu_count": os.cpu_count(), "threads": threads,
            "amx": sorted(f for f in flags if f.startswith("amx")), "onednn_bf16_supported": onednn_bf16, "native_bf16": cpu_has_native_bf16(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "python": sys.version.split()[0], "platform": platform.platform(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average_start": list(os.getloadavg())}


def write_markdown(res: dict[str, Any], path: Path) -> None:
    m = res["machine"]
    lines = [f"# Inference speed (CPU, batch 1): `{res['command']}`", "",
             f"{m['cpu_count']} CPUs shared with other jobs (load average at start {m['load_average_start'][0]:.1f}), "
             f"{m['threads']} threads, torch {m['torch']}, native bf16: {m['native_bf16']}; {res['seconds']:.0f} s. "
             f"Matmul peak at the start: fp32 {res['peaks']['fp32']:.0f} GFLOP/s, bf16 {res['peaks']['bf16']:.0f} "
             f"GFLOP/s (n = {res['peaks']['n']}); each method's floor uses the peak measured just before it. "
             f"Photo: {res['input']['source']}.", "",
             "| method | total s | first pass s | second pass s | GFLOP | GFLOP/s | floor s | ratio to floor | images/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["methods"].items():
        lines.append(f"| {name} | {r['total_s']:.3f} | {r['first_pass_s']:.3f} | {r['second_pass_s']:.3f} | "
                     f"{r['flops_total'] / 1e9:.1f} | {r['gflops_per_s']:.1f} | {r['floor_s']:.3f} | "
                     f"{r['ratio_to_floor']:.2f} | {r['images_per_s']:.2f} |")
    loc = {k: r for k, r in res["methods"].items() if "count_share" in r}
    if loc:
        lines += ["", "| localization method | counting s | share of network time | share on the GT class map |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {r['count_s']:.3f} | {r['count_share']:.1%} | {r['count_share_gt_map']:.1%} |"
                  for k, r in loc.items()]
    f = res["folder"]
    lines += ["", f"Folder ({f['images']} photos {f['size'][0]}x{f['size'][1]}, {f['backbone']} regression {f['precision']}, "
                  f"maps + points + JPEG overlays, the default): streamed {f['streamed_images_per_s']:.2f} images/s, "
                  f"sequential {f['sequential_images_per_s']:.2f}, network only {f['network_only_images_per_s']:.2f}: "
                  f"throughput ratio {f['throughput_ratio']:.2f} (sequential {f['throughput_ratio_sequential']:.2f}; "
                  f"streamed with PNG overlays {f['streamed_png_images_per_s']:.2f} images/s, "
                  f"{f['throughput_ratio_png_overlays']:.2f}); medians of {f['rounds']} rounds.",
              "", "bf16 vs fp32 first-pass counts (relative difference, ShanghaiTech B test photos at max side "
                  f"{next(iter(res['bf16_count_check'].values()))['max_side']}): " + "; ".join(
                  f"{k}: {len(v['rel_diffs'])} photos, max {v['max_rel_diff']:.2%}, mean signed "
                  f"{v['mean_signed_rel_diff']:+.2%}" for k, v in res["bf16_count_check"].items()),
              "", "Targets: " + ", ".join(f"{k}: {v}" for k, v in res["targets"].items())]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="seconds-long smoke run (96x128, width-1/16 VGG only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--folder-images", type=int, default=16)
    ap.add_argument("--folder-rounds", type=int, default=5,
                    help="folder runs per mode (ratio: the median; the shared host's speed swings between runs)")
    ap.add_argument("--trained", action="append", default=[], help="trained checkpoint(s) for the bf16 count check")
    ap.add_argument("--check-images", type=int, default=20, help="ShanghaiTech B test photos in the bf16 count check")
    ap.add_argument("--all", action="store_true", help="also VGG16 localization, VGG16 onnxruntime, lite0 "
                                                         "localization fp32 (much longer)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--default-heap", action="store_true",
                    help="keep glibc's malloc defaults instead of the predict command's bounded_heap()")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    heap = {"bounded_heap": False if a.default_heap else bounded_heap(),
            "mmap_threshold": HEAP_MMAP_THRESHOLD, "trim_threshold": HEAP_TRIM_THRESHOLD}
    t0 = time.perf_counter()
    cmd = "python benchmarks/bench_inference.py" + (" " + " ".join(argv) if argv else "")
    size = (96, 128) if a.tiny else (768, 1024)
    photo = load_photo(size)
    n = 256 if a.tiny else 2048
    peaks = {**peaks_now(n), "n": n}
    plan: list[tuple[str, str, float, str, str, tuple[int, int]]] = []  # backbone, variant, width, precision, engine, size
    if a.tiny:
        plan = [("vgg16", v, 0.0625, prec, "torch", size) for v in ("regression", "localization") for prec in ("fp32", "bf16")]
        plan.append(("vgg16", "regression", 0.0625, "fp32", "onnxruntime", size))
    elif a.all:
        for bb in ("vgg16", "efficientnet_lite0"):
            for v in ("regression", "localization"):
                plan += [(bb, v, 1.0, "bf16", "torch", size), (bb, v, 1.0, "fp32", "torch", size)]
            plan.append((bb, "regression", 1.0, "fp32", "onnxruntime", size))
        plan.append(("efficientnet_lite0", "regression", 1.0, "bf16", "torch", (1536, 2048)))
    else:  # the default plan: what fits ~10 minutes on a loaded 2-core machine
        lite = "efficientnet_lite0"
        plan = [("vgg16", "regression", 1.0, "bf16", "torch", size), ("vgg16", "regression", 1.0, "fp32", "torch", size),
                (lite, "regression", 1.0, "bf16", "torch", size), (lite, "regression", 1.0, "fp32", "torch", size),
                (lite, "regression", 1.0, "fp32", "onnxruntime", size), (lite, "localization", 1.0, "bf16", "torch", size),
                (lite, "regression", 1.0, "bf16", "torch", (1536, 2048))]
    ckpts: dict[tuple[str, str], dict[str, Any]] = {}
    flops: dict[tuple[str, str, tuple[int, int]], dict[str, int]] = {}
    photos = {size: photo}
    methods: dict[str, Any] = {}
    for bb, v, width, prec, engine, sz in plan:
        ck = ckpts.setdefault((bb, v), make_checkpoint(bb, v, width))
        ph = photos.setdefault(sz, load_photo(sz) if sz != size else photo)
        if (bb, v, sz) not in flops:
            ref = Predictor.from_checkpoint(ck, precision="fp32", max_side=None)
            force_region(ref, ph["region"])
            flops[(bb, v, sz)] = count_flops(ref, ph["image"])
        short = "lite0" if bb.startswith("efficientnet") else bb
        name = f"{short}_{v}_{'ort' if engine == 'onnxruntime' else prec}_{sz[0]}x{sz[1]}"
        print(f"[bench_inference] {name}", file=sys.stderr, flush=True)
        methods[name] = measure_method(ck, ph, precision=prec, engine=engine, flops=flops[(bb, v, sz)],
                                       peaks=peaks_now(n), repeats=a.repeats, warmup=a.warmup)
    methods[f"csrnet_fp32_{size[0]}x{size[1]}"] = measure_csrnet(photo["image"], peaks_now(n), a.repeats, a.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        folder_ck = ckpts[("vgg16", "regression")] if a.tiny else make_checkpoint("efficientnet_lite0", "regression", 1.0)
        folder = measure_folder(folder_ck, 3 if a.tiny else a.folder_images, size if a.tiny else None, Path(tmp),
                               rounds=3 if a.tiny else a.folder_rounds)
    check_cks: dict[str, Any] = {"vgg16_tiny_untrained" if a.tiny else "lite0_imagenet_backbone_untrained_head":
                                 ckpts[("vgg16", "regression")] if a.tiny
                                 else make_checkpoint("efficientnet_lite0", "regression", 1.0)}
    for path in a.trained:
        check_cks[f"trained:{path}"] = path
    bf16_check = bf16_count_check(check_cks, 2 if a.tiny else a.check_images, 128 if a.tiny else 512)
    loc_shares = [r["count_share"] for r in methods.values() if "count_share" in r]
    targets: dict[str, Any] = {}
    if not a.tiny:
        vgg = methods[f"vgg16_regression_bf16_{size[0]}x{size[1]}"]
        lite = methods[f"lite0_regression_bf16_{size[0]}x{size[1]}"]
        lite32 = methods[f"lite0_regression_fp32_{size[0]}x{size[1]}"]
        t = TARGETS
        targets = {
            "vgg16_two_pass_bf16_within_2x_floor": {
                "measured": vgg["ratio_to_floor"], "met": vgg["ratio_to_floor"] <= t["vgg16_two_pass_bf16_ratio_to_floor"]},
            "lite0_two_pass_>=6_images_per_s": {
                "measured": lite["images_per_s"], "met": lite["images_per_s"] >= t["lite0_two_pass_images_per_s"],
                "precision": "bf16 (opt-in)", "default_fp32_images_per_s": lite32["images_per_s"],
                "default_fp32_met": lite32["images_per_s"] >= t["lite0_two_pass_images_per_s"]},
            "localization_counting_<=10%_of_network": {
                "measured": max(loc_shares), "met": max(loc_shares) <= t["localization_count_share"]},
            "folder_>=90%_of_network_only": {
                "measured": folder["throughput_ratio"],
                "met": folder["throughput_ratio"] >= t["folder_throughput_ratio"]},
        }
    res = {"command": cmd, "seconds": time.perf_counter() - t0, "threads": a.threads, "seed": 0,
           "machine": machine_info(a.threads), "heap": heap, "peaks": peaks,
           "input": {k: photo[k] for k in ("source", "gt_count")} | {"size": list(size),
                                                                      "region": list(photo["region"].box)},
           "methods": methods, "folder": folder, "bf16_count_check": bf16_check, "targets": targets}
    res["seconds"] = time.perf_counter() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "inference.json").write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(res, a.out / "inference.md")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
