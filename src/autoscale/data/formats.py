"""Dataset readers: every supported layout becomes a list of :class:`ImageRecord`.

Each reader takes a dataset ``root`` and a ``split`` and returns records sorted in natural order of
the image name (``IMG_2`` before ``IMG_10``). Widths and heights come from the image headers
(:func:`autoscale.data.image_io.image_size`, no decoding), points are ``(x, y)`` in pixels of the
stored image file with pixel column ``c`` covering ``[c, c+1)``, and the outside-point policy of
:func:`autoscale.data.record.apply_outside_policy` is applied (``drop`` by default; the number of
removed points goes to ``record.dropped_points``).

Formats (layouts in ``reference/protocols-and-formats.md`` section C):

================  ============================================  =====  ============  ============
name              layout                                         sigma  resize rule   splits
================  ============================================  =====  ============  ============
``shanghaitech``  ``<part>/{train,test}_data/images/IMG_n.jpg``  4 / 8  ``none``      train, test
                  + ``ground-truth|ground_truth/GT_IMG_n.mat``
``qnrf``          ``{Train,Test}/img_XXXX.jpg`` + ``_ann.mat``   6      paper_2048    train, test
``jhu``           ``{split}/images``, ``{split}/gt/*.txt``       8      paper_2048    train/val/test
``nwpu``          ``images/``, ``jsons/``, ``{split}.txt``       6      paper_2048    train/val/test
``trancos``       ``images/``, ``image_sets/*.txt``              4      none          see class
``vgg_cells``     ``NNNcell.png`` + ``NNNdots.png``              4      none          train/test/all
``generic``       ``<split>.txt`` + JSON / CSV (architecture)    4      none          any list file
================  ============================================  =====  ============  ============

``default_sigma`` is the fixed Gaussian sigma (pixels, in the frame after the dataset's resize rule)
for regression density maps. ShanghaiTech: 4 for part A, 8 for part B (chosen from the part folder
name by :meth:`DatasetFormat.sigma_for`). UCF-QNRF: the paper (Sec. 4.2) says 8 but the official
``density_generate_QNRF.py`` uses 6; we default to 6 and keep 8 in ``paper_sigma``. JHU 8 and NWPU 6
agree in paper and code. TRANCOS, VGG cells and generic data are not in the paper; 4 is our choice
(small, well-separated objects).

Images without an annotation (stray files: real mirrors have them, e.g. an ``IMG_999.jpg`` without
``GT_IMG_999.mat``) are handled the same way by every folder-based reader (``shanghaitech``,
``qnrf``, ``jhu``, ``vgg_cells``: an image in the split's folder; ``nwpu``, ``trancos``: an image
the split's list file names, whose annotation file is missing): one :class:`DataError` naming the
split's folder or list file, how many images lack an annotation and the first few names; with
``skip_unannotated=True`` (CLI ``--skip-unannotated``, config ``data.skip_unannotated``) they are
left out and reported to the caller (:meth:`DatasetFormat.read`'s ``skipped``). Images a list file
does not name are never read. ``generic`` reads only what its list file names, with the
annotation that line (or the image's name) gives: a missing one stays an error there. NWPU's
``test`` split is a different case: its ground truth is withheld, so its images are records with
``annotated=False`` (evaluation skips and counts them).
"""
from __future__ import annotations

import csv
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from autoscale.data.image_io import image_size, read_image
from autoscale.data.matfile import load_mat
from autoscale.data.record import OUTSIDE_POLICIES, ImageRecord, apply_outside_policy, inside_mask
from autoscale.errors import ConfigError, DataError
from autoscale.io import IMAGE_EXTS

__all__ = [
    "DatasetFormat",
    "FORMATS",
    "get_format",
    "read_dataset",
    "skipped_notice",
    "load_roi",
    "natural_key",
    "write_generic_annotation",
    "write_generic_list",
]

