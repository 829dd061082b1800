"""Property-based fuzzing of every input parser (targets and strategies: ``benchmarks/fuzz_targets.py``).

One hypothesis test per target: random bytes and mutated valid files (bytes flipped / inserted /
deleted / truncated; tokens, values, keys and shapes replaced) must raise only our own errors
(``AutoScaleError``) or give well-formed output; no foreign exception, no hang (deadline), no code
run by a checkpoint. ``AUTOSCALE_FUZZ_EXAMPLES`` (default 60) sets the examples per target here,
derandomised so CI is deterministic; ``benchmarks/fuzz.py`` runs 2,000 per target. The
``@example``\\ s and the plain tests below are the inputs that broke a parser before its fix.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz_targets as ft  # noqa: E402

from autoscale.errors import CheckpointError, ConfigError, DataError  # noqa: E402

EXAMPLES = int(os.environ.get("AUTOSCALE_FUZZ_EXAMPLES", 60))
DEADLINE_S = float(os.environ.get("AUTOSCALE_FUZZ_DEADLINE_S", 5.0))


def fuzz(name: str):
    return ft.given_target(name, EXAMPLES, DEADLINE_S)


def test_every_target_has_a_test():
    tests = {n[len("test_fuzz_"):] for n in globals() if n.startswith("test_fuzz_") and n != "test_fuzz_benchmark_smoke"}
    assert tests == set(ft.target_names())


def _segfault_mask() -> bytes:
    """The TRANCOS mask the first fuzz run found: 4 bytes inserted after the variable name give a
    data element of type 0xa594, which SciPy's reader used as an index into a C table (SIGSEGV)."""
    bw = np.zeros((6, 8), dtype=np.uint8)
    bw[1:5, 2:7] = 1
    base = ft.mat_bytes({"BW": bw})
    i = base.find(b"BW\x00\x00")
    return base[:i] + b"BW\xcf\x96\x94\xa5\x00\x00" + base[i + 4:]


# ---------------------------------------------------------------------------- dataset readers
@fuzz("shanghaitech")
@example(("bytes", ft.mat5_raw("numeric", 0xA594, False)))  # SIGSEGV in SciPy: type code out of its table
@example(("bytes", ft.mat5_raw("numeric", 14)))  # SIGSEGV: a matrix tag where numbers belong (NULL dtype)
@example(("bytes", ft.mat5_raw("nested", 100_000)))  # SIGSEGV: C stack overflow, 200 KB file
@example(("bytes", ft.mat5_raw("cells", 65536)))  # 65536 x 65536 cells: a 32 GB allocation
@example(("bytes", ft.mat5_raw("struct", 0)))  # field-name length 0
def test_fuzz_shanghaitech(item):
    ft.run("shanghaitech", item)


@fuzz("qnrf")
@example(("bytes", ft.mat5_raw("char", 65536)))  # 4 G blank characters
@example(("bytes", ft.mat5_raw("numeric", 8)))  # an unassigned type code
def test_fuzz_qnrf(item):
    ft.run("qnrf", item)


@fuzz("jhu")
@example(("gt", ("text", "1 2 4 4 1 4294967296\n")))  # blur flag cast to int64 silently (and 1e300 to garbage)
@example(("gt", ("text", "1 2 4 4 " + "9" * 400 + " 0\n")))
@example(("labels", ("text", "0001," + "9" * 5000 + ",x,1,0\n")))
def test_fuzz_jhu(item):
    ft.run("jhu", item)


@fuzz("nwpu")
@example(("json", ("text", "[" * 5000)))  # RecursionError from json
@example(("json", ("text", '{"points": [[' + "1" * 5000 + ", 1]]}")))  # ValueError: int() digit limit
@example(("json", ("json", {"points": [[10**400, 1]]})))  # OverflowError: int beyond float
@example(("list", "val", ("text", "9" * 300 + " 1 2\n")))  # OSError: file name too long
def test_fuzz_nwpu(item):
    ft.run("nwpu", item)


