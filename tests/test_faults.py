"""Numerical and disk faults in training (issue 10, item 5; docs/reliability.md).

* A non-finite loss or gradient: ``optim.nonfinite=stop`` (default) ends training with one line
  naming the epoch, step and image(s), the checkpoints on disk byte-for-byte as the last epoch left
  them; ``skip`` leaves the step out (no optimiser step), counts it per epoch in the history
  (``skipped``), warns once per skipped step, resumes exactly, and stops when a whole epoch is
  skipped. Poisoned steps come from a monkeypatched dataset (a NaN target for one image in one
  epoch) or a loss whose backward pass gives an infinite gradient at a chosen call.
* A checkpoint write that fails (``torch.save`` raising ENOSPC or torch's own write error) leaves
  the previous ``last.pt`` valid, no ``.tmp`` behind, and one error line (exit 2 from the CLI).
"""
from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

import autoscale.engine.trainer as trainer_mod
from autoscale.cli import main as cli_main
from autoscale.data.formats import read_dataset
from autoscale.engine.checkpoint import load_training_checkpoint
from autoscale.engine.dataset import CrowdDataset
from autoscale.engine.trainer import train
from autoscale.errors import AutoScaleError
from conftest import err_lines, tiny_train_config, write_tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
_cfg = tiny_train_config


# ------------------------------------------------------------------------------------ helpers
def _order(n: int, epoch: int, seed: int = 0) -> list[int]:
    """The trainer's data order in ``epoch`` (one process): DistributedSampler(seed).set_epoch."""
    s = DistributedSampler(list(range(n)), num_replicas=1, rank=0, shuffle=True, seed=seed)
    s.set_epoch(epoch)
    return list(s)


def _poison(monkeypatch, names: set[str], epoch: int) -> None:
    """Training samples of ``names`` get an all-NaN target in ``epoch`` (0-based): a NaN loss."""
    orig = CrowdDataset.__getitem__

    def getitem(self, index):
        s = orig(self, index)
        if self.train and self.epoch == epoch and s["name"] in names:
            s["target"] = torch.full_like(s["target"], math.nan)
        return s

    monkeypatch.setattr(CrowdDataset, "__getitem__", getitem)


def _snapshots(out: Path, seen: dict[int, dict[str, bytes]]):
    """An on_epoch callback keeping the bytes of every checkpoint in ``out`` after each epoch."""
    def on_epoch(row):
        seen[row["epoch"]] = {p.name: p.read_bytes() for p in sorted(out.glob("*.pt"))}
    return on_epoch


# -------------------------------------------------------------------------- non-finite loss
def test_nonfinite_loss_stops_with_one_line_and_keeps_checkpoints(synth, tmp_path, monkeypatch, capsys):
    recs = read_dataset("generic", synth, "train")
    victim = recs[_order(4, 1)[3]]  # epoch 2, batch 2 of 2, second image: global step 4
    _poison(monkeypatch, {victim.name}, epoch=1)
    out, seen = tmp_path / "stop", {}
    with pytest.raises(AutoScaleError) as ei:
        train(_cfg(synth, out, optim__epochs=3), on_epoch=_snapshots(out, seen))
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{victim.image_path}: non-finite training loss (nan)")
    assert "epoch 2, step 4 (batch 2 of 2)" in msg and f"{out / 'last.pt'} holds epoch 1, step 2" in msg
    assert "optim.nonfinite=skip" in msg
    # nothing written after epoch 1: last.pt and best.pt are byte-for-byte what epoch 1 left
    assert set(seen) == {1} and {p.name: p.read_bytes() for p in out.glob("*.pt")} == seen[1]
    assert set(seen[1]) == {"best.pt", "last.pt"} and not list(out.glob("*.tmp"))
    assert load_training_checkpoint(out / "last.pt")["epoch"] == 1
    # the CLI: exit 2, that one line
    cfg = write_tiny_config(tmp_path / "c.yaml", synth, optim__epochs=3)
    capsys.readouterr()
    assert cli_main(["train", "--config", str(cfg), "--out", str(tmp_path / "cli")]) == 2
    lines = err_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"autoscale: error: {victim.image_path}: non-finite training loss")
    assert load_training_checkpoint(tmp_path / "cli" / "last.pt")["epoch"] == 1


