#!/usr/bin/env python3
"""Set up a virtual environment and run the main job or the tests.

Usage (only Python >= 3.10 needed):

    python3 dev.py demo [ARGS...]   # set up .venv, then run the main job
    python3 dev.py test [ARGS...]   # set up .venv with dev extras, then run pytest

The environment lives in ``.venv`` beside this file (override with AUTOSCALE_VENV).
torch is installed as ``torch==2.13.0`` (CPU build where the index provides one) only
when the environment has no torch yet; an existing torch is kept.
"""
from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("AUTOSCALE_VENV", ROOT / ".venv"))
TORCH_PIN = "torch==2.13.0"


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(cmd: list[str]) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def _has(py: Path, module: str) -> bool:
    return subprocess.run([str(py), "-c", f"import {module}"], capture_output=True).returncode == 0


def setup(extras: str) -> Path:
    py = _python()
    if not py.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not _has(py, "torch"):
        _run([py, "-m", "pip", "install", "-q", TORCH_PIN])
    _run([py, "-m", "pip", "install", "-q", "-e", f".[{extras}]"])
    return py


# Idle OpenMP threads sleep instead of spinning (spinning slows torch many-fold when another job
# holds a core); an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 2
    job, rest = argv[0], argv[1:]
    if job == "test":
        py = setup("dev,viz,onnx,pretrained,serve")
        return subprocess.run([str(py), "-m", "pytest", "-q", *rest], cwd=ROOT).returncode
    py = setup("viz,pretrained")
    if job == "setup":
        return 0
    return subprocess.run([str(py), "-m", "autoscale", *(rest or ["demo", "--out", "demo_out"])], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
