"""Losses: hand-computed values, relations between losses, autograd checks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from autoscale.errors import ConfigError
from autoscale.losses import (
    CenterLoss,
    centre_loss_grad,
    cross_entropy,
    decode_classes,
    deep_supervision_mse,
    density_mse,
    dynamic_cross_entropy,
    focal_loss,
    get_class_loss,
    num_output_channels,
    ordinal_decode,
    ordinal_regression_loss,
)


def px(*logit_vectors):
    """Logits (1, K, 1, P) from P per-pixel logit vectors."""
    return torch.tensor(logit_vectors, dtype=torch.float64).T.reshape(1, len(logit_vectors[0]), 1, -1)


def test_density_mse_and_deep_supervision():
    t = torch.tensor([[[[1.0, 2.0], [0.0, 0.5]]]])
    p = torch.tensor([[[[0.0, 2.0], [1.0, 1.5]]]])  # errors 1, 0, 1, 1 -> sum 3
    assert density_mse(p, t).item() == 3.0
    assert density_mse(p, t, reduction="mean").item() == 0.75
    assert deep_supervision_mse([p, t, p], t).item() == 6.0
    assert deep_supervision_mse([p, p], t, weights=[0.5, 2.0]).item() == 7.5
    with pytest.raises(ValueError):
        density_mse(p, t[..., :1])
    with pytest.raises(ConfigError):
        density_mse(p, t, reduction="max")


def test_dce_hand_computed():
    # 3 classes, pixel 1: logits (0, ln 2, ln 5) -> Pr = (1/8, 2/8, 5/8), true class 0
    #   weight = 1*1/8 + 2*2/8 + 3*5/8 = 20/8 = 2.5 ; loss = 2.5 * -ln(1/8) = 2.5 ln 8
    # pixel 2: logits (0, 0, 0) -> Pr = 1/3 each, true class 1
    #   weight = (2 + 1 + 2) / 3 = 5/3 ; loss = 5/3 * ln 3
    logits = px([0.0, math.log(2), math.log(5)], [0.0, 0.0, 0.0])
    target = torch.tensor([[[0, 1]]])
    expected = 2.5 * math.log(8) + 5 / 3 * math.log(3)
    assert dynamic_cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-12)
    assert dynamic_cross_entropy(logits, target, reduction="mean").item() == pytest.approx(expected / 2, rel=1e-12)
    # ignore_index drops pixel 2
    t2 = torch.tensor([[[0, 255]]])
    assert dynamic_cross_entropy(logits, t2, ignore_index=255).item() == pytest.approx(2.5 * math.log(8))
    assert dynamic_cross_entropy(logits, t2, ignore_index=255, reduction="mean").item() == pytest.approx(2.5 * math.log(8))
    with pytest.raises(ValueError):
        dynamic_cross_entropy(logits, t2)  # 255 is not a class


def test_dce_penalises_far_mass_more_than_ce():
    # same probability on the true class (class 2 of 6), wrong mass on class 3 (near) vs 5 (far)
    near = px([0.0, -20.0, 1.0, 1.0, -20.0, -20.0])
    far = px([0.0, -20.0, 1.0, -20.0, -20.0, 1.0])
    t = torch.tensor([[[2]]])
    assert cross_entropy(near, t).item() == pytest.approx(cross_entropy(far, t).item(), rel=1e-9)
    d_near, d_far = dynamic_cross_entropy(near, t).item(), dynamic_cross_entropy(far, t).item()
    assert d_far > d_near
    # the weights differ by 2 (|2-5| + 1 = 4 vs |2-3| + 1 = 2) times the wrong mass (~e/(1+2e))
    ce = cross_entropy(near, t).item()
    assert (d_far - d_near) / ce == pytest.approx(2 * math.e / (1 + 2 * math.e), rel=1e-6)


def test_dce_is_ce_times_expected_distance_weight():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, 5, (2, 3, 4), generator=g)
    prob = logits.softmax(1)
    w = torch.zeros(2, 3, 4, dtype=torch.float64)
    for i in range(5):
        w += ((target - i).abs() + 1) * prob[:, i]
    nll = F.nll_loss(prob.log(), target, reduction="none")
    assert dynamic_cross_entropy(logits, target).item() == pytest.approx((w * nll).sum().item(), rel=1e-10)
    # one-hot-correct limit: the weight tends to 1 and DCE / CE -> 1
    sharp = F.one_hot(target, 5).permute(0, 3, 1, 2).double() * 30
    ratio = dynamic_cross_entropy(sharp, target).item() / cross_entropy(sharp, target).item()
    assert ratio == pytest.approx(1.0, abs=1e-10) and ratio >= 1.0


def test_dce_gradcheck_and_detach():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 4, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (1, 2, 3), generator=g)
    assert torch.autograd.gradcheck(lambda x: dynamic_cross_entropy(x, target), (logits,))
    # (detach_weight=True is deliberately not the derivative of the loss value: checked below)
    # detach_weight: gradient = weight * d(CE)/dlogits with the weight held constant
    w = ((target.unsqueeze(1) - torch.arange(4).view(1, 4, 1, 1)).abs() + 1) * logits.softmax(1)
    w = w.sum(1).detach()
    (gd,) = torch.autograd.grad(dynamic_cross_entropy(logits, target, detach_weight=True), logits)
    (gc,) = torch.autograd.grad((w * F.cross_entropy(logits, target, reduction="none")).sum(), logits)
    torch.testing.assert_close(gd, gc)
    (gf,) = torch.autograd.grad(dynamic_cross_entropy(logits, target), logits)
    assert not torch.allclose(gf, gd)  # the dynamic weight contributes to the gradient


def test_focal_loss():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 3, 3), generator=g)
    ce_ref = F.cross_entropy(logits, target, reduction="sum").item()
    assert focal_loss(logits, target, gamma=0).item() == pytest.approx(ce_ref, rel=1e-12)
    assert cross_entropy(logits, target).item() == pytest.approx(ce_ref, rel=1e-12)
    assert cross_entropy(logits, target, reduction="mean").item() == pytest.approx(ce_ref / 18, rel=1e-12)
    # hand case: Pr(true) = 1/4 -> (3/4)^2 * ln 4
    one = px([0.0, 0.0, 0.0, 0.0])
    assert focal_loss(one, torch.tensor([[[3]]])).item() == pytest.approx(0.5625 * math.log(4))


def test_ordinal_loss_and_decode():
    # K = 4 classes -> 3 channels; target 2 -> binary targets [1, 1, 0]
    logits = px([0.0, 0.0, 0.0])
    assert ordinal_regression_loss(logits, torch.tensor([[[2]]])).item() == pytest.approx(3 * math.log(2))
    logits = px([math.log(3), 0.0, -math.log(3)])  # sigmoids 3/4, 1/2, 1/4
    # target 2: -ln(3/4) - ln(1/2) - ln(3/4)
    expected = -2 * math.log(0.75) - math.log(0.5)
    assert ordinal_regression_loss(logits, torch.tensor([[[2]]])).item() == pytest.approx(expected)
    dec = ordinal_decode(px([5.0, 1.0, -1.0], [-3.0, -2.0, -1.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]))
    assert dec.tolist() == [[[2, 0, 3, 0]]]  # sigmoid(0) = 0.5 is not > 0.5
    assert decode_classes(px([5.0, 1.0, -1.0]), "ordinal").tolist() == [[[2]]]
    assert decode_classes(px([0.1, 3.0, 0.2]), "dce").tolist() == [[[1]]]
    assert num_output_channels("ordinal", 11) == 10 and num_output_channels("ce", 11) == 11
    with pytest.raises(ConfigError):
        get_class_loss("hinge")


def test_centre_loss_grad_matches_autograd_and_eq3():
    S = torch.tensor([3.0, 5.5, 8.0], dtype=torch.float64)
    r = torch.tensor([1.2, 0.7, 2.5], dtype=torch.float64, requires_grad=True)
    C = 18.0
    loss = CenterLoss(init=C)(S, r)
    assert loss.item() == pytest.approx(0.5 * sum((s * x**2 - C) ** 2 for s, x in zip(S.tolist(), r.tolist())))
    (g,) = torch.autograd.grad(loss, r)
    rd = r.detach()
    torch.testing.assert_close(g, centre_loss_grad(S, rd, C))
    torch.testing.assert_close(g, 2 * S * (S * rd**3 - C * rd))  # Eq. 3 as printed
    for p in (1.0, 3.0):
        lp = CenterLoss(init=C, exponent=p)(S, r)
        (gp,) = torch.autograd.grad(lp, r)
        torch.testing.assert_close(gp, centre_loss_grad(S, rd, C, p=p))


def test_centre_update_eq4_by_hand():
    cl = CenterLoss(init=10.0, alpha=0.1)
    cl.train()
    S1, r1 = torch.tensor([2.0, 4.0]), torch.tensor([2.0, 1.0])  # S r^2 = 8, 4
    S2, r2 = torch.tensor([1.0]), torch.tensor([3.0])  # 9
    cl(S1, r1)
    cl(S2, r2)
    # M = 3: dC = ((10-8) + (10-4) + (10-9)) / 4 = 9/4 ; C = 10 - 0.1 * 2.25 = 9.775
    assert cl.step_center() == pytest.approx(2.25)
    assert cl.center.item() == pytest.approx(9.775)
    assert cl.step_center() == 0.0 and cl.center.item() == pytest.approx(9.775)  # reset
    cl.eval()
    cl(S1, r1)  # eval mode does not accumulate
    assert int(cl.acc_count) == 0
    # C receives no gradient and is not a parameter in paper mode
    assert list(cl.parameters()) == []


def test_centre_state_dict_round_trip():
    cl = CenterLoss(init=12.0, init_noise=1.0, seed=5)
    assert cl.center.item() != 12.0
    c0 = cl.center.item()
    cl(torch.tensor([2.0]), torch.tensor([1.5]))
    sd = {k: v.clone() for k, v in cl.state_dict().items()}
    assert set(sd) == {"center", "acc_sum", "acc_count"}
    other = CenterLoss()
    other.load_state_dict(sd)
    assert other.center.item() == cl.center.item()
    assert other.step_center() == pytest.approx(cl.step_center())
    assert CenterLoss(init=12.0, init_noise=1.0, seed=5).center.item() == c0  # seeded


def test_centre_official_mode():
    cl = CenterLoss(mode="official", init=18.0)
    assert isinstance(cl.center, torch.nn.Parameter)
    S = torch.tensor([6.0, 9.0])
    s = torch.tensor([2.0, 3.0], requires_grad=True)  # S*s = 12, 27 -> (6^2 + 9^2) / 2
    loss = cl(S, s)
    assert loss.item() == pytest.approx((36 + 81) / 2)
    loss.backward()
    assert cl.center.grad.item() == pytest.approx(-(2 * (12 - 18) + 2 * (27 - 18)) / 2)
    torch.testing.assert_close(s.grad, torch.tensor([2 * 6.0 * (12 - 18) / 2, 2 * 9.0 * (27 - 18) / 2]))
    with pytest.raises(ConfigError):
        cl.step_center()
    noisy = CenterLoss(mode="official", init=18.0, init_noise=1.0, seed=0)
    assert noisy.center.item() >= 18.0


def test_decode_classes_is_argmax_with_first_maximum_on_ties():
    """decode_classes uses max(dim=1).indices: the same as argmax, first index on ties, any layout."""
    from autoscale.losses import decode_classes

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (2, 11, 9, 13), generator=g).float()  # many ties
    want = torch.empty(2, 9, 13, dtype=torch.long)
    for b in range(2):
        for i in range(9):
            for j in range(13):
                v = x[b, :, i, j].tolist()
                want[b, i, j] = v.index(max(v))
    assert torch.equal(decode_classes(x), want)
    assert torch.equal(decode_classes(x.contiguous(memory_format=torch.channels_last)), want)
    assert torch.equal(decode_classes(x.bfloat16()), want)
