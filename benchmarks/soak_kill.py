"""Kill soak: SIGKILL ``autoscale train`` and ``autoscale predict`` at random moments, resume each
time, and check that nothing on disk is ever broken and that the end equals an uninterrupted run.

Training: a small ``autoscale train`` run (synthetic crowds, width-1/16 VGG16 AutoScale regression,
validation every epoch, ``keep_epochs``) is first run uninterrupted as the reference, while its
timeline is recorded (start-up, each epoch's end of training from the tqdm bar on stderr, each
``last.pt``). The soak run of the same config is then killed (SIGKILL) at planned moments and
run each time with the same command, ``autoscale train --config ... --resume auto`` (continues
``last.pt``, or starts when a kill came before the first one), until it completes:

* ``uniform``: moments ``t`` drawn uniformly (seeded) over the reference run up to its last
  ``last.pt``, in order, mapped onto the attempt: one in the reference's start-up is taken from
  the start of a fresh attempt; otherwise an attempt that continues after epoch ``e`` is killed
  ``t - end of epoch e`` after its own training started (its first tqdm bar: start-up times vary
  with the machine's load), and a moment the run already passed (an earlier attempt got further)
  is redrawn uniformly within the epoch the attempt continues;
* ``write``: the moment a checkpoint's temporary file appears (polled every half millisecond),
  alternately the epoch's first checkpoint and ``last.pt``;
* ``validation``: a fraction of the reference validation time after an epoch's training loop ended;
* ``startup``: during the start-up of a resumed attempt (imports, data, loading ``last.pt``).

After every kill each ``*.pt`` in the folder is loaded with the project's loader
(:func:`autoscale.engine.checkpoint.load_training_checkpoint`) and each ``*.json`` parsed; the
moment is classified from what the process had shown (tqdm bar, files): ``startup``,
``training step``, ``validation``, ``checkpoint write`` (a checkpoint temporary file left behind),
``other file write``, ``after checkpoint write``. At the end every checkpoint of the reference
(``last.pt``, ``best.pt``, ``epoch_N.pt``) is compared with the soak's: weights, optimiser, centre,
RNG states, position, history (all but wall / CPU times) bit for bit.

The trainer writes checkpoints at epoch ends only (no step-checkpoint option), so a kill loses at
most the epoch in progress. Once ``last.pt`` holds the final epoch no more kills are made (a kill
could only hit a run with nothing left to do); the last attempt then runs to its end. The smoke
plan (no uniform or start-up kills) runs its references in this process.

Predict: ``autoscale predict`` on a folder of real photos (ShanghaiTech B test + A train from
``../shared/data``; synthetic crowds when absent) with the reference run's ``last.pt``: an
uninterrupted reference, then kills at moments uniform over its duration and when an output's
temporary file appears, each followed by ``--resume``. After every kill the journal's complete
lines are parsed and every file of every journaled image checked (map loads, points CSV parses,
overlay decodes); at the end ``counts.csv``, ``counts.json`` and every output file must equal the
reference byte for byte.

Writes ``benchmarks/results/soak.json`` (atomically)::

    python benchmarks/soak_kill.py --code-from-head   # >= 20 training kills, >= 5 predict kills (minutes, one core)
    python benchmarks/soak_kill.py --smoke            # a few kills (tests/test_soak_smoke.py)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from autoscale.data.formats import natural_key  # noqa: E402
from autoscale.data.synth import generate_dataset  # noqa: E402
from autoscale.engine.checkpoint import load_training_checkpoint  # noqa: E402
from autoscale.io import atomic_write_text  # noqa: E402
from autoscale.runner import JOURNAL  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_DATA = Path(os.environ.get("AUTOSCALE_SHARED_DATA", ROOT.parent / "shared" / "data"))
BAR = re.compile(r"epoch (\d+)/(\d+):.*?(\d+)/(\d+) \[")
IGNORED_KEYS = {"cpu_seconds", "time_s"}  # wall / CPU time: differ between any two runs
IGNORED_PATHS = {".config.out"}  # the two runs' output folders


class Plan(NamedTuple):
    """What one soak does: kills of each kind, training epochs and synthetic images (``size``
    is ``(H, W)`` in pixels), predict images and kills. (A NamedTuple, not a dataclass: the tests
    load this script without registering it as a module.)"""

    uniform: int = 22
    write: int = 4
    validation: int = 3
    startup: int = 2
    epochs: int = 8
    n_images: int = 36
    size: tuple[int, int] = (144, 192)
    predict_images: int = 24
    predict_uniform: int = 5
    predict_write: int = 2


FULL = Plan()
SMOKE = Plan(uniform=0, write=1, validation=1, startup=0, epochs=2, n_images=9, size=(64, 80),
             predict_images=3, predict_uniform=0, predict_write=1)


# ------------------------------------------------------------------------------ the child process
#: Where the children import ``autoscale`` from (``--code-from-head``); None: as installed.
CHILD_CODE: Path | None = None


def child_env() -> dict[str, str]:
    """The children's environment: one OpenMP thread that sleeps when idle, unbuffered output,
    ``autoscale`` from :data:`CHILD_CODE` when set."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    if CHILD_CODE is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(CHILD_CODE), *filter(None, [env.get("PYTHONPATH")])])
    return env


