"""VGG backbones, FPN counting networks, ImageNet loading and the model registry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autoscale.errors import CheckpointError, ConfigError
from autoscale.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FPNOutput,
    LocalizationFPN,
    RegressionFPN,
    Weights,
    build_from_checkpoint,
    get_model,
    list_models,
    load_checkpoint,
    load_imagenet_vgg,
    normalize,
    vgg16,
    vgg19,
)
from autoscale.models.registry import CHECKPOINT_FORMAT


def torchvision_table(cfg: list) -> dict[str, tuple[int, ...]]:
    """torchvision's VGG key/shape table, written out independently of our module."""
    table, idx, cin = {}, 0, 3
    for v in cfg:
        if v == "M":
            idx += 1
        else:
            table[f"features.{idx}.weight"] = (v, cin, 3, 3)
            table[f"features.{idx}.bias"] = (v,)
            cin, idx = v, idx + 2
    for i, (o, n) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096))):
        table[f"classifier.{i}.weight"] = (o, n)
        table[f"classifier.{i}.bias"] = (o,)
    return table


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def fake_imagenet_file(path, table, seed=0):
    """A small file with the right names/shapes: per-output-channel random values, expanded."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in table.items():
        base = torch.randn(shape[0], *([1] * (len(shape) - 1)), generator=g)
        state[k] = base.expand(shape)
    torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("imagenet") / "vgg16-397923af.pth"
    state = fake_imagenet_file(path, torchvision_table(VGG16_CFG))
    return path, state


def meta_table(model_fn):
    with torch.device("meta"):
        m = model_fn()
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def test_vgg_layout_matches_torchvision():
    assert meta_table(vgg16) == torchvision_table(VGG16_CFG)
    assert meta_table(vgg19) == torchvision_table(VGG19_CFG)
    # torchvision's published parameter counts
    assert sum(np.prod(s) for s in meta_table(vgg16).values()) == 138_357_544
    assert sum(np.prod(s) for s in meta_table(vgg19).values()) == 143_667_240


def test_vgg_width_and_forward():
    m = vgg16(width=1 / 16, num_classes=5)
    assert m.features[0].out_channels == 4 and m.features[28].out_channels == 32
    assert vgg16(width=0.001).features[0].out_channels == 1  # at least one channel
    assert m(torch.randn(2, 3, 33, 47)).shape == (2, 5)


def test_load_imagenet_vgg_strict(vgg16_file, tmp_path):
    path, state = vgg16_file
    loaded = load_imagenet_vgg(path, "vgg16")
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    # the same file is not a VGG19
    with pytest.raises(CheckpointError, match="missing keys"):
        load_imagenet_vgg(path, "vgg19")
    # every offending key is listed
    bad = dict(state)
    del bad["features.0.bias"], bad["classifier.6.weight"]
    bad["features.99.weight"] = torch.zeros(1)
    bad["features.2.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as exc:
        load_imagenet_vgg(tmp_path / "bad.pth")
    msg = str(exc.value)
    for key in ("features.0.bias", "classifier.6.weight", "features.99.weight", "features.2.weight"):
        assert key in msg
    assert "bad.pth" in msg


def test_load_imagenet_missing_or_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match="supplied locally") as exc:
        load_imagenet_vgg(tmp_path / "nope.pth")
    assert "nope.pth" in str(exc.value)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_imagenet_vgg(tmp_path / "junk.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="list.pth"):
        load_imagenet_vgg(tmp_path / "list.pth")


@pytest.mark.parametrize("cls", [RegressionFPN, LocalizationFPN])
@pytest.mark.parametrize("hw", [(1, 1), (7, 13), (17, 9), (32, 40)])
def test_fpn_output_shapes_any_size(cls, hw):
    m = cls(width=0.125).eval()
    out = m(torch.randn(2, 3, *hw), return_features=True)
    assert isinstance(out, FPNOutput)
    k = 1 if cls is RegressionFPN else 11
    assert out.final.shape == (2, k, *hw)
    assert len(out.side) == (4 if cls is RegressionFPN else 5)
    assert all(s.shape == (2, k, *hw) for s in out.side)
    assert out.features.shape == (2, m.feature_channels, *hw)
    assert m(torch.randn(1, 3, *hw)).features is None


def test_fpn_full_width_channels_and_counts():
    with torch.device("meta"):
        reg, loc = RegressionFPN(), LocalizationFPN()
    # 152-channel L2S feature: regression 40+40+40+32, localization 4*32+24
    assert reg.feature_channels == 152 and loc.feature_channels == 152
    assert reg.backbone.channels == (64, 128, 256, 512, 512)
    # backbone keeps torchvision indices; pool4 slot (23) replaced, conv5 dilated
    assert isinstance(reg.backbone.features[23], torch.nn.Identity)
    assert loc.backbone.features[23].stride == 1 and loc.backbone.features[23].padding == 1
    assert loc.backbone.features[4].ceil_mode and not reg.backbone.features[4].ceil_mode
    assert loc.backbone.features[0].padding == (35, 35) and reg.backbone.features[0].padding == (1, 1)
    for i in (24, 26, 28):
        assert reg.backbone.features[i].dilation == (2, 2) and loc.backbone.features[i].padding == (2, 2)
    assert len(reg.backbone.features) == 30  # pool5 dropped
    conv_keys = {k for k in reg.state_dict() if k.startswith("backbone.")}
    assert conv_keys == {f"backbone.features.{i}.{p}" for i in VGG16_CONVS for p in ("weight", "bias")}


def test_vgg_fpn_normalization_strides_and_auto_imagenet():
    reg, loc = RegressionFPN(width=0.125), LocalizationFPN("vgg19", width=0.125)
    assert reg.normalization == loc.normalization == (IMAGENET_MEAN, IMAGENET_STD)
    assert reg.backbone.strides == loc.backbone.strides == (1, 2, 4, 8, 8)
    assert not hasattr(reg, "up5") and not hasattr(loc, "up5")  # rd5 -> c4 merges at equal stride
    with pytest.raises(CheckpointError, match="local torchvision file"):
        get_model("fpn_localization", backbone="vgg19", width=0.125, imagenet="auto")
    with pytest.raises(ValueError, match="unknown backbone"):
        RegressionFPN("resnet50")


def test_vgg19_backbone():
    m = RegressionFPN("vgg19", width=0.125)
    assert isinstance(m.backbone.features[27], torch.nn.Identity)
    assert all(m.backbone.features[i].dilation == (2, 2) for i in (28, 30, 32, 34))
    assert m(torch.randn(1, 3, 11, 10)).final.shape == (1, 1, 11, 10)


def test_official_init_statistics():
    torch.manual_seed(0)
    m = LocalizationFPN()
    w = m.backbone.features[28].weight
    assert abs(w.std().item() - 0.01) < 2e-4 and abs(w.mean().item()) < 2e-4
    convs = [mod for mod in m.modules() if type(mod) is torch.nn.Conv2d]
    assert all(torch.count_nonzero(c.bias) == 0 for c in convs)
    assert torch.equal(m.cd1[1].weight, torch.ones(24))


@pytest.mark.parametrize("cls", [RegressionFPN, LocalizationFPN])
def test_every_parameter_gets_gradient(cls):
    m = cls(width=0.125).train()
    with torch.no_grad():  # positive biases: no dead ReLU in a 1-channel narrow lateral
        for n, p in m.named_parameters():
            if n.endswith("bias"):
                p.fill_(0.05)
    out = m(torch.randn(2, 3, 12, 15), return_features=True)
    (out.final.sum() + sum(s.sum() for s in out.side) + out.features.mean()).backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []  # the authors' unused modules are not built


@pytest.mark.parametrize("cls", [RegressionFPN, LocalizationFPN])
def test_batch_independent_and_channels_last(cls):
    m = cls(width=0.125).eval()
    x = torch.randn(2, 3, 19, 23)
    with torch.no_grad():
        both = m(x, return_features=True)
        one = m(x[1:], return_features=True)
        m_cl = m.to(memory_format=torch.channels_last)
        cl = m_cl(x.to(memory_format=torch.channels_last), return_features=True)
    torch.testing.assert_close(both.final[1:], one.final, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cl.final, both.final, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cl.features, both.features, rtol=1e-4, atol=1e-6)


def test_regression_output_is_local():
    """Output stride 1 and padding/cropping are aligned: a change at one pixel only affects a
    bounded neighbourhood (the receptive field), not the far side of a large image."""
    m = RegressionFPN(width=0.125).eval()
    x = torch.zeros(1, 3, 8, 200)
    y = x.clone()
    y[..., 4, 190] = 5.0
    with torch.no_grad():
        d = (m(x).final - m(y).final).abs()[0, 0]
    assert d[:, 150:].max() > 0
    assert d[:, :20].max() == 0


def test_load_imagenet_into_fpn(vgg16_file):
    path, state = vgg16_file
    reg = RegressionFPN()
    before = reg.backbone.features[24].weight.clone()
    keys = reg.load_imagenet(path)  # paper: all 13 convs
    assert len(keys) == 26
    for i in VGG16_CONVS:
        assert torch.equal(reg.backbone.features[i].weight, state[f"features.{i}.weight"])
        assert torch.equal(reg.backbone.features[i].bias, state[f"features.{i}.bias"])
    reg2 = RegressionFPN()
    before = reg2.backbone.features[24].weight.clone()
    keys = reg2.load_imagenet(path, official_init=True)  # authors: conv1..conv4 only
    assert len(keys) == 20
    assert torch.equal(reg2.backbone.features[21].weight, state["features.21.weight"])
    assert torch.equal(reg2.backbone.features[24].weight, before)
    loc = LocalizationFPN()
    assert loc.load_imagenet(path, official_init=True) == []
    assert len(loc.load_imagenet(path)) == 26
    assert torch.equal(loc.backbone.features[0].weight, state["features.0.weight"])
    with pytest.raises(CheckpointError, match="width"):
        RegressionFPN(width=0.5).load_imagenet(path)


def test_normalize():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    t = normalize(img)
    assert t.shape == (1, 3, 2, 3) and t.dtype == torch.float32
    # pixel (row 1, col 2), channel 1: value img[1,2,1]
    expect = (img[1, 2, 1] / 255.0 - 0.456) / 0.224
    assert t[0, 1, 1, 2].item() == pytest.approx(expect, rel=1e-6)
    torch.testing.assert_close(normalize(torch.from_numpy(img).permute(2, 0, 1)), t)
    with pytest.raises(ValueError):
        normalize(np.zeros((4, 4), np.uint8))


def test_registry_builders_and_weights(tmp_path, vgg16_file):
    assert {"fpn_regression", "fpn_localization", "l2s_regression", "l2s_localization"} <= set(list_models())
    with pytest.raises(ConfigError, match="unknown model"):
        get_model("resnet50")
    m = get_model("fpn_localization", width=0.125, num_classes=4)
    assert m(torch.randn(1, 3, 9, 9)).final.shape == (1, 4, 9, 9)
    l2s = get_model("l2s_regression", in_channels=m.feature_channels)
    assert l2s.pool == "avg" and l2s.bound == "paper"
    assert get_model("l2s_regression", official=True).head == "official_regression"
    # our checkpoint round trip through a local Weights entry
    ckpt = {"format": CHECKPOINT_FORMAT, "version": 1, "variant": "localization",
            "model": {"name": "fpn_localization", "kwargs": {"width": 0.125, "num_classes": 4}},
            "state_dict": m.state_dict(), "l2s_state_dict": None, "l2s": None}
    torch.save(ckpt, tmp_path / "ck.pth")
    w = Weights(path=str(tmp_path / "ck.pth"), meta={"dataset": "synthetic"})
    m2 = get_model("fpn_localization", width=0.125, num_classes=4, weights=w)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    fpn, l2s_none = build_from_checkpoint(tmp_path / "ck.pth")
    assert l2s_none is None and isinstance(fpn, LocalizationFPN)
    with pytest.raises(CheckpointError, match="localization checkpoint"):
        get_model("fpn_regression", width=0.125, weights=w)
    with pytest.raises(CheckpointError, match=r"mis-shaped keys .*backbone\.features\.0\.weight"):
        get_model("fpn_localization", width=0.25, num_classes=4, weights=w)
    assert load_checkpoint(tmp_path / "ck.pth")["variant"] == "localization"
    torch.save({"a": 1}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an autoscale checkpoint"):
        load_checkpoint(tmp_path / "other.pth")
    # ImageNet initialisation through the builder
    path, state = vgg16_file
    reg = get_model("fpn_regression", imagenet=path)
    assert torch.equal(reg.backbone.features[28].weight, state["features.28.weight"])
    assert w.transforms is normalize


@pytest.mark.skipif(not __import__("autoscale.models.fused", fromlist=["x"]).AVAILABLE,
                    reason="oneDNN's fused bf16 convolution does not run on this CPU")
def test_vgg_bf16_inference_fuses_conv_relu(monkeypatch):
    """Under bf16 autocast without autograd every VGG conv + ReLU runs as one fused oneDNN
    convolution; the stage outputs match the unfused bf16 graph to bf16 rounding (nonzero
    biases: the fused bias is float32), the fp32 and training paths never fuse, and the kept
    bf16 weight follows an in-place parameter change."""
    from autoscale.models import fused
    from autoscale.models.fpn import VGGBackbone

    torch.manual_seed(0)
    bb = VGGBackbone(width=0.125).eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        for m in bb.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.bias.uniform_(-0.2, 0.2)
    x = torch.rand(1, 3, 40, 56).contiguous(memory_format=torch.channels_last)
    calls = []
    real = fused.conv
    monkeypatch.setattr(fused, "conv", lambda *a, **k: calls.append(a[-1] if len(a) > 7 else k) or real(*a, **k))

    def run(on: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(fused, "AVAILABLE", on)
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
            return [t.float() for t in bb(x)]

    ref, got = run(False), run(True)
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in bb.features)
    assert calls == ["relu"] * n_conv
    for r, g in zip(ref, got):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=0.03, atol=0.02 * float(r.abs().max()))
    calls.clear()
    with torch.inference_mode():
        fp32 = bb(x)  # no autocast: plain convolutions
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bb(x)  # autograd on: plain convolutions
    assert calls == []
    with torch.no_grad():
        bb.features[0].weight.mul_(-1.0)
    ref2, got2 = run(False), run(True)
    torch.testing.assert_close(got2[0], ref2[0], rtol=0.03, atol=0.02 * float(ref2[0].abs().max()))
    assert not torch.allclose(got2[0], got[0])
    assert all(torch.isfinite(t).all() for t in fp32)


def test_vgg_backbone_inference_equals_autograd_path():
    """Inference (pools by maximum) and the autograd path (nn.MaxPool2d) give the same stages."""
    from autoscale.models.fpn import VGGBackbone

    torch.manual_seed(2)
    bb = VGGBackbone(width=0.125).eval()
    x = torch.rand(1, 3, 37, 50)
    ref = bb(x)
    with torch.inference_mode():
        got = bb(x)
    for r, g in zip(ref, got):
        assert torch.equal(g, r.detach())
