"""Readers and writers for the NWPU-Crowd evaluation file formats.

All three formats hold one image per line, tokens separated by whitespace, blank lines ignored:

* **Localization ground truth** (``val_gt_loc.txt``; also the FIDTM ShanghaiTech ``A_gt.txt``):
  ``id num x y sigma_s sigma_l level  x y sigma_s sigma_l level ...`` (``2 + 5*num`` tokens).
* **Localization prediction**: ``id num x y x y ...`` (``2 + 2*num`` tokens). The official scorer
  casts every token with ``int()``, so :func:`write_loc_pred` writes integer coordinates
  (``floor`` by default); :func:`read_loc_pred` accepts integers and floats.
* **Counting submission**: ``id count`` (float counts accepted).

Coordinates are ``(x, y)`` pixels of the original image (see docs/architecture.md); image ids are
integers (as in the official files). Malformed input raises :class:`DataError` naming the file and
the line number.
"""
from __future__ import annotations

import math
import sys
from os import PathLike
from pathlib import Path
from typing import Iterable, Literal, Mapping, NamedTuple

import numpy as np

from autoscale.errors import DataError

PathLikeStr = str | PathLike[str]
Rounding = Literal["floor", "round", "none"]

__all__ = [
    "LocGT",
    "read_loc_gt",
    "write_loc_gt",
    "read_loc_pred",
    "write_loc_pred",
    "read_counts",
    "write_counts",
    "read_nwpu_meta",
    "score_loc",
]


class LocGT(NamedTuple):
    """Ground truth of one image: points ``(N, 2)`` float64 ``(x, y)``, per-point ``sigma_s``
    and ``sigma_l`` thresholds ``(N,)`` float64 (pixels) and head-size ``level`` ``(N,)`` int64."""

    points: np.ndarray
    sigma_s: np.ndarray
    sigma_l: np.ndarray
    level: np.ndarray


def _read(path: PathLikeStr) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc}") from None


def _lines(path: PathLikeStr, data: bytes | None = None) -> Iterable[tuple[int, list[str]]]:
    """Yield ``(line_number, tokens)`` for the non-blank lines of ``path`` (1-based numbers);
    ``data``: the file's bytes when already read."""
    try:
        text = (_read(path) if data is None else data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"cannot read: {exc}") from None
    for no, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if tokens:
            yield no, tokens


_POW10 = 10 ** np.arange(16, dtype=np.int64)


def _integer_records(data: bytes, per_point: int) -> list[tuple[int, np.ndarray]] | None:
    """Fast path of the point-file readers: ``[(id, values (num * per_point,) int64)]`` in file order
    when every line is a well-formed ``id num v v ...`` record of unsigned decimal integers (what
    the official files and :func:`write_loc_pred` hold), ids unique; ``None`` for anything else
    (signs, decimals, other characters, a malformed line), which the general per-token reader
    then parses or reports with its line number. Vectorised over the bytes: 3-4x faster on NWPU val."""
    if data.translate(None, b"0123456789 \t\r\n"):
        return None  # a byte other than digits and whitespace
    b = np.frombuffer(data, dtype=np.uint8)
    cr = np.flatnonzero(b == 13)
    if cr.size and (cr[-1] + 1 >= b.size or np.any(b[cr + 1] != 10)):
        return None  # only CRLF line ends keep str.splitlines()'s line numbering equal to '\n' counting
    digit = (b - 48) < 10  # uint8 arithmetic wraps below '0'
    edge = np.diff(digit.view(np.int8), prepend=0, append=0)
    starts, stops = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
    if starts.size == 0:
        return None
    lengths = stops - starts
    if lengths.max() > 15:
        return None
    d = np.flatnonzero(digit)
    weights = _POW10[np.repeat(stops - 1, lengths) - d]
    values = np.add.reduceat((b[d] - 48).astype(np.int64) * weights, np.cumsum(lengths) - lengths)
    line = np.searchsorted(np.flatnonzero(b == 10), starts)
    first = np.flatnonzero(np.diff(line, prepend=-1))
    count = np.diff(first, append=values.size)
    if np.any(count < 2):
        return None
    ids, nums = values[first], values[first + 1]
    if np.any(count != 2 + per_point * nums) or np.unique(ids).size != ids.size:
        return None
    return [(int(i), values[f + 2:f + c]) for i, f, c in zip(ids.tolist(), first.tolist(), count.tolist())]


