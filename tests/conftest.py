"""Shared test fixtures: the location of ../shared/data and a skip marker for it."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning threads on a busy machine

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AUTOSCALE_SHARED_DATA", ROOT.parent / "shared" / "data"))

requires_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"real data not found at {SHARED_DATA} (it sits beside the project in CI; set AUTOSCALE_SHARED_DATA)",
)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


def _load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` (benchmarks/ goes on sys.path for their ``_common``)."""
    import importlib.util
    import sys

    bench = ROOT / "benchmarks"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def load_bench():
    """``load_bench("bench_x")`` -> the imported benchmark script module."""
    return _load_benchmark


@pytest.fixture
def one_thread():
    """torch on one thread for the test (tiny nets: threads only contend on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Six 48x64 synthetic crowds in the generic format: 4 ``train``, 2 ``val``."""
    from autoscale.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, n=6, size=(48, 64), splits={"train": 4 / 6, "val": 2 / 6})
    return root


def tiny_train_dict(root, **kw) -> dict:
    """A seconds-long training config (width-1/16 VGG16 regression FPN) on ``root`` as a plain
    dict; overrides as ``section__key=value`` (``optim__epochs=3``) or top-level ``key=value``."""
    d = {"data": {"root": str(root), "sigma": 2.0, "flip": False, "noise_prob": 0.0},
         "model": {"variant": "regression", "width": 0.0625},
         "optim": {"lr": 1e-3, "epochs": 2, "batch_size": 2},
         "method": "fpn", "device": "cpu", "progress": False, "tensorboard": False}
    for key, value in kw.items():
        sec, _, name = key.rpartition("__")
        (d.setdefault(sec, {}) if sec else d)[name] = value
    return d


def tiny_train_config(root, out, **kw):
    """:func:`tiny_train_dict` as a validated TrainConfig writing to ``out``."""
    from autoscale.engine.config import config_from_dict

    return config_from_dict(tiny_train_dict(root, out=str(out), **kw))


def write_tiny_config(path, root, **kw):
    """:func:`tiny_train_dict` (no validation split) written to ``path`` as a config file (JSON is YAML)."""
    import json

    path.write_text(json.dumps(tiny_train_dict(root, data__val_split=None, **kw)))
    return path


def err_lines(capsys) -> list[str]:
    """The non-blank stderr lines captured so far."""
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
