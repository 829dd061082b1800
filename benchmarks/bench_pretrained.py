"""Benchmark: ShanghaiTech models trained and scored only through the user's commands.

Every model is made by ``python -m autoscale train --config PRESET data.root=... out=... [overrides]``
and scored by ``python -m autoscale evaluate --checkpoint OUT/last.pt --config PRESET data.root=...
--split test --out EVAL``, run as subprocesses; this script has no training or scoring code of its
own. It reads what the commands wrote (``history.json``, ``metrics.json``, ``per_image.csv``) and
collects them in ``results/shanghaitech_{b,a}_pretrained.json`` (and ``.md``).

Methods (presets ``shanghaitech_{b|a}_{fpn|autoscale}_{regression|localization}_lite0``):

* ``fpn_regression``, ``fpn_localization`` (DCE): the FPN baselines. Each is trained in two calls:
  to the branch epoch K (``optim.max_steps`` = K epochs of steps, ``keep_epochs=[K]`` keeps
  ``epoch_K.pt``), then ``--resume`` to the preset's last epoch (the engine's resume is exact, and
  ``max_steps`` does not change the learning-rate schedule, so this is the same run as one call).
* ``autoscale_regression``, ``autoscale_localization``: AutoScale branched off its FPN at epoch K
  (``init_from=<fpn out>/epoch_K.pt``: the FPN's weights, Adam state and schedule position), trained
  to the same last epoch - the same optimiser steps as its FPN.
* ``fpn_localization_ce``: the localization FPN preset with ``pipeline.loss=ce`` (Table 12).
* ``fpn_density_peaks``: ``fpn_regression``'s checkpoint (no extra training) evaluated with
  ``--points-from-density-peaks``: people = local maxima of its density map (Table 12's
  density-map baseline); its ``mae`` / ``rmse`` count the peaks (``mae_density_sum``: the map sums).

Metrics per method (``methods.<name>``): ``mae``, ``rmse``, ``first_pass_mae`` and, for point
methods, ``precision_4/recall_4/f1_4`` and ``_8`` (matching radius 4 / 8 px of the original photo,
evaluate's ``localization.sigma_4/sigma_8``); ``command``: the exact train and evaluate command lines.

* ``cpu_minutes``: CPU time (user + system, all threads) of the train subprocesses, from
  ``resource.getrusage(RUSAGE_CHILDREN)`` deltas around each call (one call at a time per script
  process, so each delta is exactly that call's process). An AutoScale model's figure adds its FPN
  trunk's first call (epochs 1..K); that call ends exactly at K, so the trunk's share is measured,
  not apportioned. Calls interrupted with Ctrl-C are counted (the child saves and exits first); a
  call whose parent was killed leaves ``cpu_minutes_complete: false``. ``cpu_minutes_engine`` is the
  trainer's own figure (process time of its training loop, from ``last.json``), for comparison.
  The budget ``--max-cpu-minutes`` (default 90) is reported per method (``over_budget``), not
  enforced.
* ``dense_mae`` (Table 8 protocol): over the test images where the method's AutoScale partner
  refined a region, GT heads inside its region box(es) vs the method's count inside the same
  boxes. AutoScale entries: their own second-pass count there (evaluate's ``dense_regions.
  autoscale``). FPN entries (``dense_regions_from``: the AutoScale model of the same variant): their
  count inside the partner's boxes, from ``autoscale evaluate --regions-from PARTNER/per_image.csv``
  (``given_regions`` in metrics.json: density sum in the box, or points in it). ``dense_mae_n``:
  the number of images. An FPN method therefore also trains and evaluates its partner (the
  partner's entry is written only when it is selected too).

Resumable: everything lives under ``--work`` (default ``runs/bench_pretrained_<part>``): ``train/<run>``
(the train out dirs, kept), ``eval/<method>``, ``state/*.json`` (each call's command, CPU and wall
time), ``logs/``, ``locks/``. A rerun skips finished calls, resumes an unfinished training from
``last.pt`` with ``--resume``, re-evaluates only when the command or the checkpoint changed, and
merges each method into the results JSON as soon as it is done (read-merge-write under a lock on the
results folder, atomic rename). Two invocations with disjoint ``--methods`` can run at once (e.g.
the regression and the localization methods on two cores); a training or evaluation both need is
done once (per-run lock files).

Data: ``--part b`` trains on ``part_B/train_data`` (400) and scores ``part_B/test_data`` (316).
``--part a``: the validation split of ``bench_shanghaitech.py`` (60 images of ``part_A/train_data``
drawn with ``--seed``; :func:`bench_shanghaitech.carve_val`) is scored, the other 240 train; the
script writes generic-format list files for it (``work/data``: image paths + JSON points, the
photos are not copied). The presets' resize rule and sigma apply. ``--smoke``: seconds - 3 train
and 2 test photos resized to 1/16 (64x48 for Part B), a width-1/16 network without ImageNet
weights, 2 epochs (branch at 1) and a dense-region gate that lets untrained maps refine.

Run from the project root (``--threads``: threads per subprocess, default 1)::

    .venv/bin/python benchmarks/bench_pretrained.py --part b --methods fpn_regression,autoscale_regression,fpn_density_peaks &
    .venv/bin/python benchmarks/bench_pretrained.py --part b --methods fpn_localization,autoscale_localization,fpn_localization_ce
    .venv/bin/python benchmarks/bench_pretrained.py --part a
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import math
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_shanghaitech as SHT  # noqa: E402

from autoscale.data.formats import read_dataset, write_generic_annotation, write_generic_list  # noqa: E402
from autoscale.demo import mean_baseline_mae  # noqa: E402
from autoscale.engine.config import TrainConfig, list_presets, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIGMAS = (4, 8)


class Method(NamedTuple):
    """One results entry: the training run whose ``last.pt`` it scores, and how."""

    name: str
    variant: str
    kind: str  # "fpn" | "autoscale"
    run: str  # training run (folder under work/train)
    preset: str  # preset suffix: fpn_regression, autoscale_localization, ...
    train_overrides: tuple[str, ...] = ()
    eval_args: tuple[str, ...] = ()
    partner: str | None = None  # FPN entries: the AutoScale method whose boxes give dense_mae
    trunk: str | None = None  # AutoScale runs: the FPN run they branch off


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("fpn_regression", "regression", "fpn", "fpn_regression", "fpn_regression", partner="autoscale_regression"),
    Method("autoscale_regression", "regression", "autoscale", "autoscale_regression", "autoscale_regression",
           trunk="fpn_regression"),
    Method("fpn_density_peaks", "regression", "fpn", "fpn_regression", "fpn_regression",
           eval_args=("--points-from-density-peaks",), partner="autoscale_regression"),
    Method("fpn_localization", "localization", "fpn", "fpn_localization", "fpn_localization",
           partner="autoscale_localization"),
    Method("autoscale_localization", "localization", "autoscale", "autoscale_localization", "autoscale_localization",
           trunk="fpn_localization"),
    Method("fpn_localization_ce", "localization", "fpn", "fpn_localization_ce", "fpn_localization",
           train_overrides=("pipeline.loss=ce",), partner="autoscale_localization"),
)}
#: The FPN runs an AutoScale run branches off (trained in two calls, the first ending at K).
TRUNKS = {m.trunk for m in METHODS.values() if m.trunk}
#: Train overrides of every run: no progress bar (the output goes to a log file).
RUN_OVERRIDES = ("progress=false",)
#: Smoke overrides (any preset): a width-1/16 network without ImageNet weights, 2 epochs on 3
#: images, and a gate that lets the barely trained maps of a smoke run refine a region.
SMOKE_OVERRIDES = ("model.width=0.0625", "model.imagenet=null", "optim.epochs=2", "data.limit=3", "data.val_limit=2",
                   "pipeline.area_ratio=0.0", "pipeline.dense_k=1.0")
SMOKE_BRANCH = 1
#: The config keys ``autoscale evaluate`` reads (its data section); the other overrides are training's.
EVAL_DATA_KEYS = ("data.format", "data.root", "data.resize", "data.outside")
SMOKE_SCALE = {"b": 1 / 16, "a": None}  # Part B 1024x768 -> 64x48; Part A: longer side 64
SMOKE_LONG_SIDE = 64


# ----------------------------------------------------------------------------------- helpers
def _say(quiet: bool):
    return (lambda s: None) if quiet else (lambda s: print(f"[bench_pretrained] {s}", flush=True))


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _flock(path: Path, say=None) -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` (a lock file, created, or a directory)."""
    if path.suffix == ".lock":
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    else:
        fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if say:
                say(f"waiting for {path.name} (another invocation holds it)")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _cmd_text(cmd: Sequence[str]) -> str:
    return shlex.join(cmd)


