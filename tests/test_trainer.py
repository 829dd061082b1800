"""Training dataset (augmentation invariants) and engine (learning, exact resume, SIGINT, CLI)."""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from autoscale import targets as T
from autoscale.cli import main as cli_main
from autoscale.data.formats import read_dataset
from autoscale.engine.checkpoint import load_training_checkpoint
from autoscale.engine.dataset import CrowdDataset, collate
from autoscale.engine.trainer import train
from autoscale.errors import AutoScaleError, CheckpointError
from autoscale.models.registry import build_from_checkpoint
from conftest import tiny_train_config


pytestmark = pytest.mark.usefixtures("one_thread")
_cfg = tiny_train_config


# ------------------------------------------------------------------------------------- dataset
def _records(root):
    return read_dataset("generic", root, "train")


def test_flip_maps_points_and_target(synth):
    rec = _records(synth)
    plain = CrowdDataset(rec, "regression", sigma=2.0)[0]
    aug = CrowdDataset(rec, "regression", sigma=2.0, train=True, flip=True, seed=3)
    seen = set()
    for epoch in range(12):
        aug.set_epoch(epoch)
        s = aug[0]
        flipped = torch.equal(s["image"], torch.flip(plain["image"], [-1]))
        assert flipped or torch.equal(s["image"], plain["image"])
        seen.add(flipped)
        if flipped:
            W = plain["image"].shape[-1]
            np.testing.assert_allclose(s["points"][:, 0], W - plain["points"][:, 0], atol=1e-9)
            np.testing.assert_array_equal(s["points"][:, 1], plain["points"][:, 1])
            torch.testing.assert_close(s["target"], torch.flip(plain["target"], [-1]), rtol=0, atol=1e-6)
    assert seen == {True, False}


def test_flip_of_integer_column_keeps_pixel_mirror():
    from autoscale.engine.dataset import _flip_x

    x = np.array([0.0, 3.0, 2.5, 9.999])
    fx = _flip_x(x.copy(), 10)
    assert np.all(fx < 10)
    np.testing.assert_array_equal(np.floor(fx), 9 - np.floor(x))


def test_crop_keeps_inside_points_and_target_integrates_to_count(synth):
    rec = _records(synth)
    for variant in ("regression", "localization"):
        plain = CrowdDataset(rec, variant, sigma=2.0)[1]
        ds = CrowdDataset(rec, variant, sigma=2.0, train=True, crop=(24, 40), seed=1)
        for epoch in range(3):
            ds.set_epoch(epoch)
            s = ds[1]
            assert s["image"].shape == (3, 24, 40)
            # Recover the crop window by brute force from pixels, then check the points independently.
            offs = [(x0, y0) for y0 in range(48 - 24 + 1) for x0 in range(64 - 40 + 1)
                    if torch.equal(plain["image"][:, y0:y0 + 24, x0:x0 + 40], s["image"])]
            assert offs
            x0, y0 = offs[0]
            p = plain["points"]
            inside = (p[:, 0] >= x0) & (p[:, 0] < x0 + 40) & (p[:, 1] >= y0) & (p[:, 1] < y0 + 24)
            np.testing.assert_allclose(np.sort(s["points"], 0), np.sort(p[inside] - [x0, y0], 0))
            assert s["count"] == int(inside.sum())
            if variant == "regression":
                assert float(s["target"].sum()) == pytest.approx(s["count"], abs=1e-3)
            else:
                ref = T.distance_label_map(s["points"], (24, 40))
                np.testing.assert_array_equal(s["target"].numpy(), ref)


def test_small_image_is_padded_to_crop_and_scaling_moves_points(synth):
    rec = _records(synth)
    ds = CrowdDataset(rec, "regression", sigma=2.0, train=True, crop=(60, 70), seed=0)
    s, plain = ds[0], CrowdDataset(rec, "regression", sigma=2.0)[0]
    assert s["image"].shape == (3, 60, 70) and s["target"].shape == (1, 60, 70)
    torch.testing.assert_close(s["image"][:, :48, :64], plain["image"])
    assert float(s["image"][:, 48:].abs().sum()) == 0.0 and float(s["target"][:, 48:].sum()) == 0.0
    np.testing.assert_array_equal(s["points"], plain["points"])
    sc = CrowdDataset(rec, "regression", sigma=2.0, train=True, scale_range=(2.0, 2.0))[0]
    assert sc["image"].shape == (3, 96, 128)
    np.testing.assert_allclose(sc["points"], plain["points"] * 2.0)
    assert float(sc["target"].sum()) == pytest.approx(len(plain["points"]), abs=1e-3)


