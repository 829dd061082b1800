"""Fuzz targets: every input parser of autoscale, fed random and mutated files by hypothesis.

Shared by ``tests/test_fuzz.py`` (a few dozen examples per target, deterministic) and
``benchmarks/fuzz.py`` (thousands per target, results in ``benchmarks/results/fuzz.json``).

Each :class:`Target` builds a *valid* input of its kind once (:meth:`Target.setup`: tiny images,
annotation files, configs, checkpoints written here, nothing downloaded), and its hypothesis
strategy draws a tagged tuple describing one input: random bytes, the valid file with bytes
flipped / inserted / deleted / overwritten / truncated, the text with tokens and lines replaced by
awkward ones (``nan``, ``1e400``, 5000 digits, NUL, BOM, ...), or the parsed structure with values
replaced by wrong types, NaN / inf, negative or huge numbers, keys removed or added, shapes
changed. :meth:`Target.run` writes that input where the reader expects it and calls the public
entry point (the one behind the CLI). The contract checked: the call either raises one of the
project's own errors (:class:`autoscale.errors.AutoScaleError`: ``DataError``, ``ConfigError``,
``CheckpointError``) or returns a well-formed result (finite coordinates of the right shape, a
config that survives a round trip, a model whose weights are the file's...). Any other exception
escapes :meth:`Target.run` and is a failure; so is code run by unpickling (a sentinel file) and
an example slower than the deadline.

The drawn values are plain tuples of bytes / str / numbers / dicts, so a failing input found here
becomes an ``@example(...)`` regression in ``tests/test_fuzz.py``.
"""
from __future__ import annotations

import io
import json
import math
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

__all__ = ["Target", "TARGETS", "target_names", "outcome"]

# --------------------------------------------------------------------------------------------
# the contract
# --------------------------------------------------------------------------------------------


def outcome(fn: Callable[[], Any]) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, error)`` for one of our errors; anything else propagates."""
    from autoscale.errors import AutoScaleError

    try:
        return True, fn()
    except AutoScaleError as exc:
        msg = str(exc)
        assert msg.strip(), f"{type(exc).__name__} with an empty message"
        return False, exc


def check_points(a: Any, ncols: int = 2, what: str = "points") -> None:
    assert isinstance(a, np.ndarray), f"{what}: {type(a).__name__}, not an array"
    assert a.dtype == np.float64 and a.ndim == 2 and a.shape[1] == ncols, f"{what}: {a.dtype} {a.shape}"
    assert np.all(np.isfinite(a)), f"{what}: non-finite values returned"


def check_records(records: Any, *, inside: bool = True) -> None:
    from autoscale.data.record import ImageRecord

    assert isinstance(records, list)
    for r in records:
        assert isinstance(r, ImageRecord)
        assert isinstance(r.width, int) and isinstance(r.height, int) and r.width > 0 and r.height > 0
        check_points(r.points)
        if inside and len(r.points):  # the default policy ('drop') keeps points inside the image only
            assert np.all((r.points >= 0) & (r.points < [r.width, r.height])), "point outside the image kept"
        if r.boxes is not None:
            check_points(r.boxes, 4, "boxes")
            assert len(r.boxes) == len(r.points)
        assert isinstance(r.dropped_points, int) and r.dropped_points >= 0
        assert isinstance(r.meta, dict)
        for key in ("occlusion", "blur"):  # JHU per-head flags: small integers, one per kept point
            if key in r.meta:
                assert len(r.meta[key]) == len(r.points)
                assert np.all(np.abs(r.meta[key]) < 2**31), f"{key} flags out of range: {r.meta[key]}"


# --------------------------------------------------------------------------------------------
# strategies: bytes, text, trees, arrays
# --------------------------------------------------------------------------------------------
#: Byte strings that make length / size / count fields overflow or vanish.
SPECIAL_BYTES = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
                 b"\x00\x00\x00\x80", b"\xff\xff\xff\x7f", b"\x01\x00\x00\x00", b"\x00\x00\x01\x00"]

#: Awkward tokens for text formats (numbers out of range, non-ASCII digits, NUL, BOM, ...).
WEIRD_TOKENS = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e-400", "-1", "-0", "0", "1",
                "2.5", "1e308", "-1e308", "2147483648", "4294967296", "18446744073709551616", "9" * 400,
                "9" * 4400, "0x10", "1_0", "\u0661\u0662", "\uff11", "", "x", "1,2", ",", "1.5.5", "\x00", "\u00e9",
                "\ufeff", "None", "null", "true", "[", "]", "{", "}", ":", "#", "\"", "'", "&a", "*a", "!!python/object",
                "- ", "? ", "+1", "  ", "\t", "\r", "\u2028", "\x85", "\ud800"]


@st.composite
def mutated_bytes(draw: st.DrawFn, base: bytes, max_ops: int = 4) -> bytes:
    """``base`` with 1..max_ops byte edits (bias: the first 128 bytes, where headers live)."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "overwrite", "special", "duplicate"]))
        n = len(data)
        pos = draw(st.one_of(st.integers(0, max(0, min(n, 128) - 1)), st.integers(0, max(0, n - 1))))
        if op == "flip" and n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and n:
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        elif op == "overwrite" and n:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos:pos + len(chunk)] = chunk
        elif op == "special" and n:
            chunk = draw(st.sampled_from(SPECIAL_BYTES))
            data[pos:pos + len(chunk)] = chunk
        elif op == "duplicate" and n:
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 32))]
    return bytes(data)


@st.composite
def mutated_text(draw: st.DrawFn, base: str, max_ops: int = 4, sep: str | None = None) -> str:
    """``base`` with tokens (split on whitespace, or ``sep``) and lines replaced, removed, added."""
    lines = [(ln.split(sep) if sep else ln.split()) for ln in base.splitlines()]
    joiner = sep or " "
    token = st.one_of(st.sampled_from(WEIRD_TOKENS), st.text(max_size=6))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["replace", "replace", "delete", "insert", "dup_line", "del_line", "new_line",
                                   "swap"]))
        if not lines:
            lines.append([])
        i = draw(st.integers(0, len(lines) - 1))
        row = lines[i]
        if op == "replace" and row:
            row[draw(st.integers(0, len(row) - 1))] = draw(token)
        elif op == "delete" and row:
            del row[draw(st.integers(0, len(row) - 1))]
        elif op == "insert":
            row.insert(draw(st.integers(0, len(row))), draw(token))
        elif op == "dup_line":
            lines.insert(i, list(row))
        elif op == "del_line":
            del lines[i]
        elif op == "new_line":
            lines.insert(i, draw(st.lists(token, max_size=4)))
        elif op == "swap" and len(lines) > 1:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(joiner.join(r) for r in lines) + draw(st.sampled_from(["\n", "", "\r\n", "\n\n"]))


