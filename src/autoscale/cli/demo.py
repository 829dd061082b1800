"""``autoscale demo``: the main job (synthetic data -> train FPN and AutoScale -> report)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Add the top-level ``demo`` command."""
    p = subparsers.add_parser(
        "demo",
        help=summary,
        description="Draw a synthetic crowd dataset, train fpn/autoscale x regression/localization "
                    "from scratch for a fixed budget, evaluate on the test split and write "
                    "OUT/report.md, OUT/results.json and OUT/checkpoints/*.pt.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    p.add_argument("--train-seed", type=int, default=None,
                   help="training seed (default: --seed): other training runs on the same data, to see how much "
                        "of the difference between the models is the run's")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run with tiny images (for testing)")
    p.add_argument("--workers", type=int, default=1, help="processes for drawing the images (default 1)")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs of both variants")
    p.add_argument("--jobs", type=int, choices=(1, 2), default=None,
                   help="train the regression and localization pairs in 2 processes at once, or 1 after "
                        "the other (default: 2 on a machine with 2+ CPUs; the same models either way)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1: faster than 2 for the demo's small images)")
    p.add_argument("--no-figures", action="store_true", help="skip the matplotlib figures")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from autoscale.demo import BUDGETS, default_jobs, run_demo

    budget = "smoke" if args.smoke else "default"
    overrides: dict = {} if args.threads is None else {"threads": args.threads}
    if args.epochs is not None:
        b = BUDGETS[budget]
        branch = min(b.branch_epoch, max(0, args.epochs - 1))
        overrides |= {"epochs": args.epochs, "branch_epoch": branch,
                      "loc_epochs": args.epochs, "loc_branch_epoch": branch}
    run_demo(args.out, seed=args.seed, train_seed=args.train_seed, budget=budget, workers=max(1, args.workers),
             jobs=args.jobs or default_jobs(),
             figures=not args.no_figures, verbose=not args.quiet, **overrides)
    return 0