def _int_token(path: PathLikeStr, no: int, token: str, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        pass
    try:
        value = float(token)
    except ValueError:
        raise DataError(path, f"line {no}: {what} {token!r} is not a number") from None
    if not value.is_integer():
        raise DataError(path, f"line {no}: {what} {token!r} is not an integer")
    return int(value)


def _float_tokens(path: PathLikeStr, no: int, tokens: list[str]) -> np.ndarray:
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        for t in tokens:
            try:
                float(t)
            except ValueError:
                raise DataError(path, f"line {no}: token {t!r} is not a number") from None
        raise  # pragma: no cover - unreachable
    if not np.all(np.isfinite(values)):
        bad = tokens[int(np.flatnonzero(~np.isfinite(values))[0])]
        raise DataError(path, f"line {no}: token {bad!r} is not a finite number")
    return values


def _header(path: PathLikeStr, no: int, tokens: list[str], seen: dict[int, int], per_point: int,
            fmt: str) -> tuple[int, int]:
    """Parse and check ``id num`` plus the token count; record the id in ``seen``."""
    if len(tokens) < 2:
        raise DataError(path, f"line {no}: expected '{fmt}', got {len(tokens)} token(s)")
    img_id = _int_token(path, no, tokens[0], "image id")
    num = _int_token(path, no, tokens[1], "point count")
    if num < 0:
        raise DataError(path, f"line {no}: negative point count {num}")
    expected = 2 + per_point * num
    if len(tokens) != expected:
        raise DataError(path, f"line {no}: image {img_id} declares {num} points, so {expected} "
                              f"tokens are expected ('{fmt}'), found {len(tokens)}")
    if img_id in seen:
        raise DataError(path, f"line {no}: duplicate image id {img_id} (first on line {seen[img_id]})")
    seen[img_id] = no
    return img_id, num


def read_loc_gt(path: PathLikeStr) -> dict[int, LocGT]:
    """Read a localization GT file ``id num x y sigma_s sigma_l level ...``.

    Returns ``{id: LocGT(points (N,2), sigma_s (N,), sigma_l (N,), level (N,))}`` in file order.
    Thresholds must be >= 0 and levels integers. A file without any image line (empty, or blank
    lines only) is a :class:`DataError`: a GT file lists every image, even one without people
    (``id 0``), so there is nothing to score against.
    """
    out: dict[int, LocGT] = {}
    data = _read(path)
    fast = _integer_records(data, 5)
    # a level beyond int32 is left to the general path, which reports it
    if fast is not None and all(v[4::5].max(initial=0) <= 2**31 - 1 for _, v in fast):
        for img_id, v in fast:
            vals = v.reshape(-1, 5)
            f = vals[:, :4].astype(np.float64)
            out[img_id] = LocGT(f[:, 0:2].copy(), f[:, 2].copy(), f[:, 3].copy(), vals[:, 4].copy())
        return out
    seen: dict[int, int] = {}
    lines = list(_lines(path, data))
    if not lines:
        raise DataError(path, "empty localization ground-truth file: no image lines "
                              "('id num x y sigma_s sigma_l level ...'); nothing to score against")
    for no, tokens in lines:
        img_id, num = _header(path, no, tokens, seen, 5, "id num x y sigma_s sigma_l level ...")
        vals = _float_tokens(path, no, tokens[2:]).reshape(num, 5)
        if np.any(vals[:, 2:4] < 0):
            raise DataError(path, f"line {no}: negative sigma for image {img_id}")
        if np.any(vals[:, 4] != np.round(vals[:, 4])):
            raise DataError(path, f"line {no}: non-integer level for image {img_id}")
        if np.any(np.abs(vals[:, 4]) > 2**31 - 1):  # would not survive the cast to int64
            raise DataError(path, f"line {no}: level out of range for image {img_id}")
        out[img_id] = LocGT(vals[:, 0:2].copy(), vals[:, 2].copy(), vals[:, 3].copy(),
                            vals[:, 4].astype(np.int64))
    return out


def write_loc_gt(path: PathLikeStr, gt: Mapping[int, LocGT]) -> None:
    """Write ``gt`` in the GT format. Values that are integral are written without a decimal part
    (the official files are all integers); others keep full precision."""
    lines = []
    for img_id, g in gt.items():
        pts = np.asarray(g.points, dtype=np.float64).reshape(-1, 2)
        rows = np.column_stack([pts, np.asarray(g.sigma_s, float), np.asarray(g.sigma_l, float),
                                np.asarray(g.level, float)]) if len(pts) else np.zeros((0, 5))
        lines.append(" ".join([str(int(img_id)), str(len(pts))] + [_fmt(v) for v in rows.ravel()]))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def read_loc_pred(path: PathLikeStr) -> dict[int, np.ndarray]:
    """Read a localization prediction file ``id num x y x y ...`` into ``{id: points (N, 2)}``
    (float64 ``(x, y)``; integer and float tokens are both accepted)."""
    data = _read(path)
    fast = _integer_records(data, 2)
    if fast is not None:
        return {img_id: v.astype(np.float64).reshape(-1, 2) for img_id, v in fast}
    out: dict[int, np.ndarray] = {}
    seen: dict[int, int] = {}
    for no, tokens in _lines(path, data):
        img_id, num = _header(path, no, tokens, seen, 2, "id num x y x y ...")
        out[img_id] = _float_tokens(path, no, tokens[2:]).reshape(num, 2)
    return out


def write_loc_pred(path: PathLikeStr, preds: Mapping[int, np.ndarray],
                   rounding: Rounding = "floor") -> None:
    """Write predictions ``{id: points (N, 2) (x, y)}`` as ``id num x y ...`` lines.

    ``rounding``: ``"floor"`` (default; the pixel containing the point, which the official
    int()-casting reader requires), ``"round"`` (nearest integer) or ``"none"`` (floats kept; not
    accepted by the official scorer).
    """
    if rounding not in ("floor", "round", "none"):
        raise ValueError(f"rounding must be 'floor', 'round' or 'none', got {rounding!r}")
    lines = []
    for img_id, pts in preds.items():
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        if not np.all(np.isfinite(pts)):
            raise DataError(path, f"image {img_id}: non-finite predicted coordinate")
        if rounding == "floor":
            toks = [str(int(v)) for v in np.floor(pts).ravel()]
        elif rounding == "round":
            toks = [str(int(v)) for v in np.floor(pts + 0.5).ravel()]
        else:
            toks = [_fmt(v) for v in pts.ravel()]
        lines.append(" ".join([str(int(img_id)), str(len(pts))] + toks))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_counts(path: PathLikeStr) -> dict[int, float]:
    """Read an NWPU counting submission (``id count`` per line) into ``{id: count}``."""
    out: dict[int, float] = {}
    seen: dict[int, int] = {}
    for no, tokens in _lines(path):
        if len(tokens) != 2:
            raise DataError(path, f"line {no}: expected 'id count', got {len(tokens)} tokens")
        img_id = _int_token(path, no, tokens[0], "image id")
        if img_id in seen:
            raise DataError(path, f"line {no}: duplicate image id {img_id} (first on line {seen[img_id]})")
        seen[img_id] = no
        count = float(_float_tokens(path, no, tokens[1:2])[0])
        if count < 0:
            raise DataError(path, f"line {no}: negative count {tokens[1]!r}")
        out[img_id] = count
    return out


def write_counts(path: PathLikeStr, counts: Mapping[int, float], decimals: int = 4) -> None:
    """Write ``{id: count}`` as ``id count`` lines (counts with ``decimals`` decimals)."""
    lines = []
    for img_id, c in counts.items():
        c = float(c)
        if not math.isfinite(c):
            raise DataError(path, f"image {img_id}: non-finite count {c}")
        lines.append(f"{int(img_id)} {c:.{decimals}f}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_nwpu_meta(path: PathLikeStr) -> dict[int, tuple[int, int]]:
    """Read NWPU scene metadata ``{id: (illumination, scene_level)}``.

    Accepts the dataset list files ``train.txt`` / ``val.txt`` (``id illum level``) and the
    leaderboard target file (``id illum level count``; the count column is ignored here).
    Illumination is 0-3, scene level 0-4 (0 = negative/empty images).
    """
    out: dict[int, tuple[int, int]] = {}
    seen: dict[int, int] = {}
    for no, tokens in _lines(path):
        if len(tokens) not in (3, 4):
            raise DataError(path, f"line {no}: expected 'id illum level [count]', got {len(tokens)} tokens")
        img_id = _int_token(path, no, tokens[0], "image id")
        illum = _int_token(path, no, tokens[1], "illumination")
        level = _int_token(path, no, tokens[2], "scene level")
        if img_id in seen:
            raise DataError(path, f"line {no}: duplicate image id {img_id} (first on line {seen[img_id]})")
        if not 0 <= illum <= 3 or not 0 <= level <= 4:
            raise DataError(path, f"line {no}: illumination {illum} / level {level} out of range (0-3 / 0-4)")
        seen[img_id] = no
        out[img_id] = (illum, level)
    return out


def _match_images(items: list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]]) -> list[list]:
    """``match_points_multi`` over ``(pred, gt points, thresholds)`` items (a worker's share)."""
    from autoscale.metrics.localization import match_points_multi

    return [match_points_multi(p, g, ths) for p, g, ths in items]


