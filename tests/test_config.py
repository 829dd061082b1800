"""Training configuration: every preset loads and validates, overrides, and precise errors."""
from __future__ import annotations

import itertools

import pytest
import yaml

from autoscale.engine.config import (
    PLACEHOLDER_ROOT, TrainConfig, config_from_dict, config_to_dict, list_presets, load_config, preset_path,
)
from autoscale.errors import ConfigError

DATASETS = ["shanghaitech_a", "shanghaitech_b", "qnrf", "jhu", "nwpu"]


def test_preset_set_covers_the_paper_grid():
    names = set(list_presets())
    grid = {f"{d}_{m}_{v}" for d, m, v in itertools.product(DATASETS, ["fpn", "autoscale"], ["regression", "localization"])}
    assert grid <= names
    assert "trancos_fpn_localization" in names and "shanghaitech_a_autoscale_regression_official" in names
    assert not any(n.startswith("trancos_autoscale") for n in names)


#: the Table 9 counters' presets: shanghaitech_{a,b}_<counter>[_autoscale]_regression
TABLE9 = ("mcnn", "csrnet", "can", "sfcn", "bl")


def _counter_preset(name: str) -> bool:
    return any(name.startswith(f"shanghaitech_{p}_{c}_") for p in "ab" for c in TABLE9)


@pytest.mark.parametrize("name", [n for n in list_presets() if not n.endswith("_lite0") and not _counter_preset(n)])
def test_every_preset_loads_and_follows_the_paper(name):
    cfg = load_config(name, ["data.root=/somewhere"])
    assert isinstance(cfg, TrainConfig) and cfg.data.root == "/somewhere"
    ds, method, variant = name.split("_official")[0].rsplit("_", 2)
    assert (cfg.method, cfg.model.variant, cfg.pipeline.variant) == (method, variant, variant)
    assert cfg.optim.weight_decay == 5e-4 and cfg.optim.batch_size == 1 and cfg.optim.center_lr == 1e-3
    assert cfg.pipeline.center_weight == 1.0
    assert cfg.pipeline.gate == (0.1 if variant == "regression" else 0.02)
    if name.endswith("_official"):
        assert cfg.optim.center_mode == "official" and cfg.model.l2s_official
        assert cfg.pipeline.dense_method == "official" and cfg.pipeline.criterion == "official"
        assert cfg.pipeline.dense_k == 4.0
        return
    assert cfg.optim.lr == (1e-7 if variant == "regression" else 1e-4)
    assert cfg.optim.center_mode == "paper" and cfg.optim.center_every is None  # T = 1 epoch
    assert cfg.data.resize == ("paper_2048" if ds in ("qnrf", "jhu", "nwpu") else "none")
    assert cfg.data.flip and cfg.data.noise_prob > 0 and cfg.data.scale_range is not None
    if variant == "regression":  # paper Sec. 4.2 sigmas
        assert cfg.data.sigma == {"shanghaitech_a": 4, "shanghaitech_b": 8, "qnrf": 8, "jhu": 8, "nwpu": 6}[ds]


@pytest.mark.parametrize("part", ["a", "b"])
@pytest.mark.parametrize("variant", ["regression", "localization"])
def test_cpu_presets_pair_up_for_branching(part, variant):
    """The ``_lite0`` CPU presets: pretrained EfficientNet-Lite0, and each AutoScale preset can start
    from its FPN preset's kept epoch (``init_from`` needs the same model, data and schedule)."""
    fpn = load_config(f"shanghaitech_{part}_fpn_{variant}_lite0", ["data.root=/d"])
    auto = load_config(f"shanghaitech_{part}_autoscale_{variant}_lite0", ["data.root=/d"])
    for cfg, method in ((fpn, "fpn"), (auto, "autoscale")):
        assert (cfg.method, cfg.model.variant, cfg.pipeline.variant) == (method, variant, variant)
        assert (cfg.model.backbone, cfg.model.imagenet, cfg.model.width) == ("efficientnet_lite0", "auto", 1.0)
        assert cfg.data.format == "shanghaitech" and cfg.data.val_split is None  # never select on test
    assert fpn.model == auto.model and fpn.data == auto.data and fpn.optim == auto.optim
    assert len(fpn.keep_epochs) == 1 and 1 <= fpn.keep_epochs[0] < fpn.optim.epochs
    assert auto.pipeline.gate == (0.1 if variant == "regression" else 0.02)


