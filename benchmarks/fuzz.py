"""Fuzz every input parser of autoscale with thousands of hypothesis examples per target.

The targets (annotation readers of every dataset format, the NWPU / eval-points file parsers, the
YAML config loader, the checkpoint loader) and their strategies live in ``fuzz_targets.py``, which
``tests/test_fuzz.py`` runs with a few dozen examples each. Here every target runs
``--examples`` inputs (default 2,000; derandomised, so a rerun draws the same inputs) without
stopping at the first failure: an input whose call raises anything but our own errors, runs code,
takes longer than ``--slow`` seconds or is interrupted after ``--hang`` seconds is counted and the
first few are described. Results: ``benchmarks/results/fuzz.json``
(``{"targets": {name: {"examples", "failures", "seconds", "slowest_s", "failing"}}, ...}``) and
``fuzz.md``.

    python benchmarks/fuzz.py                 # 2,000 examples per target (about 10 minutes)
    python benchmarks/fuzz.py --smoke         # 5 per target (seconds; the test suite runs this)
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_targets as ft  # noqa: E402

EXAMPLES = 2000
SMOKE_EXAMPLES = 5
RESULTS = Path(__file__).resolve().parent / "results"


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Fuzzing the input parsers",
        "",
        f"Command: `{r['command']}`; hypothesis {r['hypothesis']}, derandomised; {r['seconds']:.0f} s on "
        f"{m['machine']} ({m['cpu_count']} CPUs, shared; torch {m['torch']}, {m['torch_threads']} thread).",
        "",
        "Contract per input: the call raises one of autoscale's own errors (`DataError`, `ConfigError`, "
        "`CheckpointError`) or returns well-formed output; no other exception, no code run by a checkpoint, "
        f"no example slower than {r['slow_s']:g} s. Targets and strategies: `benchmarks/fuzz_targets.py`.",
        "",
        "| target | what is fed | examples | failures | seconds | slowest example (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, t in r["targets"].items():
        lines.append(f"| {name} | {ft.TARGETS[name].doc} | {t['examples']} | {t['failures']} | {t['seconds']:.1f} | "
                     f"{t['slowest_s']:.3f} |")
    lines += ["", f"Total: {r['examples']} examples, {r['failures']} failures."]
    failing = [(n, f) for n, t in r["targets"].items() for f in t["failing"]]
    if failing:
        lines += ["", "## Failing inputs (first few per target)", ""]
        lines += [f"- {n}: {f['problem']} -- input `{f['input'][:200]}`" for n, f in failing]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=EXAMPLES, help=f"examples per target (default {EXAMPLES})")
    ap.add_argument("--smoke", action="store_true", help=f"{SMOKE_EXAMPLES} examples per target (tests)")
    ap.add_argument("--targets", help=f"comma-separated subset of: {', '.join(ft.target_names())}")
    ap.add_argument("--slow", type=float, default=5.0, help="an example slower than this (s) is a failure")
    ap.add_argument("--hang", type=float, default=60.0, help="interrupt an example after this many seconds")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for fuzz.json / fuzz.md")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    names = ft.target_names() if not a.targets else [n.strip() for n in a.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in ft.TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {unknown}; choose from {', '.join(ft.target_names())}")
    n = SMOKE_EXAMPLES if a.smoke else a.examples

    import hypothesis
    import torch
    from _common import machine_info, write_results

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        result: dict[str, Any] = {"command": " ".join(["python benchmarks/fuzz.py", *argv_list]),
                                  "machine": machine_info(), "hypothesis": hypothesis.__version__,
                                  "examples_per_target": n, "slow_s": a.slow, "hang_s": a.hang, "targets": {}}
        for name in names:
            with warnings.catch_warnings():  # corrupt inputs make Pillow, torch and hypothesis warn by the thousand
                warnings.simplefilter("ignore")
                stats = ft.fuzz_collect(name, n, slow_s=a.slow, hang_s=a.hang)
            result["targets"][name] = stats
            if not a.quiet:
                print(f"{name}: {stats['examples']} examples, {stats['failures']} failures, {stats['seconds']:.1f} s "
                      f"(slowest {stats['slowest_s']:.3f} s)", flush=True)
    finally:
        torch.set_num_threads(threads)
    result["examples"] = sum(t["examples"] for t in result["targets"].values())
    result["failures"] = sum(t["failures"] for t in result["targets"].values())
    result["seconds"] = round(time.perf_counter() - t0, 2)
    write_results(a.out, "fuzz", result, markdown(result))
    return result


if __name__ == "__main__":
    res = main()
    sys.exit(1 if res["failures"] else 0)
