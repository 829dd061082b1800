"""The bundled training presets: one YAML file per preset in this folder (``autoscale train
--list-presets``). Kept free of heavy imports so listing them starts fast; loading and checking a
config is :mod:`autoscale.engine.config`."""
from __future__ import annotations

from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent


def list_presets() -> list[str]:
    """Names of the bundled presets (``src/autoscale/configs/*.yaml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
