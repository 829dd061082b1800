"""Benchmark: training and inference speed, scaling and memory of AutoScale on this machine (CPU).

Parts (each reported in ``speed.json`` / ``speed.md``):

(a) **Training throughput** (images/s) on 512x512 synthetic crowd crops with the full-width VGG16
    regression FPN, for ``fp32`` and ``bf16_cl`` (``bf16`` autocast + ``channels_last``), batch 1
    and 4, and two step kinds, each measured on the trainer itself
    (:func:`autoscale.engine.trainer.train`; its per-image loop inside a batch):

    * ``fpn``: the baseline step (``method="fpn"``): per image, the first-pass deep-supervised MSE
      (sum); batch mean; backward; Adam;
    * ``autoscale``: the AutoScale step (``method="autoscale"``): per image the joint loss (first
      pass + L2S + STN zoom + second pass on the dense region + centre loss). The region is forced
      to exist by ``pipeline.region_from=target`` on images whose ground-truth density has a dense
      region passing the gate J = 0.1 (the trainer's ``regions`` count per step is reported).

    The images are written as a generic dataset whose training split is exactly one batch, so a
    trainer epoch is one optimiser step and its ``time_s`` (loading the batch: cached images,
    targets made each time; forward; backward; Adam) is the step time. Every case is one training
    run continued with ``resume`` by one epoch per round, and rounds are interleaved (every case
    once per round) so drifting load from other jobs hits all cases alike; median and minimum per
    step are reported. (Before the benchmarks trained only through the engine, this part timed a
    copy of the trainer's step, plus a batched-forward FPN variant the trainer does not have; that
    variant was 5-9 % slower than the per-image loop.)

(b) **DistributedDataParallel** on CPU: the real trainer (:func:`autoscale.engine.trainer.train`,
    ``method="fpn"``, narrow FPN) launched by ``torch.distributed.run`` (gloo) with 1 and 2
    processes of 1 thread each on the same synthetic dataset; throughput from the trainer's own
    per-epoch ``time_s`` (second epoch, so start-up is excluded). On a 2-core machine shared
    with other jobs the ideal ratio is 2 and the realistic one is lower.

(c) **Inference** of the two-pass pipeline (``AutoScale.predict``, L2S, region forced as in
    ``bench_inference.py``) at 768x1024 and 2048x1536 (H x W), fp32 and bf16_cl, each
    configuration in its own subprocess: time (median of repeats) and peak RSS (``ru_maxrss``).
    FLOPs of both FPN passes are counted with ``torch.utils.flop_counter.FlopCounterMode`` (on the
    ``meta`` device: shapes only) and compared with the machine's measured matmul peak (best of a
    4096x4096 fp32 / bf16 ``torch.matmul`` with the same thread count) - the physical limit.

(d) **Ground-truth generation** for the whole ShanghaiTech B train split (400 images at
    1024x768): annotation reading, density maps (sigma 8) and distance-label maps; total seconds.

    .venv/bin/python benchmarks/bench_speed.py            # full benchmark (~15-25 min), writes results/
    .venv/bin/python benchmarks/bench_speed.py --smoke    # seconds-long smoke run (tiny sizes)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
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
from PIL import Image

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
import _common as C  # noqa: E402  (the benchmarks' TrainConfig helper)
import bench_inference as BI  # noqa: E402  (machine info, model builder, input and region helpers)

from autoscale.data.formats import read_dataset, write_generic_annotation, write_generic_list  # noqa: E402
from autoscale.data.image_io import read_image  # noqa: E402
from autoscale.data.synth import SynthConfig, generate_dataset, generate_scene  # noqa: E402
from autoscale.dense_region import Region, find_dense_regions  # noqa: E402
from autoscale.models.registry import get_model  # noqa: E402
from autoscale.models.vgg import normalize  # noqa: E402
from autoscale.pipeline import AutoScale, PipelineConfig  # noqa: E402
from autoscale.targets import density_map, distance_label_map, zoomed_size  # noqa: E402

RESULTS = BENCH_DIR / "results"
SHB = BI.SHB
PRECISIONS = ("fp32", "bf16_cl")


def _ctx(precision: str) -> Callable[[], Any]:
    if precision == "bf16_cl":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ------------------------------------------------------------------------ (a) training throughput
def crowd_crops(root: Path, n: int, size: tuple[int, int], seed: int, sigma: float, gate: float) -> list[dict[str, Any]]:
    """``n`` synthetic crowd images of ``size`` whose GT density (``sigma``) has a dense region
    passing ``gate`` (seeds scanned upwards from ``seed``), written to ``root`` in the generic
    format (PNG + JSON points); the list file ``b<k>.txt`` holds the first ``k`` images for every
    ``k`` in 1..n (a training split of exactly one batch)."""
    cfg = SynthConfig.for_size(size)
    out, entries, s = [], [], seed
    while len(out) < n:
        if s > seed + 200:
            raise RuntimeError(f"no synthetic {size} scene with a dense region passing J={gate} in 200 seeds")
        img, pts, _, _ = generate_scene(cfg, np.random.default_rng(s))
        region = find_dense_regions(density_map(pts, size, sigma), "regression", k=2.0, area_ratio=gate)
        if region:
            ip = root / "images" / f"crowd_{s:04d}.png"
            ip.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(ip)
            entries.append((ip, write_generic_annotation(root / "annotations" / f"crowd_{s:04d}.json", pts)))
            out.append({"seed": s, "region": [region[0].x, region[0].y, region[0].w, region[0].h], "count": len(pts)})
        s += 1
    for k in range(1, n + 1):
        write_generic_list(root, f"b{k}", entries[:k])
    return out


def training_config(root: Path, out: Path, *, method: str, batch: int, precision: str, size: tuple[int, int],
                    width: float, epochs: int, seed: int) -> Any:
    """One training case: the trainer on the ``b<batch>`` split (one optimiser step per epoch),
    the paper's optimiser settings (Adam lr 1e-7 constant, weight decay 5e-4, authors' init),
    density sigma 8, dense region taken from the target (so every AutoScale step refines one)."""
    b = C.bench_budget(size=size, width=width, epochs=epochs, branch_epoch=0, lr=1e-7, weight_decay=5e-4,
                       density_scale=1.0, sigma=8.0, bf16=precision == "bf16_cl")
    return C.train_config("regression", method, b, seed, root, out,
                          pipe=PipelineConfig(variant="regression", sigma=8.0, region_from="target"),
                          overrides={"data.train_split": f"b{batch}", "data.flip": False, "optim.batch_size": batch,
                                     "optim.schedule": "constant", "model.init": "official", "keep_epochs": []})


def bench_training(tmp: Path, size: tuple[int, int], width: float, batches: tuple[int, ...],
                   precisions: tuple[str, ...], warmup: int, repeats: int, seed: int) -> dict[str, Any]:
    """Every case is one training run of :func:`autoscale.engine.trainer.train` advanced one
    epoch (= one optimiser step) per round with ``resume``; rounds interleave the cases."""
    from autoscale.engine.trainer import train

    root = tmp / "train_data"
    images = crowd_crops(root, max(batches), size, seed, sigma=8.0, gate=0.1)
    cases = [(f"{prec}/{method}/b{b}", prec, method, b) for prec in precisions for b in batches
             for method in ("fpn", "autoscale")]
    times: dict[str, list[float]] = {c[0]: [] for c in cases}
    regions: dict[str, list[int]] = {c[0]: [] for c in cases}
    for rnd in range(warmup + repeats):
        for name, prec, method, b in cases:
            cfg = training_config(root, tmp / "train_runs" / name.replace("/", "_"), method=method, batch=b,
                                  precision=prec, size=size, width=width, epochs=rnd + 1, seed=seed)
            with contextlib.redirect_stderr(io.StringIO()):  # the trainer's "resumed ..." line per call
                res = train(cfg, resume=rnd > 0)
            row = res.history[-1]
            if row["epoch"] != rnd + 1 or row["step"] != rnd + 1:
                raise RuntimeError(f"{name}: expected epoch = step = {rnd + 1}, got {row}")
            if rnd >= warmup:
                times[name].append(float(row["time_s"]))
                regions[name].append(int(row.get("regions", 0)))
    rows = []
    for name, prec, method, b in cases:
        med, mn = statistics.median(times[name]), min(times[name])
        rows.append({"case": name, "precision": prec, "method": method, "batch": b,
                     "step_median_s": med, "step_min_s": mn, "steps_s": times[name],
                     "images_per_s": b / med, "images_per_s_from_min": b / mn,
                     "regions_per_step": regions[name] if method == "autoscale" else []})
    by = {r["case"]: r for r in rows}
    ratios, ratios_min = {}, {}
    for prec in precisions:
        for b in batches:
            f, a = by[f"{prec}/fpn/b{b}"], by[f"{prec}/autoscale/b{b}"]
            ratios[f"{prec}/b{b}: autoscale step / fpn step"] = a["step_median_s"] / f["step_median_s"]
            ratios_min[f"{prec}/b{b}: autoscale step / fpn step"] = a["step_min_s"] / f["step_min_s"]
    if "fp32" in precisions and "bf16_cl" in precisions:
        for b in batches:
            for m in ("fpn", "autoscale"):
                ratios[f"b{b}/{m}: bf16_cl speedup"] = by[f"fp32/{m}/b{b}"]["step_median_s"] / by[f"bf16_cl/{m}/b{b}"]["step_median_s"]
                ratios_min[f"b{b}/{m}: bf16_cl speedup"] = by[f"fp32/{m}/b{b}"]["step_min_s"] / by[f"bf16_cl/{m}/b{b}"]["step_min_s"]
    return {"size": list(size), "width": width, "warmup": warmup, "repeats": repeats, "images": images,
            "trainer": "autoscale.engine.trainer.train, one epoch = one step, resumed once per round",
            "rows": rows, "ratios": ratios, "ratios_from_min": ratios_min}


# ------------------------------------------------------------------------------------- (b) DDP
def _ddp_worker(spec_path: str) -> None:
    """Run inside ``torch.distributed.run``: one trainer call; rank 0 writes the history."""
    from autoscale.engine.trainer import train

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    b = C.bench_budget(size=tuple(spec["size"]), width=spec["width"], epochs=spec["epochs"], branch_epoch=0, lr=1e-4,
                       weight_decay=0.0, density_scale=1.0)
    cfg = C.train_config("regression", "fpn", b, 0, Path(spec["root"]), Path(spec["out"]), overrides={
        "data.crop": spec["crop"], "data.cache": False, "data.sigma": None, "optim.batch_size": spec["batch"],
        "optim.schedule": "constant", "model.init": "official", "keep_epochs": []})
    res = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(spec["result"]).write_text(json.dumps({"history": res.history, "steps": res.step,
                                                    "world_size": int(os.environ.get("WORLD_SIZE", "1"))}))


def bench_ddp(tmp: Path, images: int, size: tuple[int, int], crop: tuple[int, int], width: float, batch: int,
              epochs: int, worlds: tuple[int, ...]) -> dict[str, Any]:
    root = tmp / "ddp_data"
    generate_dataset(root, n=images, size=size, seed=0, splits={"train": 1.0})
    rows = []
    for world in worlds:
        spec = {"root": str(root), "size": list(size), "crop": list(crop), "width": width, "batch": batch,
                "epochs": epochs, "out": str(tmp / f"ddp_run{world}"), "result": str(tmp / f"ddp{world}.json")}
        (tmp / f"ddp{world}_spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        load0 = load_average()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
                        str(Path(__file__).resolve()), "--ddp-worker", str(tmp / f"ddp{world}_spec.json")],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        r = json.loads(Path(spec["result"]).read_text())
        epoch_s = [h["time_s"] for h in r["history"]]
        rows.append({"processes": world, "threads_per_process": 1, "epoch_seconds": epoch_s,
                     "images_per_epoch": images, "images_per_s": images / epoch_s[-1], "launch_wall_s": wall,
                     "steps": r["steps"], "load_average_before": load0, "load_average_after": load_average()})
    out = {"images": images, "image_size": list(size), "crop": list(crop), "width": width, "batch_per_process": batch,
           "epochs": epochs, "rows": rows, "backend": "gloo", "launcher": "python -m torch.distributed.run --standalone"}
    by = {r["processes"]: r for r in rows}
    if 1 in by and 2 in by:
        out["throughput_ratio_2_over_1"] = by[2]["images_per_s"] / by[1]["images_per_s"]
    return out


# ------------------------------------------------------------------------------- (c) inference
def pipeline_flops(model: AutoScale, size: tuple[int, int], region: Region, scale: float) -> dict[str, float]:
    """FLOPs (multiply + add = 2) of the first pass (with features) and the second pass on the
    region zoomed by ``scale`` - counted on the meta device (shapes only, nothing computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model.counter).to("meta")
    x = torch.empty(1, 3, *size, device="meta")
    out = {}
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            meta(x, return_features=True)
        out["first_pass"] = float(fc.get_total_flops())
        zh, zw = zoomed_size(region.box, scale)
        with FlopCounterMode(display=False) as fc:
            meta(torch.empty(1, 3, zh, zw, device="meta"))
        out["second_pass"] = float(fc.get_total_flops())
        out["second_pass_size"] = [int(zh), int(zw)]
    out["total"] = out["first_pass"] + out["second_pass"]
    return out