def text_inputs(base: str, sep: str | None = None) -> st.SearchStrategy[tuple[str, Any]]:
    """A text file: random text, mutated tokens / lines, or mutated bytes of its UTF-8 encoding."""
    return st.one_of(
        st.tuples(st.just("text"), st.text(max_size=200)),
        st.tuples(st.just("text"), mutated_text(base, sep=sep)),
        st.tuples(st.just("bytes"), st.binary(max_size=200)),
        st.tuples(st.just("bytes"), mutated_bytes(base.encode("utf-8"))),
    )


def write_input(path: Path, item: tuple[str, Any]) -> None:
    """Write a ``("text", str)`` or ``("bytes", bytes)`` input to ``path``."""
    kind, value = item
    if kind == "text":
        path.write_bytes(value.encode("utf-8", "surrogatepass"))
    elif kind == "bytes":
        path.write_bytes(value)
    else:  # pragma: no cover - a target's own kinds are written by the target
        raise AssertionError(kind)


_NAN, _INF = float("nan"), float("inf")
#: Wrong types and awkward numbers for structured (JSON / YAML / dict) inputs.
WEIRD_VALUES: list[Any] = [None, True, False, 0, -1, 1, 7, 2**31, 2**63, 2**64, 10**30, -(10**30), 10**400, 0.5,
                           -0.5, 1e-300, 5e-324, 1e308, -1e308, _NAN, _INF, -_INF, "", "x", "nan", "1e400", "1e-7",
                           "regression", "localization", "vgg16", "\x00", [], {}, [1], [1, 2], [[1, 2, 3]],
                           [[1.0, 2.0]] * 3, [[_NAN, 1.0]], [[10**400, 1]], [["1", "2"]], [[True, False]], [[]], [[[1]]],
                           {"a": 1}, {"points": []}, {"": None}]


def weird_values(extra: list[Any] | None = None) -> st.SearchStrategy[Any]:
    leaf = st.sampled_from(WEIRD_VALUES + list(extra or []))
    return st.one_of(leaf, st.floats(), st.integers(), st.text(max_size=5),
                     st.lists(st.lists(st.floats(), max_size=5), max_size=3))


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys / indices) into a nested dict / list, the root included."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list) and len(obj) <= 64:
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj


@st.composite
def mutated_tree(draw: st.DrawFn, base: Any, values: st.SearchStrategy[Any] | None = None,
                 keys: list[str] | None = None, max_ops: int = 3) -> Any:
    """``base`` (nested dicts / lists) with 1..max_ops edits at random paths: a value replaced by
    a wrong type / awkward number, a key or element removed, an extra key or element added, a
    container wrapped in a list or replaced by its first element."""
    values = (values if values is not None else weird_values()).map(_copy)  # never share (and edit) a drawn value
    tree = _copy(base)
    extra_keys = st.one_of(st.sampled_from(list(keys or []) + ["extra", "", "0"]), st.text(max_size=4))
    for _ in range(draw(st.integers(1, max_ops))):
        paths = _paths(tree)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add", "wrap", "unwrap"]))
        parent, key = None, None
        node = tree
        for k in path:
            parent, key, node = node, k, node[k]
        if op == "replace":
            new = draw(values)
        elif op == "delete" and parent is not None:
            del parent[key]
            continue
        elif op == "add" and isinstance(node, dict):
            node[draw(extra_keys)] = draw(values)
            continue
        elif op == "add" and isinstance(node, list):
            node.insert(draw(st.integers(0, len(node))), draw(values))
            continue
        elif op == "wrap":
            new = [node]
        elif op == "unwrap" and isinstance(node, list) and node:
            new = node[0]
        elif op == "unwrap" and isinstance(node, dict) and node:
            new = next(iter(node.values()))
        else:
            new = draw(values)
        if parent is None:
            tree = new
        else:
            parent[key] = new
    return tree


_DTYPES = ["float64", "float32", "int8", "int16", "int64", "uint8", "uint64", "bool", "complex128"]


@st.composite
def weird_arrays(draw: st.DrawFn, ncols: int = 2) -> Any:
    """Numeric arrays of awkward shapes / dtypes / values, strings, cells, structs, sparse."""
    kind = draw(st.sampled_from(["numeric", "numeric", "numeric", "string", "cell", "struct", "sparse", "scalar"]))
    n = draw(st.integers(0, 5))
    if kind == "string":
        return draw(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=6))
    if kind == "scalar":
        return draw(st.sampled_from([0, -1, 1e308, _NAN, _INF, 2**63 - 1]))
    if kind == "cell":
        cell = np.empty((1, draw(st.integers(0, 2))), dtype=object)
        for j in range(cell.shape[1]):
            cell[0, j] = np.zeros((n, ncols))
        return cell
    if kind == "struct":
        s = np.zeros((1, 1), dtype=[("x", "O"), ("location", "O")])
        s[0, 0]["x"] = np.zeros((n, ncols))
        s[0, 0]["location"] = np.ones((n, ncols))
        return s
    if kind == "sparse":
        import scipy.sparse

        return scipy.sparse.csr_matrix(np.eye(max(n, 1), ncols))
    shape = draw(st.sampled_from([(n, ncols), (n, ncols), (n,), (ncols, n), (n, ncols + 1), (n, ncols, 1), (n, 1)]))
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    size = int(np.prod(shape))
    if dtype.kind == "f":
        vals = draw(st.lists(st.one_of(st.floats(width=dtype.itemsize * 8), st.sampled_from([_NAN, _INF, -1.0, 1e30])),
                             min_size=size, max_size=size))
    elif dtype.kind == "c":
        vals = draw(st.lists(st.complex_numbers(allow_nan=True), min_size=size, max_size=size))
    elif dtype.kind == "b":
        vals = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    else:
        info = np.iinfo(dtype)
        vals = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=size, max_size=size))
    return np.array(vals, dtype=dtype).reshape(shape)


