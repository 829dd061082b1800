"""The file / folder / video runner behind ``autoscale predict``, and its output writers.

:func:`predict_paths` turns images, folders of images and videos into the output layout below
with a :class:`autoscale.predict.Predictor` (the Python API; conventions of maps and points there).

Output layout (``DIR``)::

    counts.csv            image,count           (written last)
    counts.json           per-image counts, regions, settings, "errors" (written last)
    maps/<name>.npy       map at the input resolution
    points/<name>.csv     x,y head points, input-image pixels
    overlays/<name>.jpg   heatmap + dense-region box + points with KNN boxes, at the input
                          resolution (at most READ_SIDE = 4096 px on the longer side for a
                          bigger photo: the resolution it was decoded at, see Predictor.read);
                          JPEG quality 92, or lossless <name>.png with overlay_format="png"
    nwpu_counts.txt       "id count" (with nwpu=True; id = numeric file stem)
    nwpu_loc.txt          "id num x y ..." (with nwpu=True; integer coordinates, floor)
    progress.jsonl        the run's header, then one line per counted image (what resume reads)

Every file is written to a temporary name, flushed to the disk (``fsync``) and renamed into place
(:mod:`autoscale.io`).
``DIR`` is only touched once the first image has been counted: then the stale ``counts.*`` of an
earlier run are removed, so an interrupted run never leaves a file that looks complete. A run that
counts nothing (its only input, or every input, unreadable) fails with one :class:`DataError` and
leaves ``DIR`` as it was.

Crashes (``resume=True``, ``autoscale predict --resume``): after an image's files are in place,
one JSON line (its counts.json record) is appended to ``progress.jsonl`` and flushed to the disk;
the file's first line is the run header (a digest of the model's weights and every setting that
changes outputs). A run killed at any instant (SIGKILL, power) leaves at most a torn last line,
which is ignored and cut off. Re-running with ``resume=True`` replays the journal's images in input
order (their files must still be there) and counts only the others, so ``counts.csv`` /
``counts.json`` list every image once, in input order, with the counts of an uninterrupted run.
A journal whose header differs (another checkpoint, other settings or inputs) is refused with one
:class:`DataError`. Without ``resume`` a new run starts from scratch (the journal is replaced when
its first image is counted). Video frames already done are skipped without being decoded.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

# A corrupt video makes OpenCV's FFmpeg backend print FFmpeg's own log lines ("moov atom not
# found") before our one-line report. FFmpeg's level is read once, when OpenCV first uses FFmpeg:
# quiet it before any video is opened; an explicit setting in the environment wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from autoscale.data.formats import natural_key  # noqa: E402
from autoscale.data.image_io import check_pixels  # noqa: E402
from autoscale.errors import ConfigError, DataError  # noqa: E402
from autoscale.io import IMAGE_EXTS, VIDEO_EXTS, atomic_path, atomic_write_bytes  # noqa: E402

if TYPE_CHECKING:
    from autoscale.predict import Predictor

__all__ = ["IMAGE_EXTS", "VIDEO_EXTS", "JOURNAL", "predict_paths"]

#: The progress journal's file name inside the output folder.
JOURNAL = "progress.jsonl"
_JOURNAL_FORMAT = "autoscale-predict-progress"
_JOURNAL_VERSION = 1
_RECORD_KEYS = ("image", "source", "count", "first_count", "num_points", "height", "width", "regions")
_TMP_NAME = re.compile(r"^\..+\.tmp$")  # what autoscale.io's atomic writes leave behind when killed


# ---------------------------------------------------------------------------------- writers
def _write_npy(path: Path, arr: np.ndarray, what: str) -> None:
    """``arr`` as a ``.npy`` file, written atomically and streamed (no in-memory copy: a map of
    a 96 MP photo is 384 MB)."""
    with atomic_path(path, what) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


class _Progress:
    """A tqdm bar over counted images and video frames on stderr (``enabled``), or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc="predict", file=sys.stderr, dynamic_ncols=True)

    def stage(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def add_total(self, n: int) -> None:
        if self.bar is not None:
            self.bar.total += n
            self.bar.refresh()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


#: Nice value of the streaming reader / writer threads (Linux): lowest priority.
_HELPER_NICE = 19


def _helper_thread() -> None:
    """Initializer of the streaming reader / writer threads: on Linux, where a thread's nice value
    is its own, they run at the lowest priority, so that decoding and writing fill the cores the
    network leaves idle (its single-threaded steps) instead of taking a core from one of its
    parallel regions, where every thread waits for the slowest (measured on 2 cores, lite0 fp32
    768x1024: folder ratio 0.887 / 0.925 at nice 19 against 0.876 / 0.885 at nice 0). A thread
    the network waits for (the read of the next image) still runs at once, as the network's
    threads are idle then. Elsewhere a no-op: ``setpriority`` would change the whole process."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _HELPER_NICE)


def _points_csv(points: np.ndarray) -> bytes:
    """``x,y`` CSV (3 decimals, input-image pixels) of ``(N, 2)`` points."""
    lines = ["x,y"] + [f"{x:.3f},{y:.3f}" for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2)]
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------------------------- output folder
def _check_out(out_dir: Path) -> None:
    """Refuse an output path that cannot become a writable folder, without creating or changing
    anything (the folder is prepared by :func:`_prepare_out` once there is something to write)."""
    existing = out_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        what = "exists and is not a directory" if existing == out_dir else f"lies under {existing}, not a directory"
        raise DataError(out_dir, f"cannot write the output directory (the path {what})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(out_dir, f"cannot write the output directory ({existing}: permission denied)")


def _prepare_out(out_dir: Path) -> Path:
    """Create ``out_dir`` and its sub-folders, check it is writable, remove the stale completion
    markers (``counts.*``, NWPU files) of an earlier run and the temporary files a killed run left."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("maps", "points", "overlays"):
            (out_dir / sub).mkdir(exist_ok=True)
        probe = out_dir / f".write_test{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        # Stale completion markers of an earlier run must not outlive an interrupted new one.
        for stale in ("counts.csv", "counts.json", "nwpu_counts.txt", "nwpu_loc.txt"):
            (out_dir / stale).unlink(missing_ok=True)
        for folder in (out_dir, out_dir / "maps", out_dir / "points", out_dir / "overlays"):
            for q in folder.iterdir():
                if _TMP_NAME.match(q.name) and q.is_file():
                    q.unlink(missing_ok=True)
    except OSError as exc:
        raise DataError(out_dir, f"cannot write the output directory ({exc.strerror or exc})") from None
    return out_dir


# ---------------------------------------------------------------------------------- journal
def _weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes, bytes), in key order."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()))
    return h.hexdigest()