@fuzz("trancos")
@example(("mask", ("bytes", _segfault_mask())))  # the SIGSEGV the first run found
@example(("list", ("text", "9" * 300 + "\n")))  # OSError: file name too long
def test_fuzz_trancos(item):
    ft.run("trancos", item)


@fuzz("vgg_cells")
@example(("dots", ("encode", "PNG", "I;16")))
@example(("dots", ("bytes", b"")))
def test_fuzz_vgg_cells(item):
    ft.run("vgg_cells", item)


@fuzz("generic")
@example(("json", ("json", {"points": [[10**400, 1.0]]})))  # OverflowError
@example(("json", ("text", '{"points": ' + "[" * 3000)))  # RecursionError
@example(("list", ("text", "9" * 300 + ".jpg\n")))  # OSError: file name too long
def test_fuzz_generic(item):
    ft.run("generic", item)


# ---------------------------------------------------------------------------- evaluation files
@fuzz("nwpu_files")
@example(("loc_gt", ("text", "1 1 10 20 4 8 1e300\n")))  # level cast to int64: -9223372036854775808
@example(("loc_gt", ("text", "1 1 1e308 1e308 " + "9" * 400 + " 1 1\n")))
@example(("counts", ("text", "1 " + "9" * 5000 + "\n")))
def test_fuzz_nwpu_files(item):
    ft.run("nwpu_files", item)


@fuzz("eval_points")
@example((("text", "1 1 1e308 -1e308 4 8 1\n"), ("text", "1 1 -1e308 1e308\n"), "large"))  # KD-tree overflow
def test_fuzz_eval_points(item):
    ft.run("eval_points", item)


# ---------------------------------------------------------------------------- config
@fuzz("config")
@example((("text", "[" * 3000), []))  # RecursionError (and seconds of quadratic scanning)
@example((("text", "seed: " + "9" * 5000), []))  # ValueError: int() digit limit
@example((("text", "data: 5\n"), ["data.root=/x"]))  # TypeError: item assignment on an int
@example((("text", "data: {root: /x}\noptim: {lr: .nan}\n"), []))  # NaN learning rate accepted
@example((("text", "data: {root: /x}\noptim: {center_lr: .inf}\n"), []))  # infinite rate accepted
@example((("text", "data: {root: /x}\n"), ["optim.gamma=" + "9" * 400]))  # OverflowError: int -> float
def test_fuzz_config(item):
    ft.run("config", item)


def test_config_yaml_nesting_is_fast(tmp_path):
    """PyYAML's pure-Python scanner is quadratic in the nesting depth (30 KB of '[' took minutes)."""
    from autoscale.engine.config import load_config

    cfg = tmp_path / "deep.yaml"
    cfg.write_text("[" * 30_000)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(cfg)
    assert time.perf_counter() - t0 < 2.0


def test_config_path_too_long():
    from autoscale.engine.config import load_config

    with pytest.raises(ConfigError):  # was OSError (File name too long) from Path.is_file
        load_config("9" * 300)


# ---------------------------------------------------------------------------- checkpoints
@fuzz("checkpoint_file")
@example(("bytes", ft._torch_bytes({"format": "autoscale-checkpoint", "version": torch.tensor([1, 2])})))  # RuntimeError
@example(("bytes", ft._torch_bytes({"format": torch.zeros(2), "version": 1})))
@example(("bytes", ft._torch_bytes({"format": "autoscale-checkpoint", "version": 1, "variant": "regression",
                                    "model": "fpn_regression", "state_dict": {}})))
def test_fuzz_checkpoint_file(item):
    ft.run("checkpoint_file", item)


