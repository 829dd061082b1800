"""The counter interface and the paper's Table 9 counters (MCNN, CSRNet, CAN, SFCN, BL), the
Bayesian loss, and training them with and without L2S through ``engine.train``."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from autoscale.errors import CheckpointError, ConfigError
from autoscale.losses import bayesian_loss, bayesian_posterior, sum_cells
from autoscale.models import (
    L2S,
    DensityCounter,
    FPNOutput,
    as_counter,
    build_from_checkpoint,
    count_parameters,
    get_model,
    list_counters,
    model_spec,
)
from autoscale.models.checkpoint import make_checkpoint
from autoscale.models.counter import spread_density, spread_features
from autoscale.models.init import ScaledCounter, fold_output_scale
from autoscale.pipeline import AutoScale, PipelineConfig, joint_loss, pixel_loss

COUNTERS = ("mcnn", "csrnet", "can", "sfcn", "bl")
#: output stride and input multiple (total down-sampling) of each, from the papers' layer lists.
STRIDES = {"mcnn": (4, 4), "csrnet": (8, 8), "can": (8, 8), "sfcn": (8, 8), "bl": (8, 16)}


# ------------------------------------------------------------------ parameter counts by hand
def conv(cin: int, cout: int, k: int | tuple[int, int], bias: bool = True) -> int:
    kh, kw = (k, k) if isinstance(k, int) else k
    return cin * cout * kh * kw + (cout if bias else 0)


def vgg_convs(cfg: list[int]) -> int:
    total, cin = 0, 3
    for c in cfg:
        total, cin = total + conv(cin, c, 3), c
    return total


VGG16_TO_CONV4 = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512]
VGG19_ALL = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]


def csrnet_backend(cin: int = 512) -> int:
    total = 0
    for c in (512, 512, 512, 256, 128, 64):
        total, cin = total + conv(cin, c, 3), c
    return total


HAND_COUNTS = {
    # MCNN Fig. 2: three columns (RGB input) + 1x1 merge
    "mcnn": sum(conv(a, b, k) for a, b, k in [(3, 16, 9), (16, 32, 7), (32, 16, 7), (16, 8, 7),
                                              (3, 20, 7), (20, 40, 5), (40, 20, 5), (20, 10, 5),
                                              (3, 24, 5), (24, 48, 3), (48, 24, 3), (24, 12, 3)]) + conv(30, 1, 1),
    "csrnet": vgg_convs(VGG16_TO_CONV4) + csrnet_backend() + conv(64, 1, 1),
    # CAN: + 4 bias-free 1x1 scale convs, the weight net, the 2C -> C bottleneck, BN (weight + bias) in the back end
    "can": (vgg_convs(VGG16_TO_CONV4) + 4 * conv(512, 512, 1, bias=False) + conv(512, 512, 1) + conv(1024, 512, 1)
            + csrnet_backend() + 2 * (512 * 3 + 256 + 128 + 64) + conv(64, 1, 1)),
    "sfcn": vgg_convs(VGG16_TO_CONV4) + csrnet_backend() + conv(64, 64, (1, 9)) + conv(64, 64, (9, 1)) + conv(64, 1, 1),
    "bl": vgg_convs(VGG19_ALL) + conv(512, 256, 3) + conv(256, 128, 3) + conv(128, 1, 1),
}


def test_parameter_counts_match_the_papers_and_a_hand_count():
    counts = {}
    for c in COUNTERS:
        with torch.device("meta"):
            counts[c] = count_parameters(get_model(f"{c}_regression"))
    assert counts == HAND_COUNTS
    assert counts["csrnet"] == 16_263_489 and round(counts["csrnet"] / 1e6, 2) == 16.26  # CSRNet paper: 16.26 M
    assert round(counts["mcnn"] / 1e6, 2) == 0.13  # AutoScale paper / MCNN: ~0.13 M
    assert vgg_convs(VGG19_ALL) == 20_024_384  # VGG19's convolutions (torchvision's 143.67 M minus the classifier)


def test_registry_lists_counters_and_builds_specs():
    assert {f"{c}_regression" for c in COUNTERS} | {"fpn_regression", "fpn_localization"} == set(list_counters())
    assert set(list_counters("localization")) == {"fpn_localization"}
    assert model_spec("fpn", "regression", backbone="vgg16", width=1) == ("fpn_regression", {"backbone": "vgg16", "width": 1.0})
    assert model_spec("mcnn", "regression", backbone="vgg16", width=0.5) == ("mcnn_regression", {"width": 0.5})
    assert model_spec("bl", "regression", backbone="vgg19", width=1)[1] == {"backbone": "vgg19", "width": 1.0}
    with pytest.raises(ConfigError, match="no localization counter 'csrnet'.*fpn"):
        model_spec("csrnet", "localization", backbone="vgg16", width=1)
    with pytest.raises(ConfigError, match="model.backbone.*vgg16, vgg19"):
        model_spec("can", "regression", backbone="efficientnet_lite0", width=1)
    with pytest.raises(ConfigError, match="model.counter"):
        model_spec("resnet", "regression", backbone="vgg16", width=1)


# ------------------------------------------------------------------ shapes, strides, spreading
@pytest.mark.parametrize("counter", COUNTERS)
@pytest.mark.parametrize("hw", [(1, 1), (7, 13), (33, 47), (48, 64)])
def test_output_shapes_strides_and_count_preservation(counter, hw):
    torch.manual_seed(0)
    m = get_model(f"{counter}_regression", width=0.125, init="kaiming").eval()
    s, mult = STRIDES[counter]
    assert (m.output_stride, m.input_multiple) == (s, mult)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        out = m(x, return_features=True)
        H, W = hw
        Hp, Wp = -(-H // mult) * mult, -(-W // mult) * mult  # padded to the network's multiple
        dens, feat = m.maps(torch.nn.functional.pad(x, (0, Wp - W, 0, Hp - H)))
    assert isinstance(out, FPNOutput) and out.output_stride == s and out.side == []
    assert out.final.shape == (2, 1, H, W) and out.features.shape == (2, m.feature_channels, H, W)
    assert dens.shape == (2, 1, Hp // s, Wp // s) and feat.shape[1] == m.feature_channels
    # brute force: pixel (r, c) holds its cell's value / s^2; the count is each cell's value times
    # the fraction of its s x s pixels inside the image
    d = dens.numpy()
    r, c = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    np.testing.assert_allclose(out.final.numpy(), d[:, :, r // s, c // s] / s**2, rtol=1e-6, atol=1e-9)
    frac = np.zeros(d.shape[-2:])
    np.add.at(frac, (r // s, c // s), 1.0 / s**2)
    np.testing.assert_allclose(out.final.sum((1, 2, 3)).numpy(), (d[:, 0] * frac).sum((1, 2)), rtol=1e-5, atol=1e-7)
    assert m(x).features is None


def test_spread_is_count_preserving_and_mse_equals_the_strided_mse():
    """Pixel MSE of the spread map = (1/s^2) x the cell MSE against the sum-pooled target + a
    constant: equal gradients (brute force over random maps)."""
    g = torch.Generator().manual_seed(0)
    s = 4
    v = torch.rand(1, 1, 3, 5, generator=g, requires_grad=True)
    t = torch.rand(1, 1, 12, 20, generator=g)
    full = spread_density(v, s, 12, 20)
    assert float(full.detach().sum()) == pytest.approx(float(v.detach().sum()), rel=1e-6)
    ((full - t) ** 2).sum().backward()
    g_pixel = v.grad.clone()
    v.grad = None
    pooled = t.reshape(1, 1, 3, 4, 5, 4).sum((3, 5))
    (((v - pooled) ** 2).sum() / s**2).backward()
    torch.testing.assert_close(g_pixel, v.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(sum_cells(full, s), v.detach(), rtol=1e-6, atol=1e-7)
    # features: repeated, edge cells extended where the cells do not reach
    f = torch.arange(6.0).reshape(1, 1, 2, 3)
    up = spread_features(f, 2, 5, 7)
    assert up.shape == (1, 1, 5, 7)
    assert up[0, 0, 4].tolist() == [3, 3, 4, 4, 5, 5, 5] and up[0, 0, 0].tolist() == [0, 0, 1, 1, 2, 2, 2]


def test_sum_cells_pads_partial_cells():
    x = torch.ones(1, 1, 5, 7)
    assert sum_cells(x, 4).tolist() == [[[[16.0, 12.0], [4.0, 3.0]]]]
    assert sum_cells(x, 1) is x


@pytest.mark.parametrize("counter", COUNTERS)
def test_output_scale_folds_into_the_output_convolution(counter):
    torch.manual_seed(1)
    m = get_model(f"{counter}_regression", width=0.125, init="kaiming").eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ref = ScaledCounter(m, 0.01)(x).final
        folded = fold_output_scale(copy.deepcopy(m), 0.01)(x).final
    torch.testing.assert_close(folded, ref, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("counter", COUNTERS)
def test_every_parameter_gets_a_gradient(counter):
    torch.manual_seed(2)
    m = get_model(f"{counter}_regression", width=0.125, init="kaiming").train()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("bias"):
                p.fill_(0.05)
    out = m(torch.randn(2, 3, 40, 56), return_features=True)
    (out.final.sum() + out.features.mean()).backward()
    assert [n for n, p in m.named_parameters() if p.grad is None or not torch.any(p.grad != 0)] == []


def test_can_context_weights_are_a_normalised_sigmoid_mix():
    """CAN's contextual feature sum_j w_j s_j / sum_j w_j (w_j = sigmoid(W (f - s_j))), recomputed
    directly, and finite where every weight underflows (the released code's 0 / 0)."""
    from autoscale.models.can import ContextualModule

    torch.manual_seed(3)
    mod = ContextualModule(6, 5)
    f = torch.randn(1, 6, 7, 9)
    ss = [torch.nn.functional.interpolate(st(f), size=(7, 9), mode="bilinear", align_corners=False) for st in mod.scales]
    ws = [torch.sigmoid(mod.weight_net(f - s)) for s in ss]
    ctx = sum(w * s for w, s in zip(ws, ss)) / sum(ws)
    ref = torch.relu(mod.bottleneck(torch.cat([ctx, f], 1)))
    torch.testing.assert_close(mod(f), ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        mod.weight_net.bias.fill_(-1e4)  # every sigmoid is 0 in float32
    assert torch.isfinite(mod(f)).all()


def test_sfcn_slice_convolutions_pass_messages_both_ways():
    """convDU on 3 rows, a 1x9 kernel (reach 4 columns per step), positive weights: a change at
    row 0, column 30 reaches row 1 and 2 in the downward sweep (+-4, +-8 columns), then row 1 and 0
    again from below in the upward sweep (+-12, +-16): exactly those columns change."""
    from autoscale.models.sfcn import SliceConv

    du = SliceConv(2, dim=2)
    with torch.no_grad():
        du.conv[0].weight.fill_(0.05)
        du.conv[0].bias.zero_()
    x = torch.zeros(1, 2, 3, 61)
    y = x.clone()
    y[0, :, 0, 30] = 1.0
    with torch.no_grad():
        changed = ((du(y) - du(x)).abs().sum(1)[0] > 0).numpy()
    for row, reach in ((0, 16), (1, 12), (2, 8)):
        assert np.flatnonzero(changed[row]).tolist() == list(range(30 - reach, 31 + reach)), row
    lr = SliceConv(2, dim=3)  # the same along columns
    with torch.no_grad():
        lr.conv[0].weight.fill_(0.05)
        lr.conv[0].bias.zero_()
        changed = ((lr(y.transpose(2, 3)) - lr(x.transpose(2, 3))).abs().sum(1)[0] > 0).numpy()
    assert np.flatnonzero(changed[:, 0]).tolist() == list(range(14, 47))


@pytest.mark.parametrize("counter, arch, n_convs", [("csrnet", "vgg16", 10), ("can", "vgg16", 10),
                                                    ("sfcn", "vgg16", 10), ("bl", "vgg19", 16)])
def test_imagenet_front_end_loads_key_for_key(tmp_path, counter, arch, n_convs):
    from autoscale.models.vgg import VGG

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in VGG(arch).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s[0], *([1] * (len(s) - 1)), generator=g).expand(s) for k, s in shapes.items()}
    path = tmp_path / f"{arch}.pth"
    torch.save(state, path)
    m = get_model(f"{counter}_regression", backbone=arch, imagenet=path)
    convs = [k for k in m.state_dict() if k.startswith("backbone.features.") and k.endswith(".weight")]
    assert len(convs) == n_convs
    for k in convs:
        src = k.removeprefix("backbone.")
        assert torch.equal(m.state_dict()[k], state[src]) and torch.equal(m.state_dict()[k[:-6] + "bias"], state[src[:-6] + "bias"])
    with pytest.raises(CheckpointError, match="width must be 1"):
        get_model(f"{counter}_regression", backbone=arch, width=0.5, imagenet=path)
    with pytest.raises(ConfigError, match="no ImageNet backbone"):
        get_model("mcnn_regression", imagenet=path)
    with pytest.raises(ConfigError, match="official_init"):
        get_model(f"{counter}_regression", official_init=True)


