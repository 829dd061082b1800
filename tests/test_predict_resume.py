"""`autoscale predict --resume`: a run killed at any moment continues where it stopped and ends with
the outputs of an uninterrupted run (real checkpoint, real image files, a real SIGKILLed process)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_predict import crowd_image, make_checkpoint, read_counts_csv, read_points_csv, save_png

from autoscale.cli import main
from autoscale.errors import DataError
from autoscale.predict import Predictor, predict_paths
from autoscale.runner import JOURNAL

N_IMAGES = 12


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "reg.pt", "regression")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """12 PNG crowds of varied sizes named so that natural order differs from lexical order."""
    d = tmp_path_factory.mktemp("imgs")
    for i in range(N_IMAGES):
        save_png(d / f"img{i + 1}.png", crowd_image(72 + 8 * (i % 3), 96 + 8 * (i % 4), seed=100 + i))
    return d


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ckpt, folder) -> Path:
    """The uninterrupted run (in-process CLI, torch on one thread like the other runs here)."""
    import torch

    out = tmp_path_factory.mktemp("ref") / "out"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["predict", str(folder), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(n)
    return out


def journal_records(out: Path) -> list[str]:
    """Names of the complete record lines of ``out``'s journal (header excluded)."""
    lines = (out / JOURNAL).read_bytes().split(b"\n")[1:-1]
    return [json.loads(ln)["image"] for ln in lines]


