"""Evaluation protocols: counting (MAE/RMSE/NAE, GAME, groups), localization (matching, P/R/F1,
thresholds) and the NWPU-Crowd evaluation file formats.

The names below are loaded from their submodule on first use (PEP 562), so importing one
submodule, e.g. :mod:`autoscale.metrics.nwpu` for the file readers, does not import SciPy's
sparse graph and KD-tree modules that only the matching needs.
"""
from __future__ import annotations

import importlib
from typing import Any

_SUBMODULE = {
    "counting": ["counting_metrics", "game", "game_metrics", "game_split_edges", "grouped_counting_metrics",
                 "jhu_density_group", "mean_group_mae", "nwpu_counting_report"],
    "localization": ["BoxSigmas", "MatchResult", "fixed_thresholds", "head_size_level", "knn_thresholds",
                     "localization_metrics", "match_points", "match_points_multi", "nwpu_sigmas_from_boxes",
                     "per_level_recall", "qnrf_average_metrics"],
    "nwpu": ["LocGT", "read_counts", "read_loc_gt", "read_loc_pred", "read_nwpu_meta", "score_loc",
             "write_counts", "write_loc_gt", "write_loc_pred"],
}
_WHERE = {name: mod for mod, names in _SUBMODULE.items() for name in names}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'autoscale.metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"autoscale.metrics.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