# --------------------------------------------------------------------------------------------
# valid base files
# --------------------------------------------------------------------------------------------
def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_image(path: Path, arr: np.ndarray, fmt: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def image_bytes(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    from PIL import Image

    img = Image.fromarray(arr)
    if mode is not None:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def mat_bytes(variables: dict[str, Any]) -> bytes:
    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, variables)
    return buf.getvalue()


def sh_info(location: Any, layout: str = "cell-struct", cell_shape: tuple[int, int] = (1, 1)) -> Any:
    """ShanghaiTech's ``image_info``: 1x1 cell -> 1x1 struct {location, number}; other layouts."""
    struct_ = np.zeros((1, 1), dtype=[("location", "O"), ("number", "O")])
    struct_[0, 0]["location"] = location
    struct_[0, 0]["number"] = np.array([[3]], dtype=np.uint8)
    if layout == "struct":
        return struct_
    if layout == "array":
        return location
    if layout == "no-location":
        other = np.zeros((1, 1), dtype=[("number", "O")])
        other[0, 0]["number"] = np.array([[3]])
        struct_ = other
    cell = np.empty(cell_shape, dtype=object)
    for idx in np.ndindex(cell_shape):
        cell[idx] = struct_
    if layout == "cell-cell":
        outer = np.empty((1, 1), dtype=object)
        outer[0, 0] = cell
        return outer
    return cell


_MAT5_HEADER = b"MATLAB 5.0 MAT-file, written by the autoscale fuzzer".ljust(116, b" ") + b"\0" * 8 + b"\x00\x01IM"


def _el(mdtype: int, payload: bytes) -> bytes:
    return struct.pack("<II", mdtype, len(payload)) + payload + b"\0" * ((8 - len(payload) % 8) % 8)


def _array_header(mclass: int, dims: tuple[int, ...], name: bytes = b"") -> bytes:
    return _el(6, struct.pack("<II", mclass, 0)) + _el(5, struct.pack(f"<{len(dims)}i", *dims)) + _el(1, name)


def mat5_raw(kind: str, n: int, compress: bool = True) -> bytes:
    """Hand-made MAT v5 files SciPy's compiled reader mishandles: ``nested`` cells ``n`` deep (a C
    stack overflow from ~50 000 levels), a ``cells`` array declaring ``n x n`` cells, a ``char``
    array declaring ``n x n`` blank characters, a ``numeric`` element of type ``n`` (an index into
    a C table), a ``struct`` whose field-name length is ``n``."""
    if kind == "nested":  # built outside-in in one pass: level k's length is known from level k-1's
        head = _array_header(1, (1, 1))
        sizes = [0]
        for _ in range(n):
            sizes.append(len(head) + 8 + sizes[-1])
        body = b"".join(struct.pack("<II", 14, sizes[k]) + head for k in range(n, 0, -1)) + struct.pack("<II", 14, 0)
    elif kind == "cells":
        body = _el(14, _array_header(1, (n, n), b"image_info"))
    elif kind == "char":
        body = _el(14, _array_header(4, (n, n), b"image_info") + _el(16, b""))
    elif kind == "numeric":
        body = _el(14, _array_header(6, (2, 2), b"annPoints") + struct.pack("<II", n & 0xFFFFFFFF, 32) + b"\0" * 32)
    elif kind == "struct":
        body = _el(14, _array_header(2, (1, 1), b"image_info") + _el(5, struct.pack("<i", n)) + _el(1, b"location"))
    else:  # pragma: no cover
        raise ValueError(kind)
    if compress:
        comp = zlib.compress(body)
        return _MAT5_HEADER + struct.pack("<II", 15, len(comp)) + comp
    return _MAT5_HEADER + body


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    parts = [b"\x89PNG\r\n\x1a\n"]
    for kind, body in chunks:
        parts.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(parts)


@st.composite
def png_chunk_mutations(draw: st.DrawFn, base: bytes) -> bytes:
    """A PNG whose chunk data is mutated with the CRCs recomputed, so the decoder gets past the
    checksums: IHDR size / depth / colour type, IDAT's zlib stream, PLTE, tRNS, extra chunks."""
    chunks = png_chunks(base)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["mutate", "mutate", "drop", "dup", "add", "inflate"]))
        i = draw(st.integers(0, len(chunks) - 1))
        kind, body = chunks[i]
        if op == "mutate":
            chunks[i] = (kind, draw(mutated_bytes(body, 3)) if body else draw(st.binary(max_size=8)))
        elif op == "drop" and len(chunks) > 1:
            del chunks[i]
        elif op == "dup":
            chunks.insert(i, chunks[i])
        elif op == "add":
            chunks.insert(i, (draw(st.sampled_from([b"PLTE", b"tRNS", b"gAMA", b"sBIT", b"IDAT", b"iCCP", b"zTXt",
                                                     b"eXIf", b"acTL", b"fcTL", b"fdAT"])),
                              draw(st.binary(max_size=16))))
        elif op == "inflate" and kind == b"IDAT":
            try:
                raw = zlib.decompress(body)
            except zlib.error:  # an earlier edit broke this stream already
                continue
            chunks[i] = (kind, zlib.compress(draw(mutated_bytes(raw, 3))))
    return png_from_chunks(chunks)


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------
@dataclass
class Target:
    """One fuzzed entry point: ``setup(work)`` writes the valid files once and returns a state;
    ``strategy(state)`` draws inputs; ``run(state, drawn)`` applies one and checks the contract."""

    name: str
    doc: str
    setup: Callable[[Path], dict[str, Any]]
    strategy: Callable[[dict[str, Any]], st.SearchStrategy[Any]]
    run: Callable[[dict[str, Any], Any], None]
    extra: dict[str, Any] = field(default_factory=dict)


TARGETS: dict[str, Target] = {}


def target(name: str, doc: str):
    def deco(cls):
        TARGETS[name] = Target(name, doc, cls.setup, cls.strategy, cls.run)
        return cls
    return deco


def target_names() -> list[str]:
    return list(TARGETS)


# ---- ShanghaiTech .mat ----------------------------------------------------------------------
_SH_POINTS = np.array([[1.5, 2.5], [7.9, 5.9], [8.0, 1.0], [-0.1, 3.0]])


def _mat_strategy(base: bytes, var: str, layouts: list[str], other_vars: list[str]) -> st.SearchStrategy[Any]:
    structured = st.tuples(
        st.just("mat"), st.sampled_from([var, var, var] + other_vars), st.sampled_from(layouts),
        st.sampled_from([(1, 1), (1, 1), (1, 2), (2, 1), (0, 0)]), weird_arrays(),
    )
    raw = st.builds(mat5_raw, st.sampled_from(["nested", "cells", "char", "numeric", "struct"]),
                    st.sampled_from([0, 1, 2, 7, 8, 10, 14, 15, 19, 20, 63, 64, 65, 1000, 65536, 100_000, -1]),
                    st.booleans())
    return st.one_of(
        st.tuples(st.just("bytes"), st.binary(max_size=400)),
        st.tuples(st.just("bytes"), mutated_bytes(base)),
        st.tuples(st.just("bytes"), mutated_bytes(base, 12)),
        st.tuples(st.just("bytes"), st.builds(_recompressed, st.just(base), st.data())),
        st.tuples(st.just("bytes"), raw),
        structured,
    )


def _recompressed(base: bytes, data: st.DataObject) -> bytes:
    """``base`` saved compressed, with bytes of the *inflated* variables mutated (valid zlib: the
    structure reaches the reader)."""
    import scipy.io

    mat = scipy.io.loadmat(io.BytesIO(base))
    buf = io.BytesIO()
    scipy.io.savemat(buf, {k: v for k, v in mat.items() if not k.startswith("__")}, do_compression=True)
    whole = buf.getvalue()
    out, pos = [whole[:128]], 128
    while pos + 8 <= len(whole):
        mdtype, count = struct.unpack("<II", whole[pos:pos + 8])
        inner = zlib.decompress(whole[pos + 8:pos + 8 + count]) if mdtype == 15 else whole[pos + 8:pos + 8 + count]
        comp = zlib.compress(data.draw(mutated_bytes(inner)))
        out.append(struct.pack("<II", 15, len(comp)) + comp)
        pos += 8 + count
    return b"".join(out)