def outputs(out: Path) -> dict[str, bytes]:
    """Every file of a run except the journal, by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != JOURNAL}


def assert_same_as(out: Path, ref: Path) -> None:
    """``out`` holds exactly the files of ``ref``, byte for byte, and all of them are valid."""
    got, want = outputs(out), outputs(ref)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name
    names = [f"img{i + 1}" for i in range(N_IMAGES)]
    assert list(read_counts_csv(out / "counts.csv")) == names  # each once, natural input order
    summary = json.loads((out / "counts.json").read_text())
    assert [r["image"] for r in summary["images"]] == names and summary["errors"] == []
    for n in names:
        assert np.load(out / "maps" / f"{n}.npy").dtype == np.float32
        read_points_csv(out / "points" / f"{n}.csv")
        assert (out / "overlays" / f"{n}.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, the default
        assert cv2.imread(str(out / "overlays" / f"{n}.jpg")) is not None


class Crash(Exception):
    pass


class CrashingPredictor(Predictor):
    """A real predictor that raises (a crash) before counting image number ``crash_at`` (1-based);
    ``calls`` counts the images it was asked to count."""

    crash_at: int | None = None
    calls = 0

    def predict_array(self, rgb, name="", **kw):
        self.calls += 1
        if self.crash_at is not None and self.calls >= self.crash_at:
            raise Crash(name)
        return super().predict_array(rgb, name, **kw)


def test_sigkilled_cli_run_resumes_to_the_uninterrupted_outputs(tmp_path, ckpt, folder, reference, one_thread):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "autoscale", "predict", str(folder), "--checkpoint", str(ckpt), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal, k = out / JOURNAL, 3
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.is_file() and journal.read_bytes().count(b"\n") >= 1 + k:
                break
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    done = journal_records(out)
    assert k <= len(done) < N_IMAGES and done == [f"img{i + 1}" for i in range(len(done))]
    assert not (out / "counts.csv").exists() and not (out / "counts.json").exists()

    # The same command with --resume counts only the rest and ends with the uninterrupted outputs.
    assert main(["predict", str(folder), "--checkpoint", str(ckpt), "--out", str(out), "--resume"]) == 0
    assert_same_as(out, reference)
    assert journal_records(out) == [f"img{i + 1}" for i in range(N_IMAGES)]
    assert not [p for p in out.rglob(".*tmp*")]


def test_crash_with_torn_journal_line_and_stale_temp_file(tmp_path, ckpt, folder, reference, one_thread):
    """A crash after 5 images, then a torn last line (a write cut short) and a temporary file a
    killed write left: resume ignores the torn line, recounts that image, removes the leftover."""
    out = tmp_path / "out"
    p = CrashingPredictor.from_checkpoint(ckpt)
    p.crash_at = 6
    with pytest.raises(Crash):
        predict_paths(p, folder, out)
    assert journal_records(out) == [f"img{i}" for i in range(1, 6)]
    with open(out / JOURNAL, "ab") as f:
        f.write(b'{"image":"img6","source":"')
    (out / "maps" / ".img6.npy.x1y2z3.tmp").write_bytes(b"\x93NUMPY half")
    p2 = CrashingPredictor.from_checkpoint(ckpt)
    notices: list[str] = []
    predict_paths(p2, folder, out, resume=True, log=notices.append)
    assert p2.calls == N_IMAGES - 5  # the 5 journaled images were not counted again
    assert notices == [f"autoscale: resuming {out}: 5 image(s) already counted"]
    assert_same_as(out, reference)
    assert journal_records(out) == [f"img{i + 1}" for i in range(N_IMAGES)]
    # Resuming a finished run counts nothing and rewrites the same outputs.
    p3 = CrashingPredictor.from_checkpoint(ckpt)
    predict_paths(p3, folder, out, resume=True, log=notices.append)
    assert p3.calls == 0
    assert_same_as(out, reference)


def test_journaled_image_whose_file_is_gone_is_counted_again(tmp_path, ckpt, folder, reference, one_thread):
    out = tmp_path / "out"
    p = CrashingPredictor.from_checkpoint(ckpt)
    p.crash_at = 4
    with pytest.raises(Crash):
        predict_paths(p, folder, out)
    (out / "overlays" / "img2.jpg").unlink()
    p2 = CrashingPredictor.from_checkpoint(ckpt)
    predict_paths(p2, folder, out, resume=True, log=lambda m: None)
    assert p2.calls == N_IMAGES - 2  # img1 and img3 kept, img2 and the rest counted
    assert_same_as(out, reference)
    assert read_counts_csv(out / "counts.csv") == read_counts_csv(reference / "counts.csv")


def test_resume_refuses_another_checkpoint_or_options(tmp_path, ckpt, folder, capsys, one_thread):
    out = tmp_path / "out"
    p = CrashingPredictor.from_checkpoint(ckpt)
    p.crash_at = 3
    with pytest.raises(Crash):
        predict_paths(p, folder, out)
    before = {q: q.read_bytes() for q in out.rglob("*") if q.is_file()}
    other = make_checkpoint(tmp_path / "other.pt", "regression", seed=4)
    base = ["predict", str(folder), "--out", str(out), "--resume"]
    cases = [
        (["--checkpoint", str(other)], "a different checkpoint (model weights differ)"),
        (["--checkpoint", str(ckpt), "--no-overlays"], "different options (overlays)"),
        (["--checkpoint", str(ckpt), "--overlay-format", "png"], "different options (overlay_format)"),
        (["--checkpoint", str(ckpt), "--max-side", "64", "--single-pass"], "different options (max_side, single_pass)"),
    ]
    for extra, why in cases:
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"autoscale: error: {out / JOURNAL}: cannot resume: written by a run with {why}; "
                       f"run without --resume to start over, or choose another --out")
    other_inputs = tmp_path / "two"
    other_inputs.mkdir()
    save_png(other_inputs / "a.png", crowd_image(40, 40, 1))
    with pytest.raises(DataError, match=r"cannot resume: written by a run with different inputs"):
        predict_paths(Predictor.from_checkpoint(ckpt), other_inputs, out, resume=True)
    assert {q: q.read_bytes() for q in out.rglob("*") if q.is_file()} == before  # nothing touched
    # Without --resume the other checkpoint starts over: its journal and counts replace the old.
    assert main(["predict", str(folder), "--checkpoint", str(other), "--out", str(out), "--no-overlays"]) == 0
    assert journal_records(out) == [f"img{i + 1}" for i in range(N_IMAGES)]
    want = Predictor.from_checkpoint(other)(folder / "img1.png").count
    assert read_counts_csv(out / "counts.csv")["img1"] == pytest.approx(want, abs=1e-5)


def test_resume_without_a_journal_is_a_fresh_run(tmp_path, ckpt, folder, reference, one_thread):
    out = tmp_path / "new"
    assert main(["predict", str(folder), "--checkpoint", str(ckpt), "--out", str(out), "--resume"]) == 0
    assert_same_as(out, reference)


def test_video_resume_skips_done_frames_and_keeps_names(tmp_path, ckpt, one_thread):
    path = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert vw.isOpened()
    for i in range(9):
        vw.write(crowd_image(48, 64, 20 + i))
    vw.release()
    ref = predict_paths(Predictor.from_checkpoint(ckpt), [path, path], tmp_path / "ref", every_n_frames=2,
                        nwpu=False, overlays=False)
    names = [r["image"] for r in ref["images"]]
    assert names == [f"clip_f{i:06d}" for i in (0, 2, 4, 6, 8)] + [f"clip_f{i:06d}_2" for i in (0, 2, 4, 6, 8)]
    out = tmp_path / "out"
    p = CrashingPredictor.from_checkpoint(ckpt)
    p.crash_at = 7  # inside the second copy: its first frame is done, its name carries the _2
    with pytest.raises(Crash):
        predict_paths(p, [path, path], out, every_n_frames=2, overlays=False)
    p2 = CrashingPredictor.from_checkpoint(ckpt)
    got = predict_paths(p2, [path, path], out, every_n_frames=2, overlays=False, resume=True, log=lambda m: None)
    assert p2.calls == 4
    assert got == ref
    assert (out / "counts.json").read_bytes() == (tmp_path / "ref" / "counts.json").read_bytes()
    for n in names:
        assert (out / "maps" / f"{n}.npy").read_bytes() == (tmp_path / "ref" / "maps" / f"{n}.npy").read_bytes()


def test_nwpu_files_after_resume(tmp_path, ckpt, one_thread):
    d = tmp_path / "nwpu"
    d.mkdir()
    for i in (3101, 3099, 3100, 3102):
        save_png(d / f"{i}.png", crowd_image(48, 64, i))
    predict_paths(Predictor.from_checkpoint(ckpt, points="peaks"), d, tmp_path / "ref", nwpu=True, overlays=False)
    out = tmp_path / "out"
    p = CrashingPredictor.from_checkpoint(ckpt, points="peaks")
    p.crash_at = 3
    with pytest.raises(Crash):
        predict_paths(p, d, out, nwpu=True, overlays=False)
    predict_paths(CrashingPredictor.from_checkpoint(ckpt, points="peaks"), d, out, nwpu=True, overlays=False,
                  resume=True, log=lambda m: None)
    for f in ("nwpu_counts.txt", "nwpu_loc.txt", "counts.json", "counts.csv"):
        assert (out / f).read_bytes() == (tmp_path / "ref" / f).read_bytes(), f


def test_resume_a_journal_written_before_a_pipeline_setting_existed(tmp_path, ckpt, folder, reference, one_thread):
    """A journal whose header lacks a pipeline setting (written by a version before the setting
    existed; here refine_weight) resumes when this run has the setting at its default, and is
    refused when it does not."""
    out = tmp_path / "out"
    p = CrashingPredictor.from_checkpoint(ckpt)
    p.crash_at = 4
    with pytest.raises(Crash):
        predict_paths(p, folder, out)
    lines = (out / JOURNAL).read_bytes().split(b"\n")
    header = json.loads(lines[0])
    assert header["settings"]["pipeline"].pop("refine_weight") == 1.0
    (out / JOURNAL).write_bytes(b"\n".join([json.dumps(header).encode(), *lines[1:]]))
    other = CrashingPredictor.from_checkpoint(ckpt)
    other.config.refine_weight = 0.5
    with pytest.raises(DataError, match=r"different options \(pipeline\)"):
        predict_paths(other, folder, out, resume=True, log=lambda m: None)
    p2 = CrashingPredictor.from_checkpoint(ckpt)
    predict_paths(p2, folder, out, resume=True, log=lambda m: None)
    assert p2.calls == N_IMAGES - 3
    assert_same_as(out, reference)


def test_resume_a_journal_written_before_overlay_format_was_recorded(tmp_path, ckpt, folder, one_thread):
    """Headers used to record overlay_format only for JPEG; PNG was the default then. A journal
    without it resumes as a PNG run (with --overlay-format png, to that run's outputs) and is
    refused with today's default JPEG overlays."""
    ref = tmp_path / "ref"
    predict_paths(Predictor.from_checkpoint(ckpt), folder, ref, overlay_format="png", log=lambda m: None)
    out = tmp_path / "out"
    p = CrashingPredictor.from_checkpoint(ckpt)
    p.crash_at = 3
    with pytest.raises(Crash):
        predict_paths(p, folder, out, overlay_format="png")
    lines = (out / JOURNAL).read_bytes().split(b"\n")
    header = json.loads(lines[0])
    assert header["settings"].pop("overlay_format") == "png"
    (out / JOURNAL).write_bytes(b"\n".join([json.dumps(header).encode(), *lines[1:]]))
    with pytest.raises(DataError, match=r"different options \(overlay_format\)"):
        predict_paths(Predictor.from_checkpoint(ckpt), folder, out, resume=True, log=lambda m: None)
    p2 = CrashingPredictor.from_checkpoint(ckpt)
    predict_paths(p2, folder, out, resume=True, overlay_format="png", log=lambda m: None)
    assert p2.calls == N_IMAGES - 2
    assert outputs(out) == outputs(ref)