def _per_image(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _history_epoch(out: Path) -> int:
    rows = _read_json(out / "history.json", []) or []
    return max((int(r.get("epoch", 0)) for r in rows), default=0)


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ----------------------------------------------------------------------------------- data
def prepare_data(part: str, root: Path, work: Path, *, smoke: bool, n_val: int, seed: int) -> dict[str, Any]:
    """The data the commands read: ``overrides`` (data.* keys), ``eval_split`` and dataset ``info``.

    Part B (full): the presets' own format on ``part_B``. Part A: generic list files of the
    carved split. Smoke: resized copies (:func:`bench_shanghaitech._resize_split`)."""
    pdir = root / f"part_{part.upper()}"
    if not pdir.is_dir():
        raise SystemExit(f"bench_pretrained: {pdir} not found (pass --root)")
    info: dict[str, Any] = {"part": part.upper()}
    if part == "b":
        train = read_dataset("shanghaitech", pdir, "train")
        test = read_dataset("shanghaitech", pdir, "test")
        info.update(train="part_B/train_data", test="part_B/test_data")
        eval_split = "test"
    else:
        train, test = SHT.carve_val(read_dataset("shanghaitech", pdir, "train"), n_val, seed)
        info.update(train=f"part_A/train_data minus val ({len(train)})",
                    test=f"val: {len(test)} images of part_A/train_data drawn with numpy default_rng({seed}) "
                         f"(bench_shanghaitech.carve_val)", val_images=[r.name for r in test], split_seed=seed)
        eval_split = "val"
    data_dir = work / "data"
    if smoke:
        train, test = train[:3], test[:2]
    if smoke or part == "a":
        # written once per work folder (a concurrent invocation may be training on these files)
        marker = {"part": part, "smoke": smoke, "train": [r.name for r in train], "test": [r.name for r in test]}
        with _flock(work / "locks" / "data.lock"):
            if _read_json(data_dir / "prepared.json") != marker:
                if smoke:
                    kw = {"scale": SMOKE_SCALE[part], "long_side": SMOKE_LONG_SIDE if SMOKE_SCALE[part] is None else None}
                    SHT._resize_split(train, data_dir, "train", **kw)
                    SHT._resize_split(test, data_dir, eval_split, **kw)
                else:
                    for split, recs in (("train", train), (eval_split, test)):
                        entries = [(r.image_path, write_generic_annotation(data_dir / "points" / f"{r.name}.json",
                                                                           r.points)) for r in recs]
                        write_generic_list(data_dir, split, entries)
                _write_json(data_dir / "prepared.json", marker)
    if smoke:
        info["smoke_copies"] = "x1/16" if part == "b" else f"longer side {SMOKE_LONG_SIDE} px"
    if part == "b" and not smoke:
        overrides = [f"data.root={pdir}"]
    else:
        overrides = [f"data.root={data_dir}", "data.format=generic", "data.train_split=train"]
    cnt = [r.count for r in test]
    info.update(n_train=len(train), n_test=len(test), test_count_min=int(min(cnt)), test_count_max=int(max(cnt)),
                test_count_mean=float(sum(cnt) / len(cnt)),
                mean_baseline_mae=mean_baseline_mae([r.count for r in train], cnt),
                original_sizes_wh=[list(t) for t in sorted({(r.width, r.height) for r in test})[:5]])
    return {"overrides": overrides, "eval_split": eval_split, "info": info, "pdir": pdir}


# ----------------------------------------------------------------------------------- bench
class Bench:
    def __init__(self, a: argparse.Namespace, command: str):
        self.a, self.command = a, command
        self.part = a.part
        self.say = _say(a.quiet)
        self.work = a.work.resolve()
        self.out = a.out.resolve()
        self.name = f"shanghaitech_{self.part}_pretrained"
        self.data = prepare_data(self.part, a.root, self.work, smoke=a.smoke, n_val=a.val, seed=a.seed)
        have = set(list_presets())
        self.presets: dict[str, str] = {}
        for m in METHODS.values():
            lite = f"shanghaitech_{self.part}_{m.preset}_lite0"
            if lite not in have and not a.smoke:
                raise SystemExit(f"bench_pretrained: preset {lite} not found (autoscale train --list-presets)")
            # smoke before the lite0 presets existed: the paper preset with a narrow VGG16
            self.presets[m.preset] = lite if lite in have else f"shanghaitech_{self.part}_{m.preset}"
        self.env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
        self.env.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    # -- configuration ---------------------------------------------------------------------
    def common_overrides(self, preset: str) -> list[str]:
        """Data location (+ what the generic copy needs to match the preset) and smoke/user overrides."""
        ov = list(self.data["overrides"])
        base = load_config(preset, [f"data.root={self.data['pdir']}"])  # the preset on the original folder
        if "data.format=generic" in ov:
            from autoscale.engine.dataset import resolve_resize, resolve_sigma

            # the generic format's defaults differ from ShanghaiTech's: pin the preset's
            if base.data.sigma is None and base.model.variant == "regression":
                ov.append(f"data.sigma={resolve_sigma(base.data):g}")
            if base.data.resize is None:
                ov.append(f"data.resize={resolve_resize(base.data)}")
            if base.data.val_split is not None:
                ov.append(f"data.val_split={self.data['eval_split']}")
        if self.a.seed != base.seed:
            ov.append(f"seed={self.a.seed}")
        ov += RUN_OVERRIDES
        if self.a.smoke:
            ov += SMOKE_OVERRIDES
        return ov + list(self.a.override)

    def run_overrides(self, run: str) -> tuple[str, list[str]]:
        m = METHODS[run]
        preset = self.presets[m.preset]
        return preset, self.common_overrides(preset) + list(m.train_overrides)

    def config(self, run: str, extra: Sequence[str] = ()) -> TrainConfig:
        preset, ov = self.run_overrides(run)
        return load_config(preset, ov + list(extra))

    def branch_epoch(self, variant: str) -> int:
        if self.a.smoke and variant not in self.a.branch_epoch:
            return SMOKE_BRANCH
        if variant in self.a.branch_epoch:
            return self.a.branch_epoch[variant]
        cfg = self.config(f"fpn_{variant}")
        if cfg.keep_epochs:
            return int(cfg.keep_epochs[0])
        return max(1, round(0.75 * cfg.optim.epochs))

    def train_dir(self, run: str) -> Path:
        return self.work / "train" / run

    def eval_dir(self, method: str) -> Path:
        return self.work / "eval" / method

    # -- subprocess calls ----------------------------------------------------------------------
    def _call(self, cmd: list[str], log: Path) -> tuple[int, float, float]:
        """Run ``cmd`` (output to ``log``); returns (exit code, CPU seconds, wall seconds).

        The child runs in its own session: a Ctrl-C (or SIGTERM) of this script reaches it once, as
        SIGTERM, on which ``autoscale train`` saves ``last.pt`` after its current step and exits;
        the call then counts as interrupted (exit code 130) with its CPU time recorded."""
        log.parent.mkdir(parents=True, exist_ok=True)
        c0, t0 = _child_cpu(), time.perf_counter()
        interrupted = False
        with open(log, "a") as fh:
            fh.write(f"\n$ {_cmd_text(cmd)}\n")
            fh.flush()
            p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                                 start_new_session=True)
            try:
                rc = p.wait()
            except KeyboardInterrupt:
                interrupted = True
                self.say("interrupted: letting the subprocess save and stop (Ctrl-C again to kill it)")
                p.send_signal(signal.SIGTERM)
                try:
                    rc = p.wait()
                except KeyboardInterrupt:
                    p.kill()
                    rc = p.wait()
        cpu, wall = _child_cpu() - c0, time.perf_counter() - t0
        return (130 if interrupted else rc), cpu, wall

    def _state_path(self, key: str) -> Path:
        return self.work / "state" / f"{key}.json"

    def _train_call(self, run: str, phase: str, extra: list[str], resume: bool) -> None:
        preset, ov = self.run_overrides(run)
        out = self.train_dir(run)
        cmd = [sys.executable, "-m", "autoscale", "train", "--config", preset, *ov, *extra, f"out={out}"]
        if resume:
            cmd.append("--resume")
        state_path = self._state_path(run)
        state = _read_json(state_path, {"calls": []})
        call = {"phase": phase, "command": _cmd_text(cmd), "cpu_s": None, "wall_s": None, "rc": None,
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        state["calls"].append(call)
        _write_json(state_path, state)  # a call that never reports back stays cpu_s = None
        self.say(f"train {run} ({phase}{', resumed' if resume else ''}) ...")
        rc, cpu, wall = self._call(cmd, self.work / "logs" / f"train_{run}.log")
        call.update(cpu_s=round(cpu, 3), wall_s=round(wall, 3), rc=rc, threads=self.a.threads)
        _write_json(state_path, state)
        self.say(f"train {run} ({phase}): exit {rc}, {cpu / 60:.2f} CPU min, {wall / 60:.2f} wall min")
        if rc == 130:
            raise SystemExit(f"bench_pretrained: {run} interrupted (saved); rerun the same command to continue")
        if rc != 0:
            raise SystemExit(f"bench_pretrained: `autoscale train` failed for {run} (exit {rc}); "
                             f"see {self.work / 'logs' / f'train_{run}.log'}")

    def _mark(self, run: str, key: str) -> None:
        state = _read_json(self._state_path(run), {"calls": []})
        state[key] = True
        _write_json(self._state_path(run), state)

    def _done(self, run: str, key: str) -> bool:
        state = _read_json(self._state_path(run), {})
        return bool(state.get(key)) and (self.train_dir(run) / "last.pt").is_file()

    def _check_run(self, run: str) -> None:
        """Refuse a train folder this work dir did not make, or one made with other settings
        (preset, overrides, branch epoch): resuming it would mix two configurations."""
        out = self.train_dir(run)
        preset, ov = self.run_overrides(run)
        m = METHODS[run]
        key = {"preset": preset, "overrides": ov,
               "branch_epoch": self.branch_epoch(m.variant) if (m.trunk or run in TRUNKS) else None}
        state = _read_json(self._state_path(run))
        if state is None:
            if out.exists() and any(out.iterdir()):
                raise SystemExit(f"bench_pretrained: {out} exists but has no state file; remove it or use another --work")
            _write_json(self._state_path(run), {"key": key, "calls": []})
        elif state.get("key") != key:
            raise SystemExit(f"bench_pretrained: {out} was trained with other settings ({state.get('key')}); "
                             f"remove {out} and {self._state_path(run)}, or use another --work")

    # -- trainings ------------------------------------------------------------------------------
    def ensure_trunk(self, run: str) -> int:
        """An FPN run trained to its branch epoch K (``epoch_K.pt``); returns K."""
        k = self.branch_epoch(METHODS[run].variant)
        with _flock(self.work / "locks" / f"{run}.lock", self.say):
            self._check_run(run)
            if self._done(run, "trunk_done") and (self.train_dir(run) / f"epoch_{k}.pt").is_file():
                return k
            cfg = self.config(run)
            if k >= cfg.optim.epochs:
                raise SystemExit(f"bench_pretrained: branch epoch {k} must be below the preset's {cfg.optim.epochs} epochs")
            from autoscale.engine.dataset import build_dataset

            n = len(build_dataset(cfg, cfg.data.train_split, train=True, limit=cfg.data.limit))
            steps = k * math.ceil(n / cfg.optim.batch_size)
            self._train_call(run, "trunk", [f"keep_epochs=[{k}]", f"optim.max_steps={steps}"],
                             resume=(self.train_dir(run) / "last.pt").is_file())
            if _history_epoch(self.train_dir(run)) != k or not (self.train_dir(run) / f"epoch_{k}.pt").is_file():
                raise SystemExit(f"bench_pretrained: {run} did not stop at epoch {k} with epoch_{k}.pt")
            self._mark(run, "trunk_done")
        return k

    def ensure_trained(self, run: str) -> None:
        """The run trained to its last epoch (``last.pt``)."""
        m = METHODS[run]
        if m.trunk:
            self.ensure_trunk(m.trunk)
        elif run in TRUNKS:
            self.ensure_trunk(run)
        with _flock(self.work / "locks" / f"{run}.lock", self.say):
            self._check_run(run)
            if self._done(run, "done"):
                return
            resume = (self.train_dir(run) / "last.pt").is_file()
            extra: list[str] = []
            if run in TRUNKS:
                extra = [f"keep_epochs=[{self.branch_epoch(m.variant)}]"]
                phase = "rest"
            elif m.trunk:
                k = self.branch_epoch(m.variant)
                extra = [f"init_from={self.train_dir(m.trunk) / f'epoch_{k}.pt'}"]
                phase = "branch"
            else:
                phase = "full"
            self._train_call(run, phase, extra, resume=resume)
            self._mark(run, "done")

    # -- evaluations ----------------------------------------------------------------------------
    def eval_command(self, method: str) -> list[str]:
        m = METHODS[method]
        preset, ov = self.run_overrides(m.run)
        data_ov = [o for o in ov if o.split("=", 1)[0] in EVAL_DATA_KEYS]
        cmd = [sys.executable, "-m", "autoscale", "evaluate", "--checkpoint", str(self.train_dir(m.run) / "last.pt"),
               "--config", preset, *data_ov, "--split", self.data["eval_split"], "--out", str(self.eval_dir(method)),
               "--no-progress", *m.eval_args]
        if self.partner(method):
            cmd += ["--regions-from", str(self.eval_dir(m.partner) / "per_image.csv")]
        return cmd

    def partner(self, method: str) -> str | None:
        """The AutoScale method whose boxes give an FPN entry's dense MAE (None with --no-partner)."""
        return None if self.a.no_partner else METHODS[method].partner

    def ensure_evaluated(self, method: str) -> dict[str, Any]:
        m = METHODS[method]
        self.ensure_trained(m.run)
        partner = self.partner(method)
        if partner:
            self.ensure_evaluated(partner)
        cmd = self.eval_command(method)
        inputs = [self.train_dir(m.run) / "last.pt"] + ([self.eval_dir(partner) / "per_image.csv"] if partner else [])
        key = {"command": _cmd_text(cmd), "inputs": {str(p): p.stat().st_mtime_ns for p in inputs}}
        sp = self._state_path(f"eval_{method}")
        with _flock(self.work / "locks" / f"eval_{method}.lock", self.say):
            state = _read_json(sp, {})
            if (state.get("key") == key and state.get("rc") == 0
                    and (self.eval_dir(method) / "metrics.json").is_file()):
                return state
            self.say(f"evaluate {method} ...")
            rc, cpu, wall = self._call(cmd, self.work / "logs" / f"eval_{method}.log")
            if rc == 130:
                raise SystemExit(f"bench_pretrained: evaluation of {method} interrupted; rerun to continue")
            if rc != 0:
                raise SystemExit(f"bench_pretrained: `autoscale evaluate` failed for {method} (exit {rc}); "
                                 f"see {self.work / 'logs' / f'eval_{method}.log'}")
            state = {"key": key, "command": _cmd_text(cmd), "rc": rc, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                     "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
            _write_json(sp, state)
            self.say(f"evaluate {method}: {cpu / 60:.2f} CPU min")
        return state

    # -- results ------------------------------------------------------------------------------------
    def entry(self, method: str, eval_state: dict[str, Any]) -> dict[str, Any]:
        m = METHODS[method]
        ed = self.eval_dir(method)
        met = json.loads((ed / "metrics.json").read_text())
        rows = _per_image(ed / "per_image.csv")
        calls = list(_read_json(self._state_path(m.run), {"calls": []})["calls"])
        trunk_calls: list[dict[str, Any]] = []
        if m.trunk:
            trunk_calls = [c for c in _read_json(self._state_path(m.trunk), {"calls": []})["calls"] if c["phase"] == "trunk"]
        all_calls = trunk_calls + calls
        cpu = sum(c["cpu_s"] or 0.0 for c in all_calls)
        e: dict[str, Any] = {}
        if "points_count" in met:  # density peaks: the count is the number of peaks
            e.update(mae=met["points_count"]["mae"], rmse=met["points_count"]["rmse"], nae=met["points_count"]["nae"],
                     first_pass_mae=met["points_count"]["mae"], mae_density_sum=met["counting"]["mae"])
        else:
            e.update(mae=met["counting"]["mae"], rmse=met["counting"]["rmse"], nae=met["counting"]["nae"],
                     first_pass_mae=met["first_pass"]["mae"])
        if m.kind == "autoscale":
            d = met["dense_regions"]
            e.update(dense_mae=d["autoscale"]["mae"], dense_rmse=d["autoscale"]["rmse"], dense_mae_n=d["num_images"],
                     dense_regions_from=method, dense_first_pass_mae=d["baseline"]["mae"])
        elif self.partner(method):
            g = met["given_regions"]
            e.update(dense_mae=g["mae"], dense_rmse=g["rmse"], dense_mae_n=g["n"], dense_regions_from=m.partner,
                     dense_count_from=g["count_from"])
        else:  # --no-partner: no boxes to score the dense part in
            e.update(dense_mae=None, dense_rmse=None, dense_mae_n=None, dense_regions_from=None)
        if "localization" in met:
            for s in SIGMAS:
                loc = met["localization"][f"sigma_{s}"]
                e.update({f"precision_{s}": loc["precision"], f"recall_{s}": loc["recall"], f"f1_{s}": loc["f1"]})
        card = _read_json(self.train_dir(m.run) / "last.json", {}) or {}
        preset, ov = self.run_overrides(m.run)
        cfg = self.config(m.run)
        e.update(
            cpu_minutes=round(cpu / 60, 3),
            cpu_minutes_trunk=round(sum(c["cpu_s"] or 0.0 for c in trunk_calls) / 60, 3) if m.trunk else None,
            cpu_minutes_complete=all(c["cpu_s"] is not None for c in all_calls),
            cpu_minutes_engine=card.get("cpu_minutes"),
            over_budget=bool(cpu / 60 > self.a.max_cpu_minutes),
            train_wall_minutes=round(sum(c["wall_s"] or 0.0 for c in all_calls) / 60, 3),
            eval_cpu_minutes=round(eval_state["cpu_s"] / 60, 3),
            threads=self.a.threads,
            epochs=cfg.optim.epochs,
            branch_epoch=self.branch_epoch(m.variant) if (m.trunk or m.run in TRUNKS) else None,
            preset=preset,
            test_images=met["num_images"],
            input_sizes_wh=[list(t) for t in sorted({(int(r["input_width"]), int(r["input_height"])) for r in rows})[:5]],
            command={"train": [c["command"] for c in all_calls], "evaluate": eval_state["command"]},
            train_calls=[{k: c.get(k) for k in ("phase", "cpu_s", "wall_s", "rc", "started")} for c in all_calls],
            eval_dir=str(self.eval_dir(method)), checkpoint=str(self.train_dir(m.run) / "last.pt"),
        )
        return e

    def setting(self) -> dict[str, Any]:
        """What must agree for entries to share one results file."""
        info = self.data["info"]
        return {"part": info["part"], "smoke": bool(self.a.smoke), "seed": self.a.seed,
                "n_train": info["n_train"], "n_test": info["n_test"]}

    def merge(self, method: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Read-merge-write the results JSON (and markdown) under a lock on the results folder."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"{self.name}.json"
        with _flock(self.out):
            res = _read_json(path, {}) or {}
            if res.get("setting") != self.setting():
                if res:
                    self.say(f"{path.name} holds another setting; starting it afresh")
                res = {}
            res.setdefault("methods", {})[method] = entry
            res["methods"] = {k: res["methods"][k] for k in METHODS if k in res["methods"]}
            cfgs = {self.presets[METHODS[k].preset]: self.config(METHODS[k].run) for k in res["methods"]}
            res.update({
                "benchmark": self.name, "setting": self.setting(), "dataset": self.data["info"], "seed": self.a.seed,
                "resolution": {
                    "resize": sorted({c.data.resize or "format default" for c in cfgs.values()}),
                    "input_sizes_wh": [list(t) for t in sorted({tuple(s) for e in res["methods"].values()
                                                                for s in e["input_sizes_wh"]})[:5]],
                    "original_sizes_wh": self.data["info"]["original_sizes_wh"],
                    "pre_resized": self.data["info"].get("smoke_copies")},
                "machine": C.machine_info() | {"threads_per_subprocess": self.a.threads},
                "budget": {"max_cpu_minutes": self.a.max_cpu_minutes, "enforced": False,
                           "over_budget": [k for k, e in res["methods"].items() if e["over_budget"]]},
                "work": str(self.work), "presets": sorted(cfgs),
            })
            res.setdefault("commands", [])
            if self.command not in res["commands"]:
                res["commands"].append(self.command)
            C.write_results(self.out, self.name, res, markdown(res))
        return res

    def run(self, methods: Sequence[str]) -> dict[str, Any]:
        res: dict[str, Any] = {}
        for name in methods:
            st = self.ensure_evaluated(name)
            e = self.entry(name, st)
            if e["over_budget"]:
                self.say(f"{name}: {e['cpu_minutes']:.1f} CPU min, over the {self.a.max_cpu_minutes:g}-minute budget")
            res = self.merge(name, e)
            self.say(f"{name}: MAE {C.fmt(e['mae'])}, dense MAE {C.fmt(e['dense_mae'])} (n {e['dense_mae_n']}), "
                     f"{e['cpu_minutes']:.2f} CPU min -> {self.out / (self.name + '.json')}")
        return res


def markdown(r: dict[str, Any]) -> str:
    ds, f = r["dataset"], C.fmt
    title = ("ShanghaiTech Part B" if ds["part"] == "B" else "ShanghaiTech Part A (validation split carved from train_data)")
    res = r["resolution"]
    lines = [f"# {title}: models trained and scored through `autoscale train` / `autoscale evaluate`", "",
             f"Data: {ds['n_train']} train / {ds['n_test']} {'test' if ds['part'] == 'B' else 'val'} images; heads per "
             f"scored image {ds['test_count_min']}-{ds['test_count_max']} (mean {ds['test_count_mean']:.1f}); predicting "
             f"the mean train count gives MAE {ds['mean_baseline_mae']:.2f}. Resize rule {', '.join(res['resize'])}; "
             f"network input {', '.join(f'{w}x{h}' for w, h in res['input_sizes_wh'])} px"
             + (f" (smoke copies {res['pre_resized']})" if res.get("pre_resized") else "") + f". Seed {r['seed']}.", "",
             "| method | MAE | RMSE | first-pass MAE | dense MAE (n) | P/R/F1 @4 px | P/R/F1 @8 px | train CPU min | "
             "epochs (branch) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in r["methods"].items():
        prf = lambda s: (f"{m[f'precision_{s}']:.3f}/{m[f'recall_{s}']:.3f}/{m[f'f1_{s}']:.3f}"  # noqa: E731
                         if m.get(f"f1_{s}") is not None else "–")
        over = " (over budget)" if m["over_budget"] else ""
        branch = "" if m["branch_epoch"] is None else f" ({m['branch_epoch']})"
        lines.append(f"| {name} | {f(m['mae'])} | {f(m['rmse'])} | {f(m['first_pass_mae'])} | {f(m['dense_mae'])} "
                     f"({m['dense_mae_n'] if m['dense_mae_n'] is not None else '–'}) | {prf(4)} | {prf(8)} | {m['cpu_minutes']:.1f}{over} | {m['epochs']}{branch} |")
    lines += ["", "Dense MAE: GT heads vs the method's count inside the boxes its AutoScale partner refined "
              "(`dense_regions_from`), over those images. P/R/F1 at 4 / 8 px of the original photo. Train CPU "
              "minutes: user + system time of the `autoscale train` processes (an AutoScale model's include its FPN "
              f"trunk to the branch epoch); budget {r['budget']['max_cpu_minutes']:g} min, reported, not enforced. "
              f"Machine: {r['machine']['machine']}, {r['machine']['cpu_count']} CPUs (shared), torch "
              f"{r['machine']['torch']}, {r['machine']['threads_per_subprocess']} thread(s) per subprocess.", "",
              "Benchmark commands:", ""]
    lines += [f"- `{c}`" for c in r["commands"]]
    lines += ["", "Exact train / evaluate command lines per method: `methods.<name>.command` in the JSON.", ""]
    return "\n".join(lines)


def _branch_arg(text: str) -> dict[str, int]:
    """``K`` (both variants) or ``regression=K,localization=K``."""
    try:
        if "=" not in text:
            return {"regression": int(text), "localization": int(text)}
        out = {}
        for part in text.split(","):
            k, v = part.split("=")
            if k.strip() not in ("regression", "localization"):
                raise ValueError
            out[k.strip()] = int(v)
        return out
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K or regression=K,localization=K, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("b", "a"), type=str.lower, default="b")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    ap.add_argument("--root", type=Path, default=SHT.SHARED, help="ShanghaiTech folder holding part_A / part_B")
    ap.add_argument("--work", type=Path, help="work folder (default runs/bench_pretrained_<part>[_smoke])")
    ap.add_argument("--out", type=Path, help="results folder (default benchmarks/results; smoke: the work folder)")
    ap.add_argument("--branch-epoch", type=_branch_arg, default={},
                    help="AutoScale branch epoch K: K, or regression=K,localization=K (default: the FPN preset's keep_epochs)")
    ap.add_argument("--threads", type=int, default=1, help="threads per train/evaluate subprocess (OMP_NUM_THREADS)")
    ap.add_argument("--max-cpu-minutes", type=float, default=90.0, help="CPU budget per model (reported, not enforced)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (presets: 0) and Part A's validation draw")
    ap.add_argument("--val", type=int, default=60, help="Part A: validation images carved out of train_data")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every train command (data.format/root/resize/outside: "
                         "evaluate too)")
    ap.add_argument("--smoke", action="store_true", help="seconds: 3 train / 2 test tiny copies, width-1/16 network")
    ap.add_argument("--no-partner", action="store_true",
                    help="FPN methods: skip the AutoScale partner (and its training) that gives their dense MAE; "
                         "dense_mae is null")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    methods = [s.strip() for s in a.methods.split(",") if s.strip()]
    bad = [s for s in methods if s not in METHODS]
    if bad or not methods:
        raise SystemExit(f"bench_pretrained: unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    if a.threads < 1:
        raise SystemExit("bench_pretrained: --threads must be >= 1")
    a.work = a.work or ROOT / "runs" / f"bench_pretrained_{a.part}{'_smoke' if a.smoke else ''}"
    a.out = a.out or (a.work if a.smoke else C.RESULTS)
    if a.smoke:
        a.val = 2
    command = " ".join(["python benchmarks/bench_pretrained.py", *(sys.argv[1:] if argv is None else argv)])
    return Bench(a, command).run(methods)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # stop like Ctrl-C: the running subprocess saves first


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _sigterm)
    main()