# ------------------------------------------------------------------ Bayesian loss
def bl_reference(density: np.ndarray, points: np.ndarray, stride: int, sigma: float, background: bool, d: float) -> float:
    """The Bayesian loss written out with loops (float64): posterior per cell, expected counts."""
    h, w = density.shape
    total_terms = []
    if len(points) == 0:
        return abs(density.sum())
    n = len(points)
    expected = np.zeros(n + 1)
    for i in range(h):
        for j in range(w):
            cx, cy = (j + 0.5) * stride, (i + 0.5) * stride
            d2 = [(px - cx) ** 2 + (py - cy) ** 2 for px, py in points]
            if background:
                d2.append((d - np.sqrt(min(d2))) ** 2)
            logits = np.array([-v / (2 * sigma**2) for v in d2])
            p = np.exp(logits - logits.max())
            p /= p.sum()
            for k in range(len(p)):
                expected[k] += p[k] * density[i, j]
    for k in range(n):
        total_terms.append(abs(1.0 - expected[k]))
    if background:
        total_terms.append(abs(0.0 - expected[n]))
    return float(sum(total_terms))


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("stride", [1, 8])
def test_bayesian_loss_matches_a_brute_force_reference(background, stride):
    rng = np.random.default_rng(0)
    h, w = 3, 5
    dens = rng.uniform(0, 1, size=(h, w))
    pts = rng.uniform(0, [w * stride, h * stride], size=(4, 2))
    sigma, d = 0.7 * stride, 1.0 * min(h, w) * stride
    got = bayesian_loss(torch.tensor(dens, dtype=torch.float32), pts, stride=stride, sigma=sigma, background=background)
    assert float(got) == pytest.approx(bl_reference(dens, pts, stride, sigma, background, d), rel=1e-5)
    mean = bayesian_loss(torch.tensor(dens, dtype=torch.float32), pts, stride=stride, sigma=sigma,
                         background=background, reduction="mean")
    assert float(mean) == pytest.approx(float(got) / (4 + background), rel=1e-6)
    post = bayesian_posterior(torch.tensor(pts), (h, w), stride, sigma=sigma, background=background, d=d)
    assert post.shape == (4 + background, h * w)
    torch.testing.assert_close(post.sum(0), torch.ones(h * w))