def test_checkpoint_never_runs_code():
    """A checkpoint whose pickle calls ``exec`` (zip and legacy formats, and bytes-mutated copies
    in the fuzz target) is refused by ``torch.load(weights_only=True)`` without running it."""
    from autoscale.models.registry import load_checkpoint

    s = ft.state_of("checkpoint_file")
    for data in (s["evil_zip"], s["evil_pkl"]):
        s["path"].write_bytes(data)
        with pytest.raises(CheckpointError, match="never unpickled"):
            load_checkpoint(s["path"])
        assert not s["marker"].exists()
    ft.run("checkpoint_file", ("pkl", s["evil_pkl"]))


@fuzz("checkpoint_model")
def test_fuzz_checkpoint_model(item):
    ft.run("checkpoint_model", item)


def _mutated(_variant: str = "regression", **changes):
    """The valid checkpoint of the fuzz target with ``changes`` (``a__b`` = key ``b`` of ``a``)."""
    ck = ft._copy(ft.state_of("checkpoint_model")["base"][_variant])
    for key, value in changes.items():
        node, *rest = key.split("__")
        if rest:
            ck[node][rest[0]] = value
        else:
            ck[node] = value
    return ck


CHECKPOINT_REGRESSIONS = {  # what each broke before its fix -> a CheckpointError naming the problem
    # (cases after "edges_not_numbers" concern what only load_autoscale reads: pipeline, normalisation)
    "model_not_a_dict": ({"model": ["fpn_regression"]}, "'model' must be"),  # TypeError
    "kwargs_list": ({"model__kwargs": [0.0625]}, "'model' must be"),  # TypeError
    "l2s_not_a_dict": ({"l2s": ["avg"]}, "'l2s' must be a dict"),  # AttributeError
    "l2s_bad_pool": ({"l2s__pool": ["avg"]}, "cannot build the model"),  # ValueError
    "width_list": ({"model__kwargs": {"width": [0.0625]}}, "cannot build the model"),  # TypeError
    "huge_width": ({"model__kwargs": {"width": 64.0}}, "do not fit"),  # 245 GB before the shape check
    "huge_classes": ({"_variant": "localization", "model__kwargs": {"width": 0.0625, "num_classes": 10**9}},
                     "do not fit|cannot build"),
    "names_other_file": ({"model__kwargs": {"width": 0.0625, "imagenet": "auto"}}, "name other files"),
    "model_of_other_variant": ({"model__name": "fpn_localization"}, "whose model is"),
    "nan_weight": ({"state_dict__backbone.features.0.bias": torch.full((4,), float("nan"))}, "NaN or infinite"),
    "int_weight": ({"state_dict__backbone.features.0.bias": torch.ones(4, dtype=torch.int64)}, "floating-point"),
    "variant_tensor": ({"variant": torch.zeros(2)}, "unknown variant"),
    "edges_not_numbers": ({"pipeline__edges": ["a", None]}, "pipeline.edges"),  # ValueError / TypeError
    "pipeline_nan": ({"pipeline__sigma": float("nan")}, "pipeline.sigma"),
    "normalization_tensor": ({"normalization": torch.zeros(3)}, "'normalization'"),  # IndexError
    "normalization_nan": ({"normalization": {"mean": [float("nan")] * 3, "std": [1, 1, 1]}}, "finite"),
}


@pytest.mark.parametrize("case", CHECKPOINT_REGRESSIONS)
def test_checkpoint_regressions(case, one_thread):
    from autoscale.models.registry import build_from_checkpoint
    from autoscale.predict import load_autoscale

    changes, message = CHECKPOINT_REGRESSIONS[case]
    ck = _mutated(**changes)
    whole_only = any(k.split("__")[0] in ("pipeline", "normalization") for k in changes)
    t0 = time.perf_counter()
    for load in (load_autoscale,) if whole_only else (load_autoscale, build_from_checkpoint):
        with pytest.raises(CheckpointError, match=message):
            load(ck)
    assert time.perf_counter() - t0 < 10  # nothing the size of the lie is allocated
    ft.run("checkpoint_model", ("dict", ("regression", ck)))


