"""Conversion of the authors' checkpoints, checked against the published key/shape tables and an
independent straight-line re-implementation of the authors' forward passes (facts §1a, §1b)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoscale.cli import main as cli_main
from autoscale.errors import CheckpointError
from autoscale.models import LocalizationFPN, RegressionFPN, build_from_checkpoint
from autoscale.models.l2s import roi_features
from autoscale.models.official import convert_official, official_shapes, to_official
from autoscale.models.registry import load_checkpoint

from conftest import SHARED_DATA

OFFICIAL_JSON = SHARED_DATA.parent / "reference" / "official-state-dict.json"


# ---- the authors' key/shape tables, written out by hand from official-code-facts §1 ----------
def _conv(t, name, o, i, k, bn=False):
    t[f"{name}.weight"], t[f"{name}.bias"] = (o, i, k, k), (o,)


def _bn(t, name, c):
    for p in ("weight", "bias", "running_mean", "running_var"):
        t[f"{name}.{p}"] = (c,)
    t[f"{name}.num_batches_tracked"] = ()


def regression_spec():
    t = {}
    vgg = [(0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128), (12, 256, 256),
           (14, 256, 256), (17, 512, 256), (19, 512, 512), (21, 512, 512)]
    for i, o, c in vgg:
        _conv(t, f"frontend.{i}", o, c, 3)
    for i in (0, 2, 4):
        _conv(t, f"backend.{i}", 512, 512, 3)
    for i, (o, c) in zip((0, 2, 4), ((256, 512), (128, 256), (64, 128))):
        _conv(t, f"densend.{i}", o, c, 3)
    for k, c in zip(range(1, 6), (64, 128, 256, 512, 512)):
        _conv(t, f"cd{k}.0", 32, c, 3)
    _conv(t, "fuse.0", 28, 112, 3)
    _conv(t, "fuse.2", 1, 28, 1)
    _conv(t, "rd5.0", 8, 32, 1)
    for k in (4, 3, 2):
        _conv(t, f"rd{k}.0", 8, 40, 1)
    for k in (5, 4, 3, 2):
        _conv(t, f"up{k}", 8, 8, 4)
    for k in (1, 2, 3, 4):
        _conv(t, f"dsn{k}", 1, 40, 1)
    _conv(t, "dsn5", 1, 32, 1)
    _conv(t, "dsn6", 1, 4, 1)
    return t


def localization_spec():
    t = {}
    convs = {"conv1": [(0, 64, 3), (2, 64, 64)], "conv2": [(1, 128, 64), (3, 128, 128)],
             "conv3": [(1, 256, 128), (3, 256, 256), (5, 256, 256)],
             "conv4": [(1, 512, 256), (3, 512, 512), (5, 512, 512)],
             "conv5": [(1, 512, 512), (3, 512, 512), (5, 512, 512)]}
    for stage, layers in convs.items():
        for j, o, c in layers:
            _conv(t, f"{stage}.{j}", o, c, 3)
    for k, c in zip(range(1, 6), (64, 128, 256, 512, 512)):
        _conv(t, f"cd{k}.0", 24, c, 3)
        _bn(t, f"cd{k}.1", 24)
    _conv(t, "rd5.0", 8, 24, 1)
    _bn(t, "rd5.1", 8)
    for k in (4, 3, 2):
        _conv(t, f"rd{k}.0", 8, 32, 1)
        _bn(t, f"rd{k}.1", 8)
    for k in (5, 4, 3, 2):
        _conv(t, f"up{k}", 8, 8, 4)
    for k in (1, 2, 3, 4):
        _conv(t, f"dsn{k}", 11, 32, 1)
    _conv(t, "dsn5", 11, 24, 1)
    _conv(t, "dsn6", 11, 55, 1)
    return t


def rate_spec(variant):
    t = {}
    _conv(t, "des_dimension.0", 64, 152, 3)
    _conv(t, "ROI_feat.0", 32, 64, 3)
    _conv(t, "ROI_feat.3", 32, 32, 3)
    if variant == "regression":
        t["output.0.weight"], t["output.0.bias"] = (1, 288), (1,)
    else:
        t["output.0.weight"], t["output.0.bias"] = (10, 288), (10,)
        t["output.2.weight"], t["output.2.bias"] = (1, 10), (1,)
    return t


SPECS = {"regression": regression_spec, "localization": localization_spec}


def synth(table, seed):
    """Random tensors with He-scaled weights (so a deep forward stays O(1)), valid BN statistics."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in table.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(123)
        elif k.endswith("running_var") or (len(shape) == 1 and ".1.weight" in k):
            out[k] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 1:
            out[k] = torch.randn(shape, generator=g) * 0.1
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) == 2 or not k.startswith("up") else shape[0] * 4
            out[k] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
    return out