def test_bayesian_loss_known_answers_and_gradient():
    dens = torch.full((2, 2), 0.5, requires_grad=True)
    # one head, no background: every cell belongs to it, E[c] = sum D = 2, loss |1 - 2|
    loss = bayesian_loss(dens, np.array([[1.0, 1.0]]), stride=4, background=False)
    assert float(loss.detach()) == pytest.approx(1.0)
    loss.backward()
    torch.testing.assert_close(dens.grad, torch.ones(2, 2))  # d|1 - sum D| / dD = +1
    # no heads: |0 - sum D|
    assert float(bayesian_loss(torch.full((2, 2), 0.25), np.zeros((0, 2)))) == pytest.approx(1.0)
    # st_size sets the background distance: background_ratio x st_size
    pts = np.array([[3.0, 3.0], [20.0, 9.0]])
    a = bayesian_loss(torch.rand(2, 4, generator=torch.Generator().manual_seed(0)), pts, stride=8, st_size=16)
    b = bayesian_loss(torch.rand(2, 4, generator=torch.Generator().manual_seed(0)), pts, stride=8, st_size=8,
                      background_ratio=2.0)
    assert float(a) == pytest.approx(float(b))


def test_pixel_loss_bayesian_sums_the_map_over_the_counters_cells():
    """pipeline.pixel_loss with density_loss=bayesian = bayesian_loss on the stride cells of the
    spread map (= the network's own cells), d = the input's shorter side."""
    torch.manual_seed(5)
    m = get_model("csrnet_regression", width=0.125, init="kaiming")
    x = torch.randn(1, 3, 40, 56)
    out = m(x)
    pts = np.array([[5.0, 7.0], [30.5, 20.0], [50.0, 33.0]])
    cfg = PipelineConfig(density_loss="bayesian", bl_sigma=8.0)
    got = pixel_loss("regression", out, torch.zeros(1, 1, 40, 56), cfg, "sum", points=pts)
    with torch.no_grad():
        dens, _ = m.maps(x)
    ref = bl_reference(dens[0, 0].double().numpy(), pts, 8, 8.0, True, 40.0)
    assert float(got) == pytest.approx(ref, rel=1e-4)
    with pytest.raises(ValueError, match="points"):
        pixel_loss("regression", out, torch.zeros(1, 1, 40, 56), cfg, "sum")


