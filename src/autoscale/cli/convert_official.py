"""``autoscale convert-official``: convert the authors' released checkpoints to ours (and back).

    autoscale convert-official SRC --variant {regression,localization} --out DST
    autoscale convert-official OURS.pth --variant regression --out OFFICIAL.pth --to-official

The output is written atomically (temporary file in the destination folder + ``os.replace``).
"""
from __future__ import annotations

import argparse

from autoscale.errors import CheckpointError


def _handler(args: argparse.Namespace) -> int:
    from autoscale.engine.checkpoint import save_atomic
    from autoscale.models.official import convert_official, to_official
    from autoscale.models.registry import load_checkpoint

    if args.to_official:
        ckpt = load_checkpoint(args.src)
        if ckpt["variant"] != args.variant:
            raise CheckpointError(f"{args.src}: a {ckpt['variant']} checkpoint, not {args.variant}")
        try:
            result = to_official(ckpt, fill_unused=args.fill_unused)
        except CheckpointError as exc:
            raise CheckpointError(f"{args.src}: {exc}") from exc
        save_atomic(result, args.out)
        print(f"wrote official {args.variant} checkpoint {args.out} ({len(result['state_dict'])} tensors)")
        return 0
    ckpt = convert_official(args.src, args.variant)
    save_atomic(ckpt, args.out)
    n = sum(v.numel() for v in ckpt["state_dict"].values())
    l2s = "with" if ckpt["l2s_state_dict"] is not None else "without"
    print(f"wrote {args.variant} checkpoint {args.out}: {len(ckpt['state_dict'])} tensors ({n:,} values), "
          f"{l2s} L2S weights, {len(ckpt['official_unused'])} unused official tensors kept")
    return 0


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Add ``convert-official``."""
    p = subparsers.add_parser(
        "convert-official",
        help=summary,
        description="Convert an authors' AutoScale checkpoint (model_best.pth) to autoscale's format, or back.",
    )
    p.add_argument("src", help="the authors' model_best.pth (or ours, with --to-official)")
    p.add_argument("--variant", required=True, choices=["regression", "localization"])
    p.add_argument("--out", required=True, help="destination file (written atomically)")
    p.add_argument("--to-official", action="store_true", help="convert one of our checkpoints back to the authors' layout")
    p.add_argument("--fill-unused", action="store_true",
                   help="with --to-official: write zeros for the authors' unused modules when the checkpoint lacks them")
    p.set_defaults(func=_handler)