def test_nonfinite_skip_counts_warns_and_resumes_exactly(synth, tmp_path, monkeypatch, capsys):
    recs = read_dataset("generic", synth, "train")
    victim = recs[_order(4, 1)[0]]  # epoch 2, batch 1 of 2: global step 3
    _poison(monkeypatch, {victim.name}, epoch=1)
    kw = dict(optim__epochs=3, optim__nonfinite="skip", data__val_split=None)
    capsys.readouterr()
    straight = train(_cfg(synth, tmp_path / "a", **kw))
    warnings = [ln for ln in err_lines(capsys) if "warning" in ln]
    assert warnings == [f"autoscale train: warning: skipped epoch 2, step 3 (batch 1 of 2): non-finite training "
                        f"loss (nan) for {victim.image_path}"]
    assert straight.step == 6 and [r["skipped"] for r in straight.history] == [0, 1, 0]
    losses = np.array(straight.step_losses)
    assert np.isnan(losses[2]) and np.isfinite(np.delete(losses, 2)).all()
    assert [r["skipped"] for r in json.loads((tmp_path / "a" / "history.json").read_text())] == [0, 1, 0]
    ck = load_training_checkpoint(straight.last_checkpoint)
    assert ck["step"] == 6 and {int(s["step"]) for s in ck["optimizer"]["state"].values()} == {5}  # 5 Adam steps
    assert all(torch.isfinite(t).all() for t in ck["state_dict"].values())
    # stop right after the skipped step (mid-epoch, max_steps), resume: the same run
    first = train(_cfg(synth, tmp_path / "b", optim__max_steps=3, **kw))
    assert first.step == 3 and load_training_checkpoint(first.last_checkpoint)["skipped_in_epoch"] == 1
    rest = train(_cfg(synth, tmp_path / "b", **kw), resume=True)
    np.testing.assert_array_equal(first.step_losses + rest.step_losses, straight.step_losses)
    assert [r["skipped"] for r in rest.history] == [0, 1, 0]
    a, b = torch.load(straight.last_checkpoint), torch.load(rest.last_checkpoint)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_skip_stops_when_a_whole_epoch_is_skipped(synth, tmp_path, monkeypatch, capsys):
    recs = read_dataset("generic", synth, "train")
    _poison(monkeypatch, {r.name for r in recs}, epoch=1)
    out, seen = tmp_path / "all", {}
    capsys.readouterr()
    with pytest.raises(AutoScaleError, match=r"every step of epoch 2 had a non-finite loss or gradient \(2 skipped"):
        train(_cfg(synth, out, optim__epochs=3, optim__nonfinite="skip", data__val_split=None),
              on_epoch=_snapshots(out, seen))
    assert len([ln for ln in err_lines(capsys) if "warning: skipped" in ln]) == 2
    assert set(seen) == {1} and {p.name: p.read_bytes() for p in out.glob("*.pt")} == seen[1]


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, math.inf)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_gradient_with_a_finite_loss(synth, tmp_path, monkeypatch, capsys, mode):
    """A finite loss whose gradient is infinite (the 8th image's, the last step of epoch 2) is
    caught before the optimiser step: no weights ever become NaN."""
    calls = {"n": 0}
    orig = trainer_mod.pixel_loss

    def pixel_loss(variant, pred, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            pred = pred._replace(final=_InfGrad.apply(pred.final))
        return orig(variant, pred, *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "pixel_loss", pixel_loss)
    out = tmp_path / mode
    cfg = _cfg(synth, out, optim__epochs=3, optim__nonfinite=mode, data__val_split=None)
    capsys.readouterr()
    if mode == "stop":
        with pytest.raises(AutoScaleError, match=r"non-finite training gradient at epoch 2, step 4 \(batch 2 of 2\)"):
            train(cfg)
        assert load_training_checkpoint(out / "last.pt")["epoch"] == 1
        return
    res = train(cfg)
    assert [r["skipped"] for r in res.history] == [0, 1, 0] and np.isfinite(res.step_losses[4:]).all()
    assert any("non-finite training gradient" in ln for ln in err_lines(capsys))


# ---------------------------------------------------------------------------- disk full
def _failing_save(monkeypatch, fail_from: int, exc: Exception) -> dict[str, int]:
    """torch.save fails (after writing a few bytes) from its ``fail_from``-th call on."""
    calls = {"n": 0}
    orig = torch.save

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] < fail_from:
            return orig(obj, f, *a, **k)
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise exc

    monkeypatch.setattr(torch, "save", save)
    return calls


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                                 RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter "
                                              "failed writing file data/3: file write failed")],
                         ids=["ENOSPC", "torch_writer"])