def official_ckpt(variant, seed=0, prefix="module.", main_key="state_dict"):
    return {main_key: {prefix + k: v for k, v in synth(SPECS[variant](), seed).items()},
            "rate_state_dict": {prefix + k: v for k, v in synth(rate_spec(variant), seed + 1).items()}}


@pytest.fixture(scope="module")
def reg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "model_best.pth"
    ck = official_ckpt("regression")
    torch.save(ck, path)
    return path, ck


@pytest.fixture(scope="module")
def loc_ckpt():
    return official_ckpt("localization", seed=5)


# ---- tables and counts -----------------------------------------------------------------------
def test_hand_spec_matches_published_json():
    if not OFFICIAL_JSON.is_file():
        pytest.skip(f"{OFFICIAL_JSON} not found")
    pub = json.loads(OFFICIAL_JSON.read_text())
    for variant in ("regression", "localization"):
        assert {k: tuple(v) for k, v in pub[variant]["state_dict"].items()} == SPECS[variant]()
        assert {k: tuple(v) for k, v in pub[variant]["rate_state_dict"].items()} == rate_spec(variant)
        # the json's counts exclude the BN step counters
        main = sum(int(np.prod(s)) for k, s in SPECS[variant]().items() if "num_batches" not in k)
        assert main == pub[variant]["param_counts"]["state_dict"]
        assert sum(int(np.prod(s)) for s in rate_spec(variant).values()) == pub[variant]["param_counts"]["rate_state_dict"]


def test_official_tables_and_counts():
    for variant in ("regression", "localization"):
        main, rate = official_shapes(variant)
        assert main == SPECS[variant]() and rate == rate_spec(variant)
    numel = lambda t: sum(int(np.prod(s)) for s in t.values())  # noqa: E731
    assert numel(regression_spec()) == 16_721_379 and numel(rate_spec("regression")) == 115_617
    assert numel(localization_spec()) == 15_040_840 and numel(rate_spec("localization")) == 118_229


@pytest.mark.parametrize("variant", ["regression", "localization"])
def test_convert_load_strict_and_round_trip(variant, reg_file, loc_ckpt):
    src = reg_file[0] if variant == "regression" else loc_ckpt
    raw = reg_file[1] if variant == "regression" else loc_ckpt
    ck = convert_official(src, variant)
    fpn, l2s = build_from_checkpoint(ck)  # strict loads
    assert isinstance(fpn, RegressionFPN if variant == "regression" else LocalizationFPN)
    assert l2s.bound == "official" and l2s.pool == ("avg" if variant == "regression" else "max")
    ours = sum(v.numel() for v in fpn.state_dict().values())
    unused = sum(v.numel() for v in ck["official_unused"].values())
    assert ours + unused == sum(v.numel() for v in raw["state_dict"].values())
    assert sum(p.numel() for p in l2s.parameters()) == (115_617 if variant == "regression" else 118_229)
    back = to_official(ck)
    assert set(back) == {"state_dict", "rate_state_dict"}
    for part in back:
        assert set(back[part]) == set(raw[part])
        assert all(torch.equal(back[part][k], raw[part][k]) for k in raw[part])
    # a specific mapping spot-check
    first = "frontend.0.weight" if variant == "regression" else "conv1.0.weight"
    last = "backend.4.weight" if variant == "regression" else "conv5.5.weight"
    assert torch.equal(fpn.backbone.features[0].weight, raw["state_dict"]["module." + first])
    assert torch.equal(fpn.backbone.features[28].weight, raw["state_dict"]["module." + last])


