"""CLI command module (to be filled in): see autoscale.cli for the registration protocol."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this command's parser to subparsers (not implemented yet)."""
