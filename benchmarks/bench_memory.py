"""Benchmark: peak memory of ``autoscale predict`` on big inputs (issue 10, item 6).

Cases (:data:`CASE_TABLE`; each one fresh ``autoscale predict`` process with default settings
unless its options say otherwise: ``--max-side auto``, ``--precision auto`` (fp32), overlays and
maps written, 1 torch/OpenMP thread):

* ``photo_*``: one generated 12000 x 8000 JPEG (quality 90, smooth random scenery with a textured
  "crowd" band of dark head-like blobs over 25 % of the frame; ~25 MB, a realistic size for a
  96 MP photo), counted by a full-width (``width=1``) VGG16 regression FPN and an
  EfficientNet-Lite0 regression FPN, each with an L2S network (the two-pass AutoScale pipeline),
  at the default precision (fp32) and with ``--precision bf16`` (the opt-in); and by
  the VGG16 one with ``--max-side 1024`` (the knob: a smaller first pass; the second pass keeps its
  own bound, ``max_zoom_pixels``).
* ``folder_*``: a folder holding that photo under 3 names (hard links): the runner streams a
  folder (reader threads decode images ahead, a writer thread writes the previous outputs).
* ``video_*``: generated 1920 x 1080 mp4v videos of 1 and 5 minutes at ``--video-fps`` frames per
  second (default 5: 300 and 1500 frames), counted by the Lite0 checkpoint with ``--every N``
  (default 50: one frame in 10 s, 6 and 30 frames counted), default precision and bf16. The
  runner decodes every frame (``grab`` for the skipped ones), so the 5-minute run streams and
  counts 5x as many frames. The camera pans over a generated scene with a crowd band and the pan
  repeats every ``N`` frames, so every counted frame shows the same view: the per-frame work is
  identical and any difference between the two peaks comes from the length (frames decoded,
  frames counted, records kept).
* :data:`MMAP_CASES` run again with ``MALLOC_MMAP_THRESHOLD_`` set (``--mmap-threshold``): glibc
  then gives every block of at least that size its own mapping, returned to the system when
  freed, instead of keeping freed blocks of up to 32 MiB in the heap.

Peak memory: the predict process's own VmHWM (peak resident set, ``/proc/self/status``), written
by the process at exit (:data:`_WRAPPER`), in GiB (2**30 bytes); ``ru_maxrss`` from ``os.wait4`` is
recorded too but is only an upper bound (Linux carries the parent's peak into it across
fork/exec). The resident set is also sampled every 0.25 s from ``/proc/<pid>/status`` for a coarse
trace (max per tenth of the run). Time is wall-clock seconds of the process, start-up and model
loading included (the machine is shared with other jobs: indicative only). ``stderr_lines`` /
``first_stderr_at_s``: what the user saw while waiting (progress).

Checkpoints: seeded random weights (Kaiming) of the registry's ``fpn_regression`` (``backbone``
``vgg16`` / ``efficientnet_lite0``, width 1) - memory does not depend on trained values - with two
adjustments so the *second pass runs at its largest size*, the worst case for memory:

* the side-output heads (``dsn2..dsn4``, ``dsn5`` zeroed) and the fusion ``dsn6`` are set so the
  first-pass map is a least-squares fit of the multi-level feature to a band-shaped density on a
  small image of the same generator (a "linear probe", as in ``bench_inference.py``); the crowd
  band then passes the dense-region rule and gate;
* the L2S output bias is set to +8 so the zoom is ~3 (the paper bound's top), which the pipeline
  clamps to ``max_zoom_pixels`` (2048 x 2048): the second pass sees ~4.2 MP.

The checkpoints record no training resize, so ``--max-side auto`` resolves to 2048 (the cap of the
QNRF/JHU/NWPU presets; the ``*_lite0`` presets record 512 / 768 and would use less). Each case
records the refined regions and the second pass's input size (read from ``counts.json``).

Generated inputs, checkpoints and outputs go to ``--work`` (default: a folder under the system
temp dir), never into the repository; results go to ``benchmarks/results/memory.json`` / ``.md``.
Run from the project root (minutes; sequential on purpose: one measurement at a time)::

    .venv/bin/python benchmarks/bench_memory.py
    .venv/bin/python benchmarks/bench_memory.py --cases photo_lite0 --keep   # one case, keep --work
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import pty
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
LIMIT_GIB = 6.0
GIB = 2.0**30
BF16 = ("--precision", "bf16")
#: name -> (input, checkpoint, extra ``autoscale predict`` arguments, key in the results, label).
CASE_TABLE: dict[str, tuple[str, str, tuple[str, ...], str, str]] = {
    "photo_vgg16": ("photo", "vgg16", (), "vgg16", "vgg16"),
    "photo_vgg16_bf16": ("photo", "vgg16", BF16, "vgg16_bf16", "vgg16, `--precision bf16`"),
    "photo_lite0": ("photo", "lite0", (), "lite0", "lite0"),
    "photo_lite0_bf16": ("photo", "lite0", BF16, "lite0_bf16", "lite0, `--precision bf16`"),
    "photo_vgg16_side1024": ("photo", "vgg16", ("--max-side", "1024"), "vgg16_max_side_1024", "vgg16, `--max-side 1024`"),
    "folder_lite0": ("folder", "lite0", (), "lite0", "lite0"),
    "folder_vgg16": ("folder", "vgg16", (), "vgg16", "vgg16"),
    "video_1min": ("video_1min", "lite0", (), "1min", "lite0"),
    "video_5min": ("video_5min", "lite0", (), "5min", "lite0"),
    "video_1min_bf16": ("video_1min", "lite0", BF16, "1min_bf16", "lite0, `--precision bf16`"),
    "video_5min_bf16": ("video_5min", "lite0", BF16, "5min_bf16", "lite0, `--precision bf16`"),
}
CASES = tuple(CASE_TABLE)
MMAP_CASES = ("photo_vgg16", "folder_vgg16", "video_1min", "video_5min")
FOLDER_COPIES = 3
BACKBONE = {"vgg16": "vgg16", "lite0": "efficientnet_lite0"}
MAX_ZOOM_PIXELS = 2048 * 2048  # PipelineConfig.max_zoom_pixels (default)
BAND = (0.40, 0.65)  # rows of the generated scenes holding the "crowd" (fractions of the height)


# ------------------------------------------------------------------------------------ inputs
def scene(width: int, height: int, *, head_radius: float, seed: int) -> np.ndarray:
    """A ``uint8 (H, W, 3)`` RGB scene: smooth multi-octave random colour fields, fine sensor-like
    noise, and a "crowd" band (rows 40 %..65 %, :data:`BAND`) of dark disc heads on lighter bodies spaced ~3
    radii apart. Built in place (one full-size uint8 array plus strip-sized temporaries)."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), dtype=np.uint8)
    acc = np.zeros((height, width, 3), dtype=np.uint8)
    # Octaves: coarse colour (weight 0.6), mid detail (0.3); summed in uint8 without float copies.
    for cells, weight in ((6, 0.6), (60, 0.3)):
        ch, cw = max(2, round(cells * height / max(height, width))), max(2, round(cells * width / max(height, width)))
        low = (rng.random((ch, cw, 3)) * 255 * weight).astype(np.uint8)
        cv2.resize(low, (width, height), dst=img, interpolation=cv2.INTER_CUBIC)
        cv2.add(acc, img, dst=acc)
    # Fine noise per strip (int16 temporaries stay small).
    strip = 512
    for y0 in range(0, height, strip):
        y1 = min(height, y0 + strip)
        noise = rng.normal(0, 6, size=(y1 - y0, width, 1)).astype(np.int16)
        acc[y0:y1] = np.clip(acc[y0:y1].astype(np.int16) + 30 + noise, 0, 255).astype(np.uint8)
    del img
    top, bottom = int(BAND[0] * height), int(BAND[1] * height)
    r = max(1.0, head_radius)
    step = 3.0 * r
    n_rows = int((bottom - top) / step)
    for i in range(n_rows):
        cy = top + (i + 0.5) * step
        xs = np.arange(rng.uniform(0, step), width, step)
        xs = xs + rng.normal(0, 0.3 * r, size=xs.shape)
        for jx in xs:
            jy = cy + rng.normal(0, 0.3 * r)
            shade = int(rng.integers(10, 70))
            body = tuple(int(v) for v in rng.integers(90, 230, size=3))
            cv2.ellipse(acc, (int(jx), int(jy + 1.6 * r)), (int(1.2 * r) + 1, int(1.4 * r) + 1), 0, 0, 360, body, -1,
                        lineType=cv2.LINE_AA)
            cv2.circle(acc, (int(jx), int(jy)), int(round(r)), (shade, shade, shade), -1, lineType=cv2.LINE_AA)
    return acc