def snapshot_head(dest: Path) -> tuple[Path, str]:
    """``git archive HEAD src`` into ``dest``: the committed package, unaffected by edits made
    in the working tree while the soak runs. Returns ``(dest/src, commit)``."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit, "src"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src", commit


class Child:
    """An ``autoscale`` subprocess whose stderr a thread reads: the tqdm bar's states with the
    (monotonic, wall) times they were seen; ``bar_done[e]``: when epoch ``e``'s training loop ended
    (its bar reached N/N or was cleared)."""

    def __init__(self, args: list[str]) -> None:
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "autoscale", *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=child_env())
        self.lock = threading.Lock()
        self.first_bar: float | None = None
        self.bar: tuple[int, int, int] | None = None  # (epoch, n, total)
        self.bar_done: dict[int, tuple[float, float]] = {}
        self._err: list[bytes] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        fd = self.proc.stderr.fileno()
        while chunk := os.read(fd, 65536):
            now, wall = time.monotonic(), time.time()
            self._err.append(chunk)
            *segments, buf = re.split(rb"[\r\n]", buf + chunk)
            for s in segments:
                self._segment(s.decode(errors="replace"), now, wall)

    def _segment(self, s: str, now: float, wall: float) -> None:
        with self.lock:
            m = BAR.search(s)
            if m:
                epoch, n, total = int(m[1]), int(m[3]), int(m[4])
                self.first_bar = self.first_bar or now
                self.bar = (epoch, n, total)
                if n >= total:
                    self.bar_done.setdefault(epoch, (now, wall))
            elif s and not s.strip() and self.bar is not None:  # tqdm(leave=False) cleared its bar
                self.bar_done.setdefault(self.bar[0], (now, wall))

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> float:
        """SIGKILL; returns the elapsed time at the kill."""
        t = self.elapsed()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._thread.join()
        return t

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        self._thread.join()
        return rc

    def stderr(self) -> str:
        return b"".join(self._err).decode(errors="replace")

    def last_line(self) -> str:
        lines = [ln.strip() for ln in re.split(r"[\r\n]", self.stderr()) if ln.strip() and not BAR.search(ln)]
        return lines[-1] if lines else ""


def tmp_files(folder: Path) -> set[str]:
    """Temporary files (``*.tmp``) in ``folder`` and its immediate sub-folders (relative paths);
    cheap enough to poll every half millisecond."""
    found: set[str] = set()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for e in entries:
        if e.name.endswith(".tmp"):
            found.add(e.name)
        elif e.is_dir():
            with contextlib.suppress(OSError):
                found.update(f"{e.name}/{f.name}" for f in os.scandir(e.path) if f.name.endswith(".tmp"))
    return found


def journal_count(out: Path) -> int:
    """Complete record lines in ``out``'s journal (cheap, for polling)."""
    try:
        return max(0, (out / JOURNAL).read_bytes().count(b"\n") - 1)
    except OSError:
        return 0