def _write_mat(path: Path, item: Any, var: str) -> None:
    if item[0] == "mat":
        _, name, layout, cell_shape, arr = item
        value = sh_info(arr, layout, cell_shape) if var == "image_info" else (
            arr if layout == "array" else sh_info(arr, layout, cell_shape))
        try:
            path.write_bytes(mat_bytes({name: value}))
        except Exception:  # noqa: BLE001 - scipy cannot write this structure: write it as bytes
            path.write_bytes(b"")
    else:
        write_input(path, item)


@target("shanghaitech", "ShanghaiTech GT_IMG_n.mat (image_info cell -> struct -> location) via read_dataset")
class _ShanghaiTech:
    @staticmethod
    def setup(work: Path) -> dict[str, Any]:
        root = work / "part_B"
        save_image(root / "train_data" / "images" / "IMG_1.jpg", _rgb(6, 8))
        gt = root / "train_data" / "ground-truth" / "GT_IMG_1.mat"
        gt.parent.mkdir(parents=True, exist_ok=True)
        base = mat_bytes({"image_info": sh_info(_SH_POINTS)})
        gt.write_bytes(base)
        return {"root": root, "gt": gt, "base": base}

    @staticmethod
    def strategy(s: dict[str, Any]) -> st.SearchStrategy[Any]:
        return _mat_strategy(s["base"], "image_info", ["cell-struct", "cell-struct", "struct", "array", "no-location",
                                                       "cell-cell"], ["imageinfo", "location"])

    @staticmethod
    def run(s: dict[str, Any], item: Any) -> None:
        from autoscale.data.formats import read_dataset

        _write_mat(s["gt"], item, "image_info")
        ok, recs = outcome(lambda: read_dataset("shanghaitech", s["root"], "train"))
        if ok:
            check_records(recs)
            assert len(recs) == 1


# ---- UCF-QNRF .mat --------------------------------------------------------------------------
@target("qnrf", "UCF-QNRF img_XXXX_ann.mat (annPoints) via read_dataset")
class _QNRF:
    @staticmethod
    def setup(work: Path) -> dict[str, Any]:
        root = work / "qnrf"
        save_image(root / "Test" / "img_0001.jpg", _rgb(6, 8))
        ann = root / "Test" / "img_0001_ann.mat"
        base = mat_bytes({"annPoints": _SH_POINTS})
        ann.write_bytes(base)
        return {"root": root, "ann": ann, "base": base}

    @staticmethod
    def strategy(s: dict[str, Any]) -> st.SearchStrategy[Any]:
        return _mat_strategy(s["base"], "annPoints", ["array", "array", "array", "struct", "cell-struct"], ["annpoints"])

    @staticmethod
    def run(s: dict[str, Any], item: Any) -> None:
        from autoscale.data.formats import read_dataset

        _write_mat(s["ann"], item, "annPoints")
        ok, recs = outcome(lambda: read_dataset("qnrf", s["root"], "test"))
        if ok:
            check_records(recs)
            assert len(recs) == 1


# ---- JHU-Crowd++ txt ------------------------------------------------------------------------
_JHU_GT = "1 2 4 4 1 0\n3.5 4.5 2 3 2 1\n7 5 1 1 3 0\n100 1 5 5 1 1\n"
_JHU_LABELS = "0001,4,stadium,1,0\n0002,0,street,0,1\n"


@target("jhu", "JHU-Crowd++ gt/NNNN.txt (x y w h o b) and image_labels.txt via read_dataset")
class _JHU:
    @staticmethod
    def setup(work: Path) -> dict[str, Any]:
        root = work / "jhu"
        save_image(root / "val" / "images" / "0001.jpg", _rgb(6, 8))
        gt = root / "val" / "gt" / "0001.txt"
        gt.parent.mkdir(parents=True, exist_ok=True)
        labels = root / "val" / "image_labels.txt"
        return {"root": root, "gt": gt, "labels": labels}

    @staticmethod
    def strategy(s: dict[str, Any]) -> st.SearchStrategy[Any]:
        return st.one_of(st.tuples(st.just("gt"), text_inputs(_JHU_GT)),
                         st.tuples(st.just("labels"), text_inputs(_JHU_LABELS, sep=",")))

    @staticmethod
    def run(s: dict[str, Any], item: Any) -> None:
        from autoscale.data.formats import read_dataset

        which, inp = item
        s["gt"].write_text(_JHU_GT)
        s["labels"].write_text(_JHU_LABELS)
        write_input(s[which], inp)
        ok, recs = outcome(lambda: read_dataset("jhu", s["root"], "val"))
        if ok:
            check_records(recs)
            assert len(recs) == 1


# ---- NWPU-Crowd json + lists ----------------------------------------------------------------
_NWPU_JSON = {"img_id": "0001.jpg", "human_num": 3, "points": [[1.5, 2.5], [7.5, 5.5], [20.0, 1.0]],
              "boxes": [[1, 2, 2, 3], [7, 5, 8, 6], [19, 0, 21, 2]]}
_NWPU_LISTS = {"val": "0001 1 2\n", "test": "0001\n"}


def json_inputs(base: Any, keys: list[str]) -> st.SearchStrategy[Any]:
    text = json.dumps(base)
    return st.one_of(
        st.tuples(st.just("json"), mutated_tree(base, keys=keys)),
        text_inputs(text),
        st.tuples(st.just("text"), st.sampled_from(["[" * 5000, "{\"points\": " + "[" * 3000, "1" * 5000,
                                                    "{\"points\": [[" + "1" * 5000 + ", 1]]}",
                                                    "{\"points\": [[1e400, 1]]}", "\ufeff{\"points\": []}"])),
    )


def write_json_input(path: Path, item: Any) -> None:
    if item[0] == "json":
        path.write_text(json.dumps(item[1]))
    else:
        write_input(path, item)


