"""Evaluation protocols: counting (MAE/RMSE/NAE, GAME, groups), localization (matching, P/R/F1,
thresholds) and the NWPU-Crowd evaluation file formats."""
from __future__ import annotations

from autoscale.metrics.counting import (
    counting_metrics,
    game,
    game_metrics,
    game_split_edges,
    grouped_counting_metrics,
    jhu_density_group,
    mean_group_mae,
    nwpu_counting_report,
)
from autoscale.metrics.localization import (
    BoxSigmas,
    MatchResult,
    fixed_thresholds,
    head_size_level,
    knn_thresholds,
    localization_metrics,
    match_points,
    match_points_multi,
    nwpu_sigmas_from_boxes,
    per_level_recall,
    qnrf_average_metrics,
)
from autoscale.metrics.nwpu import (
    LocGT,
    read_counts,
    read_loc_gt,
    read_loc_pred,
    read_nwpu_meta,
    score_loc,
    write_counts,
    write_loc_gt,
    write_loc_pred,
)

__all__ = [
    "counting_metrics", "game", "game_metrics", "game_split_edges", "grouped_counting_metrics",
    "jhu_density_group", "mean_group_mae", "nwpu_counting_report",
    "BoxSigmas", "MatchResult", "fixed_thresholds", "head_size_level", "knn_thresholds",
    "localization_metrics", "match_points", "match_points_multi", "nwpu_sigmas_from_boxes",
    "per_level_recall", "qnrf_average_metrics",
    "LocGT", "read_counts", "read_loc_gt", "read_loc_pred", "read_nwpu_meta", "score_loc", "write_counts",
    "write_loc_gt", "write_loc_pred",
]