def score_loc(gt: Mapping[int, LocGT], pred: Mapping[int, np.ndarray],
              sigmas: Iterable[str | float] = ("small", "large"),
              pred_path: PathLikeStr | None = None, workers: int = 1) -> dict[str, object]:
    """Score parsed localization files the way the official NWPU scorer does.

    ``sigmas``: ``"small"`` (each GT point's ``sigma_s``), ``"large"`` (``sigma_l``) or a number
    (that fixed threshold in pixels for every point). Returns ``{"counting": counting metrics
    from the per-image point counts, "loc": {str(sigma): localization metrics + per-level
    recall}}``. GT images absent from ``pred`` count as zero predictions; a prediction id absent
    from the GT raises :class:`DataError` (naming ``pred_path``).

    ``workers`` > 1 matches the second half of the images in one forked process while this one
    matches the first (Linux only, where ``fork`` is safe to use; elsewhere one process). Meant for
    a process that has started no threads (the ``eval-points`` command: no torch); the result is
    identical.
    """
    from autoscale.metrics.counting import counting_metrics
    from autoscale.metrics.localization import localization_metrics, per_level_recall

    extra = [i for i in pred if i not in gt]
    if extra:
        more = f" (and {len(extra) - 5} more)" if len(extra) > 5 else ""
        raise DataError(pred_path, f"prediction image id(s) {extra[:5]}{more} not in the ground truth")
    sigmas = list(sigmas)
    keys = [str(s) if isinstance(s, str) else repr(float(s)) for s in sigmas]
    for s in sigmas:
        if isinstance(s, str) and s not in ("small", "large"):
            raise ValueError(f"sigma must be 'small', 'large' or a number, got {s!r}")
    empty = np.zeros((0, 2), dtype=np.float64)
    items = []
    for img_id, g in gt.items():
        ths = [g.sigma_s if s == "small" else g.sigma_l if s == "large" else float(s) for s in sigmas]
        items.append((pred.get(img_id, empty), g.points, ths))
    if workers > 1 and sys.platform == "linux" and len(items) > 1:
        import concurrent.futures
        import multiprocessing

        work = np.cumsum([len(p) + len(g) for p, g, _ in items])
        half = int(np.clip(np.searchsorted(work, work[-1] / 2), 1, len(items) - 1))  # equal points
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as ex:
            second = ex.submit(_match_images, items[half:])
            matched = _match_images(items[:half]) + second.result()
    else:
        matched = _match_images(items)
    results = [[m[k] for m in matched] for k in range(len(keys))]
    gt_counts = [len(g.points) for g in gt.values()]
    pred_counts = [len(p) for p, _, _ in items]
    levels = [g.level for g in gt.values()]
    loc = {}
    for key, res in zip(keys, results):
        lv = per_level_recall(res, levels)
        loc[key] = localization_metrics(res) | {"per_level_recall": lv["recall"].tolist(),
                                                "mean_level_recall": lv["mean"]}
    return {"counting": counting_metrics(pred_counts, gt_counts), "loc": loc}