@pytest.mark.parametrize("part", ["a", "b"])
@pytest.mark.parametrize("counter", TABLE9)
def test_table9_counter_presets_pair_up(part, counter):
    """Each Table 9 counter on ShanghaiTech A/B alone (method fpn) and with L2S (method autoscale):
    the same model, data and optimiser (so the L2S run can branch off the other); the paper's
    backbone (BL: VGG19, the others VGG16, MCNN none); BL trains with the Bayesian loss; the L2S
    settings of AutoScale Table 1; the density sigma of AutoScale Sec. 4.2."""
    alone = load_config(f"shanghaitech_{part}_{counter}_regression", ["data.root=/d"])
    with_l2s = load_config(f"shanghaitech_{part}_{counter}_autoscale_regression", ["data.root=/d"])
    assert (alone.method, with_l2s.method) == ("fpn", "autoscale")
    assert alone.model == with_l2s.model and alone.data == with_l2s.data and alone.optim == with_l2s.optim
    assert alone.pipeline == with_l2s.pipeline
    for cfg in (alone, with_l2s):
        assert (cfg.model.counter, cfg.model.variant, cfg.model.width) == (counter, "regression", 1.0)
        assert cfg.model.backbone == ("vgg19" if counter == "bl" else "vgg16")
        assert cfg.pipeline.density_loss == ("bayesian" if counter == "bl" else "mse")
        assert cfg.pipeline.gate == 0.1 and cfg.pipeline.center_weight == 1.0 and cfg.optim.center_lr == 1e-3
        assert cfg.optim.center_mode == "paper" and cfg.optim.center_every is None and cfg.optim.batch_size == 1
        assert cfg.data.sigma == {"a": 4.0, "b": 8.0}[part] and cfg.data.format == "shanghaitech"


def test_preset_root_placeholder_is_refused_with_instructions():
    with pytest.raises(ConfigError, match=r"data\.root.*data\.root=/"):
        load_config("shanghaitech_b_fpn_regression")
    assert PLACEHOLDER_ROOT in preset_path("shanghaitech_b_fpn_regression").read_text()


def test_overrides_are_yaml_typed_and_nested():
    cfg = load_config("jhu_autoscale_localization", [
        "data.root=/d", "optim.lr=1e-5", "data.crop=[256, 320]", "data.val_split=null", "pipeline.top_k=2",
        "seed=7", "bf16=true"])
    assert cfg.optim.lr == 1e-5 and cfg.data.crop == (256, 320) and cfg.data.val_split is None
    assert cfg.pipeline.top_k == 2 and cfg.seed == 7 and cfg.bf16 is True


@pytest.mark.parametrize("override, key", [
    ("optim.lrr=1", "optim.lrr"),
    ("foo.bar=1", "foo.bar"),
    ("optim.lr=fast", "optim.lr"),
    ("optim.batch_size=1.5", "optim.batch_size"),
    ("data.crop=[1, 2, 3]", "data.crop"),
    ("method=magic", "method"),
    ("optim.epochs=0", "optim.epochs"),
    ("pipeline.variant=localization", "pipeline.variant"),
    ("data.format=nope", "nope"),
])
def test_bad_keys_and_values_name_the_key_and_file(override, key):
    with pytest.raises(ConfigError) as exc:
        load_config("shanghaitech_a_fpn_regression", ["data.root=/d", override])
    msg = str(exc.value)
    assert key in msg
    if key != "nope":
        assert "shanghaitech_a_fpn_regression" in msg


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml.*malformed YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("data:\n  root: /d\nmodel:\n  widht: 0.5\n")
    with pytest.raises(ConfigError, match=r"wrong\.yaml.*'model\.widht'"):
        load_config(wrong)
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = load_config("nwpu_autoscale_regression", ["data.root=/d", "data.crop=[64, 64]"])
    d = config_to_dict(cfg)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(d))
    again = load_config(p)
    assert again == cfg
    assert config_from_dict(d) == cfg


def test_closeness_measure_is_a_config_key():
    cfg = load_config("shanghaitech_b_autoscale_regression", ["pipeline.closeness=people_number", "data.root=/x"])
    assert cfg.pipeline.closeness == "people_number"
    assert load_config("shanghaitech_b_autoscale_regression", ["data.root=/x"]).pipeline.closeness == "distance"
    with pytest.raises(ConfigError, match="pipeline.closeness.*distance.*people_number.*bogus"):
        load_config("shanghaitech_b_autoscale_regression", ["pipeline.closeness=bogus", "data.root=/x"])