# ------------------------------------------------------------------ a user's network
class TinyUserNet(nn.Module):
    """A user's density network: stride 8, people per cell."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(8))
        self.head = nn.Conv2d(6, 1, 1)

    def forward(self, x):
        return self.head(self.body(x))


class SumChannel0(nn.Module):
    """Density per 4x4 cell = the sum of input channel 0 over the cell (known answers); returns
    (density, feature)."""

    def forward(self, x):
        d = torch.nn.functional.avg_pool2d(x[:, :1], 4) * 16
        return d, torch.cat([d, d], 1)


def test_a_users_network_is_wrapped_in_a_few_lines():
    torch.manual_seed(6)
    counter = as_counter(TinyUserNet(), output_stride=8, feature="body", output_conv="head")
    assert isinstance(counter, DensityCounter) and counter.feature_channels == 6
    out = counter(torch.randn(1, 3, 30, 41), return_features=True)
    assert out.final.shape == (1, 1, 30, 41) and out.features.shape == (1, 6, 30, 41) and out.output_stride == 8
    model = AutoScale(counter, L2S(counter.feature_channels), PipelineConfig(variant="regression", area_ratio=0.0))
    res = model.predict(model.prepare(np.full((30, 41, 3), 128, np.uint8)))
    assert np.isfinite(res.count)
    # joint loss: gradients reach the user's network and L2S
    pts = np.array([[5.0, 5.0], [6.0, 7.0], [20.0, 20.0]])
    model.config.region_from, model.config.dense_k = "target", 0.5
    from autoscale.losses import CenterLoss
    from autoscale.pipeline import _to_tensor, make_target

    tgt = _to_tensor(make_target("regression", pts, (30, 41), model.config), "regression", torch.device("cpu"))
    bd = joint_loss(model, torch.randn(1, 3, 30, 41), pts, tgt, CenterLoss())
    bd.total.backward()
    assert bd.region is not None
    assert all(p.grad is not None for p in counter.net.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.l2s.parameters())
    # output_conv lets model.output_scale fold into its weights
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        ref = counter(x).final * 3.0
        torch.testing.assert_close(fold_output_scale(copy.deepcopy(counter), 3.0)(x).final, ref)
    with pytest.raises(ValueError, match="name the submodule"):
        as_counter(TinyUserNet(), output_stride=8)
    with pytest.raises(ValueError, match="not a submodule"):
        as_counter(TinyUserNet(), output_stride=8, feature="neck")


def test_wrapped_known_answer_counts_and_region_composition():
    """A network whose cell density is the sum of channel 0 over the cell: the first pass counts
    channel 0's sum; a fixed x2 zoom of the dense block re-predicts 4x its mass (bilinear zoom of a
    constant block), composed as N = sum - sum(box) + sum(zoomed)."""
    counter = as_counter(SumChannel0(), output_stride=4)
    assert counter.feature_channels == 2
    img = torch.full((1, 3, 40, 60), 0.01)
    img[:, :, 8:24, 12:40] = 1.0  # dense block, 16 x 28 px, on whole 4 x 4 cells
    model = AutoScale(counter, None, PipelineConfig(variant="regression", fixed_scale=2.0))
    res = model.predict(img)
    total = 0.01 * (2400 - 448) + 448.0
    assert res.first_count == pytest.approx(total, rel=1e-5)
    r = res.regions[0]
    assert (r.region.x, r.region.y, r.region.w, r.region.h) == (12, 8, 28, 16)
    assert res.count == pytest.approx(total - 448.0 + 4 * 448.0, rel=1e-4)


# ------------------------------------------------------------------ config
def test_config_validates_the_counter_keys(synth, tmp_path):
    from autoscale.engine.config import config_from_dict
    from conftest import tiny_train_dict

    ok = config_from_dict(tiny_train_dict(synth, model__counter="bl", model__backbone="vgg19",
                                          pipeline__density_loss="bayesian"))
    assert ok.model.counter == "bl" and ok.pipeline.density_loss == "bayesian"
    bad = [
        ({"model__counter": "resnet"}, "model.counter.*mcnn"),
        ({"model__counter": "csrnet", "model__variant": "localization"}, "no localization counter 'csrnet'"),
        ({"model__counter": "mcnn", "model__backbone": "efficientnet_lite0"}, "mcnn has no backbone"),
        ({"model__counter": "sfcn", "model__backbone": "efficientnet_lite0"}, "model.backbone.*sfcn"),
        ({"model__counter": "can", "model__official_init": True}, "official_init"),
        ({"model__variant": "localization", "pipeline__density_loss": "bayesian"}, "regression loss"),
        ({"pipeline__density_loss": "l1"}, "density_loss"),
        ({"pipeline__bl_sigma": 0.0}, "bl_sigma"),
        ({"pipeline__refine_weight": -0.5}, "refine_weight.*>= 0"),
    ]
    for kw, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            config_from_dict(tiny_train_dict(synth, **kw))


# ------------------------------------------------------------------ training through the engine
@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    """Each counter trained one epoch through engine.train without (method fpn) and with L2S."""
    from autoscale.engine.config import config_from_dict
    from autoscale.engine.trainer import train
    from conftest import tiny_train_dict

    out, threads = tmp_path_factory.mktemp("counters"), torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {}
    try:
        for counter, method in itertools.product(COUNTERS, ("fpn", "autoscale")):
            kw = dict(model__counter=counter, method=method, optim__epochs=1, model__width=0.125, model__init="kaiming",
                      model__output_scale=4.0, data__val_split=None, out=str(out / f"{counter}_{method}"),
                      pipeline__region_from="target", pipeline__area_ratio=0.0, pipeline__dense_k=1.0)
            if counter == "bl":
                kw.update(model__backbone="vgg19", pipeline__density_loss="bayesian")
            cfg = config_from_dict(tiny_train_dict(synth, **kw))
            runs[counter, method] = (cfg, train(cfg))
    finally:
        torch.set_num_threads(threads)
    return runs


@pytest.mark.parametrize("counter", COUNTERS)
@pytest.mark.parametrize("method", ["fpn", "autoscale"])
def test_one_training_epoch_through_the_engine_and_predict_loads_it(trained, synth, counter, method):
    from autoscale.data.formats import read_dataset
    from autoscale.models.registry import load_checkpoint
    from autoscale.models.vgg import normalize
    from autoscale.predict import Predictor

    cfg, res = trained[counter, method]
    assert res.step == 2 and all(np.isfinite(res.step_losses))  # 4 images, batch 2
    row = res.history[-1]
    if method == "autoscale":
        assert row["regions"] >= 1 and row["loss_refine"] > 0 and np.isfinite(row["center"])
    ck = load_checkpoint(res.last_checkpoint)
    assert ck["model"]["name"] == f"{counter}_regression" and ck["method"] == method
    assert (ck["l2s_state_dict"] is not None) == (method == "autoscale")
    # the checkpoint rebuilds strictly; the saved counter is the trained one with output_scale folded in
    net, l2s = build_from_checkpoint(res.last_checkpoint)
    assert type(net).__name__ == type(get_model(f"{counter}_regression", width=0.125)).__name__
    assert (l2s is not None) == (method == "autoscale")
    rec = read_dataset("generic", synth, "val")[0]
    pred = Predictor.from_checkpoint(str(res.last_checkpoint), max_side=None)(rec.image_path)
    if method == "fpn":  # single pass: the sum of the rebuilt counter's map
        from autoscale.data.image_io import read_image

        with torch.no_grad():
            direct = float(net.eval()(normalize(read_image(rec.image_path))).final.sum())
        assert pred.count == pytest.approx(direct, rel=1e-4, abs=1e-4)
    assert np.isfinite(pred.count)


def test_the_trainer_passes_each_images_points_to_the_bayesian_loss(synth, tmp_path):
    """One engine step of BL: its loss equals the Bayesian loss of the first sampled image's
    points on the freshly built model (same seed), recomputed here."""
    from torch.utils.data import DistributedSampler

    from autoscale.engine.config import config_from_dict
    from autoscale.engine.dataset import build_dataset
    from autoscale.engine.trainer import build_model, train
    from conftest import tiny_train_dict

    cfg = config_from_dict(tiny_train_dict(synth, model__counter="bl", model__backbone="vgg19", model__width=0.0625,
                                           pipeline__density_loss="bayesian", optim__batch_size=1, optim__max_steps=1,
                                           data__val_split=None, out=str(tmp_path / "bl")))
    res = train(cfg)
    ds = build_dataset(cfg, cfg.data.train_split, train=True, quiet=True)
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=cfg.seed)
    sampler.set_epoch(0)
    ds.set_epoch(0)
    sample = ds[next(iter(sampler))]
    model = build_model(cfg)
    with torch.no_grad():
        out = model.counter(sample["image"][None])
    dens = sum_cells(out.final[0, 0], 8).double().numpy()
    H, W = sample["image"].shape[-2:]
    ref = bl_reference(dens, np.asarray(sample["points"]), 8, cfg.pipeline.bl_sigma, True, float(min(H, W)))
    assert len(sample["points"]) > 0
    assert res.step_losses[0] == pytest.approx(ref, rel=1e-4)


def test_sfcn_slice_convolutions_start_small_under_any_init_scheme():
    """The spatial encoder is a recurrence over rows and columns: its convolutions start from
    N(0, 0.01) even when the rest is Kaiming-initialised, so a 144x192 input's first output stays
    bounded (with Kaiming slice convolutions: about 6e3 for this seed)."""
    torch.manual_seed(0)
    m = get_model("sfcn_regression", width=0.25, init="kaiming")
    for sc in (m.convDU, m.convLR):
        w = sc.conv[0].weight
        assert abs(float(w.std()) - 0.01) < 0.002 and float(sc.conv[0].bias.abs().max()) == 0.0
    assert float(m.backend[0].weight.std()) > 0.01  # the rest follows the scheme (Kaiming)
    with torch.no_grad():
        out = m(torch.randn(1, 3, 144, 192)).final
    assert float(out.abs().max()) < 1e3