def test_samples_depend_only_on_seed_epoch_index_and_collate(synth):
    rec = _records(synth)
    kw = dict(sigma=2.0, train=True, flip=True, noise_prob=1.0, scale_range=(0.8, 1.2), crop=(32, 32), seed=5)
    a, b = CrowdDataset(rec, "regression", **kw), CrowdDataset(rec, "regression", **kw)
    a.set_epoch(2)
    b.set_epoch(2)
    _ = b[3], b[0]  # other draws in between change nothing
    torch.testing.assert_close(a[1]["image"], b[1]["image"], rtol=0, atol=0)
    batch = collate([a[0], a[1]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["target"].shape == (2, 1, 32, 32)
    var = collate([CrowdDataset(rec, "regression")[0], CrowdDataset(rec, "regression", scale_range=(2, 2), train=True)[0]])
    assert isinstance(var["image"], list) and var["image"][1].shape == (3, 96, 128)


# -------------------------------------------------------------------------------------- engine
def test_training_reduces_the_loss_and_writes_outputs(synth, tmp_path):
    cfg = _cfg(synth, tmp_path / "run", optim__batch_size=4, optim__epochs=16, data__val_split=None,
               model__variant="localization", optim__lr=1e-2)
    res = train(cfg)
    assert len(res.step_losses) == 16  # 4 images, batch 4: the same batch every step
    assert np.mean(res.step_losses[-3:]) < 0.75 * res.step_losses[0]
    ck = load_training_checkpoint(res.last_checkpoint)
    assert ck["epoch"] == 16 and ck["step"] == 16 and ck["method"] == "fpn" and ck["config"]["seed"] == 0
    fpn, l2s = build_from_checkpoint(res.last_checkpoint)
    assert l2s is None and ck["code_version"]["autoscale"]
    hist = (res.out_dir / "history.csv").read_text().splitlines()
    assert len(hist) == 17 and hist[0].startswith("epoch,step,loss")
    with pytest.raises(AutoScaleError, match="--resume"):
        train(cfg)  # a finished run is not overwritten silently


def test_autoscale_training_and_validation_best_checkpoint(synth, tmp_path):
    cfg = _cfg(synth, tmp_path / "as", method="autoscale", optim__epochs=2, pipeline__region_from="target",
               pipeline__area_ratio=0.0, pipeline__dense_k=0.5, model__variant="localization", optim__center_every=1)
    res = train(cfg)
    h = res.history
    assert [r["epoch"] for r in h] == [1, 2] and all("val_mae" in r and "val_mae_first" in r for r in h)
    assert any(r["loss_refine"] > 0 for r in h)  # the second pass ran on a dense region
    assert h[-1]["center"] != 18.0  # Eq. 4 moved C
    ck = load_training_checkpoint(res.best_checkpoint)
    assert ck["best_mae"] == min(r["val_mae"] for r in h) and ck["l2s_state_dict"] is not None


def test_resume_is_exact(synth, tmp_path):
    kw = dict(method="autoscale", pipeline__region_from="target", pipeline__area_ratio=0.0, pipeline__dense_k=0.5,
              data__flip=True, data__noise_prob=0.5, data__scale_range=[0.9, 1.1], data__val_split=None)
    straight = train(_cfg(synth, tmp_path / "a", **kw))
    first = train(_cfg(synth, tmp_path / "b", **{**kw, "optim__epochs": 1}))
    rest = train(_cfg(synth, tmp_path / "b", **kw), resume=True)
    assert len(straight.step_losses) == 4
    assert first.step_losses + rest.step_losses == straight.step_losses
    a, b = torch.load(straight.last_checkpoint), torch.load(rest.last_checkpoint)
    for part in ("state_dict", "l2s_state_dict", "center"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_sigint_saves_complete_checkpoint_and_resumes(synth, tmp_path):
    out = tmp_path / "sig"
    cfg = _cfg(synth, out, optim__epochs=500, optim__batch_size=1, data__val_split=None)

    def fire():
        deadline = time.time() + 60
        while not (out / "last.pt").exists() and time.time() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=fire, daemon=True).start()
    res = train(cfg)
    assert res.interrupted and not list(out.glob("*.tmp"))
    ck = load_training_checkpoint(out / "last.pt")
    assert ck["step"] == res.step and ck["epoch"] == res.epoch >= 1
    assert ck["step"] == 4 * ck["epoch"] + ck["batch_in_epoch"]
    cont = train(_cfg(synth, out, optim__epochs=res.epoch + 1, optim__batch_size=1, data__val_split=None), resume=True)
    assert cont.step == 4 * (res.epoch + 1) and len(cont.step_losses) == cont.step - res.step


def test_cli_train_and_errors(synth, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"method: fpn\ndevice: cpu\nprogress: false\ndata:\n  root: {synth}\n  sigma: 2.0\n"
                   f"model:\n  width: 0.0625\noptim:\n  epochs: 1\n  batch_size: 4\n")
    assert cli_main(["train", "--config", str(cfg), "--out", str(tmp_path / "o"), "optim.lr=1e-4"]) == 0
    assert (tmp_path / "o" / "best.pt").is_file() and (tmp_path / "o" / "last.pt").is_file()
    assert cli_main(["train", "--config", str(cfg), "model.nope=1"]) == 2
    assert "model.nope" in capsys.readouterr().err
    assert cli_main(["train", "--config", "no_such_preset"]) == 2
    assert cli_main(["train", "--list-presets"]) == 0
    assert "shanghaitech_b_autoscale_regression" in capsys.readouterr().out.split()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("mine")
    assert cli_main(["train", "--config", str(cfg), "--out", str(foreign)]) == 2
    assert cli_main(["train", "--config", str(cfg), "--out", str(tmp_path / "o"), "--resume", str(tmp_path / "none.pt")]) == 2
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        train(_cfg(synth, tmp_path / "o2"), resume=True)
