"""Multi-process training on CPU (torchrun, gloo): 2 processes x batch 1 == 1 process x batch 2, and
a rank killed mid-run under ``torchrun --max-restarts`` ends with the weights of an uninterrupted run."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from autoscale.data.synth import generate_dataset
from autoscale.engine.checkpoint import load_training_checkpoint
from autoscale.engine.config import load_config
from autoscale.engine.trainer import train
from autoscale.errors import AutoScaleError

EPOCHS = 3  # 8 training images: 4 steps per epoch with 2 ranks x batch 1


def _config(tmp_path: Path, root: Path, out: Path, batch: int) -> Path:
    d = {"method": "autoscale", "device": "cpu", "progress": False, "tensorboard": False, "out": str(out),
         "data": {"root": str(root), "sigma": 2.0, "flip": True, "noise_prob": 0.5},
         "model": {"variant": "regression", "width": 0.0625},
         # regions chosen on the target so L2S (manually all-reduced) and the zoomed second pass run
         "pipeline": {"region_from": "target", "area_ratio": 0.0, "dense_k": 0.5},
         "optim": {"lr": 1e-3, "epochs": EPOCHS, "batch_size": batch}}
    p = tmp_path / f"cfg_{out.name}_b{batch}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def _torchrun(cfg: Path, *launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *launcher,
            "-m", "autoscale", "train", "--config", str(cfg)]


_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted 2-rank run: (its tmp folder with ``data/``, its output folder)."""
    tmp = tmp_path_factory.mktemp("ddp")
    generate_dataset(tmp / "data", n=10, size=(48, 64), splits={"train": 0.8, "val": 0.2})
    cfg = _config(tmp, tmp / "data", tmp / "ddp", batch=1)
    proc = subprocess.run(_torchrun(cfg), env=_ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, tmp / "ddp"


def test_two_processes_match_one_process_with_the_same_global_batch(ddp_run, tmp_path):
    tmp, ddp = ddp_run
    torch.set_num_threads(1)
    single = train(load_config(_config(tmp_path, tmp / "data", tmp_path / "one", batch=2)))
    a = load_training_checkpoint(single.last_checkpoint)
    b = load_training_checkpoint(ddp / "last.pt")
    assert a["step"] == b["step"] == 4 * EPOCHS
    assert all(r["loss_refine"] > 0 for r in a["history"])  # L2S and the second pass took part
    for part in ("state_dict", "l2s_state_dict", "center"):
        for k, v in a[part].items():
            torch.testing.assert_close(b[part][k], v, rtol=0, atol=1e-5, msg=f"{part}.{k}")
    ha, hb = a["history"], json.loads((ddp / "history.json").read_text())
    assert len(ha) == len(hb) == EPOCHS
    for ra, rb in zip(ha, hb):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["val_n"] == ra["val_n"] == 2  # sharded validation gathered on all ranks
        assert rb["val_mae"] == pytest.approx(ra["val_mae"], abs=1e-4)
    assert not any(p.name.endswith(".tmp") for p in ddp.iterdir())


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux ``/proc/PID/task/*/children``)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _rank(pid: int) -> tuple[int, int] | None:
    """(RANK, TORCHELASTIC_RESTART_COUNT) from a torchrun worker's environment; None when unknown."""
    try:
        env = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
        return int(env["RANK"]), int(env["TORCHELASTIC_RESTART_COUNT"])
    except (OSError, KeyError, ValueError):
        return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_a_killed_rank_is_restarted_by_torchrun_and_ends_with_the_uninterrupted_weights(ddp_run, tmp_path):
    tmp, ddp = ddp_run
    out = tmp_path / "faulty"
    cfg = _config(tmp_path, tmp / "data", out, batch=1)
    log = tmp_path / "torchrun.log"
    with open(log, "w") as fh:
        agent = subprocess.Popen(_torchrun(cfg, "--max-restarts", "3"), env=_ENV, stdout=fh, stderr=subprocess.STDOUT)
    workers: set[int] = set()
    try:
        # Once epoch 1 is on disk (its history row written after last.pt), wait a quarter of its
        # time - the middle of epoch 2's four steps - and SIGKILL rank 1 (of the first attempt).
        deadline = time.monotonic() + 120
        victim = None
        while victim is None and agent.poll() is None and time.monotonic() < deadline:
            workers.update(_children(agent.pid))
            if (out / "history.json").is_file():
                time.sleep(0.25 * json.loads((out / "history.json").read_text())[0]["time_s"])
                victim = next((p for p in _children(agent.pid) if _rank(p) == (1, 0)), None)
            else:
                time.sleep(0.01)
        assert victim is not None, f"no rank 1 to kill while training ran:\n{log.read_text()[-3000:]}"
        os.kill(victim, signal.SIGKILL)
        rc = agent.wait(timeout=180)
    finally:
        if agent.poll() is None:  # a hung run: stop its workers (the agent would leave them behind), then it
            for pid in workers | set(_children(agent.pid)):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            agent.kill()
            agent.wait()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    resumed = re.findall(r"autoscale train: resumed \S+last\.pt at epoch (\d+), batch 0, step (\d+) "
                         r"after torchrun restart 1\n", text)
    assert len(resumed) == 1, text[-3000:]  # rank 0 alone logs, once: one restart
    assert 1 <= int(resumed[0][0]) < EPOCHS and int(resumed[0][1]) == 4 * int(resumed[0][0])
    assert json.loads((out / "run.json").read_text())["torchrun_job"]

    a, b = load_training_checkpoint(ddp / "last.pt"), load_training_checkpoint(out / "last.pt")
    assert a["step"] == b["step"] == 4 * EPOCHS and a["epoch"] == b["epoch"] == EPOCHS
    for part in ("state_dict", "l2s_state_dict", "center"):
        assert a[part].keys() == b[part].keys()
        for k, v in a[part].items():
            assert torch.equal(b[part][k], v), f"{part}.{k}"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, state in a["optimizer"]["state"].items():  # Adam's moments and step counts
        for k, v in state.items():
            assert torch.equal(torch.as_tensor(b["optimizer"]["state"][i][k]), torch.as_tensor(v)), f"optimizer.{i}.{k}"
    ha, hb = a["history"], json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in hb] == list(range(1, EPOCHS + 1))
    for ra, rb in zip(ha, hb):
        assert (rb["loss"], rb["val_mae"], rb["center"]) == (ra["loss"], ra["val_mae"], ra["center"])


def test_resume_auto_and_a_restart_continue_only_their_own_run(tmp_path, monkeypatch, capsys):
    """In one process, with torchrun's variables set by hand: ``resume="auto"`` starts, then continues;
    a restarted attempt (``TORCHELASTIC_RESTART_COUNT`` 1) of the job that wrote ``run.json`` continues
    ``last.pt`` by itself and ends with the weights of an uninterrupted run; another job's restart is
    refused like a new run."""
    torch.set_num_threads(1)
    generate_dataset(tmp_path / "data", n=6, size=(48, 64), splits={"train": 4 / 6, "val": 2 / 6})

    def cfg(out: Path, epochs: int):
        return load_config(_config(tmp_path, tmp_path / "data", out, batch=2), [f"optim.epochs={epochs}"])

    full = train(cfg(tmp_path / "full", 2))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    out = tmp_path / "run"
    first = train(cfg(out, 1), resume="auto")  # nothing to continue: a new run
    assert first.step == 2 and json.loads((out / "run.json").read_text())["torchrun_job"].startswith("job-a/")
    capsys.readouterr()

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    rest = train(cfg(out, 2))  # no --resume: the restart continues its own last.pt
    assert f"resumed {out / 'last.pt'} at epoch 1, batch 0, step 2 after torchrun restart 1" in capsys.readouterr().err
    assert rest.step_losses == full.step_losses[2:]
    a, b = load_training_checkpoint(full.last_checkpoint), load_training_checkpoint(rest.last_checkpoint)
    for part in ("state_dict", "l2s_state_dict", "center"):
        for k, v in a[part].items():
            assert torch.equal(b[part][k], v), f"{part}.{k}"

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")  # another torchrun, restarted, same folder
    with pytest.raises(AutoScaleError, match="already holds a training run"):
        train(cfg(out, 3))
    assert load_training_checkpoint(out / "last.pt")["step"] == 4  # untouched
    again = train(cfg(out, 3), resume="auto")  # asked for: continues
    assert (again.epoch, again.step, len(again.step_losses)) == (3, 6, 2)
