"""``autoscale train``: train a counter (FPN baseline or AutoScale) from a config file or preset.

Examples::

    autoscale train --list-presets
    autoscale train --config shanghaitech_b_autoscale_regression data.root=/data/ShanghaiTech/part_B \\
        model.imagenet=/weights/vgg16.pth --out runs/shb
    autoscale train --config my.yaml optim.epochs=50 --resume          # continue runs/.../last.pt
    torchrun --nproc_per_node 4 -m autoscale train --config ...          # multi-GPU (DDP)
    torchrun --nproc_per_node 4 --max-restarts 3 -m autoscale train --config ... --resume auto

Ctrl-C (SIGINT) or SIGTERM saves ``last.pt`` and exits with code 130; ``--resume`` continues exactly.
Under ``torchrun --max-restarts N``, when a rank dies the restarted worker group continues the
run's own ``last.pt`` (the last finished epoch) by itself; ``--resume auto`` also lets a new
launch (or a multi-node restart that moved rank 0) continue ``last.pt`` when it exists.
"""
from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    p = subparsers.add_parser("train", help=summary,
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="CONFIG", help="YAML config file or preset name (see --list-presets)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. data.root=/data optim.lr=1e-5 data.crop=[256,256]")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH",
                   help="continue from OUT/last.pt, or from the checkpoint PATH; '--resume auto' continues "
                        "OUT/last.pt when it exists and starts a new run when not (a checkpoint named 'auto': "
                        "write ./auto)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override the config's device")
    p.add_argument("--out", metavar="DIR", help="override the config's output folder")
    p.add_argument("--skip-unannotated", action="store_true",
                   help="leave out images that have no annotation file (stray files in a dataset folder), "
                        "with a one-line notice, instead of stopping with an error (= data.skip_unannotated=true)")
    p.add_argument("--list-presets", action="store_true", help="list the bundled presets and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list_presets:
        from autoscale.configs import list_presets

        print("\n".join(list_presets()))
        return 0
    if not args.config:
        print("autoscale train: error: --config CONFIG (a YAML file or a preset name) is required", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.out:
        overrides.append(f"out={args.out}")
    if args.skip_unannotated:
        overrides.append("data.skip_unannotated=true")
    from autoscale.engine.config import load_config
    from autoscale.engine.trainer import train

    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume)
    if result.interrupted:
        return 130
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports for the job
        return 0
    last = result.history[-1] if result.history else {}
    msg = f"autoscale train: done, {result.epoch} epochs, {result.step} steps"
    skipped = sum(int(r.get("skipped", 0)) for r in result.history if r.get("source") != "init_from")
    if skipped:
        msg += f" ({skipped} skipped for a non-finite loss or gradient)"
    msg += f"; last checkpoint {result.last_checkpoint}"
    if result.best_checkpoint is not None and "val_mae" in last:
        best = min(r["val_mae"] for r in result.history if "val_mae" in r)
        msg += f"; best val MAE {best:.3f} in {result.best_checkpoint}"
    print(msg, file=sys.stderr)
    return 0