def write_photo(path: Path, width: int, height: int, seed: int = 0) -> dict[str, Any]:
    """Generate the big JPEG (quality 90) once; returns its description."""
    if not path.exists():
        img = scene(width, height, head_radius=max(width, height) / 600.0, seed=seed)
        tmp = path.with_suffix(".tmp.jpg")
        Image.fromarray(img).save(tmp, quality=90)
        del img
        os.replace(tmp, path)
    return {"file": path.name, "width": width, "height": height, "jpeg_quality": 90,
            "bytes": path.stat().st_size}


def write_video(path: Path, seconds: int, fps: float, period: int, seed: int = 0,
                size: tuple[int, int] = (1920, 1080)) -> dict[str, Any]:
    """Generate a ``size`` mp4v video of ``seconds`` at ``fps``: a camera pan (and a vertical sway)
    over a 2880 x 1620 scene that repeats every ``period`` frames, so the frames a run with
    ``--every period`` counts all show the same view (the same work per counted frame, whatever
    the length) while every frame in between differs. Written frame by frame (never held in memory)."""
    w, h = size
    n = int(round(seconds * fps))
    if not path.exists():
        canvas = scene(int(w * 1.5), int(h * 1.5), head_radius=4.0, seed=seed)
        bgr = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
        tmp = path.with_name(path.stem + ".tmp" + path.suffix)
        vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        if not vw.isOpened():
            raise RuntimeError("cv2.VideoWriter cannot write mp4v here")
        span_x, span_y = bgr.shape[1] - w, bgr.shape[0] - h
        for i in range(n):
            t = (i % period) / period
            x = int(round(span_x * (0.5 - 0.5 * np.cos(2 * np.pi * t))))
            y = int(round(span_y * (0.5 - 0.5 * np.cos(4 * np.pi * t))))
            vw.write(np.ascontiguousarray(bgr[y:y + h, x:x + w]))
        vw.release()
        os.replace(tmp, path)
    return {"file": path.name, "width": w, "height": h, "fps": fps, "seconds": seconds, "frames": n,
            "pan_period_frames": period, "codec": "mp4v", "bytes": path.stat().st_size}