PathLikeStr = str | PathLike[str]
_FLOAT_MAX = 1.7976931348623157e308  # largest finite float64
_IMAGE_EXTS = IMAGE_EXTS  # the one list, autoscale.io


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def natural_key(name: str) -> list[Any]:
    """Sort key ordering embedded numbers numerically: ``IMG_2`` < ``IMG_10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(path, f"{what} not found (expected a directory)")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(path, f"{what} not found")
    return path


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXTS and p.is_file()),
        key=lambda p: natural_key(p.name),
    )


def _load_mat(path: Path) -> dict[str, Any]:
    """The variables of a .mat file (:func:`autoscale.data.matfile.load_mat`: a corrupt file that
    would crash SciPy's compiled reader is refused first); every failure is a DataError."""
    _require_file(path, "annotation file")
    return load_mat(path)


def _mat_var(mat: Mapping[str, Any], var: str, path: Path) -> Any:
    if var not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(path, f"no variable {var!r} in .mat file (found: {found})")
    return mat[var]


def _as_points(arr: Any, path: Path, what: str = "points", ncols: int = 2) -> np.ndarray:
    """Validate a numeric ``(N, ncols)`` array (empty -> ``(0, ncols)``)."""
    a = np.asarray(arr)
    if a.size == 0:
        return np.zeros((0, ncols), dtype=np.float64)
    if a.dtype.kind not in "biuf":
        raise DataError(path, f"{what} must be numeric, got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[1] != ncols:
        raise DataError(path, f"{what} must be an N x {ncols} array, got shape {a.shape}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        row = int(np.argmax(~np.all(np.isfinite(a), axis=1)))
        raise DataError(path, f"non-finite value in {what} row {row}: {a[row].tolist()}")
    return a


def _numeric_row(path: Path, lineno: int, fields: list[str], shown: str) -> list[float]:
    """Parse one annotation line's fields as finite floats; DataError naming file and line."""
    try:
        vals = [float(f) for f in fields]
    except ValueError:
        raise DataError(path, f"line {lineno}: non-numeric value in {shown!r}") from None
    if not all(math.isfinite(v) for v in vals):
        raise DataError(path, f"line {lineno}: non-finite value in {shown!r}")
    return vals


def _parse_number_rows(path: Path, min_cols: int, max_cols: int | None = None) -> np.ndarray:
    """Parse a whitespace-separated numeric text file into an ``(N, C)`` float array.

    Blank lines are skipped. Every row must have the same number of columns, between ``min_cols``
    and ``max_cols``; non-numeric or non-finite values raise :class:`DataError` with the line number.
    """
    _require_file(path, "annotation file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read text annotation: {exc}") from None
    rows: list[list[float]] = []
    ncols: int | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        n = len(fields)
        if n < min_cols or (max_cols is not None and n > max_cols):
            want = f"{min_cols}" if max_cols == min_cols else f"{min_cols}..{max_cols or 'any'}"
            raise DataError(path, f"line {lineno}: expected {want} numbers, got {n}: {line.strip()!r}")
        if ncols is None:
            ncols = n
        elif n != ncols:
            raise DataError(path, f"line {lineno}: {n} columns, previous lines have {ncols}")
        rows.append(_numeric_row(path, lineno, fields, line.strip()))
    if not rows:
        return np.zeros((0, min_cols), dtype=np.float64)
    return np.asarray(rows, dtype=np.float64)


class _Unannotated:
    """The images of one split that lack their annotation file: an error listing them, or (with
    ``skip``) left out and kept in ``found`` as ``(image, the annotation file it lacks)``."""

    SHOW = 5  # names in the error

    def __init__(self, where: Path, skip: bool) -> None:
        self.where, self.skip = where, skip
        self.found: list[tuple[Path, Path]] = []

    def add(self, image: Path, expected: Path) -> None:
        self.found.append((image, expected))

    def check(self, total: int) -> None:
        """Raise the error listing them (``total``: the split's images, these included), unless skipping."""
        n = len(self.found)
        if not n or self.skip:
            return
        names = ", ".join(p.name for p, _ in self.found[: self.SHOW]) + (f" and {n - self.SHOW} more" if n > self.SHOW else "")
        raise DataError(self.where, f"{n} of {total} images have no annotation: {names} (expected e.g. "
                                    f"{self.found[0][1]}); remove them, or pass --skip-unannotated to autoscale "
                                    f"train / evaluate (config key data.skip_unannotated: true) to read the other "
                                    f"{total - n}")


def _check_pairing(
    images: dict[str, Path],
    annotations: dict[str, Path],
    img_dir: Path,
    ann_dir: Path,
    unannotated: _Unannotated,
    expected: Callable[[Path], Path],
) -> None:
    """Every image needs an annotation (those without one go to ``unannotated`` and are removed
    from ``images``; ``expected(image)`` is the file it lacks) and every annotation an image."""
    total = len(images)
    for key in sorted(set(images) - set(annotations), key=natural_key):
        image = images.pop(key)
        unannotated.add(image, expected(image))
    unannotated.check(total)
    orphans = sorted(set(annotations) - set(images), key=natural_key)
    if orphans:
        raise DataError(annotations[orphans[0]], f"annotation without an image in {img_dir} ({len(orphans)} such file(s))")


def _finish(
    image_path: Path,
    points: np.ndarray,
    outside: str,
    *,
    boxes: np.ndarray | None = None,
    per_head: Mapping[str, np.ndarray] | None = None,
    meta: dict[str, Any] | None = None,
    roi_path: Path | None = None,
    ann_path: Path | None = None,
    annotated: bool = True,
    size: tuple[int, int] | None = None,
) -> ImageRecord:
    """Read the image size, apply the outside policy (also to boxes and per-head meta arrays)."""
    width, height = size if size is not None else image_size(image_path)
    source = ann_path if ann_path is not None else image_path
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) != len(points):
            raise DataError(source, f"{len(boxes)} boxes for {len(points)} points")
    kept, kept_boxes, dropped = apply_outside_policy(points, width, height, outside, boxes=boxes, source=source)
    meta = dict(meta or {})
    if per_head:
        keep = inside_mask(points, width, height) if outside == "drop" else np.ones(len(points), bool)
        for key, arr in per_head.items():
            meta[key] = np.asarray(arr)[keep]
    return ImageRecord(
        image_path=image_path,
        width=int(width),
        height=int(height),
        points=kept,
        boxes=kept_boxes,
        roi_path=roi_path,
        meta=meta,
        dropped_points=dropped,
        annotated=annotated,
    )


def _read_list_lines(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank, non-comment lines of a list file as ``(line number, fields)``."""
    _require_file(path, "list file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read list file: {exc}") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if s and not s.startswith("#"):
            out.append((lineno, s.split()))
    return out


# --------------------------------------------------------------------------------------------
# ROI masks
# --------------------------------------------------------------------------------------------
def load_roi(path: PathLikeStr, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a region-of-interest mask as a ``bool (H, W)`` array (True = inside).

    Accepts a ``.mat`` file with a 2-D variable ``BW`` (TRANCOS ``*mask.mat``) or an image file
    (nonzero in any channel = inside). ``expected_size`` is ``(width, height)``; a mask of another
    size raises :class:`DataError`.
    """
    p = Path(path)
    if p.suffix.lower() == ".mat":
        mask = np.asarray(_mat_var(_load_mat(p), "BW", p))
        if mask.ndim != 2 or mask.size == 0:
            raise DataError(p, f"ROI variable 'BW' must be a 2-D (H, W) array, got shape {mask.shape}")
        if mask.dtype.kind not in "biuf":
            raise DataError(p, f"ROI variable 'BW' must be numeric or logical, got dtype {mask.dtype}")
        mask = mask != 0
    else:
        _require_file(p, "ROI mask")
        mask = read_image(p).any(axis=2)
    if expected_size is not None:
        w, h = expected_size
        if mask.shape != (h, w):
            raise DataError(p, f"ROI mask is {mask.shape[1]}x{mask.shape[0]}, image is {w}x{h}")
    return mask


# --------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------
class DatasetFormat(ABC):
    """A dataset layout. Subclasses set the class attributes and implement :meth:`_read`.

    Attributes:
        name: registry name (``FORMATS[name]``).
        splits: accepted split names.
        default_sigma: fixed Gaussian sigma in pixels for regression density maps.
        paper_sigma: the sigma the paper states, where it differs from ``default_sigma``.
        resize_rule: name in :data:`autoscale.data.preprocess.RESIZE_RULES` (paper default).
    """

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ()
    default_sigma: ClassVar[float] = 4.0
    paper_sigma: ClassVar[float | None] = None
    resize_rule: ClassVar[str] = "none"

    @classmethod
    def sigma_for(cls, root: PathLikeStr) -> float:
        """Density sigma for the dataset at ``root`` (ShanghaiTech: by part)."""
        return float(cls.default_sigma)

    @classmethod
    def check_split(cls, split: str) -> str:
        if split not in cls.splits:
            raise ConfigError(f"unknown split {split!r} for format {cls.name!r}; valid splits: {', '.join(cls.splits)}")
        return split

    @classmethod
    def read(
        cls,
        root: PathLikeStr,
        split: str,
        *,
        outside: str = "drop",
        skip_unannotated: bool = False,
        skipped: list[Path] | None = None,
    ) -> list[ImageRecord]:
        """Read all records of ``split`` under ``root``, sorted by natural image-name order.

        Images without their annotation file (module docstring) are a :class:`DataError` listing
        them; with ``skip_unannotated`` they are left out and their paths appended to ``skipped``
        (when given), for the caller's notice.
        """
        if outside not in OUTSIDE_POLICIES:
            raise ConfigError(f"unknown outside-point policy {outside!r}; valid: {', '.join(OUTSIDE_POLICIES)}")
        split = cls.check_split(split)
        root_p = _require_dir(Path(root), f"{cls.name} dataset root")
        unannotated = _Unannotated(cls.split_path(root_p, split), skip_unannotated)
        try:
            records = cls._read(root_p, split, outside, unannotated)
        except OSError as exc:  # a path the system refuses (name too long, permission, I/O error)
            raise DataError(exc.filename or root_p, f"cannot read: {exc.strerror or exc}") from None
        unannotated.check(len(records) + len(unannotated.found))
        if skipped is not None:
            skipped.extend(sorted((p for p, _ in unannotated.found), key=lambda p: natural_key(p.name)))
        records.sort(key=lambda r: natural_key(Path(r.image_path).name))
        return records

    @classmethod
    @abstractmethod
    def _read(cls, root: Path, split: str, outside: str, unannotated: _Unannotated) -> list[ImageRecord]:
        """Read the records (any order); ``root`` exists and ``split`` is valid. An image whose
        annotation file is missing goes to ``unannotated`` (which raises unless skipping)."""

    @classmethod
    def split_path(cls, root: PathLikeStr, split: str) -> Path:
        """The file or folder that defines ``split`` under ``root`` (its list file, or the folder
        its images are listed from): what an error about the split's content should name."""
        return Path(root)


class ShanghaiTech(DatasetFormat):
    """ShanghaiTech part A/B; ``root`` is the part folder (``part_B``, ``part_A_final``, ...).

    ``GT_IMG_n.mat``: ``image_info`` -> 1x1 cell -> 1x1 struct, ``location`` N x 2 ``(x, y)``.
    The count is ``len(location)`` (the ``number`` field has a small integer type that overflows).
    ``meta["part"]`` is ``"A"`` / ``"B"`` (``None`` if the folder name does not say).
    """

    name = "shanghaitech"
    splits = ("train", "test")
    default_sigma = 4.0
    resize_rule = "none"
    _SIGMA_BY_PART: ClassVar[dict[str, float]] = {"A": 4.0, "B": 8.0}

    @staticmethod
    def part_of(root: PathLikeStr) -> str | None:
        m = re.search(r"part_?([AB])", Path(root).resolve().name, flags=re.IGNORECASE)
        return m.group(1).upper() if m else None

    @classmethod
    def sigma_for(cls, root: PathLikeStr) -> float:
        return cls._SIGMA_BY_PART.get(cls.part_of(root) or "", cls.default_sigma)

    @classmethod
    def split_path(cls, root: PathLikeStr, split: str) -> Path:
        return Path(root) / f"{split}_data" / "images"

    @staticmethod
    def load_locations(path: Path) -> np.ndarray:
        info = _mat_var(_load_mat(path), "image_info", path)
        try:
            loc = info[0, 0][0, 0]["location"]
        except (IndexError, KeyError, ValueError, TypeError):
            raise DataError(path, "unexpected 'image_info' layout (expected 1x1 cell -> 1x1 struct with 'location')") from None
        return _as_points(loc, path, "location")

    @classmethod
    def _read(cls, root: Path, split: str, outside: str, unannotated: _Unannotated) -> list[ImageRecord]:
        split_dir = _require_dir(root / f"{split}_data", f"ShanghaiTech {split} folder")
        img_dir = _require_dir(split_dir / "images", "image folder")
        gt_dir = next((split_dir / g for g in ("ground-truth", "ground_truth") if (split_dir / g).is_dir()), None)
        if gt_dir is None:
            raise DataError(split_dir, "no 'ground-truth' or 'ground_truth' folder")
        images = {p.stem: p for p in _list_images(img_dir)}
        anns = {p.stem[3:]: p for p in gt_dir.glob("GT_*.mat")}
        _check_pairing(images, anns, img_dir, gt_dir, unannotated, lambda img: gt_dir / f"GT_{img.stem}.mat")
        meta = {"part": cls.part_of(root)}
        return [
            _finish(images[k], cls.load_locations(anns[k]), outside, meta=meta, ann_path=anns[k]) for k in images
        ]


class QNRF(DatasetFormat):
    """UCF-QNRF: ``{Train,Test}/img_XXXX.jpg`` with ``img_XXXX_ann.mat`` (variable ``annPoints``)."""

    name = "qnrf"
    splits = ("train", "test")
    default_sigma = 6.0  # official density_generate_QNRF.py
    paper_sigma = 8.0  # paper Sec. 4.2
    resize_rule = "paper_2048"

    @classmethod
    def split_path(cls, root: PathLikeStr, split: str) -> Path:
        return Path(root) / split.capitalize()

    @classmethod
    def _read(cls, root: Path, split: str, outside: str, unannotated: _Unannotated) -> list[ImageRecord]:
        folder = _require_dir(root / split.capitalize(), f"UCF-QNRF {split} folder")
        images = {p.stem: p for p in _list_images(folder)}
        anns = {p.name[: -len("_ann.mat")]: p for p in folder.glob("*_ann.mat")}
        _check_pairing(images, anns, folder, folder, unannotated, lambda img: img.with_name(f"{img.stem}_ann.mat"))
        out = []
        for k, img in images.items():
            pts = _as_points(_mat_var(_load_mat(anns[k]), "annPoints", anns[k]), anns[k], "annPoints")
            out.append(_finish(img, pts, outside, ann_path=anns[k]))
        return out


class JHU(DatasetFormat):
    """JHU-Crowd++ v2.0: ``{split}/images/NNNN.jpg``, ``{split}/gt/NNNN.txt`` (``x y w h o b``).

    Boxes are ``(x - w/2, y - h/2, x + w/2, y + h/2)``; ``meta["occlusion"]`` (1 visible, 2 partial,
    3 full) and ``meta["blur"]`` are per-head int arrays aligned with the kept points.
    ``{split}/image_labels.txt`` (``img_id,total_count,scene_type,weather,distractor``), when
    present, adds ``total_count``, ``scene_type``, ``weather`` and ``distractor`` to ``meta``.
    """

    name = "jhu"
    splits = ("train", "val", "test")
    default_sigma = 8.0
    resize_rule = "paper_2048"

    @staticmethod
    def read_labels(path: Path) -> dict[str, dict[str, Any]]:
        labels: dict[str, dict[str, Any]] = {}
        if not path.is_file():
            return labels
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(path, f"cannot read image labels: {exc}") from None
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            parts = [f.strip() for f in line.split(",")]
            if len(parts) < 5:
                raise DataError(path, f"line {lineno}: expected 'img_id,total_count,scene_type,weather,distractor'")
            try:
                total, weather, distractor = int(parts[1]), int(parts[3]), int(parts[4])
            except ValueError:
                raise DataError(path, f"line {lineno}: non-integer count/weather/distractor in {','.join(parts)!r}") from None
            labels[Path(parts[0]).stem] = {
                "total_count": total,
                "scene_type": parts[2],
                "weather": weather,
                "distractor": distractor,
            }
        return labels

    @classmethod
    def split_path(cls, root: PathLikeStr, split: str) -> Path:
        return Path(root) / split / "images"

    @classmethod
    def _read(cls, root: Path, split: str, outside: str, unannotated: _Unannotated) -> list[ImageRecord]:
        split_dir = _require_dir(root / split, f"JHU {split} folder")
        img_dir = _require_dir(split_dir / "images", "image folder")
        gt_dir = _require_dir(split_dir / "gt", "gt folder")
        images = {p.stem: p for p in _list_images(img_dir)}
        anns = {p.stem: p for p in gt_dir.glob("*.txt")}
        _check_pairing(images, anns, img_dir, gt_dir, unannotated, lambda img: gt_dir / f"{img.stem}.txt")
        labels = cls.read_labels(split_dir / "image_labels.txt")
        out = []
        for k, img in images.items():
            rows = _parse_number_rows(anns[k], 6, 6)
            pts = rows[:, :2]
            half = rows[:, 2:4] / 2.0
            boxes = np.concatenate([pts - half, pts + half], axis=1)
            flags = rows[:, 4:6]
            if np.any((flags != np.round(flags)) | (np.abs(flags) > 2**31 - 1)):
                row = int(np.argmax(np.any((flags != np.round(flags)) | (np.abs(flags) > 2**31 - 1), axis=1)))
                raise DataError(anns[k], f"row {row + 1}: occlusion and blur (columns 5, 6) must be small integers, "
                                         f"got {flags[row].tolist()}")
            per_head = {"occlusion": flags[:, 0].astype(np.int64), "blur": flags[:, 1].astype(np.int64)}
            out.append(
                _finish(img, pts, outside, boxes=boxes, per_head=per_head, meta=labels.get(k, {}), ann_path=anns[k])
            )
        return out


def _json_points(value: Any, path: Path, key: str, ncols: int) -> np.ndarray:
    """Validate a JSON list of ``ncols``-number lists (no strings, no booleans)."""
    if not isinstance(value, list):
        raise DataError(path, f"{key!r} must be a list of [{', '.join('x y x1 y1 x2 y2'.split()[:ncols])}] lists")
    for i, item in enumerate(value):
        if not isinstance(item, list) or len(item) != ncols:
            raise DataError(path, f"{key}[{i}] must be a list of {ncols} numbers, got {item!r}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item):
            raise DataError(path, f"{key}[{i}] has a non-numeric value: {item!r}")
        if any(isinstance(v, int) and abs(v) > _FLOAT_MAX for v in item):  # JSON integers are unbounded
            raise DataError(path, f"{key}[{i}] has an integer beyond the floating-point range")
    return _as_points(np.asarray(value, dtype=np.float64).reshape(-1, ncols), path, key, ncols)


def _load_json(path: Path) -> Any:
    _require_file(path, "annotation file")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON: {exc}") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits (int() string limit)
        raise DataError(path, f"invalid JSON: {str(exc).split(';')[0]}") from None
    except RecursionError:
        raise DataError(path, "invalid JSON: arrays or objects nested too deeply") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read JSON: {exc}") from None


class NWPU(DatasetFormat):
    """NWPU-Crowd: ``images/NNNN.jpg``, ``jsons/NNNN.json``, list files ``{train,val,test}.txt``.

    ``train.txt`` / ``val.txt`` lines are ``id illum level`` (``meta["illumination"]``,
    ``meta["level"]``); ``test.txt`` lines are bare ids and give ``annotated=False`` records with no
    points (the test ground truth is withheld). JSON keys: ``points`` ``[[x, y]]``, ``boxes``
    ``[[x1, y1, x2, y2]]`` (same length), ``human_num`` (kept in ``meta``).
    """

    name = "nwpu"
    splits = ("train", "val", "test")
    default_sigma = 6.0
    resize_rule = "paper_2048"

    @classmethod
    def split_path(cls, root: PathLikeStr, split: str) -> Path:
        return Path(root) / f"{split}.txt"

    @classmethod
    def _read(cls, root: Path, split: str, outside: str, unannotated: _Unannotated) -> list[ImageRecord]:
        list_path = root / f"{split}.txt"
        img_dir = _require_dir(root / "images", "image folder")
        out = []
        for lineno, fields in _read_list_lines(list_path):
            img_id = Path(fields[0]).stem
            meta: dict[str, Any] = {"img_id": img_id}
            if len(fields) >= 3:
                try:
                    meta["illumination"], meta["level"] = int(fields[1]), int(fields[2])
                except ValueError:
                    raise DataError(list_path, f"line {lineno}: non-integer illumination/level in {' '.join(fields)!r}") from None
            elif split != "test":
                raise DataError(list_path, f"line {lineno}: expected 'id illum level', got {' '.join(fields)!r}")
            img = next((img_dir / f"{img_id}{e}" for e in (".jpg", ".png", ".jpeg") if (img_dir / f"{img_id}{e}").is_file()), None)
            if img is None:
                raise DataError(img_dir / f"{img_id}.jpg", f"image listed in {list_path.name} (line {lineno}) not found")
            if split == "test":
                out.append(_finish(img, np.zeros((0, 2)), outside, meta=meta, annotated=False))
                continue
            ann = root / "jsons" / f"{img_id}.json"
            if not ann.is_file():
                unannotated.add(img, ann)
                continue
            data = _load_json(ann)
            if not isinstance(data, dict) or "points" not in data:
                raise DataError(ann, "expected a JSON object with a 'points' list")
            pts = _json_points(data["points"], ann, "points", 2)
            boxes = None
            if data.get("boxes") is not None:
                boxes = _json_points(data["boxes"], ann, "boxes", 4)
                if len(boxes) != len(pts):
                    raise DataError(ann, f"{len(boxes)} boxes for {len(pts)} points")
            if "human_num" in data:
                meta["human_num"] = data["human_num"]
            out.append(_finish(img, pts, outside, boxes=boxes, meta=meta, ann_path=ann))
        return out


class TRANCOS(DatasetFormat):
    """TRANCOS v3 (vehicles): ``image_sets/{training,validation,trainval,test}.txt`` list image
    file names in ``images/``; ``image-S-NNNNNN.txt`` holds ``x y`` per vehicle and
    ``image-S-NNNNNNmask.mat`` the ROI (variable ``BW``, see :func:`load_roi`) -> ``roi_path``.
    Splits ``train`` / ``val`` are accepted as aliases of ``training`` / ``validation``.
    """

    name = "trancos"
    splits = ("training", "validation", "trainval", "test", "train", "val")
    default_sigma = 4.0
    resize_rule = "none"
    _ALIASES: ClassVar[dict[str, str]] = {"train": "training", "val": "validation"}

    @classmethod
    def split_path(cls, root: PathLikeStr, split: str) -> Path:
        return Path(root) / "image_sets" / f"{cls._ALIASES.get(split, split)}.txt"

    @classmethod
    def _read(cls, root: Path, split: str, outside: str, unannotated: _Unannotated) -> list[ImageRecord]:
        list_path = root / "image_sets" / f"{cls._ALIASES.get(split, split)}.txt"
        img_dir = _require_dir(root / "images", "image folder")
        out = []
        for lineno, fields in _read_list_lines(list_path):
            img = img_dir / fields[0]
            if not img.is_file():
                raise DataError(img, f"image listed in {list_path.name} (line {lineno}) not found")
            ann = img.with_suffix(".txt")
            if not ann.is_file():
                unannotated.add(img, ann)
                continue
            pts = _parse_number_rows(ann, 2)[:, :2]
            roi = img.with_name(f"{img.stem}mask.mat")
            if not roi.is_file():
                raise DataError(roi, f"ROI mask for image {img.name} not found")
            out.append(_finish(img, pts, outside, roi_path=roi, ann_path=ann))
        return out


class VGGCells(DatasetFormat):
    """VGG synthetic cells: ``NNNcell.png`` + ``NNNdots.png``; a pure red (255, 0, 0) pixel at row
    ``r``, column ``c`` of the dots image is a cell at ``(c + 0.5, r + 0.5)``.
    Splits: ``train`` = 001-100, ``test`` = 101-200, ``all``.
    """

    name = "vgg_cells"
    splits = ("train", "test", "all")
    default_sigma = 4.0
    resize_rule = "none"

    @staticmethod
    def dots_to_points(dots_path: Path) -> np.ndarray:
        rgb = read_image(dots_path)
        rows, cols = np.nonzero((rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0))
        return np.stack([cols + 0.5, rows + 0.5], axis=1).astype(np.float64)

    @classmethod
    def _read(cls, root: Path, split: str, outside: str, unannotated: _Unannotated) -> list[ImageRecord]:
        cells = {int(m.group(1)): p for p in root.glob("*cell.png") if (m := re.fullmatch(r"(\d+)cell\.png", p.name))}
        dots = {int(m.group(1)): p for p in root.glob("*dots.png") if (m := re.fullmatch(r"(\d+)dots\.png", p.name))}
        lo, hi = {"train": (1, 100), "test": (101, 200), "all": (1, 10**9)}[split]
        cells = {k: v for k, v in cells.items() if lo <= k <= hi}
        dots = {k: v for k, v in dots.items() if lo <= k <= hi}
        if not cells:
            raise DataError(root, f"no NNNcell.png images for split {split!r}")
        paired = {str(k): v for k, v in cells.items()}
        _check_pairing(paired, {str(k): v for k, v in dots.items()}, root, root, unannotated,
                       lambda img: img.with_name(img.name[: -len("cell.png")] + "dots.png"))
        cells = {int(k): v for k, v in paired.items()}
        out = []
        for k, img in cells.items():
            w, h = image_size(img)
            dw, dh = image_size(dots[k])
            if (dw, dh) != (w, h):
                raise DataError(dots[k], f"dots image is {dw}x{dh}, cell image is {w}x{h}")
            out.append(_finish(img, cls.dots_to_points(dots[k]), outside, ann_path=dots[k], size=(w, h)))
        return out


# --------------------------------------------------------------------------------------------
# generic format (docs/architecture.md) and its writers
# --------------------------------------------------------------------------------------------
_CSV_HEADERS = {("x", "y"): 2, ("x", "y", "x1", "y1", "x2", "y2"): 6}


def _read_csv_annotation(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    _require_file(path, "annotation file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = [(i, r) for i, r in enumerate(csv.reader(fh), start=1) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read CSV: {exc}") from None
    if not rows:
        raise DataError(path, "empty CSV: expected a header row 'x,y' or 'x,y,x1,y1,x2,y2'")
    header = tuple(c.strip().lower() for c in rows[0][1])
    if header not in _CSV_HEADERS:
        raise DataError(path, f"CSV header must be 'x,y' or 'x,y,x1,y1,x2,y2', got {','.join(rows[0][1])!r}")
    ncols = len(header)
    values = []
    for lineno, r in rows[1:]:
        if len(r) != ncols:
            raise DataError(path, f"line {lineno}: expected {ncols} values, got {len(r)}")
        values.append(_numeric_row(path, lineno, r, ",".join(r)))
    arr = np.asarray(values, dtype=np.float64).reshape(-1, ncols)
    return arr[:, :2].copy(), (arr[:, 2:].copy() if ncols == 6 else None)


def _resolve(root: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else root / p


class Generic(DatasetFormat):
    """Users' own data (``docs/architecture.md``): ``ROOT/<split>.txt`` lines
    ``<image> [<annotation>]``; JSON ``{"points", "boxes"?, "meta"?, "roi"?}`` or CSV annotations.
    Any split name with a list file is accepted (``splits`` lists the usual ones).
    """

    name = "generic"
    splits = ("train", "val", "test")
    default_sigma = 4.0
    resize_rule = "none"

    @classmethod
    def check_split(cls, split: str) -> str:
        if not isinstance(split, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", split):
            raise ConfigError(f"invalid split name {split!r} for format 'generic' (a list file name without .txt)")
        return split

    @staticmethod
    def find_annotation(root: Path, image: Path) -> Path:
        candidates = [image.with_name(image.stem + ext) for ext in (".json", ".csv")]
        candidates += [root / "annotations" / (image.stem + ext) for ext in (".json", ".csv")]
        for c in candidates:
            if c.is_file():
                return c
        raise DataError(image, f"no annotation found (looked for {', '.join(str(c) for c in candidates)})")

    @staticmethod
    def read_annotation(
        root: Path, path: Path
    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any], Path | None]:
        """``(points, boxes, meta, roi_path)`` of one JSON or CSV annotation file."""
        if path.suffix.lower() == ".csv":
            pts, boxes = _read_csv_annotation(path)
            return pts, boxes, {}, None
        data = _load_json(path)
        if not isinstance(data, dict):
            raise DataError(path, f"expected a JSON object with a 'points' list, got {type(data).__name__}")
        if "points" not in data:
            raise DataError(path, "missing key 'points'")
        pts = _json_points(data["points"], path, "points", 2)
        boxes = None
        if data.get("boxes") is not None:
            boxes = _json_points(data["boxes"], path, "boxes", 4)
            if len(boxes) != len(pts):
                raise DataError(path, f"{len(boxes)} boxes for {len(pts)} points")
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise DataError(path, "'meta' must be a JSON object")
        roi = data.get("roi")
        if roi is not None:
            if not isinstance(roi, str) or not roi:
                raise DataError(path, "'roi' must be a path string relative to the dataset root")
            roi_path = _resolve(root, roi)
            if not roi_path.is_file():
                raise DataError(roi_path, f"ROI mask named in {path.name} not found")
            return pts, boxes, dict(meta), roi_path
        return pts, boxes, dict(meta), None

    @classmethod
    def split_path(cls, root: PathLikeStr, split: str) -> Path:
        return Path(root) / f"{split}.txt"

    @classmethod
    def _read(cls, root: Path, split: str, outside: str, unannotated: _Unannotated) -> list[ImageRecord]:
        # Only what the list file names is read, each with its annotation: a missing one is an error.
        list_path = root / f"{split}.txt"
        out = []
        for lineno, fields in _read_list_lines(list_path):
            if len(fields) > 2:
                raise DataError(list_path, f"line {lineno}: expected '<image> [<annotation>]', got {len(fields)} fields")
            img = _resolve(root, fields[0])
            if not img.is_file():
                raise DataError(img, f"image listed in {list_path.name} (line {lineno}) not found")
            if len(fields) == 2:
                ann = _resolve(root, fields[1])
                if not ann.is_file():
                    raise DataError(ann, f"annotation listed in {list_path.name} (line {lineno}) not found")
            else:
                ann = cls.find_annotation(root, img)
            pts, boxes, meta, roi = cls.read_annotation(root, ann)
            out.append(_finish(img, pts, outside, boxes=boxes, meta=meta, roi_path=roi, ann_path=ann))
        return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PathLike):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_generic_annotation(
    path: PathLikeStr,
    points: np.ndarray,
    boxes: np.ndarray | None = None,
    meta: Mapping[str, Any] | None = None,
    roi: str | PathLike[str] | None = None,
) -> Path:
    """Write one annotation of the generic format; JSON or CSV chosen by the suffix of ``path``.

    ``points`` is ``(N, 2)`` ``(x, y)`` in image pixels, ``boxes`` ``(N, 4)`` ``(x1, y1, x2, y2)``.
    ``roi`` is the mask path *relative to the dataset root* (stored verbatim). CSV cannot hold
    ``meta`` or ``roi`` (:class:`ConfigError`). Floats are written with full precision, so
    reading back gives identical values. Returns the path written.
    """
    p = Path(path)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    bx = None if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if bx is not None and len(bx) != len(pts):
        raise ConfigError(f"{p}: {len(bx)} boxes for {len(pts)} points")
    if not np.all(np.isfinite(pts)) or (bx is not None and not np.all(np.isfinite(bx))):
        raise ConfigError(f"{p}: refusing to write non-finite coordinates")
    p.parent.mkdir(parents=True, exist_ok=True)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        if meta or roi is not None:
            raise ConfigError(f"{p}: a CSV annotation cannot hold 'meta' or 'roi'; use .json")
        table = pts if bx is None else np.concatenate([pts, bx], axis=1)
        header = "x,y" if bx is None else "x,y,x1,y1,x2,y2"
        lines = [header] + [",".join(repr(float(v)) for v in row) for row in table]
        p.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return p
    if suffix != ".json":
        raise ConfigError(f"{p}: annotation file must end in .json or .csv")
    doc: dict[str, Any] = {"points": pts.tolist()}
    if bx is not None:
        doc["boxes"] = bx.tolist()
    if meta:
        doc["meta"] = dict(meta)
    if roi is not None:
        doc["roi"] = Path(roi).as_posix()
    p.write_text(json.dumps(doc, default=_json_default) + "\n", encoding="utf-8")
    return p


def write_generic_list(
    root: PathLikeStr,
    split: str,
    entries: Iterable[PathLikeStr | tuple[PathLikeStr, PathLikeStr]],
) -> Path:
    """Write ``ROOT/<split>.txt``. Each entry is an image path or an ``(image, annotation)`` pair;
    relative entries are taken relative to ``root``. Paths inside ``root`` are written relative to
    it (POSIX separators), others absolute. Returns the list file's path.
    Paths must not contain whitespace (the list format separates fields by whitespace).
    """
    root_p = Path(root)
    Generic.check_split(split)
    root_p.mkdir(parents=True, exist_ok=True)
    root_abs = root_p.resolve()

    def rel(x: PathLikeStr) -> str:
        q = Path(x)
        q_abs = q if q.is_absolute() else (root_p / q)
        try:
            s = q_abs.resolve().relative_to(root_abs).as_posix()
        except ValueError:
            s = q_abs.resolve().as_posix()
        if any(c.isspace() for c in s):
            raise ConfigError(f"path {s!r} contains whitespace, which the generic list format cannot hold")
        return s

    lines = []
    for e in entries:
        if isinstance(e, tuple):
            lines.append(f"{rel(e[0])} {rel(e[1])}")
        else:
            lines.append(rel(e))
    out = root_p / f"{split}.txt"
    out.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
FORMATS: dict[str, type[DatasetFormat]] = {
    f.name: f for f in (ShanghaiTech, QNRF, JHU, NWPU, TRANCOS, VGGCells, Generic)
}


def get_format(name: str) -> type[DatasetFormat]:
    """The format class registered as ``name``; :class:`ConfigError` listing valid names otherwise."""
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown dataset format {name!r}; valid formats: {', '.join(FORMATS)}") from None


def read_dataset(
    name: str,
    root: PathLikeStr,
    split: str,
    *,
    outside: str = "drop",
    skip_unannotated: bool = False,
    skipped: list[Path] | None = None,
) -> list[ImageRecord]:
    """Read ``split`` of the dataset at ``root`` in format ``name`` (see :data:`FORMATS`);
    ``skip_unannotated`` / ``skipped``: images without an annotation file (:meth:`DatasetFormat.read`)."""
    return get_format(name).read(root, split, outside=outside, skip_unannotated=skip_unannotated, skipped=skipped)


def skipped_notice(skipped: list[Path], where: PathLikeStr) -> str:
    """The one-line notice for images left out by ``skip_unannotated``: how many, the first few."""
    n, show = len(skipped), _Unannotated.SHOW
    names = ", ".join(p.name for p in skipped[:show]) + (f" and {n - show} more" if n > show else "")
    return f"{where}: skipped {n} image{'s' if n != 1 else ''} without an annotation ({names})"