def _pipeline_settings(config: Any) -> dict[str, Any]:
    """A :class:`~autoscale.pipeline.PipelineConfig` as JSON values (tuples as lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}


def _run_header(predictor: Predictor, inputs: str | PathLike[str] | Sequence[str | PathLike[str]],
                settings: dict[str, Any]) -> dict[str, Any]:
    """The journal's first line: what must match for a run to resume another."""
    given = [inputs] if isinstance(inputs, (str, PathLike)) else list(inputs)
    norm = getattr(predictor.model, "normalization", None)
    return {
        "format": _JOURNAL_FORMAT,
        "version": _JOURNAL_VERSION,
        "weights": _weights_digest(predictor.model),
        "inputs": [str(Path(p).resolve()) for p in given],
        "settings": {
            "variant": predictor.variant, "single_pass": predictor.single_pass, "max_side": predictor.max_side,
            "points": predictor.points_mode, "bf16": predictor.bf16, "device": predictor.device.type,
            "normalization": None if norm is None else [list(map(float, v)) for v in norm],
            "pipeline": _pipeline_settings(predictor.config),
            **({"engine": predictor.engine} if getattr(predictor, "engine", "torch") != "torch" else {}),
            **settings,
        },
    }


def _read_journal(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    """``(header, records, valid_bytes)`` of a journal; ``(None, [], 0)`` when there is none.

    Reading stops at the first line that is incomplete (no newline: a torn write) or not a record;
    ``valid_bytes`` is where the intact prefix ends. A first line that is not our header is a
    :class:`DataError`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, [], 0
    except OSError as exc:
        raise DataError(path, f"cannot read the progress journal ({exc.strerror or exc})") from None
    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = []
    pos = 0
    while (nl := data.find(b"\n", pos)) >= 0:
        try:
            obj = json.loads(data[pos:nl])
        except ValueError:
            obj = None
        if header is None:
            if not isinstance(obj, dict) or obj.get("format") != _JOURNAL_FORMAT:
                raise DataError(path, "not a progress journal of autoscale predict; remove it or choose another --out")
            if obj.get("version") != _JOURNAL_VERSION:
                raise DataError(path, f"progress journal version {obj.get('version')!r}, this autoscale reads "
                                      f"{_JOURNAL_VERSION}; run without --resume to start over")
            header = obj
        elif isinstance(obj, dict) and all(k in obj for k in _RECORD_KEYS) and isinstance(obj["image"], str):
            records.append(obj)
        else:
            break
        pos = nl + 1
    return header, records, pos


def _check_header(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to resume a run made with another model, other settings or other inputs."""
    what = []
    if old.get("weights") != new["weights"]:
        what.append("a different checkpoint (model weights differ)")
    settings_old = dict(old["settings"]) if isinstance(old.get("settings"), dict) else {}
    # journals from before overlay_format was recorded in every header had PNG overlays
    settings_old.setdefault("overlay_format", "png")
    if isinstance(settings_old.get("pipeline"), dict):
        from autoscale.pipeline import PipelineConfig

        # a pipeline setting added since that run was written ran there at its default
        settings_old["pipeline"] = {**_pipeline_settings(PipelineConfig()), **settings_old["pipeline"]}
    diff = sorted(k for k in set(settings_old) | set(new["settings"]) if settings_old.get(k) != new["settings"].get(k))
    if diff:
        what.append("different options (" + ", ".join(diff) + ")")
    if old.get("inputs") != new["inputs"]:
        what.append(f"different inputs ({', '.join(map(str, old.get('inputs') or []))})")
    if what:
        raise DataError(path, f"cannot resume: written by a run with {' and '.join(what)}; "
                              f"run without --resume to start over, or choose another --out")


class _Journal:
    """The append-only progress journal (module docstring): a new one starts with ``header``
    (written atomically); an existing one is cut back to its intact prefix of ``keep`` bytes."""

    def __init__(self, path: Path, header: dict[str, Any], keep: int | None) -> None:
        if keep is None:
            atomic_write_bytes(path, _json_line(header), "progress journal")
        else:
            os.truncate(path, keep)
        self._file: BinaryIO = open(path, "ab")  # noqa: SIM115 - closed by close()

    def append(self, record: dict[str, Any]) -> None:
        """One line, flushed to the disk before returning."""
        try:
            self._file.write(_json_line(record))
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise DataError(self._file.name, f"cannot write the progress journal ({exc.strerror or exc})") from None

    def close(self) -> None:
        self._file.close()


def _json_line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


# ---------------------------------------------------------------------------------- inputs
def _expand_inputs(inputs: str | PathLike[str] | Sequence[str | PathLike[str]]) -> list[tuple[str, Path]]:
    """``[(kind, path)]`` with kind ``image`` / ``video``; folders list their images naturally sorted."""
    items = [inputs] if isinstance(inputs, (str, PathLike)) else list(inputs)
    out: list[tuple[str, Path]] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files = sorted((q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTS
                            and not q.name.startswith(".")), key=lambda q: natural_key(q.name))
            if not files:
                raise DataError(p, f"no images found in folder (extensions {', '.join(IMAGE_EXTS)})")
            out.extend(("image", q) for q in files)
        elif p.is_file():
            out.append(("video" if p.suffix.lower() in VIDEO_EXTS else "image", p))
        else:
            raise DataError(p, "input not found")
    return out


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV's own log lines (``[ WARN:0] ... VIDEOIO(FFMPEG): ...``) silenced meanwhile: the
    failures they describe are reported by us, as one line."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:  # pragma: no cover - every OpenCV 4/5 build has it
        yield
        return
    old = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(old)


def _open_video(path: Path) -> cv2.VideoCapture:
    """Open with the FFmpeg backend when OpenCV has it (no fallback to OpenCV's built-in AVI
    parser, which prints to stderr itself), quietly; :class:`DataError` when it cannot be opened
    or its frames are above the decoding limit (:func:`autoscale.data.image_io.max_pixels`)."""
    with _quiet_opencv():
        api = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
        cap = cv2.VideoCapture(str(path), api)
        opened = cap.isOpened()
    if not opened:
        cap.release()
        raise DataError(path, "cannot open video (unsupported codec or corrupt file)")
    try:
        check_pixels(path, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    except DataError:
        cap.release()
        raise
    return cap


def _video_frames(path: Path, every_n_frames: int | None, fps: float | None,
                  skip: Callable[[int], bool] | None = None,
                  expect: Callable[[int], None] | None = None) -> Iterator[tuple[int, np.ndarray | None]]:
    """Sampled ``(frame index, RGB frame)``: every ``every_n_frames``-th frame (default 1), or
    ``fps`` frames per second (step ``max(1, round(video_fps / fps))``; step 1 when the file states
    no frame rate). Frame 0 is always the first sample. A sampled frame for which ``skip(index)``
    is true is passed over without decoding and comes as ``(index, None)``. ``expect`` is told the
    number of samples the file's stated frame count promises (0 when it states none). Frames are
    decoded one at a time: memory does not grow with the video's length."""
    cap = _open_video(path)
    try:
        if fps is not None:
            native = cap.get(cv2.CAP_PROP_FPS) or 0.0
            step = max(1, round(native / fps)) if native > 0 else 1
        else:
            step = int(every_n_frames or 1)
        if expect is not None:
            stated = int(max(0.0, cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0))
            expect(-(-stated // step))
        idx = 0
        while True:
            if idx % step == 0 and not (skip is not None and skip(idx)):
                with _quiet_opencv():
                    ok, frame = cap.read()
                if not ok:
                    break
                yield idx, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            else:
                with _quiet_opencv():
                    ok = cap.grab()
                if not ok:
                    break
                if idx % step == 0:
                    yield idx, None
            idx += 1
    finally:
        cap.release()


# ---------------------------------------------------------------------------------- the runner
def predict_paths(
    predictor: Predictor,
    inputs: str | PathLike[str] | Sequence[str | PathLike[str]],
    out_dir: str | PathLike[str],
    *,
    every_n_frames: int | None = None,
    fps: float | None = None,
    nwpu: bool = False,
    overlays: bool = True,
    overlay_format: Literal["png", "jpg"] = "jpg",
    save_maps: bool = True,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    prefetch: int = 3,
    progress: bool = False,
) -> dict[str, Any]:
    """Count images, folders and videos and write the output layout of the module docstring.

    ``inputs``: an image file, a folder of images (natural order; unreadable files are reported on
    stderr and under ``"errors"`` in counts.json, the rest still run) or a video file (frames named
    ``<stem>_f000123`` by frame index, sampled by ``every_n_frames`` or ``fps``), or a list of them.
    Names repeated across inputs get ``_2``, ``_3``... appended. ``resume``: continue an
    interrupted run into the same ``out_dir`` (module docstring); without a journal there it is
    a run from scratch.

    ``prefetch``: streaming. Up to ``prefetch`` images ahead are decoded by 2 reader threads
    while the network runs, and each image's files and journal line are written by one writer
    thread (at most 2 images pending), in input order, so outputs, journal and counts are
    identical to the sequential run (``prefetch=0``: no threads). Memory stays bounded by
    ``prefetch`` decoded images + 2 pending outputs; a photo above
    :data:`autoscale.predict.READ_SIDE` is decoded reduced (:meth:`Predictor.read`).

    ``overlay_format``: ``jpg`` (JPEG quality 92, default) or ``png`` (lossless). Measured on
    1024x768 ShanghaiTech photos with a trained model's overlay: ~3-6 ms to encode and ~0.2 MB
    against PNG's 30-70 ms and ~1.2 MB. The overlay is a picture to look at (the exact map and
    points are the .npy and .csv files) and the costliest file written: on a CPU whose cores all
    run the network, PNG overlays cost a folder ~10 % of its throughput (benchmarks).

    ``progress``: a progress bar on stderr over images and sampled video frames, naming the image
    being read, counted or written (the CLI's ``--progress``).

    Returns:
        The counts.json content. Raises :class:`DataError` for a missing input, an unwritable
        ``out_dir``, a lone unreadable image or video, when no input could be read at all, or for
        a journal that another run wrote (``resume``); then ``out_dir`` is left exactly as it was
        (an earlier run's outputs stay intact), and the notices about skipped inputs are folded
        into that one error.
    """
    if every_n_frames is not None and fps is not None:
        raise ConfigError("give either every_n_frames or fps, not both")
    if every_n_frames is not None and int(every_n_frames) < 1:
        raise ConfigError(f"every_n_frames must be >= 1, got {every_n_frames}")
    if fps is not None and not fps > 0:
        raise ConfigError(f"fps must be > 0, got {fps}")
    from autoscale.viz import OVERLAY_ENCODINGS

    if overlay_format not in OVERLAY_ENCODINGS:
        raise ConfigError(f"overlay_format must be one of {sorted(OVERLAY_ENCODINGS)}, got {overlay_format!r}")
    items = _expand_inputs(inputs)
    out_path = Path(out_dir)
    _check_out(out_path)
    out = out_path  # prepared (stale counts.* removed) by the first counted image, not before
    say = log or (lambda msg: print(msg, file=sys.stderr))
    header = _run_header(predictor, inputs, {"every_n_frames": every_n_frames, "fps": fps, "nwpu": bool(nwpu),
                                             "overlays": bool(overlays), "save_maps": bool(save_maps),
                                             "overlay_format": overlay_format})
    journal_path = out_path / JOURNAL
    done: dict[str, dict[str, Any]] = {}  # journal records of an interrupted run, by name
    keep: int | None = None  # resume: bytes of the old journal to keep (None: start a new one)
    if resume and out_path.is_dir():
        old_header, old_records, valid = _read_journal(journal_path)
        if old_header is not None:
            _check_header(journal_path, old_header, header)
            done = {r["image"]: r for r in old_records}
            keep = valid
            if done:
                say(f"autoscale: resuming {out_path}: {len(done)} image(s) already counted")
    journal: _Journal | None = None
    held: list[str] = []  # notices about skipped inputs, printed once an image has been counted
    failures: list[tuple[Path, str]] = []
    records: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    used: set[str] = set()
    nwpu_counts: dict[int, float] = {}
    nwpu_points: dict[int, np.ndarray] = {}

    def peek(name: str) -> str:
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        return name

    def unique(name: str) -> str:
        name = peek(name)
        used.add(name)
        return name

    def files_of(name: str) -> list[Path]:
        return ([out / "maps" / f"{name}.npy"] if save_maps else []) + [out / "points" / f"{name}.csv"] + (
            [out / "overlays" / f"{name}.{overlay_format}"] if overlays else [])

    def finished(name: str, source: str) -> dict[str, Any] | None:
        """The journal record of ``name`` when an earlier run completed it from ``source``."""
        rec = done.get(name)
        if rec is None or rec["source"] != source or not all(p.is_file() for p in files_of(name)):
            return None
        return rec

    def prepare() -> None:
        nonlocal journal
        if journal is not None:
            return
        _prepare_out(out_path)
        try:
            journal = _Journal(journal_path, header, keep)
        except OSError as exc:
            raise DataError(journal_path, f"cannot write the progress journal ({exc.strerror or exc})") from None
        for msg in held:
            say(msg)
        held.clear()

    def skipped(path: Path, problem: str, error: str) -> None:
        errors.append({"image": str(path), "error": error})
        failures.append((path, problem))
        msg = f"autoscale: skipped {path}: {problem}"
        if journal is not None:
            say(msg)
        else:
            held.append(msg)

    def add(rec: dict[str, Any], points: np.ndarray) -> None:
        records.append(rec)
        if nwpu:
            name, source = rec["image"], rec["source"]
            if name.isdigit():
                nwpu_counts[int(name)], nwpu_points[int(name)] = rec["count"], points
            else:
                errors.append({"image": source, "error": f"{name!r} is not a numeric NWPU image id; left out of nwpu files"})
                say(f"autoscale: warning: {source}: not a numeric NWPU image id, left out of the NWPU files")

    def replay(rec: dict[str, Any]) -> None:
        add({k: rec[k] for k in _RECORD_KEYS}, np.asarray(rec.get("points", []), dtype=np.float64).reshape(-1, 2))

    pool = writer = None
    if prefetch > 0:
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="autoscale-read", initializer=_helper_thread)
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoscale-write", initializer=_helper_thread)
    done_sources = {r["source"] for r in done.values()}
    reads: dict[int, Future] = {}
    writes: deque[Future] = deque()
    ahead = 0  # the next item index a read may be submitted for

    def read_ahead(i: int) -> None:
        """Submit reads of the image items up to ``prefetch`` ahead of item ``i`` (not those a
        resumed run will replay)."""
        nonlocal ahead
        ahead = max(ahead, i)
        while pool is not None and ahead < len(items) and ahead <= i + prefetch:
            kind, path = items[ahead]
            if kind == "image" and str(path) not in done_sources:
                reads[ahead] = pool.submit(predictor.read, path)
            ahead += 1

    def load(i: int, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        fut = reads.pop(i, None)
        return fut.result() if fut is not None else predictor.read(path)

    def process(rgb: np.ndarray, name: str, source: str, input_size: tuple[int, int] | None = None) -> None:
        bar.stage(f"counting {name}")
        pred = predictor.predict_array(rgb, name=name, input_size=input_size)
        bar.stage(f"writing {name}")
        prepare()
        if writer is None:
            write(rgb, pred, name, source)
        else:
            while len(writes) >= 2:
                writes.popleft().result()  # a failed write raises here
            writes.append(writer.submit(write, rgb, pred, name, source))
        add(_record(pred, name, source), pred.points)
        bar.advance()

    def _record(pred: Any, name: str, source: str) -> dict[str, Any]:
        return {"image": name, "source": source, "count": pred.count, "first_count": pred.first_count,
                "num_points": int(len(pred.points)), "height": pred.input_size[0],
                "width": pred.input_size[1], "regions": pred.regions}

    write_failed: list[bool] = []

    def write(rgb: np.ndarray, pred: Any, name: str, source: str) -> None:
        """The image's files, then its journal line (in the writer thread when streaming); after a
        failed write nothing more is written, as in the sequential run."""
        if write_failed:
            return
        try:
            write_files(rgb, pred, name, source)
        except BaseException:
            write_failed.append(True)
            raise

    def write_files(rgb: np.ndarray, pred: Any, name: str, source: str) -> None:
        if save_maps:
            _write_npy(out / "maps" / f"{name}.npy", pred.map, "map")
        atomic_write_bytes(out / "points" / f"{name}.csv", _points_csv(pred.points), "points file")
        if overlays:
            from autoscale.viz import draw_overlay, encode_picture

            (H, W), (h, w) = pred.input_size, rgb.shape[:2]
            points, regions = pred.points, pred.regions
            if (h, w) != (H, W):  # a big photo decoded reduced: draw in the decoded image's pixels
                f = np.array([w / W, h / H])
                points = pred.points * f
                regions = [dict(r, x=r["x"] * f[0], y=r["y"] * f[1], w=r["w"] * f[0], h=r["h"] * f[1]) for r in regions]
            ov = draw_overlay(rgb, pred.map, variant=predictor.variant, regions=regions, points=points)
            ov_path = out / "overlays" / f"{name}.{overlay_format}"
            try:
                data = encode_picture(ov, overlay_format)
            except ValueError as exc:  # pragma: no cover - OpenCV fails only on absurd inputs
                raise DataError(ov_path, str(exc)) from None
            atomic_write_bytes(ov_path, data, "overlay")
        rec = _record(pred, name, source)
        line = dict(rec, points=pred.points.tolist()) if nwpu else rec
        journal.append(line)  # after the image's files: a journaled image is complete

    def drain(raising: bool) -> None:
        """Wait for the pending writes (in order); re-raise the first failure unless already raising."""
        first: BaseException | None = None
        while writes:
            try:
                writes.popleft().result()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                first = first or exc
        if first is not None and not raising:
            raise first

    bar = _Progress(progress, sum(kind == "image" for kind, _ in items))
    try:
        for i, (kind, path) in enumerate(items):
            read_ahead(i)
            if kind == "video":
                n_before = len(records)
                stem = path.stem

                def frame_done(idx: int, stem: str = stem, path: Path = path) -> bool:
                    return finished(peek(f"{stem}_f{idx:06d}"), f"{path}#frame={idx}") is not None

                try:
                    for idx, frame in _video_frames(path, every_n_frames, fps, skip=frame_done if done else None,
                                                    expect=bar.add_total):
                        name, source = unique(f"{stem}_f{idx:06d}"), f"{path}#frame={idx}"
                        if frame is None:
                            replay(done[name])
                            bar.advance()
                        else:
                            process(frame, name, source)
                except DataError as exc:
                    if len(items) == 1 or exc.path != str(path):
                        raise
                    skipped(path, exc.problem, str(exc))
                    continue
                if len(records) == n_before:
                    skipped(path, "no frames could be decoded", "no frames could be decoded")
                continue
            name = peek(path.stem)
            rec = finished(name, str(path)) if done else None
            if rec is not None:
                replay(rec)
                used.add(name)
                bar.advance()
                continue
            bar.stage(f"reading {path.name}")
            try:
                rgb, size = load(i, path)
            except DataError as exc:
                if len(items) == 1:
                    raise
                skipped(path, exc.problem, str(exc))
                bar.advance()
                continue
            process(rgb, unique(path.stem), str(path), size)

        if not records:
            if len(failures) == 1:
                raise DataError(*failures[0])
            source = Path(inputs) if isinstance(inputs, (str, PathLike)) else failures[0][0]
            first, problem = failures[0]
            raise DataError(source, f"none of the {len(failures)} inputs could be read (first: {first.name}: {problem}); "
                                    f"nothing predicted, {out_path} left as it was")
        drain(raising=False)
        prepare()  # a resumed run that had nothing left to count has not touched out yet
    except BaseException:
        drain(raising=True)
        raise
    finally:
        bar.close()
        for fut in reads.values():
            fut.cancel()
        for ex in (pool, writer):
            if ex is not None:
                ex.shutdown(wait=True, cancel_futures=True)
        if journal is not None:
            journal.close()
    if nwpu:
        from autoscale.metrics.nwpu import write_counts, write_loc_pred

        for fname, writer, data in (("nwpu_counts.txt", write_counts, nwpu_counts),
                                    ("nwpu_loc.txt", write_loc_pred, nwpu_points)):
            with atomic_path(out / fname, "NWPU file") as tmp:
                writer(tmp, dict(sorted(data.items())))
    summary = {
        "variant": predictor.variant,
        "single_pass": predictor.single_pass,
        "max_side": predictor.max_side,
        "pipeline": _pipeline_settings(predictor.config),
        "checkpoint": predictor.info,
        "num_images": len(records),
        "total_count": float(sum(r["count"] for r in records)),
        "images": records,
        "errors": errors,
    }
    atomic_write_bytes(out / "counts.json", (json.dumps(summary, indent=1) + "\n").encode(), "counts file")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "count"])
    w.writerows([r["image"], f"{r['count']:.6f}"] for r in records)
    atomic_write_bytes(out / "counts.csv", buf.getvalue().encode(), "counts file")
    return summary