# ------------------------------------------------------------------------------------ checkpoints
def make_memory_checkpoint(path: Path, backbone: str, *, probe_radius: float, seed: int = 0) -> dict[str, Any]:
    """A full-width regression AutoScale checkpoint (module docstring: seeded Kaiming weights,
    side heads refitted so the crowd band is dense, L2S zoom ~3). Returns a description."""
    from autoscale.models.checkpoint import make_checkpoint
    from autoscale.models.registry import count_parameters, get_model
    from autoscale.models.vgg import normalize

    torch.manual_seed(seed)
    fpn = get_model("fpn_regression", backbone=backbone, width=1.0, init="kaiming").eval()
    l2s = get_model("l2s_regression", in_channels=fpn.feature_channels).eval()
    # Linear probe: the output becomes a least-squares fit of the multi-level feature (levels below
    # the deepest, whose feature blocks are exactly what dsn2..dsn4 read) to a band-shaped density.
    probe = scene(640, 480, head_radius=probe_radius, seed=seed + 1)
    with torch.inference_mode():
        feats = fpn(normalize(probe, *fpn.normalization), return_features=True).features[0]
    levels = list(fpn.levels)
    sizes = [getattr(fpn, f"dsn{k}").in_channels for k in levels]
    used = sum(sizes[:-1])
    H, W = probe.shape[:2]
    target = np.zeros((H, W))
    target[int(BAND[0] * H):int(BAND[1] * H)] = 1.0 / (9.0 * probe_radius**2)  # one person per 3r x 3r cell
    X = feats[:used].flatten(1)[:, ::3].T.double()  # (pixels, channels), every third pixel
    A = torch.cat([X, torch.ones(X.shape[0], 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(A, torch.from_numpy(target.reshape(-1)[::3].reshape(-1, 1))).solution.reshape(-1)
    with torch.no_grad():
        start = 0
        for k, n in zip(levels, sizes):
            dsn = getattr(fpn, f"dsn{k}")
            dsn.bias.zero_()
            dsn.weight.zero_()
            if k != levels[-1]:
                dsn.weight.copy_(sol[start:start + n].reshape(dsn.weight.shape).float())
            start += n
        fpn.dsn6.weight.fill_(1.0)
        fpn.dsn6.bias.fill_(float(sol[-1]))
        last = l2s.output[-1]
        last.weight.zero_()
        last.bias.fill_(8.0)  # sigmoid(8) ~ 0.9997: zoom ~3.0 before the max_zoom_pixels clamp
    ck = make_checkpoint(fpn, l2s, variant="regression", model_name="fpn_regression",
                         model_kwargs={"backbone": backbone, "width": 1.0},
                         pipeline={"variant": "regression", "zoom": "bilinear"},
                         method="autoscale", code_version="bench_memory", config={})
    torch.save(ck, path)
    return {"file": path.name, "backbone": backbone, "width": 1.0, "params": count_parameters(fpn) + count_parameters(l2s),
            "bytes": path.stat().st_size}


# ------------------------------------------------------------------------------------ measuring
def _vm_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


#: ``python -c`` program running ``autoscale ARGS`` (exactly what ``python -m autoscale ARGS`` runs)
#: that writes its own VmHWM (KiB) to ``argv[1]`` at exit. The peak of *this process's* memory:
#: ``ru_maxrss`` would not do, since Linux carries the parent's peak across fork/exec into it.
_WRAPPER = r"""
import atexit, runpy, sys
hwm_file = sys.argv[1]

def _hwm():
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(hwm_file, "w") as f:
        f.write(str(kib))

atexit.register(_hwm)
sys.argv = ["autoscale", *sys.argv[2:]]
runpy.run_module("autoscale", run_name="__main__", alter_sys=True)
"""


def run_predict(args: list[str], log: Path, threads: int, pythonpath: str | None = None,
                env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    """``autoscale predict ARGS`` in a fresh process (:data:`_WRAPPER`; ``env_extra`` added to its
    environment); its peak memory (VmHWM at exit), wall time, exit code, stderr lines and a coarse
    RSS trace."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE", MKL_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1", **(env_extra or {}))
    hwm_file = log.with_suffix(".hwm")
    hwm_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", _WRAPPER, str(hwm_file), "predict", *args]
    samples: list[tuple[float, int]] = []
    stamps: list[float] = []
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, *filter(None, [env.get("PYTHONPATH")])])
    t0 = time.perf_counter()
    master, slave = pty.openpty()  # stderr is a terminal, as for a user watching (progress 'auto')
    with open(log, "w") as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=env,
                                    cwd=ROOT)
        finally:
            os.close(slave)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                kib = _vm_rss_kib(proc.pid)
                if kib is not None:
                    samples.append((time.perf_counter() - t0, kib))
                done.wait(0.25)

        def drain() -> None:
            buf = b""
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child's side is closed
                    chunk = b""
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    stamps.append(time.perf_counter() - t0)
                    text = line.rstrip(b"\r").decode(errors="replace")
                    err.write(f"[{stamps[-1]:8.1f}s] {text}\n")
                    err.flush()
            if buf.strip():
                stamps.append(time.perf_counter() - t0)
                err.write(f"[{stamps[-1]:8.1f}s] {buf.decode(errors='replace').rstrip()}\n")

        sampler, drainer = threading.Thread(target=sample, daemon=True), threading.Thread(target=drain, daemon=True)
        sampler.start()
        drainer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        done.set()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen consistent
        drainer.join(5)
        sampler.join(5)
        os.close(master)
    trace = []
    if samples:
        for k in range(10):
            lo, hi = seconds * k / 10, seconds * (k + 1) / 10
            part = [kib for t, kib in samples if lo <= t < hi]
            trace.append(round(max(part) / 2**20, 3) if part else None)
    hwm = int(hwm_file.read_text()) if hwm_file.is_file() else None
    peak_kib = hwm if hwm is not None else max([kib for _, kib in samples] or [0])  # a crash: the sampled peak
    return {"peak_gib": round(peak_kib * 1024 / GIB, 3), "peak_source": "VmHWM" if hwm is not None else "VmRSS samples",
            "ru_maxrss_gib": round(usage.ru_maxrss * 1024 / GIB, 3), "seconds": round(seconds, 1),
            "returncode": proc.returncode,
            "stderr_lines": len(stamps), "first_stderr_at_s": round(stamps[0], 1) if stamps else None,
            "rss_trace_gib": trace, "log": log.name}


def second_pass_info(counts: dict[str, Any], max_side: int | None) -> dict[str, Any]:
    """Refined regions of the first record and the second pass's input size in pixels: the box in
    network pixels (input box x the large-image factor) times the zoom squared."""
    recs = counts.get("images") or []
    zoomed = []
    for rec in recs:
        longer = max(rec["height"], rec["width"])
        f = min(1.0, max_side / longer) if max_side else 1.0
        for r in rec.get("regions") or []:
            zoomed.append(r["w"] * f * r["h"] * f * r["scale"] ** 2)
    return {"images": len(recs), "frames_with_region": sum(1 for r in recs if r.get("regions")),
            "second_pass_pixels_max": int(max(zoomed)) if zoomed else 0,
            "total_count": round(float(counts.get("total_count", 0.0)), 2)}


def measure(name: str, inp: Path, ckpt: Path, work: Path, threads: int, extra: Sequence[str] = (),
            pythonpath: str | None = None, env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    """One case: :func:`run_predict` into ``work/out/NAME`` plus what ``counts.json`` says."""
    out = work / "out" / name
    if out.exists():
        shutil.rmtree(out)
    print(f"[bench_memory] {name}: autoscale predict {inp.name} ...", flush=True)
    res = run_predict([str(inp), "--checkpoint", str(ckpt), "--out", str(out), *extra], work / f"{name}.log", threads,
                      pythonpath, env_extra)
    if res["returncode"] == 0:
        counts = json.loads((out / "counts.json").read_text())
        res["max_side"] = counts.get("max_side")
        res.update(second_pass_info(counts, counts.get("max_side")))
    else:
        res["max_side"] = None
        res["error"] = (work / f"{name}.log").read_text().strip().splitlines()[-1:] or ["(no stderr)"]
    res["within_limit"] = res["peak_gib"] <= LIMIT_GIB
    print(f"[bench_memory] {name}: peak {res['peak_gib']:.2f} GiB, {res['seconds']:.0f} s, rc {res['returncode']}", flush=True)
    return res


# ------------------------------------------------------------------------------------ report
_LABELS = {(spec[0].split("_")[0], spec[3]): spec[4] for spec in CASE_TABLE.values()}
_HEADER = ["| input | model, options | precision | max_side | peak (GiB) | <= limit | seconds | second pass (px) "
           "| stderr lines (first at s) |", "|---|---|---|---|---|---|---|---|---|"]


def _row(case: str, model: str, m: dict[str, Any]) -> str:
    first = "-" if m.get("first_stderr_at_s") is None else f"{m['first_stderr_at_s']:.0f}"
    zoom = m.get("second_pass_pixels_max")
    zoom = "-" if zoom is None else f"{zoom:,}"
    return (f"| {case} | {model} | {m.get('precision')} | {m.get('max_side')} | {m['peak_gib']:.2f} | "
            f"{'yes' if m['within_limit'] else 'NO'} | {m['seconds']:.0f} | {zoom} | {m['stderr_lines']} ({first}) |")


def _table(res: dict[str, Any]) -> list[str]:
    out = []
    for key, value in res.items():
        if key.startswith(("photo_", "folder_")):
            kind, size = key.split("_", 1)  # photo_12000x8000, folder_3x12000x8000
            name = f"photo {size}" if kind == "photo" else "folder of {} x {}".format(*size.split("x", 1))
            out += [_row(name, _LABELS.get((kind, k), k), v) for k, v in value.items()]
        elif key == "video_1080p":
            out += [_row(f"video 1080p {k.split('_')[0]}", f"{_LABELS.get(('video', k), k)}, `--every {value['every']}`", v)
                    for k, v in value.items() if isinstance(v, dict)]
    return out


def _video_note(video: dict[str, Any], inputs: dict[str, Any], tag: str = "") -> list[str]:
    notes = []
    for suffix in ("", "_bf16"):
        a, b = video.get("1min" + suffix), video.get("5min" + suffix)
        if a is None or b is None:
            continue
        notes += ["", f"Video{tag}, {a.get('precision')}: {a.get('images')} vs {b.get('images')} frames counted, "
                      f"{inputs['video_1min']['frames']} vs {inputs['video_5min']['frames']} decoded (the pan repeats "
                      f"every {video['every']} frames, so every counted frame shows the same view); peak 1 min "
                      f"{a['peak_gib']:.3f} GiB, 5 min {b['peak_gib']:.3f} GiB (difference "
                      f"{b['peak_gib'] - a['peak_gib']:+.3f} GiB)."]
    return notes


def markdown(r: dict[str, Any]) -> str:
    """The results as a markdown page (``memory.md``)."""
    lines = [
        "# Peak memory of `autoscale predict` on big inputs",
        "",
        f"Command: `{r['command']}`; {r['machine']['platform']}, {r['machine']['cpu_count']} CPUs (shared with other "
        f"jobs: times are indicative), torch {r['machine']['torch']}, {r['threads']} thread(s); total "
        f"{r['total_seconds']:.0f} s; tree {r['git']['start']}.",
        "",
        f"Peak = VmHWM of the predict process (its own peak resident set) in GiB; limit {r['limit_gib']:g} GiB. Default "
        "settings unless the options say otherwise (`--max-side auto`, `--precision auto`: fp32; overlays and maps "
        "written). Checkpoints: seeded full-width "
        "regression FPN + L2S; the first-pass heads are refitted so a crowd band is dense and the L2S zoom sits at its "
        f"top, so the second pass runs at the `max_zoom_pixels` bound ({MAX_ZOOM_PIXELS:,} px), the worst case. stderr "
        "is a pseudo-terminal (a user watching); 'stderr lines (first at s)' is what they saw and when the first line "
        "came." + (f" Predict ran from `{r['pythonpath']}` (`--pythonpath`)." if r.get("pythonpath") else ""),
        "",
        *_HEADER, *_table(r),
    ]
    if r.get("malloc_env"):
        lines += ["", f"glibc malloc settings in the environment: {r['malloc_env']}."]
    lines += _video_note(r.get("video_1080p", {}), r["inputs"])
    mm = r.get("mmap_threshold")
    if mm:
        lines += ["", f"Cases run again with `MALLOC_MMAP_THRESHOLD_={mm['bytes']}` (glibc: every block of at least "
                      f"{mm['bytes']:,} bytes gets its own mapping, returned to the system when freed; by default the "
                      "threshold rises up to 32 MiB after the first large free and freed blocks below it stay in the "
                      "heap):", "", *_HEADER, *_table(mm)]
        lines += _video_note(mm.get("video_1080p", {}), r["inputs"], f" with `MALLOC_MMAP_THRESHOLD_={mm['bytes']}`")
    lines += ["", "Inputs:", ""]
    lines += [f"- {key}: " + ", ".join(f"{k} {v}" for k, v in desc.items()) for key, desc in r["inputs"].items()]
    lines += ["", "RSS trace (GiB, max per tenth of each run):", ""]
    for tag, res in (("", r), (" (mmap threshold)", mm or {})):
        for key, value in res.items():
            if key.startswith(("photo_", "folder_")):
                lines += [f"- {key} {k}{tag}: {v.get('rss_trace_gib')}" for k, v in value.items()]
            elif key == "video_1080p":
                lines += [f"- video {k}{tag}: {v.get('rss_trace_gib')}" for k, v in value.items() if isinstance(v, dict)]
    return "\n".join(lines) + "\n"


def _git_state() -> str:
    """``<commit>`` plus the source files modified in the working tree (other engineers' edits)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True,
                               timeout=30).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    files = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted {', '.join(files)}" if files else "")


def _precision(extra: Sequence[str]) -> str:
    """The precision a case runs at: its ``--precision``, else fp32 (what ``auto`` resolves to since
    bf16 counts proved a few percent off fp32; an older ``--pythonpath`` tree may have picked bf16)."""
    if "--precision" in extra:
        return extra[list(extra).index("--precision") + 1]
    return "fp32"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="folder for generated inputs, checkpoints and outputs "
                                                           "(default: a new temp folder, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep --work afterwards")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--video-fps", type=float, default=5.0, help="frame rate of the generated videos")
    ap.add_argument("--every", type=int, default=50, help="videos: count every N-th frame (all are decoded)")
    ap.add_argument("--photo-size", default="12000x8000", help="WxH of the generated photo")
    ap.add_argument("--mmap-threshold", type=int, default=131072, metavar="BYTES",
                    help="then run --mmap-cases again with MALLOC_MMAP_THRESHOLD_=BYTES (0: not)")
    ap.add_argument("--mmap-cases", default=",".join(MMAP_CASES), help="cases run again with the mmap threshold")
    ap.add_argument("--pythonpath", default=None, help="run predict from this source folder (prepended to "
                                                        "PYTHONPATH), e.g. a tree with a proposed change")
    a = ap.parse_args(argv)
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    again = [c.strip() for c in a.mmap_cases.split(",") if c.strip()] if a.mmap_threshold else []
    bad = [c for c in cases + again if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from {','.join(CASES)}")
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    work = a.work or Path(tempfile.mkdtemp(prefix="autoscale_bench_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    pw, ph = (int(v) for v in a.photo_size.lower().split("x"))
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "limit_gib": LIMIT_GIB, "threads": a.threads, "pythonpath": a.pythonpath,
        "command": "python benchmarks/bench_memory.py" + ("" if argv is None and len(sys.argv) == 1
                                                           else " " + " ".join(argv or sys.argv[1:])),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "load_average_at_start": [round(v, 2) for v in os.getloadavg()]},
        "git": {"start": _git_state()},
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "inputs": {}, "checkpoints": {}}
    try:
        photo_key, folder_key = f"photo_{pw}x{ph}", f"folder_{FOLDER_COPIES}x{pw}x{ph}"
        todo = set(cases) | set(again)
        inputs_needed = {CASE_TABLE[c][0] for c in todo}
        photo = work / f"photo_{pw}x{ph}.jpg"
        if inputs_needed & {"photo", "folder"}:
            print(f"[bench_memory] generating {pw}x{ph} JPEG ...", flush=True)
            result["inputs"][photo_key] = write_photo(photo, pw, ph)
        folder = work / f"folder_{FOLDER_COPIES}x{pw}x{ph}"
        if "folder" in inputs_needed:  # the same file under three names: each is read and counted on its own
            folder.mkdir(exist_ok=True)
            for k in range(FOLDER_COPIES):
                link = folder / f"photo{k + 1}.jpg"
                if not link.exists():
                    os.link(photo, link)
            result["inputs"][folder_key] = {"files": FOLDER_COPIES, "each": photo.name}
        paths: dict[str, Path] = {"photo": photo, "folder": folder}
        for c, minutes in (("video_1min", 1), ("video_5min", 5)):
            if c in inputs_needed:
                print(f"[bench_memory] generating {minutes} min 1080p video at {a.video_fps:g} fps ...", flush=True)
                p = work / f"video_{minutes}min_{a.video_fps:g}fps_p{a.every}.mp4"
                result["inputs"][c] = write_video(p, 60 * minutes, a.video_fps, a.every)
                paths[c] = p
        ckpts = {}
        for model in ("vgg16", "lite0"):
            if any(CASE_TABLE[c][1] == model for c in todo):
                p = work / f"{model}.pt"
                # Head radius in network pixels: the photo's heads after the 2048 cap.
                radius = (max(pw, ph) / 600.0) * 2048 / max(pw, ph)
                print(f"[bench_memory] building {model} checkpoint ...", flush=True)
                result["checkpoints"][model] = make_memory_checkpoint(p, BACKBONE[model], probe_radius=radius)
                ckpts[model] = p

        def run_all(selected: list[str], into: dict[str, Any], suffix: str = "",
                    env_extra: dict[str, str] | None = None) -> None:
            for case in CASES:
                if case not in selected:
                    continue
                inp, model, extra, key, _ = CASE_TABLE[case]
                if inp.startswith("video"):
                    extra = (*extra, "--every", str(a.every))
                    group = into.setdefault("video_1080p", {"model": "lite0", "every": a.every})
                else:
                    group = into.setdefault(photo_key if inp == "photo" else folder_key, {})
                res = measure(case + suffix, paths[inp], ckpts[model], work, a.threads, extra, a.pythonpath, env_extra)
                group[key] = dict(res, precision=_precision(extra))

        run_all(cases, result)
        if again:
            env = {"MALLOC_MMAP_THRESHOLD_": str(a.mmap_threshold)}
            result["mmap_threshold"] = {"bytes": a.mmap_threshold, "env": env}
            run_all(again, result["mmap_threshold"], "_mmap", env)
        result["git"]["end"] = _git_state()
        result["total_seconds"] = round(time.perf_counter() - t_start, 1)
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "memory.json").write_text(json.dumps(result, indent=1) + "\n")
        (a.out / "memory.md").write_text(markdown(result))
        print(markdown(result))
    finally:
        if a.work is None and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"[bench_memory] work folder kept: {work}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