def test_checkpoint_unknown_pipeline_keys_of_mixed_types_warn():
    from autoscale.predict import load_autoscale

    ck = _mutated(pipeline={"variant": "regression", 1: 2, "x": 3})  # sorting them raised TypeError
    with pytest.warns(UserWarning, match="ignoring unknown pipeline keys"):
        load_autoscale(ck)


# ---------------------------------------------------------------------------- MAT files, images
def test_mat_walker_accepts_what_scipy_writes(tmp_path):
    """The structural check refuses nothing SciPy writes (all classes, compressed or not, v4)."""
    import io

    import scipy.io
    import scipy.sparse

    from autoscale.data.matfile import check_mat5, load_mat

    variables = {"a": np.arange(6.0).reshape(2, 3), "b": np.array([[1 + 2j]]), "c": "text", "d": np.array(["ab", "cd"]),
                 "e": np.empty((0, 0)), "f": np.zeros((2, 2), bool), "g": scipy.sparse.csc_matrix(np.eye(3)),
                 "h": {"x": 1, "y": [1, 2, 3], "z": {"w": "s"}}, "i": np.array([np.zeros(3), "x", {"q": 1}], dtype=object),
                 "k": np.zeros((2, 3, 4), np.uint16), "l": "", "m": scipy.sparse.csc_matrix(np.eye(3) * 1j),
                 "image_info": ft.sh_info(np.ones((3, 2)))}
    for compress in (False, True):
        buf = io.BytesIO()
        scipy.io.savemat(buf, variables, do_compression=compress)
        check_mat5(buf.getvalue())
        path = tmp_path / f"all_{compress}.mat"
        path.write_bytes(buf.getvalue())
        assert set(variables) <= set(load_mat(path))
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"a": np.eye(2)}, format="4")
    check_mat5(buf.getvalue())


def test_mat_walker_on_real_annotations(shared_data):
    """Every real .mat annotation beside the project passes the structural check."""
    from autoscale.data.matfile import check_mat5

    files = sorted(shared_data.rglob("*.mat"))
    if not files:
        pytest.skip("no .mat files in the shared data")
    for f in files:
        check_mat5(f.read_bytes(), f)


def test_image_path_too_long(tmp_path):
    from autoscale.data.image_io import image_size

    with pytest.raises(DataError, match="cannot open image"):  # was OSError (File name too long)
        image_size(tmp_path / ("9" * 300 + ".png"))


# ---------------------------------------------------------------------------- the benchmark
def test_fuzz_benchmark_smoke(tmp_path, load_bench):
    mod = load_bench("fuzz")
    threads = torch.get_num_threads()
    try:
        result = mod.main(["--smoke", "--out", str(tmp_path), "--targets", "generic,config,checkpoint_file"])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "fuzz.json").read_text())
    assert saved["targets"].keys() == {"generic", "config", "checkpoint_file"} == result["targets"].keys()
    for stats in saved["targets"].values():
        assert stats["examples"] >= mod.SMOKE_EXAMPLES and stats["failures"] == 0 and stats["seconds"] >= 0
    assert saved["command"].startswith("python benchmarks/fuzz.py --smoke")
    md = (tmp_path / "fuzz.md").read_text()
    assert "| generic |" in md and "| checkpoint_file |" in md


def test_matching_huge_coordinates_same_decisions():
    """Coordinates near 1e308 overflowed the KD-tree's squared distances (eval-points crashed); the
    matching now scales them by a power of two, which keeps every decision of the exact test."""
    from autoscale.metrics.localization import match_points

    for scale in (1.0, 2.0**1000):
        gt = np.array([[0.0, 0.0], [100.0, 0.0]]) * scale
        pred = np.array([[3.0, 4.0], [103.0, 4.0000001]]) * scale
        r = match_points(pred, gt, np.array([5.0, 5.0]) * scale)
        assert (r.tp, r.fp, r.fn) == (1, 1, 1)
