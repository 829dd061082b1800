"""Benchmark: NWPU-Crowd val localization scoring, our matcher vs the official-style scorer.

Ours: :func:`autoscale.metrics.nwpu.score_loc` (KD-tree candidate pairs, sparse graph,
``scipy.sparse.csgraph.maximum_bipartite_matching``), both thresholds (sigma_s, sigma_l).
Reference: what the official ``eval/eval.py`` does, written here independently: a dense
``scipy.spatial.distance_matrix`` per image, a boolean match matrix against each GT point's sigma,
and a pure-Python Kuhn augmenting-path matching (iterative DFS, so deep chains cannot overflow
the stack). Both must give identical TP/FP/FN per image; the script fails otherwise.

    python benchmarks/bench_matching.py                       # full NWPU val, writes results
    python benchmarks/bench_matching.py --limit 5 --out-dir /tmp/x

Writes ``<out-dir>/matching.json`` and ``matching.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from scipy.spatial import distance_matrix

from autoscale.io import atomic_write_text
from autoscale.metrics.localization import match_points_multi
from autoscale.metrics.nwpu import read_loc_gt, read_loc_pred

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("AUTOSCALE_SHARED_DATA", ROOT.parent / "shared" / "data"))
SEED = 0  # nothing random here; recorded for the results schema


def kuhn_max_matching(adj: list[list[int]], n_right: int) -> int:
    """Maximum bipartite matching size by Kuhn's augmenting paths (pure Python, iterative DFS).

    ``adj[u]``: right vertices adjacent to left vertex ``u``.
    """
    match_right = [-1] * n_right
    size = 0
    for root in range(len(adj)):
        if not adj[root]:
            continue
        visited = [False] * n_right
        # stack of (left vertex, next neighbour position); parent[v] = left vertex that reached v
        stack = [[root, 0]]
        via: list[int] = []  # right vertex taken from each stack frame (aligned with stack[1:])
        found = False
        while stack:
            frame = stack[-1]
            u, pos = frame
            nbrs = adj[u]
            if pos == len(nbrs):
                stack.pop()
                if via:
                    via.pop()
                continue
            frame[1] = pos + 1
            v = nbrs[pos]
            if visited[v]:
                continue
            visited[v] = True
            if match_right[v] == -1:
                # augment along the stack: stack[i][0] takes via[i] (via[-1] := v)
                via.append(v)
                for (lu, _), rv in zip(stack, via):
                    match_right[rv] = lu
                found = True
                break
            via.append(v)
            stack.append([match_right[v], 0])
        if found:
            size += 1
    return size


def reference_counts(pred: np.ndarray, gt_pts: np.ndarray, sigma: np.ndarray) -> tuple[int, int, int]:
    """TP, FP, FN the official way: dense distances, boolean matrix, Kuhn matching."""
    n_p, n_g = len(pred), len(gt_pts)
    if n_p == 0 or n_g == 0:
        return 0, n_p, n_g
    dist = distance_matrix(pred, gt_pts, p=2)
    match = dist <= sigma[None, :]
    adj: list[list[int]] = [[] for _ in range(n_p)]
    for i, j in np.argwhere(match).tolist():
        adj[i].append(j)
    tp = kuhn_max_matching(adj, n_g)
    return tp, n_p - tp, n_g - tp


def _micro(rows: list[tuple[int, int, int]]) -> dict[str, float]:
    tp, fp, fn = (int(sum(r[k] for r in rows)) for k in range(3))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "fp": fp, "fn": fn}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gt", default=str(DEFAULT_DATA / "eval_reference/nwpu_val/val_gt_loc.txt"))
    ap.add_argument("--pred", default=str(DEFAULT_DATA / "eval_reference/nwpu_val/pred_raz_loc.txt"))
    ap.add_argument("--limit", type=int, default=0, help="score only the first N GT images (0 = all)")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats for our matcher (best kept)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    gt = read_loc_gt(args.gt)
    pred = read_loc_pred(args.pred)
    t_parse = time.perf_counter() - t0
    ids = list(gt)[: args.limit] if args.limit > 0 else list(gt)
    empty = np.zeros((0, 2))
    kinds = ("small", "large")

    def ours() -> list[list[tuple[int, int, int]]]:
        per = [[], []]
        for i in ids:
            g = gt[i]
            for k, r in enumerate(match_points_multi(pred.get(i, empty), g.points, [g.sigma_s, g.sigma_l])):
                per[k].append((r.tp, r.fp, r.fn))
        return per

    best = float("inf")
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        ours_rows = ours()
        best = min(best, time.perf_counter() - t0)

    t0 = time.perf_counter()
    ref_rows: list[list[tuple[int, int, int]]] = [[], []]
    for i in ids:
        g = gt[i]
        p = pred.get(i, empty)
        for k, sig in enumerate((g.sigma_s, g.sigma_l)):
            ref_rows[k].append(reference_counts(p, g.points, sig))
    t_ref = time.perf_counter() - t0

    # What a user runs: one `autoscale eval-points` call for both thresholds, from the shell
    # (interpreter start-up, imports, parsing, matching, JSON out). Only on the whole file.
    cli_s, cli_ok = None, None
    if args.limit <= 0:
        cmd = [sys.executable, "-m", "autoscale", "eval-points", "--gt", str(args.gt), "--pred", str(args.pred),
               "--sigma", "small", "large", "--json"]
        cli_s = float("inf")
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            cli_s = min(cli_s, time.perf_counter() - t0)
        cli = json.loads(proc.stdout)
        cli_ok = all(cli[k][f] == _micro(ref_rows[j])[f] for j, k in enumerate(kinds) for f in ("tp", "fp", "fn"))

    mismatches = [(ids[j], kinds[k]) for k in range(2) for j in range(len(ids))
                  if ours_rows[k][j] != ref_rows[k][j]]
    metrics = {kind: _micro(ours_rows[k]) for k, kind in enumerate(kinds)}
    result = {
        "benchmark": "matching",
        "command": " ".join(["python benchmarks/bench_matching.py", *(sys.argv[1:] if argv is None else argv)]),
        "seed": SEED,
        "data": {"gt": str(args.gt), "pred": str(args.pred), "n_images": len(ids)},
        "seconds": {
            "ours_matching_both_thresholds": best,
            "ours_parse_files": t_parse,
            "ours_total": best + t_parse,
            "reference_kuhn_both_thresholds": t_ref,
            "cli_end_to_end_both_thresholds": cli_s,
        },
        "speedup_matching": t_ref / best if best > 0 else float("inf"),
        # official-style scorer (parse + match) over one `autoscale eval-points --sigma small large` call
        "speedup_end_to_end": (t_ref + t_parse) / cli_s if cli_s else None,
        "target_end_to_end": 20.0,
        "cli_command": "autoscale eval-points --gt GT --pred PRED --sigma small large --json",
        "cli_matches_reference": cli_ok,
        "identical_tp_fp_fn": not mismatches,
        "mismatches": [list(m) for m in mismatches[:20]],
        "metrics": metrics,
        "environment": {"python": platform.python_version(), "numpy": np.__version__,
                        "scipy": scipy.__version__, "machine": platform.machine(),
                        "cpu_count": os.cpu_count()},
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "matching.json", json.dumps(result, indent=2) + "\n")
    s = result["seconds"]
    md = [
        "# Localization matching benchmark (NWPU-Crowd val, RAZ_loc predictions)",
        "",
        f"Command: `{result['command']}`; images: {len(ids)}; thresholds: sigma_s and sigma_l.",
        "",
        "| scorer | seconds (both thresholds) |",
        "|---|---|",
        f"| ours: KD-tree + sparse Hopcroft-Karp (`match_points_multi`) | {s['ours_matching_both_thresholds']:.3f} |",
        f"| ours incl. parsing both files | {s['ours_total']:.3f} |",
        f"| reference: dense distance matrix + pure-Python Kuhn DFS (official style) | {s['reference_kuhn_both_thresholds']:.3f} |",
    ]
    if s["cli_end_to_end_both_thresholds"] is not None:
        md += [
            f"| `{result['cli_command']}` from the shell (start-up, parsing, matching, output) | "
            f"{s['cli_end_to_end_both_thresholds']:.3f} |",
            "",
            f"End to end: **{result['speedup_end_to_end']:.1f}x** the official-style scorer (parsing + matching) "
            f"(target >= {result['target_end_to_end']:.0f}x); the command's TP/FP/FN equal the reference's: "
            f"**{result['cli_matches_reference']}**.",
        ]
    md += [
        "",
        f"Speed-up (matching): **{result['speedup_matching']:.1f}x**. "
        f"Identical TP/FP/FN on every image: **{result['identical_tp_fp_fn']}**.",
        "",
        "| threshold | P | R | F1 | TP | FP | FN |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, m in metrics.items():
        md.append(f"| {kind} | {m['precision']:.5f} | {m['recall']:.5f} | {m['f1']:.5f} | "
                  f"{m['tp']} | {m['fp']} | {m['fn']} |")
    env = result["environment"]
    md += ["", f"Python {env['python']}, numpy {env['numpy']}, scipy {env['scipy']}, "
               f"{env['machine']}, {env['cpu_count']} CPUs (shared). Timings: best of "
               f"{max(1, args.repeat)} runs for ours, one run for the reference."]
    atomic_write_text(out / "matching.md", "\n".join(md) + "\n")
    print(json.dumps({"seconds": s, "speedup_matching": result["speedup_matching"],
                      "speedup_end_to_end": result["speedup_end_to_end"],
                      "identical_tp_fp_fn": result["identical_tp_fp_fn"], "metrics": metrics}, indent=2))
    if mismatches:
        print(f"MISMATCH on {len(mismatches)} image/threshold pairs, e.g. {mismatches[:5]}", file=sys.stderr)
    return result


if __name__ == "__main__":
    res = main()
    sys.exit(0 if res["identical_tp_fp_fn"] else 1)