def test_legacy_key_no_prefix_no_rate():
    raw = official_ckpt("regression", prefix="", main_key="pre_state_dict")
    del raw["rate_state_dict"]
    ck = convert_official(raw, "regression")
    assert ck["l2s_state_dict"] is None and ck["source"]["state_key"] == "pre_state_dict"
    assert not ck["source"]["module_prefix"]
    fpn, l2s = build_from_checkpoint(ck)
    assert l2s is None
    assert torch.equal(fpn.cd5[0].weight, raw["pre_state_dict"]["cd5.0.weight"])


def test_key_errors_list_every_offender(loc_ckpt):
    with pytest.raises(CheckpointError, match="localization checkpoint: use --variant localization"):
        convert_official(loc_ckpt, "regression")
    bad = {"state_dict": dict(loc_ckpt["state_dict"]), "rate_state_dict": loc_ckpt["rate_state_dict"]}
    del bad["state_dict"]["module.conv3.3.bias"], bad["state_dict"]["module.up5.weight"]
    bad["state_dict"]["module.extra.weight"] = torch.zeros(1)
    bad["state_dict"]["module.dsn6.weight"] = torch.zeros(11, 54, 1, 1)
    with pytest.raises(CheckpointError) as exc:
        convert_official(bad, "localization")
    msg = str(exc.value)
    for key in ("conv3.3.bias", "up5.weight", "extra.weight", "dsn6.weight"):
        assert key in msg
    assert "missing" in msg and "unexpected" in msg and "mis-shaped" in msg
    bad_rate = {"state_dict": loc_ckpt["state_dict"], "rate_state_dict": dict(loc_ckpt["rate_state_dict"])}
    del bad_rate["rate_state_dict"]["module.output.2.bias"]
    with pytest.raises(CheckpointError, match="output.2.bias"):
        convert_official(bad_rate, "localization")
    with pytest.raises(CheckpointError, match="no 'state_dict'"):
        convert_official({"model": {}}, "localization")
    with pytest.raises(CheckpointError, match="unknown variant"):
        convert_official(loc_ckpt, "detection")


def test_bad_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="junk.pth"):
        convert_official(tmp_path / "junk.pth", "regression")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="list.pth.*dict"):
        convert_official(tmp_path / "list.pth", "regression")
    with pytest.raises(CheckpointError, match="missing.pth"):
        convert_official(tmp_path / "missing.pth", "regression")


