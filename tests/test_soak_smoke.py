"""benchmarks/soak_kill.py in its smoke size: real `autoscale train` / `autoscale predict` processes
killed with SIGKILL (during a checkpoint write, during validation, during an output write), resumed,
and checked here independently of the script's own comparison."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from autoscale.engine.checkpoint import load_training_checkpoint
from autoscale.predict import Predictor


def test_differences_sees_one_flipped_bit(load_bench):
    soak = load_bench("soak_kill")
    a = {"state_dict": {"w": torch.tensor([1.0, 2.0])}, "history": [{"loss": 0.5, "time_s": 1.0}],
         "config": {"out": "runs/a"}, "cpu_seconds": 3.0}
    b = {"state_dict": {"w": torch.tensor([1.0, 2.0])}, "history": [{"loss": 0.5, "time_s": 9.0}],
         "config": {"out": "runs/b"}, "cpu_seconds": 4.0}
    assert soak.differences(a, b) == []  # wall/CPU times and the output folder are not compared
    b["state_dict"]["w"] = torch.tensor([1.0, 2.0]).view(torch.int32).add(1).view(torch.float32)  # next float up
    b["history"][0]["loss"] = 0.5000000000000001
    assert soak.differences(a, b) == [".state_dict.w", ".history[0].loss"]
    c = {**a, "state_dict": {"w": a["state_dict"]["w"].to(torch.float64)}}
    assert soak.differences(a, c) == [".state_dict.w"]  # same values, another dtype


def test_soak_smoke(tmp_path, load_bench, one_thread):
    soak = load_bench("soak_kill")
    result = soak.run(soak.SMOKE, seed=0, work=tmp_path, say=lambda msg: None)
    t, p = result["training"], result["predict"]
    assert t["kills"] == 2 and t["kills_by_kind"] == {"write": 1, "validation": 1}
    assert t["unreadable_checkpoints"] == 0 and t["unreadable_json_files"] == 0
    assert t["bit_identical"] and t["history_identical"] and not t["differences"]
    assert p["kills"] == 1 and p["complete"] and p["counts_identical"]

    # Independently: the soaked run's checkpoints hold the reference's weights and Adam state.
    ref, got = tmp_path / "train" / "ref", tmp_path / "train" / "soak"
    assert sorted(q.name for q in got.glob("*.pt")) == ["best.pt", "epoch_1.pt", "last.pt"]
    for name in ("last.pt", "best.pt", "epoch_1.pt"):
        a, b = load_training_checkpoint(ref / name), load_training_checkpoint(got / name)
        assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
        for key in ("state_dict", "l2s_state_dict"):
            assert a[key].keys() == b[key].keys()
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), (name, key)
        sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
        assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert load_training_checkpoint(got / "last.pt")["epoch"] == soak.SMOKE.epochs

    # Predict: every image once, in input order, and the count of a fresh Predictor on the same file.
    out = tmp_path / "predict" / "soak"
    with open(out / "counts.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    images = sorted((tmp_path / "predict" / "images").iterdir(), key=lambda q: q.name)
    assert sorted(r[0] for r in rows) == sorted(q.stem for q in images) and len(rows) == soak.SMOKE.predict_images
    assert [r["image"] for r in json.loads((out / "counts.json").read_text())["images"]] == [r[0] for r in rows]
    first = next(q for q in images if q.stem == rows[0][0])
    predictor = Predictor.from_checkpoint(ref / "last.pt")
    assert float(rows[0][1]) == pytest.approx(predictor(first).count, abs=1e-5)
    # result JSON: the required shape, written atomically
    path = soak.write_results(result, tmp_path / "results" / "soak.json")
    back = json.loads(path.read_text())
    assert back["training"]["kills"] == 2 and back["training"]["bit_identical"] is True
    assert back["predict"]["complete"] is True and not list(path.parent.glob("*.tmp"))
