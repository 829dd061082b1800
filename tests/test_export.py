"""ONNX export of the single-pass network: onnxruntime output equals PyTorch at two input sizes."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autoscale.cli import main
from autoscale.errors import AutoScaleError
from autoscale.models.registry import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, build_from_checkpoint, get_model


def make_checkpoint(path: Path, variant: str, seed: int = 3) -> Path:
    torch.manual_seed(seed)
    fpn = get_model(f"fpn_{variant}", width=0.0625)
    for m in fpn.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "variant": variant,
                "model": {"name": f"fpn_{variant}", "kwargs": {"width": 0.0625}}, "state_dict": fpn.state_dict(),
                "l2s_state_dict": None, "l2s": None, "method": "fpn"}, path)
    return path


@pytest.mark.parametrize("variant", ["regression", "localization"])
def test_onnx_matches_pytorch_two_sizes(tmp_path, variant, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    ck = make_checkpoint(tmp_path / "m.pt", variant)
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ck), "--format", "onnx", "--out", str(out),
                 "--height", "48", "--width", "64"]) == 0
    assert '"dynamic": true' in capsys.readouterr().out
    fpn, _ = build_from_checkpoint(str(ck))
    fpn.eval()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for h, w in [(48, 64), (40, 88)]:
        x = rng.standard_normal((1, 3, h, w)).astype(np.float32)
        with torch.no_grad():
            ref = fpn(torch.from_numpy(x)).final.numpy()
        got = sess.run(None, {"image": x})[0]
        assert got.shape == ref.shape == (1, 1 if variant == "regression" else 11, h, w)
        assert np.abs(ref).max() > 1e-3  # a non-trivial map
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_missing_onnx_says_how_to_install(tmp_path, monkeypatch):
    from autoscale.export import export_onnx

    ck = make_checkpoint(tmp_path / "m.pt", "regression")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(AutoScaleError, match=r"pip install autoscale\[onnx\]"):
        export_onnx(ck, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_wrappers_skip_the_side_maps():
    """The exported first pass computes ``final`` without the full-resolution side maps (the FPN's
    ``side_outputs=False``: ``dsn6`` as a module never runs, its weights are folded per level);
    the same values as the side-map path. A counter without side maps exports unchanged."""
    from autoscale.export import FinalMap, MapAndFeatures

    torch.manual_seed(0)
    fpn = get_model("fpn_localization", width=0.0625).eval()
    calls = []
    fpn.dsn6.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        ref = fpn(x)
        assert len(calls) == 1 and len(ref.side) >= 4  # default outside inference mode: side maps
        got = FinalMap(fpn)(x)
        got_map, got_feats = MapAndFeatures(fpn)(x)
    assert len(calls) == 1  # the wrappers never ran dsn6 on concatenated side maps
    torch.testing.assert_close(got, ref.final, rtol=1e-4, atol=1e-5 * float(ref.final.abs().max()))
    torch.testing.assert_close(got_map, got)
    assert got_feats.shape[-2:] == x.shape[-2:]
    csr = get_model("csrnet_regression", width=0.0625).eval()
    with torch.no_grad():
        torch.testing.assert_close(FinalMap(csr)(x), csr(x).final)
