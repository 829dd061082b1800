"""Multi-process training: 2 CPU processes (torchrun, gloo) x batch 1 == 1 process x batch 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from autoscale.data.synth import generate_dataset
from autoscale.engine.checkpoint import load_training_checkpoint
from autoscale.engine.config import load_config
from autoscale.engine.trainer import train


def _config(tmp_path, root, out, batch):
    d = {"method": "autoscale", "device": "cpu", "progress": False, "tensorboard": False, "out": str(out),
         "data": {"root": str(root), "sigma": 2.0, "flip": True, "noise_prob": 0.5},
         "model": {"variant": "regression", "width": 0.0625},
         # regions chosen on the target so L2S (manually all-reduced) and the zoomed second pass run
         "pipeline": {"region_from": "target", "area_ratio": 0.0, "dense_k": 0.5},
         "optim": {"lr": 1e-3, "epochs": 2, "batch_size": batch}}
    p = tmp_path / f"cfg_b{batch}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    root = tmp_path / "data"
    generate_dataset(root, n=6, size=(48, 64), splits={"train": 4 / 6, "val": 2 / 6})
    cfg2 = _config(tmp_path, root, tmp_path / "ddp", batch=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "autoscale", "train", "--config", str(cfg2)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]

    torch.set_num_threads(1)
    single = train(load_config(_config(tmp_path, root, tmp_path / "one", batch=2)))
    a = load_training_checkpoint(single.last_checkpoint)
    b = load_training_checkpoint(tmp_path / "ddp" / "last.pt")
    assert a["step"] == b["step"] == 4
    assert all(r["loss_refine"] > 0 for r in a["history"])  # L2S and the second pass took part
    for part in ("state_dict", "l2s_state_dict", "center"):
        for k, v in a[part].items():
            torch.testing.assert_close(b[part][k], v, rtol=0, atol=1e-5, msg=f"{part}.{k}")
    ha, hb = a["history"], json.loads((tmp_path / "ddp" / "history.json").read_text())
    for ra, rb in zip(ha, hb):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["val_n"] == ra["val_n"] == 2  # sharded validation gathered on all ranks
        assert rb["val_mae"] == pytest.approx(ra["val_mae"], abs=1e-4)
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "ddp").iterdir())