def at_or_below(times: dict[int, float], k: int) -> float:
    """``times[k]``, else the entry of the largest key below ``k`` (0.0 when none)."""
    keys = [j for j in times if j <= k]
    return times[max(keys)] if keys else 0.0


def wait_for(child: Child, until: Callable[[], bool], poll: float = 0.002, timeout: float = 600) -> bool:
    """Poll ``until()`` while ``child`` runs; True when it held before the child exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until():
            return True
        if not child.running():
            return until()
        time.sleep(poll)
    raise TimeoutError(f"child still running after {timeout} s")


# ------------------------------------------------------------------------------ comparison
def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths at which two checkpoint-like values differ (tensors bit for bit; floats exactly;
    keys in :data:`IGNORED_KEYS` skipped)."""
    if where in IGNORED_PATHS:
        return []
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        bits = lambda t: t.detach().reshape(-1).contiguous().view(torch.uint8)  # noqa: E731
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(bits(a), bits(b)))
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}" for k in sorted(set(a) ^ set(b), key=str) if k not in IGNORED_KEYS]
        for k in a:
            if k in b and k not in IGNORED_KEYS:
                out += differences(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [where]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:  # both NaN
        return []
    return [] if a == b else [where]


# ------------------------------------------------------------------------------ training
def train_config(data: Path, epochs: int) -> dict[str, Any]:
    """The soaked run: width-1/16 VGG16 AutoScale regression, batch 2, validation every epoch."""
    return {"data": {"root": str(data), "sigma": 2.0, "flip": True, "noise_prob": 0.2, "val_split": "val"},
            "model": {"variant": "regression", "width": 0.0625},
            "optim": {"lr": 1e-3, "epochs": epochs, "batch_size": 2},
            "method": "autoscale", "device": "cpu", "seed": 0, "progress": True, "tensorboard": False,
            "keep_epochs": [max(1, epochs // 2)]}


def checkpoint_epoch(path: Path) -> int:
    """The completed epochs ``path`` holds (0 when it does not exist)."""
    return int(load_training_checkpoint(path)["epoch"]) if path.is_file() else 0


def check_train_folder(out: Path) -> dict[str, Any]:
    """Load every checkpoint (project loader) and parse every JSON file of ``out``."""
    bad_ckpt, bad_json, n_ckpt = [], [], 0
    for p in sorted(out.glob("*.pt")):
        n_ckpt += 1
        try:
            load_training_checkpoint(p)
        except Exception as exc:  # noqa: BLE001 - anything unreadable counts
            bad_ckpt.append(f"{p.name}: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}")
    for p in sorted(out.glob("*.json")):
        try:
            json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            bad_json.append(f"{p.name}: {exc}")
    return {"checkpoints": n_ckpt, "unreadable_checkpoints": bad_ckpt, "unreadable_json": bad_json,
            "tmp_files": sorted(tmp_files(out))}


def reference_training(cfg: Path, out: Path, say: Callable[[str], None], timeline: bool = True) -> dict[str, Any]:
    """Run uninterrupted while recording the timeline (elapsed seconds): ``startup`` (first bar),
    ``epoch_end[e]`` (last.pt of epoch e in place), ``validation`` (per epoch: loop end -> first
    checkpoint temporary file), ``total``. ``timeline=False`` (plans without uniform or start-up
    kills, i.e. the smoke run): the same command in this process, one thread like the children;
    validation 0 (validation kills then follow the end of a training loop at once)."""
    if not timeline:
        from autoscale.cli import main as cli

        t0, threads = time.monotonic(), torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if cli(["train", "--config", str(cfg)]) != 0:
                raise RuntimeError("reference training failed")
        finally:
            torch.set_num_threads(threads)
        total = time.monotonic() - t0
        say(f"reference training (in this process): {total:.1f} s")
        return {"startup": 0.0, "epoch_end": {}, "validation": 0.0, "total": total}
    child = Child(["train", "--config", str(cfg)])
    last, epoch_end, val, measured, mtime = out / "last.pt", {}, [], set(), None
    while child.running():
        if last.is_file() and (m := last.stat().st_mtime_ns) != mtime:
            mtime = m
            epoch_end[len(epoch_end) + 1] = child.elapsed()
        with child.lock:
            done = dict(child.bar_done)
        if done and (e := max(done)) not in measured and any(".pt." in n for n in tmp_files(out)):
            measured.add(e)  # the epoch's first checkpoint write began: its validation is over
            val.append(time.monotonic() - done[e][0])
        time.sleep(0.001)
    total = child.elapsed()
    rc = child.wait(60)
    if rc != 0:
        raise RuntimeError(f"reference training failed (exit {rc}): {child.last_line()}")
    if last.is_file() and last.stat().st_mtime_ns != mtime:
        epoch_end[len(epoch_end) + 1] = total
    timeline = {"startup": child.first_bar - child.t0, "epoch_end": epoch_end,
                "validation": float(np.median(val)) if val else 0.2, "total": total}
    say(f"reference training: {total:.1f} s, start-up {timeline['startup']:.1f} s, "
        f"validation ~{timeline['validation']:.2f} s, {len(epoch_end)} epochs")
    return timeline


def classify_training_kill(child: Child, out: Path, tmp_before: set[str]) -> str:
    """Where the killed attempt was (module docstring)."""
    new_tmp = tmp_files(out) - tmp_before
    if any(".pt." in n or n.endswith(".pt.tmp") for n in new_tmp):
        return "checkpoint write"
    if new_tmp:
        return "other file write"
    with child.lock:
        first, bar, done = child.first_bar, child.bar, dict(child.bar_done)
    if first is None:
        return "startup"
    if bar is None or bar[0] not in done:
        return "training step"
    wall_done = done[bar[0]][1]
    if any(p.stat().st_mtime > wall_done for p in out.iterdir() if p.is_file() and not p.name.endswith(".tmp")):
        return "after checkpoint write"
    return "validation"


def soak_training(work: Path, plan: Plan, seed: int, say: Callable[[str], None]) -> dict[str, Any]:
    """The training soak (module docstring); returns the ``training`` section of soak.json."""
    rng = random.Random(seed)
    data = work / "data"
    n_train = plan.n_images * 2 // 3
    generate_dataset(data, n=plan.n_images, size=plan.size, seed=seed,
                     splits={"train": n_train / plan.n_images, "val": 1 - n_train / plan.n_images})
    ref_out, out = work / "ref", work / "soak"
    cfg_ref, cfg = work / "ref.json", work / "soak.json"
    for path, o in ((cfg_ref, ref_out), (cfg, out)):
        path.write_text(json.dumps(dict(train_config(data, plan.epochs), out=str(o))))
    t_start = time.monotonic()
    timeline = reference_training(cfg_ref, ref_out, say, timeline=bool(plan.uniform or plan.startup))
    t_ref = time.monotonic() - t_start
    ends = timeline["epoch_end"]
    horizon = max(ends.values()) if ends else 0.95 * timeline["total"]  # the last last.pt: the run is done
    positions = sorted(rng.uniform(0, horizon) for _ in range(plan.uniform))
    kinds = ["uniform"] * plan.uniform + ["write"] * plan.write + ["validation"] * plan.validation
    kinds += ["startup"] * plan.startup
    rng.shuffle(kinds)

    log: list[dict[str, Any]] = []
    unreadable: list[str] = []
    unreadable_json: list[str] = []
    checked = without_ckpt = 0
    max_tmp = 0
    attempts = 0
    completed_early = False
    t_soak = time.monotonic()
    n_write = 0
    for kind in kinds:
        last = out / "last.pt"
        resume = last.is_file()
        epoch0 = checkpoint_epoch(last)
        if epoch0 >= plan.epochs:  # finished on disk: a kill now could only hit a run with nothing left
            say(f"the run finished after {len(log)} kills; {len(kinds) - len(log)} planned kills left unused")
            break
        without_ckpt += not resume
        tmp_before = tmp_files(out)
        child = Child(["train", "--config", str(cfg), "--resume", "auto"])  # the same command every time
        attempts += 1
        planned: float | None = None
        planned_from: str | None = None  # what planned_s counts from
        if kind == "uniform":
            t = positions.pop(0)
            if epoch0 == 0 and t < timeline["startup"]:  # in the start-up: from the process start
                planned, planned_from = t, "process start"
                hit = wait_for(child, lambda: child.elapsed() >= planned)
            else:  # in training: from this attempt's first bar, where the reference was at t
                base = at_or_below(ends, epoch0) if epoch0 else timeline["startup"]
                offset = t - base
                if offset < 0:  # a moment already passed: redrawn within the epoch this attempt runs
                    offset = rng.uniform(0.0, ends.get(epoch0 + 1, timeline["total"]) - base)
                planned, planned_from = offset, "training start"

                def reached() -> bool:
                    with child.lock:
                        first = child.first_bar
                    return first is not None and time.monotonic() - first >= offset

                hit = wait_for(child, reached, poll=0.001)
        elif kind == "startup":
            planned, planned_from = rng.uniform(0.0, timeline["startup"]), "process start"
            hit = wait_for(child, lambda: child.elapsed() >= planned)
        elif kind == "write":
            # alternately the epoch's first checkpoint write (best.pt when validation improved) and last.pt's
            prefix = "." if n_write % 2 == 0 else ".last.pt."
            n_write += 1
            hit = wait_for(child, lambda: any(n.startswith(prefix) and ".pt." in n for n in tmp_files(out) - tmp_before),
                           poll=0.0005)
        else:  # validation: a fraction of the reference validation time after a loop ended
            frac = rng.uniform(0.2, 0.6)

            def in_validation() -> bool:
                with child.lock:
                    done = list(child.bar_done.values())
                return bool(done) and time.monotonic() - done[0][0] >= frac * timeline["validation"]

            hit = wait_for(child, in_validation, poll=0.001)
        if not hit:  # the attempt completed before the moment came
            rc = child.wait(60)
            if rc != 0:
                raise RuntimeError(f"training attempt {attempts} failed (exit {rc}): {child.last_line()}")
            completed_early = True
            say(f"attempt {attempts}: completed before its {kind} kill")
            break
        at = child.kill()
        phase = classify_training_kill(child, out, tmp_before)
        state = check_train_folder(out)
        checked += state["checkpoints"]
        unreadable += state["unreadable_checkpoints"]
        unreadable_json += state["unreadable_json"]
        max_tmp = max(max_tmp, len(state["tmp_files"]))
        entry = {"attempt": attempts, "kind": kind, "resumed_from_epoch": epoch0 if resume else None,
                 "planned_s": None if planned is None else round(planned, 3),
                 "planned_from": planned_from,
                 "killed_at_s": round(at, 3), "phase": phase, "epoch_on_disk": checkpoint_epoch(last) if last.is_file() else 0,
                 "checkpoints_checked": state["checkpoints"], "tmp_files_left": len(state["tmp_files"])}
        log.append(entry)
        say(f"kill {len(log):2d} ({kind:10s}) at {at:6.2f} s: {phase:22s} last.pt epoch {entry['epoch_on_disk']}, "
            f"{state['checkpoints']} checkpoints load, {len(state['tmp_files'])} temp files")
    if not completed_early:
        last = out / "last.pt"
        without_ckpt += not last.is_file()
        child = Child(["train", "--config", str(cfg), "--resume", "auto"])
        attempts += 1
        rc = child.wait(600)
        if rc != 0:
            raise RuntimeError(f"final training attempt failed (exit {rc}): {child.last_line()}")
    soak_s = time.monotonic() - t_soak

    final = check_train_folder(out)
    unreadable += final["unreadable_checkpoints"]
    diffs: dict[str, list[str]] = {}
    ref_ckpts = sorted(p.name for p in ref_out.glob("*.pt"))
    for name in ref_ckpts:
        if not (out / name).is_file():
            diffs[name] = ["missing"]
            continue
        d = differences(torch.load(ref_out / name, weights_only=True), torch.load(out / name, weights_only=True))
        if d:
            diffs[name] = d[:10]
    extra = sorted({p.name for p in out.glob("*.pt")} - set(ref_ckpts))
    history_same = not differences(json.loads((ref_out / "history.json").read_text()),
                                   json.loads((out / "history.json").read_text()))
    return {
        "kills": len(log),
        "bit_identical": not diffs and not extra and history_same,
        "unreadable_checkpoints": len(unreadable),
        "unreadable_checkpoint_names": unreadable,
        "unreadable_json_files": len(unreadable_json),
        "checkpoint_loads_checked": checked + final["checkpoints"],
        "compared_checkpoints": ref_ckpts,
        "differences": diffs,
        "extra_checkpoints": extra,
        "history_identical": history_same,
        "kills_by_kind": dict(Counter(e["kind"] for e in log)),
        "kills_by_phase": dict(Counter(e["phase"] for e in log)),
        "attempts": attempts,
        "restarts_without_checkpoint": without_ckpt - 1,  # the first attempt is a start, not a restart
        "completed_early": completed_early,
        "temp_files_left_max": max_tmp,
        "temp_files_left_at_end": len(final["tmp_files"]),
        "reference_timeline_s": {"startup": round(timeline["startup"], 2), "validation": round(timeline["validation"], 3),
                                 "total": round(timeline["total"], 2),
                                 "epoch_end": {str(k): round(v, 2) for k, v in ends.items()}},
        "seconds": {"reference": round(t_ref, 1), "soak": round(soak_s, 1)},
        "config": train_config("<work>/data", plan.epochs),
        "data": {"synthetic_images": plan.n_images, "train": n_train, "val": plan.n_images - n_train,
                 "size_hw": list(plan.size)},
        "kill_log": log,
    }


# ------------------------------------------------------------------------------ predict
def predict_images(folder: Path, n: int, seed: int) -> str:
    """Copy ``n`` real photos into ``folder`` (ShanghaiTech B test, a quarter from A train, which has
    other sizes and grayscale photos); synthetic crowds when the shared data is absent."""
    folder.mkdir(parents=True)
    b = SHARED_DATA / "shanghaitech" / "part_B" / "test_data" / "images"
    a = SHARED_DATA / "shanghaitech" / "part_A" / "train_data" / "images"
    if b.is_dir() and a.is_dir():
        n_a = n // 4
        for prefix, src, k in (("B_", b, n - n_a), ("A_", a, n_a)):
            for p in sorted(src.glob("*.jpg"), key=lambda q: natural_key(q.name))[:k]:
                shutil.copyfile(p, folder / f"{prefix}{p.name}")
        return f"ShanghaiTech part_B test ({n - n_a}) + part_A train ({n_a}) photos, first in natural order"
    synth = folder.parent / "synth"
    generate_dataset(synth, n=n, size=(384, 512), seed=seed, splits={"test": 1.0})
    for p in sorted((synth / "images").glob("*.png")):
        shutil.copyfile(p, folder / p.name)
    return f"synthetic crowds ({n}, 384x512): shared data not found at {SHARED_DATA}"


def journal_state(out: Path) -> dict[str, Any]:
    """Complete record lines of the journal, whether its last line is torn, and the journaled
    images whose files are missing or invalid."""
    path = out / JOURNAL
    if not path.is_file():
        return {"records": 0, "torn": False, "invalid": []}
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    names = [json.loads(ln)["image"] for ln in lines[1:-1]]
    invalid = [n for n in names if not valid_outputs(out, n)]
    return {"records": len(names), "torn": torn, "invalid": invalid}


def valid_outputs(out: Path, name: str) -> bool:
    """Map loads, points CSV parses (x,y floats), overlay decodes."""
    try:
        m = np.load(out / "maps" / f"{name}.npy")
        lines = (out / "points" / f"{name}.csv").read_text().splitlines()
        pts = [tuple(float(v) for v in ln.split(",")) for ln in lines[1:]]
        ov = cv2.imread(str(out / "overlays" / f"{name}.jpg"))
    except (OSError, ValueError):
        return False
    return m.ndim == 2 and lines[0] == "x,y" and all(len(p) == 2 for p in pts) and ov is not None


def output_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != JOURNAL}


def soak_predict(work: Path, checkpoint: Path, plan: Plan, seed: int, say: Callable[[str], None]) -> dict[str, Any]:
    """The predict soak (module docstring); returns the ``predict`` section of soak.json."""
    rng = random.Random(seed + 1)
    images = work / "images"
    source = predict_images(images, plan.predict_images, seed)
    ref_out, out = work / "ref", work / "soak"
    cmd = ["predict", str(images), "--checkpoint", str(checkpoint)]
    t0 = time.monotonic()
    record_at: dict[int, float] = {}
    if plan.predict_uniform:  # a subprocess, for the timeline the uniform kills are mapped onto
        ref = Child([*cmd, "--out", str(ref_out)])
        while ref.running():
            k = journal_count(ref_out)
            if k and k not in record_at:
                record_at[k] = ref.elapsed()
            time.sleep(0.002)
        total = ref.elapsed()
        if ref.wait(60) != 0:
            raise RuntimeError(f"reference predict failed: {ref.last_line()}")
    else:  # no timeline needed: the same command in this process (one thread, like the children)
        from autoscale.cli import main as cli

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if cli([*cmd, "--out", str(ref_out)]) != 0:
                raise RuntimeError("reference predict failed")
        finally:
            torch.set_num_threads(threads)
        total = time.monotonic() - t0
    t_ref = time.monotonic() - t0
    per_image = total / max(1, plan.predict_images) if len(record_at) < 2 else float(
        np.median(np.diff([record_at[k] for k in sorted(record_at)])))
    startup = min(record_at.values(), default=total) - per_image
    say(f"reference predict: {total:.1f} s, start-up ~{startup:.1f} s, ~{per_image:.2f} s per image")

    positions = sorted(rng.uniform(0, 0.95 * total) for _ in range(plan.predict_uniform))
    kinds = ["uniform"] * plan.predict_uniform + ["write"] * plan.predict_write
    rng.shuffle(kinds)
    log: list[dict[str, Any]] = []
    torn = invalid = 0
    completed_early = False
    t_soak = time.monotonic()
    attempts = 0
    for kind in kinds:
        done0 = journal_state(out)["records"]
        tmp_before = tmp_files(out)
        child = Child([*cmd, "--out", str(out), *(["--resume"] if attempts else [])])
        attempts += 1
        planned = None
        if kind == "uniform":
            t = positions.pop(0)
            planned = t if done0 == 0 else startup + max(0.0, t - at_or_below(record_at, done0))
            hit = wait_for(child, lambda: child.elapsed() >= planned)
        else:
            hit = wait_for(child, lambda: bool(tmp_files(out) - tmp_before), poll=0.0005)
        if not hit:
            if child.wait(60) not in (0, 1):
                raise RuntimeError(f"predict attempt {attempts} failed: {child.last_line()}")
            completed_early = True
            say(f"predict attempt {attempts}: completed before its {kind} kill")
            break
        at = child.kill()
        state = journal_state(out)
        left = tmp_files(out) - tmp_before
        torn += state["torn"]
        invalid += len(state["invalid"])
        phase = "output write" if left else ("start-up" if state["records"] == done0 and at < startup else "counting")
        log.append({"attempt": attempts, "kind": kind, "planned_s": None if planned is None else round(planned, 3),
                    "killed_at_s": round(at, 3), "phase": phase, "images_done_before": done0,
                    "images_done_after": state["records"], "torn_last_line": state["torn"],
                    "invalid_journaled": state["invalid"], "tmp_files_left": len(left)})
        say(f"predict kill {len(log)} ({kind}) at {at:.2f} s: {phase}, {state['records']} images journaled, "
            f"torn line {state['torn']}, {len(state['invalid'])} invalid")
    if not completed_early:
        child = Child([*cmd, "--out", str(out), "--resume"])
        attempts += 1
        if child.wait(600) != 0:
            raise RuntimeError(f"final predict attempt failed: {child.last_line()}")
    soak_s = time.monotonic() - t_soak

    got, want = output_files(out), output_files(ref_out)
    differing = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    names = [r["image"] for r in json.loads((out / "counts.json").read_text())["images"]]
    ref_names = [r["image"] for r in json.loads((ref_out / "counts.json").read_text())["images"]]
    all_valid = all(valid_outputs(out, n) for n in names)
    final_journal = journal_state(out)
    return {
        "kills": len(log),
        "complete": (not differing and names == ref_names and len(names) == plan.predict_images
                     and len(set(names)) == len(names) and all_valid and not tmp_files(out) and invalid == 0),
        "images": plan.predict_images,
        "images_source": source,
        "counts_identical": (out / "counts.csv").read_bytes() == (ref_out / "counts.csv").read_bytes()
        and (out / "counts.json").read_bytes() == (ref_out / "counts.json").read_bytes(),
        "differing_files": differing[:20],
        "all_outputs_valid": all_valid,
        "invalid_journaled_outputs_after_kills": invalid,
        "torn_journal_lines_seen": torn,
        "journal_records_at_end": final_journal["records"],
        "kills_by_kind": dict(Counter(e["kind"] for e in log)),
        "kills_by_phase": dict(Counter(e["phase"] for e in log)),
        "attempts": attempts,
        "completed_early": completed_early,
        "reference_timeline_s": {"startup": round(startup, 2), "per_image": round(per_image, 3), "total": round(total, 2)},
        "seconds": {"reference": round(t_ref, 1), "soak": round(soak_s, 1)},
        "kill_log": log,
    }


# ------------------------------------------------------------------------------ entry point
def run(plan: Plan, seed: int, work: Path | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Both soaks in ``work`` (a temporary folder when None); returns the soak.json content."""
    t0 = time.monotonic()
    tmp = None
    if work is None:
        tmp = tempfile.mkdtemp(prefix="soak_kill_")
        work = Path(tmp)
    try:
        training = soak_training(work / "train", plan, seed, say)
        predict = soak_predict(work / "predict", work / "train" / "ref" / "last.pt", plan, seed, say)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"training": training, "predict": predict, "seed": seed,
            "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in plan._asdict().items()},
            "machine": {"cpu_count": os.cpu_count(), "load_average_at_end": list(os.getloadavg()),
                        "torch": torch.__version__, "python": sys.version.split()[0],
                        "note": "2-core machine shared with other jobs; children run on one thread"},
            "seconds": round(time.monotonic() - t0, 1)}


def write_results(result: dict[str, Any], path: Path) -> Path:
    """``result`` as indented JSON at ``path``, written atomically (:mod:`autoscale.io`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(result, indent=1) + "\n", "soak results")


def main(argv: list[str] | None = None) -> int:
    global CHILD_CODE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a few kills only (the test)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="keep the runs in this folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results file (default benchmarks/results/soak.json; --smoke: not written unless given)")
    ap.add_argument("--code-from-head", action="store_true",
                    help="children import autoscale from a snapshot of the HEAD commit (git archive), so that "
                         "edits made in the working tree during the soak cannot change the code between attempts")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    code: dict[str, Any] = {"children_import": "installed package"}
    snap = None
    if a.code_from_head:
        snap = Path(tempfile.mkdtemp(prefix="soak_code_"))
        CHILD_CODE, commit = snapshot_head(snap)
        code = {"children_import": "git archive of HEAD", "commit": commit}
    try:
        result = run(SMOKE if a.smoke else FULL, a.seed, a.work)
    finally:
        if snap is not None:
            shutil.rmtree(snap, ignore_errors=True)
    result["code"] = code
    result["command"] = " ".join(["python benchmarks/soak_kill.py", *(sys.argv[1:] if argv is None else argv)])
    out = a.out if a.out is not None else (None if a.smoke else RESULTS / "soak.json")
    if out is not None:
        print(f"wrote {write_results(result, out)}")
    t, p = result["training"], result["predict"]
    print(f"training: {t['kills']} kills, bit_identical {t['bit_identical']}, unreadable checkpoints "
          f"{t['unreadable_checkpoints']}; predict: {p['kills']} kills, complete {p['complete']}")
    return 0 if t["bit_identical"] and not t["unreadable_checkpoints"] and p["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
