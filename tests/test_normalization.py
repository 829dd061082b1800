"""The input normalisation travels in the checkpoint; predict, evaluate and export apply it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autoscale.engine.evaluate import evaluate
from autoscale.errors import CheckpointError
from autoscale.models.checkpoint import make_checkpoint
from autoscale.models.registry import backbone_normalization, get_model
from autoscale.models.vgg import IMAGENET_MEAN, IMAGENET_STD, normalize
from autoscale.predict import Predictor


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    torch.manual_seed(0)
    fpn = get_model("fpn_regression", backbone="efficientnet_lite0", width=0.25, init="kaiming").eval()
    ck = make_checkpoint(fpn, None, variant="regression", model_name="fpn_regression",
                         model_kwargs={"backbone": "efficientnet_lite0", "width": 0.25}, method="fpn")
    path = tmp_path_factory.mktemp("ck") / "lite.pt"
    torch.save(ck, path)
    return fpn, ck, path


def _img(seed=0, h=40, w=56):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_checkpoint_records_the_backbone_normalization(lite):
    _, ck, _ = lite
    mean, std = backbone_normalization("efficientnet_lite0")
    assert ck["normalization"] == {"mean": pytest.approx(list(mean)), "std": pytest.approx(list(std))}
    assert mean != IMAGENET_MEAN  # a lite network is not fed ImageNet-normalised pixels


def test_predict_applies_the_checkpoint_normalization(lite, tmp_path):
    fpn, ck, path = lite
    img = _img()
    mean, std = backbone_normalization("efficientnet_lite0")
    with torch.no_grad():
        want = float(fpn(normalize(img, mean, std)).final.sum())
        imagenet = float(fpn(normalize(img)).final.sum())
    assert Predictor.from_checkpoint(path, single_pass=True)(img).count == pytest.approx(want, rel=1e-5)
    # a checkpoint recording another normalisation is obeyed
    other = dict(ck, normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)})
    got = Predictor.from_checkpoint(other, single_pass=True)(img).count
    assert got == pytest.approx(imagenet, rel=1e-5) and abs(imagenet - want) > 1e-6
    with pytest.raises(CheckpointError, match="normalization"):
        Predictor.from_checkpoint(dict(ck, normalization={"mean": [0, 0], "std": [1, 1]}))


def test_evaluate_applies_the_checkpoint_normalization(lite, tmp_path):
    from autoscale.data.synth import generate_dataset
    from autoscale.data.formats import read_dataset

    fpn, _, path = lite
    generate_dataset(tmp_path / "d", n=2, size=(40, 56), splits={"test": 1.0})
    recs = read_dataset("generic", tmp_path / "d", "test")
    rows: list = []
    evaluate(str(path), recs, resize="none", single_pass=True, knn=False, groups={}, figures=False, per_image=rows)
    from autoscale.data.image_io import read_image

    mean, std = backbone_normalization("efficientnet_lite0")
    for rec, row in zip(recs, rows):
        with torch.no_grad():
            want = float(fpn(normalize(read_image(rec.image_path), mean, std)).final.sum())
        assert float(row["pred"]) == pytest.approx(want, rel=1e-5)


def test_export_records_the_normalization(lite, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from autoscale.export import export_onnx

    _, _, path = lite
    info = export_onnx(path, tmp_path / "m.onnx", height=64, width=96)
    mean, std = backbone_normalization("efficientnet_lite0")
    assert info["normalization"]["mean"] == pytest.approx(list(mean))
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["normalization_mean"] == pytest.approx(list(mean))
    assert meta["normalization_std"] == pytest.approx(list(std))


def test_inference_resolution_follows_the_training_resize_rule(lite, tmp_path):
    """A model trained on images capped at 512 px (``data.resize: long512``) is run at that cap by
    ``predict`` and ``evaluate`` unless told otherwise; a checkpoint recording none gets 2048 / the
    format's rule."""
    from autoscale.cli import main as cli_main
    from autoscale.data.synth import generate_dataset

    _, ck, path = lite
    trained = dict(ck, config={"data": {"resize": "long512"}})
    tpath = tmp_path / "trained.pt"
    torch.save(trained, tpath)
    assert Predictor.from_checkpoint(tpath).max_side == 512
    assert Predictor.from_checkpoint(tpath, max_side=800).max_side == 800
    assert Predictor.from_checkpoint(path).max_side == 2048
    img = _img(h=300, w=700)
    pred = Predictor.from_checkpoint(tpath, single_pass=True)(img)
    assert pred.network_size == (219, 512) and pred.input_size == (300, 700)
    generate_dataset(tmp_path / "d", n=1, size=(40, 56), splits={"test": 1.0})
    for ckpt, rule in ((tpath, "long512"), (path, "none")):
        out = tmp_path / f"eval_{rule}"
        assert cli_main(["evaluate", "--checkpoint", str(ckpt), "--format", "generic", "--root", str(tmp_path / "d"),
                         "--out", str(out), "--single-pass", "--no-knn"]) == 0
        assert json.loads((out / "metrics.json").read_text())["settings"]["resize"] == rule