def test_failed_checkpoint_write_keeps_the_previous_one(synth, tmp_path, monkeypatch, capsys, exc):
    out, seen = tmp_path / "full", {}
    _failing_save(monkeypatch, fail_from=2, exc=exc)  # epoch 1's last.pt is written, epoch 2's is not
    with pytest.raises(AutoScaleError) as ei:
        train(_cfg(synth, out, optim__epochs=3, data__val_split=None), on_epoch=_snapshots(out, seen))
    msg = str(ei.value)
    reason = "No space left on device" if isinstance(exc, OSError) else "file write failed"
    assert "\n" not in msg and msg.startswith(f"{out / 'last.pt'}: cannot write checkpoint (")
    assert reason in msg and "the previous last.pt is intact; training stopped at epoch 2, step 4" in msg
    assert f"{out / 'last.pt'} holds epoch 1, step 2" in msg
    assert not list(out.glob("*.tmp")) and (out / "last.pt").read_bytes() == seen[1]["last.pt"]
    assert load_training_checkpoint(out / "last.pt")["epoch"] == 1
    # the very first write failing: no last.pt at all, and the line says so; the CLI exits 2
    monkeypatch.undo()
    _failing_save(monkeypatch, fail_from=1, exc=exc)
    cfg = write_tiny_config(tmp_path / "c.yaml", synth)
    capsys.readouterr()
    assert cli_main(["train", "--config", str(cfg), "--out", str(tmp_path / "cli")]) == 2
    lines = err_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"autoscale: error: {tmp_path / 'cli' / 'last.pt'}: cannot write")
    assert "no last.pt was written" in lines[0]
    assert not (tmp_path / "cli" / "last.pt").exists() and not list((tmp_path / "cli").glob("*.tmp"))


def test_partial_files_of_a_killed_write_are_cleared_on_the_next_start(synth, tmp_path):
    """A process killed inside an atomic write leaves ``.<name>.<random>.tmp`` (as large as the
    model for a checkpoint). The next start removes them: on resume, and in a folder where the kill
    came before run.json was in place (that folder counts as empty, not as a foreign one)."""
    out = tmp_path / "run"
    train(_cfg(synth, out, optim__epochs=1))
    stale = [out / ".last.pt.k1ll3d.tmp", out / ".history.json.x.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    res = train(_cfg(synth, out, optim__epochs=2), resume=True)
    assert res.epoch == 2 and not any(p.exists() for p in stale)
    assert load_training_checkpoint(out / "last.pt")["epoch"] == 2

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".run.json.a1b2.tmp").write_text("{")
    train(_cfg(synth, fresh, optim__epochs=1))
    assert (fresh / "run.json").is_file() and not list(fresh.glob(".*.tmp"))