def peak_rss_mib() -> float:
    """This process's peak resident memory (MiB): ``VmHWM`` of ``/proc/self/status`` (per address
    space, reset by exec), else ``ru_maxrss`` (which on Linux also carries the peak of the parent
    that forked us, so it over-reports in a subprocess of a big parent)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the representative input and model (moved here from bench_inference, their only user) -----
GT_SIGMA = 8.0
GATE = 0.1


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



def run_inference_config(spec: dict[str, Any]) -> dict[str, Any]:
    """One (size, precision) configuration: time ``predict`` with the forced region; peak RSS."""
    torch.set_num_threads(spec["threads"])
    size = tuple(spec["size"])
    prec = spec["precision"]
    model = build_model(spec["seed"], spec["width"])
    inp = choose_input(None, None, size, spec["seed"])
    x = normalize(inp["image"])
    if prec == "bf16_cl":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    region = inp["region"]
    original = model.dense_regions
    model.dense_regions = lambda first_map: (original(first_map), [region])[1]  # real cost, forced region
    ctx = _ctx(prec)
    times, res = [], None
    for rnd in range(spec["warmup"] + spec["repeats"]):
        t0 = time.perf_counter()
        with torch.no_grad(), ctx():
            res = model.predict(x)
        if rnd >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    scale = res.regions[0].scale
    flops = pipeline_flops(model, size, region, scale)
    med = statistics.median(times)
    return {"size": list(size), "precision": prec, "threads": torch.get_num_threads(), "width": spec["width"],
            "median_s": med, "min_s": min(times), "runs_s": times,
            "peak_rss_mib": peak_rss_mib(),
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "region_xywh": [region.x, region.y, region.w, region.h], "l2s_scale": scale, "count": res.count,
            "flops": flops, "achieved_gflops": flops["total"] / med / 1e9,
            "achieved_gflops_from_min": flops["total"] / min(times) / 1e9}


def _inference_worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    Path(spec["result"]).write_text(json.dumps(run_inference_config(spec)))


def matmul_peak(n: int, threads: int, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` GFLOP/s of an ``n x n`` matmul in fp32 and bf16 with ``threads`` threads."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = {}
    try:
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            g = torch.Generator().manual_seed(0)
            a = torch.randn(n, n, generator=g).to(dt)
            b = torch.randn(n, n, generator=g).to(dt)
            torch.matmul(a, b)
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                torch.matmul(a, b)
                best = min(best, time.perf_counter() - t0)
            out[f"{name}_gflops"] = 2 * n**3 / best / 1e9
            out[f"{name}_seconds"] = best
    finally:
        torch.set_num_threads(prev)
    out["n"] = n
    out["threads"] = threads
    return out


def bench_inference(tmp: Path, sizes: list[tuple[int, int]], precisions: tuple[str, ...], width: float, threads: int,
                    warmup: int, repeats: int, seed: int, inprocess: bool) -> dict[str, Any]:
    rows = []
    for size in sizes:
        for prec in precisions:
            big = size[0] * size[1] > 1024 * 1024
            spec = {"size": list(size), "precision": prec, "width": width, "threads": threads, "seed": seed,
                    "warmup": warmup, "repeats": max(1, repeats - 1) if big else repeats,
                    "result": str(tmp / f"inf_{size[0]}x{size[1]}_{prec}.json")}
            if inprocess:
                rows.append(run_inference_config(spec))
                continue
            sp = tmp / f"inf_{size[0]}x{size[1]}_{prec}_spec.json"
            sp.write_text(json.dumps(spec))
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--inference-worker", str(sp)], check=True)
            rows.append(json.loads(Path(spec["result"]).read_text()))
    return {"rows": rows, "inprocess": inprocess}


# ------------------------------------------------------------------------------ (d) GT generation
def bench_gt(root: Path, split: str, limit: int | None) -> dict[str, Any]:
    from autoscale.data.formats import read_dataset

    t0 = time.perf_counter()
    recs = read_dataset("shanghaitech", root, split)[:limit]
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    mass = 0.0
    for r in recs:
        mass += float(density_map(r.points, (r.height, r.width), 8.0).sum(dtype=np.float64))
    t_density = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_cls = 0
    for r in recs:
        n_cls += int((distance_label_map(r.points, (r.height, r.width)) < 10).sum())
    t_dist = time.perf_counter() - t0
    return {"dataset": f"{root} {split}", "images": len(recs), "heads": int(sum(r.count for r in recs)),
            "names": [r.name for r in recs],
            "read_annotations_s": t_read, "density_sigma8_s": t_density, "distance_labels_s": t_dist,
            "total_s": t_read + t_density + t_dist, "density_mass": mass, "non_background_label_pixels": n_cls}


# ----------------------------------------------------------------------------------------- report
def write_markdown(res: dict[str, Any], path: Path) -> None:
    m = res["machine"]
    L = [
        "# AutoScale speed and scale (CPU)",
        "",
        f"Command: `{res['command']}`; seed {res['seed']}; total {res['seconds']:.0f} s. {m['cpu_model']} "
        f"({m['cpu_count']} CPUs), torch {m['torch']}, AMX: {', '.join(m['amx']) or 'no'}, oneDNN bf16: "
        f"{m['onednn_bf16_supported']}. Load average (1/5/15 min) at start {res['load_average_start']}, "
        f"end {res['load_average_end']}: the machine was shared with other jobs (another engineer's "
        "single-threaded benchmarks), so absolute times are pessimistic; ratios measured within one "
        "interleaved run are the meaningful numbers.",
        "",
    ]
    if "training" in res:
        t = res["training"]
        L += [f"## (a) Training throughput, {t['size'][0]}x{t['size'][1]} crops, VGG16 FPN width {t['width']}, "
              f"{res['threads']} threads", "",
              f"`autoscale.engine.trainer.train`, one optimiser step per epoch (a training split of one batch), each "
              f"case's run resumed once per round; step time = the trainer's epoch `time_s` (loading the batch + "
              f"forward + backward + Adam). Median (min) over {t['repeats']} interleaved steps after {t['warmup']} "
              "warm-up. Images (synthetic crowds): "
              + "; ".join(f"seed {d['seed']} ({d['count']} people, region x,y,w,h {d['region']})" for d in t["images"]) + ".",
              "", "| case | step median (s) | step min (s) | images/s | refined images per step |", "|---|---|---|---|---|"]
        for r in t["rows"]:
            reg = ", ".join(str(n) for n in r["regions_per_step"]) or "-"
            L.append(f"| {r['case']} | {r['step_median_s']:.3f} | {r['step_min_s']:.3f} | {r['images_per_s']:.3f} | {reg} |")
        L += ["", "| ratio | from medians | from minima |", "|---|---|---|"] + [
            f"| {k} | {v:.2f} | {t['ratios_from_min'][k]:.2f} |" for k, v in t["ratios"].items()] + [""]
    if "ddp" in res:
        d = res["ddp"]
        L += [f"## (b) DistributedDataParallel on CPU ({d['backend']}, {d['launcher']})", "",
              f"Trainer `method=fpn`, width {d['width']}, {d['images']} synthetic {d['image_size'][0]}x{d['image_size'][1]} "
              f"images, crop {d['crop'][0]}x{d['crop'][1]}, batch {d['batch_per_process']} per process, 1 thread per process; "
              "throughput from the trainer's last-epoch `time_s`.", "",
              "| processes | epoch seconds | images/s | load avg before | load avg after |", "|---|---|---|---|---|"]
        for r in d["rows"]:
            L.append(f"| {r['processes']} | {', '.join(f'{s:.2f}' for s in r['epoch_seconds'])} | {r['images_per_s']:.2f} | "
                     f"{r['load_average_before']} | {r['load_average_after']} |")
        if "throughput_ratio_2_over_1" in d:
            L += ["", f"Throughput ratio 2 processes / 1 process: **{d['throughput_ratio_2_over_1']:.2f}** (ideal 2 on 2 free cores)."]
        L.append("")
    if "inference" in res:
        mp = res["matmul_peak"]
        L += [f"## (c) Inference, two-pass pipeline (L2S, forced region), width {res['inference']['rows'][0]['width']}, "
              f"{res['threads']} threads", "",
              f"Matmul peak ({mp['n']}x{mp['n']}, {mp['threads']} threads): fp32 {mp['fp32_gflops']:.0f} GFLOP/s, "
              f"bf16 {mp['bf16_gflops']:.0f} GFLOP/s.", "",
              "| size (HxW) | precision | median (min) s | peak RSS (MiB, VmHWM) | GFLOPs (1st + 2nd pass) | achieved GFLOP/s | % of matmul peak | L2S scale |",
              "|---|---|---|---|---|---|---|---|"]
        for r in res["inference"]["rows"]:
            peak = mp["fp32_gflops"] if r["precision"] == "fp32" else mp["bf16_gflops"]
            f = r["flops"]
            L.append(f"| {r['size'][0]}x{r['size'][1]} | {r['precision']} | {r['median_s']:.2f} ({r['min_s']:.2f}) | "
                     f"{r['peak_rss_mib']:.0f} | {f['first_pass'] / 1e9:.0f} + {f['second_pass'] / 1e9:.0f} | "
                     f"{r['achieved_gflops']:.0f} | {100 * r['achieved_gflops'] / peak:.0f}% | {r['l2s_scale']:.3f} |")
        L.append("")
    if "gt" in res:
        g = res["gt"]
        if "skipped" in g:
            L += ["## (d) Ground-truth generation", "", f"Skipped: {g['skipped']}", ""]
        else:
            L += ["## (d) Ground-truth generation", "", f"{g['dataset']}: {g['images']} images, {g['heads']} heads.", "",
                  "| step | seconds |", "|---|---|", f"| read annotations | {g['read_annotations_s']:.2f} |",
                  f"| density maps (sigma 8) | {g['density_sigma8_s']:.2f} |",
                  f"| distance-label maps | {g['distance_labels_s']:.2f} |", f"| **total** | **{g['total_s']:.2f}** |", ""]
    path.write_text("\n".join(L))


def _parse_parts(text: str) -> list[str]:
    parts = [p for p in text.split(",") if p]
    bad = set(parts) - {"training", "ddp", "inference", "gt"}
    if bad:
        raise argparse.ArgumentTypeError(f"unknown parts {sorted(bad)}")
    return parts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and widths, 1 timed step (seconds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", type=_parse_parts, default=["training", "ddp", "inference", "gt"])
    ap.add_argument("--repeats", type=int, default=3, help="timed steps / inference runs (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--data", type=Path, default=SHB, help="ShanghaiTech part_B root for (d)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for speed.json / speed.md")
    ap.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    ap.add_argument("--inference-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_worker:
        _ddp_worker(args.ddp_worker)
        return {}
    if args.inference_worker:
        _inference_worker(args.inference_worker)
        return {}
    s = args.smoke
    train_size, train_width = ((64, 64), 1 / 16) if s else ((512, 512), 1.0)
    inf_sizes, inf_width = ([(48, 64), (96, 128)], 1 / 16) if s else ([(768, 1024), (2048, 1536)], 1.0)
    ddp = dict(images=4, size=(64, 64), crop=(32, 32), width=1 / 16, batch=1, epochs=2) if s else \
        dict(images=32, size=(256, 256), crop=(128, 128), width=0.25, batch=2, epochs=3)
    if s:
        args.repeats, args.warmup = 1, 0
    t0 = time.perf_counter()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    machine = BI.machine_info()
    precisions = tuple(p for p in PRECISIONS if p == "fp32" or (machine["native_bf16"] and not s))
    result: dict[str, Any] = {"benchmark": "speed", "command": " ".join(["python benchmarks/bench_speed.py", *argv]),
                              "seed": args.seed, "threads": args.threads, "smoke": s, "load_average_start": load_average()}
    try:
        with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmpdir:
            tmp = Path(tmpdir)
            part_t0 = time.perf_counter()
            if "inference" in args.parts:
                result["matmul_peak"] = matmul_peak(512 if s else 4096, args.threads)
                result["inference"] = bench_inference(tmp, inf_sizes, precisions, inf_width, args.threads,
                                                      args.warmup, args.repeats, args.seed, inprocess=s)
                result["inference"]["load_average_after"] = load_average()
            result["part_seconds"] = {"inference": time.perf_counter() - part_t0}
            part_t0 = time.perf_counter()
            if "training" in args.parts:
                result["training"] = bench_training(tmp, train_size, train_width, (1, 4) if not s else (1, 2),
                                                    precisions, args.warmup, args.repeats, args.seed)
                result["training"]["load_average_after"] = load_average()
            result["part_seconds"]["training"] = time.perf_counter() - part_t0
            part_t0 = time.perf_counter()
            if "ddp" in args.parts:
                result["ddp"] = bench_ddp(tmp, worlds=(1, 2), **ddp)
            result["part_seconds"]["ddp"] = time.perf_counter() - part_t0
            if "gt" in args.parts:
                if args.data.is_dir():
                    result["gt"] = bench_gt(args.data, "train", 3 if s else None)
                else:
                    result["gt"] = {"skipped": f"{args.data} not found"}
    finally:
        torch.set_num_threads(prev_threads)
    result["load_average_end"] = load_average()
    result["seconds"] = time.perf_counter() - t0
    result["machine"] = machine
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "speed.md")
    if not s:
        print((args.out / "speed.md").read_text())
    return result


if __name__ == "__main__":
    main()
