"""CLI start-up: commands that run no network never import torch (checked in a fresh interpreter
through ``sys.modules``); the command list shows every command without importing any of them (the
shared argument types, ``autoscale.cli.argtypes``, are light and allowed)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autoscale.cli import COMMANDS, GROUP_HELP

PROBE = """
import json, sys
from autoscale.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
mods = [m for m in ("torch", "autoscale.models", "autoscale.pipeline") if m in sys.modules]
cli = sorted(m for m in sys.modules if m.startswith("autoscale.cli.") and m != "autoscale.cli.argtypes")
print(json.dumps({"rc": rc, "modules": mods, "cli": cli}), file=sys.stderr)
"""


def _probe(*argv: str, cwd=None) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120, cwd=cwd)
    *rest, last = proc.stderr.strip().splitlines()
    return json.loads(last), proc.stdout


@pytest.mark.parametrize("argv", [
    ["--help"], ["eval-points", "--help"], ["data", "--help"], ["data", "stats", "--help"],
    ["data", "synth", "--help"], ["data", "targets", "--help"], ["train", "--list-presets"], ["train", "--help"],
    ["predict", "--help"], ["evaluate", "--help"], ["export", "--help"], ["demo", "--help"],
    ["convert-official", "--help"],
], ids=" ".join)
def test_commands_that_run_no_network_do_not_import_torch(argv):
    res, out = _probe(*argv)
    assert res["rc"] == 0 and res["modules"] == [], res
    if argv == ["train", "--list-presets"]:
        assert "shanghaitech_b_fpn_regression_lite0" in out.split()
    if argv == ["--help"]:
        assert res["cli"] == []  # no command module imported just to list them
        for cmd in COMMANDS:  # every command listed with its summary although none was imported
            assert (cmd.group or cmd.name) in out
        assert " ".join(GROUP_HELP["data"].split()[:3]) in " ".join(out.split())


def test_data_and_eval_commands_run_without_torch(tmp_path):
    res, _ = _probe("data", "synth", "--out", str(tmp_path / "d"), "--n", "2", "--size", "48x64")
    assert res["rc"] == 0 and res["modules"] == [], res
    res, out = _probe("data", "stats", "--format", "generic", "--root", str(tmp_path / "d"), "--split", "train")
    assert res["rc"] == 0 and res["modules"] == [] and "heads" in out, res
    gt, pred = tmp_path / "gt.txt", tmp_path / "pred.txt"
    gt.write_text("1 2 10 10 4 8 1 20 20 4 8 1\n")
    pred.write_text("1 1 11 10\n")
    res, out = _probe("eval-points", "--gt", str(gt), "--pred", str(pred), "--sigma", "small", "large", "--json")
    assert res["rc"] == 0 and res["modules"] == [], res
    assert {k: v["tp"] for k, v in json.loads(out).items()} == {"small": 1, "large": 1}


def test_a_network_command_imports_only_what_it_runs(tmp_path):
    """`train` still works (its module is imported on demand), and an unknown command lists them."""
    res, _ = _probe("train")  # no --config: one error line, exit 2, the trainer never imported
    assert res["rc"] == 2 and res["modules"] == [] and res["cli"] == ["autoscale.cli.train"]
    proc = subprocess.run([sys.executable, "-m", "autoscale", "no-such-command"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "eval-points" in proc.stderr