# ---- independent re-implementations of the authors' forward passes --------------------------
def _ops(sd):
    def conv(t, n, pad=None, dil=1):
        w = sd[n + ".weight"]
        return F.conv2d(t, w, sd[n + ".bias"], padding=w.shape[-1] // 2 if pad is None else pad, dilation=dil)

    def crop(t, h, w):
        H, W = t.shape[-2:]
        return t[..., (H - h) // 2:(H - h) // 2 + h, (W - w) // 2:(W - w) // 2 + w]

    def up(t, f):
        return F.interpolate(t, scale_factor=f, mode="bilinear", align_corners=True)

    def tconv(t, n):
        return F.conv_transpose2d(t, sd[n + ".weight"], sd[n + ".bias"], stride=2)

    return conv, crop, up, tconv


def ref_regression(sd, x):
    conv, crop, up, tconv = _ops(sd)
    r = F.relu
    H, W = x.shape[-2:]
    t = F.pad(x, (8, 8, 8, 8))
    c1 = r(conv(r(conv(t, "frontend.0")), "frontend.2"))
    c2 = r(conv(r(conv(F.max_pool2d(c1, 2, 2), "frontend.5")), "frontend.7"))
    t = F.max_pool2d(c2, 2, 2)
    for n in (10, 12, 14):
        t = r(conv(t, f"frontend.{n}"))
    c3 = t
    t = F.max_pool2d(c3, 2, 2)
    for n in (17, 19, 21):
        t = r(conv(t, f"frontend.{n}"))
    c4 = t
    for n in (0, 2, 4):
        t = r(conv(t, f"backend.{n}", pad=2, dil=2))
    c5 = t
    p5 = r(conv(c5, "cd5.0"))
    p4 = r(torch.cat([r(conv(c4, "cd4.0")), crop(r(conv(r(p5), "rd5.0")), *c4.shape[-2:])], 1))
    p3 = r(torch.cat([r(conv(c3, "cd3.0")), crop(tconv(r(conv(r(p4), "rd4.0")), "up4"), *c3.shape[-2:])], 1))
    p2 = r(torch.cat([r(conv(c2, "cd2.0")), crop(tconv(r(conv(r(p3), "rd3.0")), "up3"), *c2.shape[-2:])], 1))
    d5 = crop(up(conv(r(p5), "dsn5"), 8), H, W)
    d4 = crop(up(conv(p4, "dsn4"), 8), H, W)
    d3 = crop(up(conv(p3, "dsn3"), 4), H, W)
    d2 = crop(up(conv(p2, "dsn2"), 2), H, W)
    d6 = conv(torch.cat([d2, d3, d4, d5], 1), "dsn6")
    feat = torch.cat([crop(up(p2, 2), H, W), crop(up(p3, 4), H, W), crop(up(p4, 8), H, W), crop(up(p5, 8), H, W)], 1)
    return [d2, d3, d4, d5, d6], feat


def ref_localization(sd, x):
    conv, crop, up, tconv = _ops(sd)
    r = F.relu

    def bn(t, n):
        return F.batch_norm(t, sd[n + ".running_mean"], sd[n + ".running_var"], sd[n + ".weight"],
                            sd[n + ".bias"], training=False, eps=1e-5)

    H, W = x.shape[-2:]
    c1 = r(conv(r(conv(x, "conv1.0", pad=35)), "conv1.2"))
    t = F.max_pool2d(c1, 2, 2, ceil_mode=True)
    c2 = r(conv(r(conv(t, "conv2.1")), "conv2.3"))
    t = F.max_pool2d(c2, 2, 2, ceil_mode=True)
    for j in (1, 3, 5):
        t = r(conv(t, f"conv3.{j}"))
    c3 = t
    t = F.max_pool2d(c3, 2, 2, ceil_mode=True)
    for j in (1, 3, 5):
        t = r(conv(t, f"conv4.{j}"))
    c4 = t
    t = F.max_pool2d(c4, 2, stride=1, padding=1)
    for j in (1, 3, 5):
        t = r(conv(t, f"conv5.{j}", pad=2, dil=2))
    c5 = t
    cd = lambda t, k: bn(conv(t, f"cd{k}.0"), f"cd{k}.1")  # noqa: E731
    rd = lambda t, k: bn(conv(t, f"rd{k}.0"), f"rd{k}.1")  # noqa: E731
    p5 = cd(c5, 5)
    p4 = r(torch.cat([cd(c4, 4), crop(rd(r(p5), 5), *c4.shape[-2:])], 1))
    p3 = r(torch.cat([cd(c3, 3), crop(tconv(rd(r(p4), 4), "up4"), *c3.shape[-2:])], 1))
    p2 = r(torch.cat([cd(c2, 2), crop(tconv(rd(r(p3), 3), "up3"), *c2.shape[-2:])], 1))
    p1 = r(torch.cat([cd(c1, 1), crop(tconv(rd(r(p2), 2), "up2"), *c1.shape[-2:])], 1))
    d1 = crop(conv(p1, "dsn1"), H, W)
    d2 = crop(up(conv(p2, "dsn2"), 2), H, W)
    d3 = crop(up(conv(p3, "dsn3"), 4), H, W)
    d4 = crop(up(conv(p4, "dsn4"), 8), H, W)
    d5 = crop(up(conv(r(p5), "dsn5"), 8), H, W)
    d6 = conv(torch.cat([d1, d2, d3, d4, d5], 1), "dsn6")
    feat = torch.cat([F.interpolate(p, size=(H, W), mode="bilinear", align_corners=True) for p in (p1, p2, p3, p4, p5)], 1)
    return [d1, d2, d3, d4, d5, d6], feat


def ref_rate(sd, roi, variant):
    conv, _, _, _ = _ops(sd)
    pool = F.avg_pool2d if variant == "regression" else F.max_pool2d
    t = F.relu(conv(roi, "des_dimension.0"))
    t = pool(F.relu(conv(t, "ROI_feat.0")), 2, 2)
    t = pool(F.relu(conv(t, "ROI_feat.3")), 2, 2).flatten(1)
    if variant == "regression":
        return torch.sqrt(torch.clamp(F.linear(t, sd["output.0.weight"], sd["output.0.bias"]).abs(), 0.5, 9))
    h = F.relu(F.linear(t, sd["output.0.weight"], sd["output.0.bias"]))
    return torch.sqrt(torch.clamp(F.linear(h, sd["output.2.weight"], sd["output.2.bias"]), 0.5, 5))


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("variant", ["regression", "localization"])
def test_converted_forward_equals_authors_forward(variant, reg_file, loc_ckpt):
    raw = reg_file[1] if variant == "regression" else loc_ckpt
    sd = {k.removeprefix("module."): v for k, v in raw["state_dict"].items()}
    rate = {k.removeprefix("module."): v for k, v in raw["rate_state_dict"].items()}
    fpn, l2s = build_from_checkpoint(convert_official(raw, variant))
    fpn.eval()
    x = torch.randn(1, 3, 29, 38, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = fpn(x, return_features=True)
        ref_outs, ref_feat = (ref_regression if variant == "regression" else ref_localization)(sd, x)
        assert out.final.shape[-2:] == (29, 38)
        for ours, ref in zip([*out.side, out.final], ref_outs):
            assert ours.shape == ref.shape
            assert _rel(ours, ref) <= 1e-4
        assert _rel(out.features, ref_feat) <= 1e-4
        box = (5, 4, 20, 17)
        roi = roi_features(out.features, box)
        assert _rel(l2s(roi), ref_rate(rate, roi, variant)) <= 1e-5


# ---- command line ----------------------------------------------------------------------------
def test_cli_convert_and_back(reg_file, tmp_path, capsys):
    src, raw = reg_file
    dst = tmp_path / "ours.pth"
    assert cli_main(["convert-official", str(src), "--variant", "regression", "--out", str(dst)]) == 0
    ck = load_checkpoint(dst)
    assert ck["variant"] == "regression" and ck["model"]["name"] == "fpn_regression"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.pth"]  # no temporary left behind
    back = tmp_path / "official.pth"
    assert cli_main(["convert-official", str(dst), "--variant", "regression", "--out", str(back), "--to-official"]) == 0
    again = torch.load(back, weights_only=True)
    assert all(torch.equal(again["state_dict"][k], raw["state_dict"][k]) for k in raw["state_dict"])
    capsys.readouterr()
    assert cli_main(["convert-official", str(src), "--variant", "localization", "--out", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert "model_best.pth" in err and "use --variant regression" in err
    assert not (tmp_path / "x.pth").exists()