@target("nwpu", "NWPU-Crowd jsons/NNNN.json and {val,test}.txt list files via read_dataset")
class _NWPU:
    @staticmethod
    def setup(work: Path) -> dict[str, Any]:
        root = work / "nwpu"
        save_image(root / "images" / "0001.jpg", _rgb(6, 8))
        (root / "jsons").mkdir(parents=True, exist_ok=True)
        return {"root": root, "json": root / "jsons" / "0001.json"}

    @staticmethod
    def strategy(s: dict[str, Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.tuples(st.just("json"), json_inputs(_NWPU_JSON, ["points", "boxes", "human_num"])),
            st.tuples(st.just("list"), st.sampled_from(["val", "test"]), text_inputs(_NWPU_LISTS["val"])),
        )

    @staticmethod
    def run(s: dict[str, Any], item: Any) -> None:
        from autoscale.data.formats import read_dataset

        root = s["root"]
        s["json"].write_text(json.dumps(_NWPU_JSON))
        for split, text in _NWPU_LISTS.items():
            (root / f"{split}.txt").write_text(text)
        split = "val"
        if item[0] == "json":
            write_json_input(s["json"], item[1])
        else:
            split = item[1]
            write_input(root / f"{split}.txt", item[2])
        ok, recs = outcome(lambda: read_dataset("nwpu", root, split))
        if ok:
            check_records(recs)


# ---- TRANCOS txt + BW mask ------------------------------------------------------------------
_TRANCOS_TXT = "1.5 2.5\n7 5\n30 1\n"
_TRANCOS_NAME = "image-1-000001"


@target("trancos", "TRANCOS image_sets/*.txt, image-S-N.txt points and *mask.mat (BW) via read_dataset + load_roi")
class _TRANCOS:
    @staticmethod
    def setup(work: Path) -> dict[str, Any]:
        root = work / "trancos"
        img = save_image(root / "images" / f"{_TRANCOS_NAME}.jpg", _rgb(6, 8))
        (root / "image_sets").mkdir(parents=True, exist_ok=True)
        bw = np.zeros((6, 8), dtype=np.uint8)
        bw[1:5, 2:7] = 1
        base = mat_bytes({"BW": bw})
        return {"root": root, "txt": img.with_suffix(".txt"), "mask": img.with_name(f"{_TRANCOS_NAME}mask.mat"),
                "list": root / "image_sets" / "test.txt", "mask_base": base, "bw": bw}

    @staticmethod
    def strategy(s: dict[str, Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.tuples(st.just("txt"), text_inputs(_TRANCOS_TXT)),
            st.tuples(st.just("list"), text_inputs(f"{_TRANCOS_NAME}.jpg\n")),
            st.tuples(st.just("mask"), _mat_strategy(s["mask_base"], "BW", ["array"], ["bw", "mask"])),
            st.tuples(st.just("mask"), st.tuples(st.just("mat"), st.just("BW"), st.just("array"), st.just((1, 1)),
                                                 st.sampled_from([s["bw"].astype(bool), s["bw"] * np.nan,
                                                                  s["bw"].astype(np.complex128), s["bw"].T,
                                                                  s["bw"][None], s["bw"].astype(np.float32) - 0.5])))
        )

    @staticmethod
    def run(s: dict[str, Any], item: Any) -> None:
        from autoscale.data.formats import load_roi, read_dataset

        s["txt"].write_text(_TRANCOS_TXT)
        s["list"].write_text(f"{_TRANCOS_NAME}.jpg\n")
        s["mask"].write_bytes(s["mask_base"])
        which, inp = item
        if which == "mask":
            _write_mat(s["mask"], inp, "BW")
        else:
            write_input(s[which], inp)

        def read():
            recs = read_dataset("trancos", s["root"], "test")
            return recs, [load_roi(r.roi_path, (r.width, r.height)) for r in recs]

        ok, res = outcome(read)
        if ok:
            recs, rois = res
            check_records(recs)
            for r, roi in zip(recs, rois):
                assert roi.dtype == bool and roi.shape == (r.height, r.width)


# ---- VGG cells dots png ---------------------------------------------------------------------
def _dots(h: int = 8, w: int = 8) -> np.ndarray:
    d = np.zeros((h, w, 3), dtype=np.uint8)
    d[1, 2] = d[5, 6] = d[7, 0] = (255, 0, 0)
    d[3, 3] = (255, 0, 1)
    return d


@target("vgg_cells", "VGG cells NNNcell.png + NNNdots.png (red pixels) via read_dataset")
class _VGGCells:
    @staticmethod
    def setup(work: Path) -> dict[str, Any]:
        root = work / "cells"
        root.mkdir(parents=True, exist_ok=True)
        cell = image_bytes(_rgb(8, 8))
        dots = image_bytes(_dots())
        # the dots image in other encodings (Pillow reads by content, not by name): their parsers too
        encoded = [image_bytes(_dots(), fmt, mode) for fmt, mode in
                   (("TIFF", None), ("TIFF", "I;16"), ("BMP", None), ("GIF", None), ("JPEG", None), ("WEBP", None),
                    ("PNG", "P"), ("PNG", "I;16"), ("PNG", "LA"), ("ICO", None), ("PPM", None), ("TGA", None))]
        return {"root": root, "cell_path": root / "001cell.png", "dots_path": root / "001dots.png",
                "cell": cell, "dots": dots, "encoded": encoded}

    @staticmethod
    def strategy(s: dict[str, Any]) -> st.SearchStrategy[Any]:
        modes = st.sampled_from(["RGB", "L", "1", "P", "RGBA", "LA", "I;16", "I", "F", "CMYK", "YCbCr", "HSV"])
        fmts = st.sampled_from(["PNG", "PNG", "BMP", "TIFF", "GIF", "WEBP", "JPEG"])
        image = st.one_of(
            st.tuples(st.just("bytes"), st.binary(max_size=300)),
            st.tuples(st.just("bytes"), mutated_bytes(s["dots"])),
            st.tuples(st.just("bytes"), png_chunk_mutations(s["dots"])),
            st.tuples(st.just("bytes"), st.sampled_from(s["encoded"]).flatmap(mutated_bytes)),
            st.tuples(st.just("encode"), fmts, modes),
        )
        return st.tuples(st.sampled_from(["dots", "dots", "dots", "cell"]), image)

    @staticmethod
    def run(s: dict[str, Any], item: Any) -> None:
        from autoscale.data.formats import read_dataset

        which, inp = item
        s["cell_path"].write_bytes(s["cell"])
        s["dots_path"].write_bytes(s["dots"])
        path = s[f"{which}_path"]
        if inp[0] == "encode":
            try:
                data = image_bytes(_dots() if which == "dots" else _rgb(8, 8), inp[1], inp[2])
            except (OSError, ValueError, KeyError):  # Pillow cannot write this mode in this format
                data = b""
            path.write_bytes(data)
        else:
            write_input(path, inp)
        ok, recs = outcome(lambda: read_dataset("vgg_cells", s["root"], "all"))
        if ok:
            check_records(recs)
            assert len(recs) == 1


# ---- generic list + JSON / CSV --------------------------------------------------------------
_GEN_JSON = {"points": [[1.5, 2.5], [7.5, 5.5], [30.0, 1.0]], "boxes": [[1, 2, 2, 3], [7, 5, 8, 6], [29, 0, 31, 2]],
             "meta": {"scene": "test", "n": 3}, "roi": "roi.png"}
_GEN_CSV = "x,y\n1.5,2.5\n7,5\n-1,2\n"
_GEN_LIST = "a.jpg a.json\nb.png\n"


@target("generic", "generic <split>.txt list + JSON / CSV annotations (+ roi image) via read_dataset + load_roi")
class _Generic:
    @staticmethod
    def setup(work: Path) -> dict[str, Any]:
        root = work / "generic"
        save_image(root / "a.jpg", _rgb(6, 8))
        save_image(root / "b.png", _rgb(6, 8, 1))
        roi = np.zeros((6, 8), dtype=np.uint8)
        roi[2:, 3:] = 255
        roi_bytes = image_bytes(roi)
        return {"root": root, "json": root / "a.json", "csv": root / "b.csv", "list": root / "train.txt",
                "roi": root / "roi.png", "roi_bytes": roi_bytes}

    @staticmethod
    def strategy(s: dict[str, Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.tuples(st.just("json"), json_inputs(_GEN_JSON, ["points", "boxes", "meta", "roi"])),
            st.tuples(st.just("csv"), text_inputs(_GEN_CSV, sep=",")),
            st.tuples(st.just("csv"), text_inputs(_GEN_CSV)),
            st.tuples(st.just("list"), text_inputs(_GEN_LIST)),
            st.tuples(st.just("roi"), st.one_of(st.tuples(st.just("bytes"), mutated_bytes(s["roi_bytes"])),
                                                st.tuples(st.just("bytes"), png_chunk_mutations(s["roi_bytes"])))),
        )

    @staticmethod
    def run(s: dict[str, Any], item: Any) -> None:
        from autoscale.data.formats import load_roi, read_dataset

        s["json"].write_text(json.dumps(_GEN_JSON))
        s["csv"].write_text(_GEN_CSV)
        s["list"].write_text(_GEN_LIST)
        s["roi"].write_bytes(s["roi_bytes"])
        which, inp = item
        if which == "json":
            write_json_input(s["json"], inp)
        else:
            write_input(s[which], inp)

        def read():
            recs = read_dataset("generic", s["root"], "train")
            return recs, [load_roi(r.roi_path, (r.width, r.height)) for r in recs if r.roi_path is not None]

        ok, res = outcome(read)
        if ok:
            recs, rois = res
            check_records(recs)
            for roi in rois:
                assert roi.dtype == bool and roi.ndim == 2


# ---- NWPU evaluation files ------------------------------------------------------------------
_LOC_GT = "1 2 10 20 4 8 1 30 40 5 9 2\n2 0\n3 1 5 5 1 2 0\n"
_LOC_PRED = "1 2 11 21 60 70\n3 1 6 6\n"
_COUNTS = "1 2.5\n2 0\n3 10\n"
_META = "1 1 2\n2 0 0 5\n3 3 4\n"


@target("nwpu_files", "NWPU evaluation files: read_loc_gt, read_loc_pred, read_counts, read_nwpu_meta")
class _NWPUFiles:
    @staticmethod
    def setup(work: Path) -> dict[str, Any]:
        work.mkdir(parents=True, exist_ok=True)
        return {"path": work / "file.txt"}

    @staticmethod
    def strategy(s: dict[str, Any]) -> st.SearchStrategy[Any]:
        return st.one_of(*(st.tuples(st.just(k), text_inputs(base)) for k, base in
                           (("loc_gt", _LOC_GT), ("loc_pred", _LOC_PRED), ("counts", _COUNTS), ("meta", _META))))

    @staticmethod
    def run(s: dict[str, Any], item: Any) -> None:
        from autoscale.metrics import nwpu

        which, inp = item
        write_input(s["path"], inp)
        reader = {"loc_gt": nwpu.read_loc_gt, "loc_pred": nwpu.read_loc_pred, "counts": nwpu.read_counts,
                  "meta": nwpu.read_nwpu_meta}[which]
        ok, res = outcome(lambda: reader(s["path"]))
        if not ok:
            return
        assert isinstance(res, dict) and all(type(k) is int for k in res)
        for v in res.values():
            if which == "loc_gt":
                check_points(v.points)
                for a in (v.sigma_s, v.sigma_l):
                    assert a.shape == (len(v.points),) and np.all(np.isfinite(a)) and np.all(a >= 0)
                assert v.level.dtype == np.int64 and v.level.shape == (len(v.points),)
                assert np.all(np.abs(v.level) < 2**31), f"levels out of range: {v.level}"
            elif which == "loc_pred":
                check_points(v)
            elif which == "counts":
                assert isinstance(v, float) and math.isfinite(v) and v >= 0
            else:
                assert isinstance(v, tuple) and 0 <= v[0] <= 3 and 0 <= v[1] <= 4


# ---- eval-points ----------------------------------------------------------------------------
@target("eval_points", "autoscale eval-points: GT + prediction files scored (cli.eval_points.evaluate + report)")
class _EvalPoints:
    @staticmethod
    def setup(work: Path) -> dict[str, Any]:
        work.mkdir(parents=True, exist_ok=True)
        return {"gt": work / "gt.txt", "pred": work / "pred.txt"}

    @staticmethod
    def strategy(s: dict[str, Any]) -> st.SearchStrategy[Any]:
        keep = st.just(("text", None))
        return st.tuples(
            st.one_of(keep, text_inputs(_LOC_GT)), st.one_of(keep, text_inputs(_LOC_PRED)),
            st.sampled_from(["small", "large", 0.0, 4.0, 1e300]),
        ).filter(lambda t: t[0][1] is not None or t[1][1] is not None)

    @staticmethod
    def run(s: dict[str, Any], item: Any) -> None:
        from autoscale.cli.eval_points import evaluate, report

        gt, pred, sigma = item
        s["gt"].write_text(_LOC_GT)
        s["pred"].write_text(_LOC_PRED)
        if gt[1] is not None:
            write_input(s["gt"], gt)
        if pred[1] is not None:
            write_input(s["pred"], pred)
        ok, out = outcome(lambda: evaluate(str(s["gt"]), str(s["pred"]), sigma))
        if ok:
            json.dumps(out, allow_nan=False)  # --json prints valid JSON
            assert isinstance(report(out), str)
            assert out["tp"] + out["fn"] >= 0 and out["n_images"] >= 1


# ---- YAML config ----------------------------------------------------------------------------
_CONFIG = {"data": {"format": "generic", "root": "/data/crowd", "crop": [64, 64], "scale_range": [0.8, 1.2],
                    "sigma": 4.0, "val_split": "val"},
           "model": {"variant": "regression", "backbone": "vgg16", "width": 0.25, "imagenet": None},
           "pipeline": {"dense_k": 2.0, "edges": [4.0, 8.0, 16.0], "fixed_scale": None},
           "optim": {"lr": 1e-4, "epochs": 3, "milestones": [1, 2], "schedule": "step"},
           "method": "autoscale", "seed": 0, "device": "cpu", "keep_epochs": [2]}
_OVERRIDE_KEYS = ["data.root", "data.crop", "data.sigma", "optim.lr", "optim.epochs", "optim.milestones", "model.width",
                  "model.variant", "pipeline.edges", "pipeline.variant", "seed", "method", "data", "optim", "data.x",
                  "nosuch.key", "data..root", ".", "", "data.root.x", "pipeline.sigma"]


@target("config", "YAML training configs: load_config(file, overrides) (config_from_dict, key=value overrides)")
class _Config:
    @staticmethod
    def setup(work: Path) -> dict[str, Any]:
        import yaml

        work.mkdir(parents=True, exist_ok=True)
        return {"path": work / "cfg.yaml", "yaml": yaml.safe_dump(_CONFIG, sort_keys=False)}

    @staticmethod
    def strategy(s: dict[str, Any]) -> st.SearchStrategy[Any]:
        override = st.one_of(
            st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_OVERRIDE_KEYS),
                      st.one_of(st.sampled_from(WEIRD_TOKENS), st.sampled_from(["[1, 2]", "{a: 1}", "[[1]]", "!!binary x",
                                                                                "&a [*a]", "[" * 300, "a: b: c"]),
                                st.text(max_size=8))),
            st.text(max_size=12),
        )
        doc = st.one_of(
            st.tuples(st.just("yaml"), mutated_tree(_CONFIG, keys=["root", "lr", "variant", "data", "x"])),
            text_inputs(s["yaml"]),
            st.tuples(st.just("text"), st.sampled_from(["[" * 3000, "a:\n" + "".join(" " * i + "- \n" for i in range(1, 400)),
                                                        "&a [*a, *a]", "data: &a {root: *a}", "data: 5", "seed: " + "9" * 5000,
                                                        "!!python/object/apply:os.system ['true']", "\ufeffdata: {}",
                                                        "data: {root: /x}\nmodel: {width: .nan}"])),
        )
        return st.tuples(doc, st.lists(override, max_size=3))

    @staticmethod
    def run(s: dict[str, Any], item: Any) -> None:
        import yaml

        from autoscale.engine.config import TrainConfig, config_from_dict, config_to_dict, load_config

        doc, overrides = item
        if doc[0] == "yaml":
            try:
                text = yaml.safe_dump(doc[1])
            except (yaml.YAMLError, ValueError, RecursionError):
                text = ""
            s["path"].write_text(text)
        else:
            write_input(s["path"], doc)
        ok, cfg = outcome(lambda: load_config(str(s["path"]), overrides))
        if ok:
            assert isinstance(cfg, TrainConfig)
            d = config_to_dict(cfg)
            assert config_to_dict(config_from_dict(d)) == d  # a loaded config survives a round trip
            json.dumps(d, allow_nan=False)  # finite numbers, plain types (checkpoints and model cards hold it)


# ---- checkpoint files -----------------------------------------------------------------------
class _RunsCode:
    """Unpickling this creates ``marker``: a stand-in for a checkpoint that runs code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _torch_bytes(obj: Any, zip_format: bool = True) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
    return buf.getvalue()


def _replace_pickle(zip_bytes: bytes, pkl: bytes) -> bytes:
    """The torch zip archive with its ``data.pkl`` replaced (valid CRCs: the unpickler sees it)."""
    src = zipfile.ZipFile(io.BytesIO(zip_bytes))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = pkl if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info.filename, data)
    return out.getvalue()


def _data_pkl(zip_bytes: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(zip_bytes))
    return next(src.read(n) for n in src.namelist() if n.endswith("/data.pkl"))


@target("checkpoint_file", "checkpoint files: load_checkpoint (torch.load weights_only) on corrupt / foreign / "
                           "code-running zip and legacy pickle files")
class _CheckpointFile:
    @staticmethod
    def setup(work: Path) -> dict[str, Any]:
        import torch

        from autoscale.models.registry import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

        work.mkdir(parents=True, exist_ok=True)
        header = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "variant": "regression",
                  "model": {"name": "fpn_regression", "kwargs": {"width": 0.0625}},
                  "state_dict": {"a.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.zeros(2)},
                  "l2s_state_dict": None, "l2s": None, "epoch": 3, "history": [{"mae": 1.5}]}
        marker = str(work / "CODE_WAS_RUN")
        zip_b = _torch_bytes(header)
        evil = pickle.dumps(_RunsCode(marker), protocol=2)
        return {"path": work / "ckpt.pt", "marker": Path(marker), "zip": zip_b, "legacy": _torch_bytes(header, False),
                "pkl": _data_pkl(zip_b), "evil_pkl": evil, "evil_zip": _replace_pickle(zip_b, evil)}

    @staticmethod
    def strategy(s: dict[str, Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.tuples(st.just("bytes"), st.binary(max_size=300)),
            st.tuples(st.just("bytes"), mutated_bytes(s["zip"])),
            st.tuples(st.just("bytes"), mutated_bytes(s["zip"], 12)),
            st.tuples(st.just("bytes"), mutated_bytes(s["legacy"])),
            st.tuples(st.just("bytes"), mutated_bytes(s["evil_zip"])),
            st.tuples(st.just("bytes"), mutated_bytes(s["evil_pkl"])),
            st.tuples(st.just("pkl"), mutated_bytes(s["pkl"])),
            st.tuples(st.just("pkl"), mutated_bytes(s["evil_pkl"])),
            st.tuples(st.just("pkl"), st.binary(max_size=64)),
        )

    @staticmethod
    def run(s: dict[str, Any], item: Any) -> None:
        from autoscale.models.registry import load_checkpoint

        kind, data = item
        s["path"].write_bytes(_replace_pickle(s["zip"], data) if kind == "pkl" else data)
        try:
            ok, ck = outcome(lambda: load_checkpoint(s["path"]))
        finally:
            ran = s["marker"].exists()
            s["marker"].unlink(missing_ok=True)
        assert not ran, "loading the checkpoint ran code"
        if ok:
            assert isinstance(ck, dict) and ck["variant"] in ("regression", "localization")
            assert isinstance(ck["model"], dict) and isinstance(ck["model"]["name"], str)
            assert isinstance(ck["state_dict"], dict)


# ---- checkpoint contents -> model -----------------------------------------------------------
@target("checkpoint_model", "checkpoint contents: load_autoscale / build_from_checkpoint on mutated headers, "
                            "pipeline, normalisation and weights (dict and file)")
class _CheckpointModel:
    @staticmethod
    def setup(work: Path) -> dict[str, Any]:
        import torch

        from autoscale.models.checkpoint import make_checkpoint
        from autoscale.models.registry import get_model

        work.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        base = {}
        for variant in ("regression", "localization"):
            fpn = get_model(f"fpn_{variant}", width=0.0625)
            l2s = get_model(f"l2s_{variant}", in_channels=fpn.feature_channels)
            kw = {"backbone": "vgg16", "width": 0.0625} | ({"num_classes": 11} if variant == "localization" else {})
            base[variant] = make_checkpoint(fpn, l2s, variant=variant, model_name=f"fpn_{variant}", model_kwargs=kw,
                                            normalization=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                            pipeline={"variant": variant, "dense_k": 2.0, "sigma": 4.0,
                                                      "edges": [4.0, 8.0], "zoom": "stn"},
                                            method="autoscale", config={"data": {"resize": None}})
        with torch.device("meta"):  # the loader's size probe imports a lot the first time: not in an example
            torch.nn.init.normal_(torch.empty(1))
        return {"path": work / "model.pt", "base": base}

    @staticmethod
    def strategy(s: dict[str, Any]) -> st.SearchStrategy[Any]:
        import torch

        tensors = [torch.zeros(0), torch.zeros(3), torch.tensor(float("nan")), torch.full((4, 3, 3, 3), float("inf")),
                   torch.zeros(2, 2, dtype=torch.complex64), torch.ones(3, dtype=torch.int64), torch.tensor([1, 2]),
                   torch.zeros(4, 3, 3, 3), torch.zeros(4, 3, 3, 3, dtype=torch.float16)]
        values = weird_values(tensors + ["fpn_localization", "l2s_regression", "efficientnet_lite0", "auto", "max",
                                         "official", {"width": 1e6}, {"width": 64.0}, {"num_classes": 10**9},
                                         {"mean": [0, 0, 0], "std": [0, 1, 1]}, {"mean": [_NAN] * 3, "std": [1] * 3}])
        keys = ["format", "version", "variant", "model", "kwargs", "name", "width", "backbone", "num_classes",
                "imagenet", "weights", "state_dict", "l2s", "head", "bound", "pool", "pipeline", "normalization",
                "mean", "std", "edges", "init"]

        def mut(variant: str) -> st.SearchStrategy[Any]:
            b = s["base"][variant]
            shallow = {k: (dict(v) if isinstance(v, dict) and not k.endswith("state_dict") else v) for k, v in b.items()}
            return mutated_tree(shallow, values=values, keys=keys)

        return st.tuples(st.sampled_from(["dict", "file"]), st.sampled_from(["regression", "localization"]).flatmap(
            lambda v: st.tuples(st.just(v), mut(v))))

    @staticmethod
    def run(s: dict[str, Any], item: Any) -> None:
        import torch

        from autoscale.models.registry import build_from_checkpoint
        from autoscale.predict import load_autoscale

        how, (variant, ckpt) = item
        src: Any = ckpt
        if how == "file" or not isinstance(ckpt, dict):  # the API takes a dict or a path: others go via a file
            try:
                torch.save(ckpt, s["path"])
            except Exception:  # noqa: BLE001 - torch cannot save this value: an empty file instead
                s["path"].write_bytes(b"")
            src = str(s["path"])
        ok, res = outcome(lambda: load_autoscale(src))
        if ok:
            model, ck = res
            assert isinstance(ck, dict) and model.config.variant == ck["variant"]
            assert not model.training
            for t in list(model.parameters()) + list(model.buffers()):
                assert bool(torch.isfinite(t).all()), "non-finite weights loaded"
        if isinstance(ckpt, dict):
            ok2, res2 = outcome(lambda: build_from_checkpoint(ckpt))
            if ok2:
                fpn, l2s = res2
                assert isinstance(fpn, torch.nn.Module)


# --------------------------------------------------------------------------------------------
# running: hypothesis settings, per-process state, the collecting runner of the benchmark
# --------------------------------------------------------------------------------------------
_STATES: dict[str, dict[str, Any]] = {}
_WORK: list[Path] = []


def state_of(name: str) -> dict[str, Any]:
    """The target's valid files, written once per process under a temporary folder (removed at exit)."""
    if name not in _STATES:
        if not _WORK:
            import atexit
            import shutil
            import tempfile

            _WORK.append(Path(tempfile.mkdtemp(prefix="autoscale-fuzz-")))
            atexit.register(shutil.rmtree, _WORK[0], True)
        _STATES[name] = TARGETS[name].setup(_WORK[0] / name)
    return _STATES[name]


def strategy_of(name: str) -> st.SearchStrategy[Any]:
    """The target's input strategy (built on first use, after its valid files exist)."""
    return st.deferred(lambda: TARGETS[name].strategy(state_of(name)))


def run(name: str, item: Any) -> None:
    """Apply one drawn input to target ``name`` and check the contract (raises on a violation)."""
    TARGETS[name].run(state_of(name), item)


def fuzz_settings(examples: int, deadline_s: float | None = 5.0):
    """Deterministic hypothesis settings: ``examples`` inputs, no example database, ``deadline_s``
    per example (None: none; the benchmark times examples itself)."""
    from datetime import timedelta

    from hypothesis import HealthCheck, settings

    return settings(max_examples=examples, derandomize=True, database=None,
                    deadline=None if deadline_s is None else timedelta(seconds=deadline_s),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example],
                    print_blob=True)


def given_target(name: str, examples: int, deadline_s: float | None = 5.0):
    """Decorator for a test of target ``name``: ``@given(its strategy)`` with :func:`fuzz_settings`."""
    from hypothesis import given

    def deco(fn):
        return fuzz_settings(examples, deadline_s)(given(strategy_of(name))(fn))
    return deco


class _Hang(Exception):
    pass


def fuzz_collect(name: str, examples: int, *, slow_s: float = 5.0, hang_s: float = 60.0,
                 keep: int = 5) -> dict[str, Any]:
    """Run target ``name`` on ``examples`` inputs without stopping at a failure: every input that
    breaks the contract (a foreign exception, code run, an example slower than ``slow_s``, or one
    interrupted after ``hang_s``) is counted and the first ``keep`` are described.
    Returns ``{"examples", "failures", "seconds", "slowest_s", "failing": [...]}``."""
    import signal
    import time
    import traceback

    from hypothesis import given

    stats: dict[str, Any] = {"examples": 0, "failures": 0, "slowest_s": 0.0, "failing": []}
    state_of(name)

    def on_alarm(signum, frame):  # noqa: ARG001
        raise _Hang(f"example still running after {hang_s:g} s")

    @fuzz_settings(examples, None)
    @given(strategy_of(name))
    def one(item: Any) -> None:
        stats["examples"] += 1
        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, hang_s)
        t0 = time.perf_counter()
        problem = None
        try:
            run(name, item)
        except Exception as exc:  # noqa: BLE001 - every contract violation is counted
            problem = f"{type(exc).__name__}: {str(exc)[:300]}"
            where = traceback.extract_tb(exc.__traceback__)[-1]
            problem += f" (at {Path(where.filename).name}:{where.lineno})"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        dt = time.perf_counter() - t0
        stats["slowest_s"] = max(stats["slowest_s"], dt)
        if problem is None and dt > slow_s:
            problem = f"slow: {dt:.1f} s"
        if problem is not None:
            stats["failures"] += 1
            if len(stats["failing"]) < keep:
                stats["failing"].append({"problem": problem, "input": repr(item)[:400]})

    t0 = time.perf_counter()
    one()
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    stats["slowest_s"] = round(stats["slowest_s"], 3)
    return stats
