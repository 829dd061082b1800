"""Streamed folders (images decoded ahead, outputs written by a writer thread): outputs, journal
and counts are byte-identical to the sequential run, on real ShanghaiTech B photos."""
from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

from autoscale.errors import AutoScaleError
from autoscale.predict import Predictor
from autoscale.runner import JOURNAL, predict_paths

from test_predict import make_checkpoint


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from conftest import SHARED_DATA

    src = SHARED_DATA / "shanghaitech" / "part_B" / "test_data" / "images"
    if not src.is_dir():
        pytest.skip(f"real data not found at {src}")
    d = tmp_path_factory.mktemp("photos")
    for n in (1, 2, 10, 11, 100, 101, 3):
        shutil.copy(src / f"IMG_{n}.jpg", d / f"IMG_{n}.jpg")
    (d / "IMG_5.jpg").write_bytes(b"not a jpeg")  # an unreadable file in the middle
    return d


@pytest.mark.parametrize("variant", ["regression", "localization"])
def test_streamed_folder_identical_to_sequential(tmp_path, photos, variant, one_thread):
    ck = make_checkpoint(tmp_path / "m.pt", variant)
    p = Predictor.from_checkpoint(ck, max_side=192, points="peaks")
    seq = predict_paths(p, photos, tmp_path / "seq", prefetch=0, nwpu=False, log=lambda m: None)
    got = predict_paths(p, photos, tmp_path / "par", prefetch=3, log=lambda m: None)
    assert seq == got
    assert [r["image"] for r in got["images"]] == ["IMG_1", "IMG_2", "IMG_3", "IMG_10", "IMG_11", "IMG_100",
                                                   "IMG_101"]  # natural order, the corrupt one left out
    assert got["errors"] and "IMG_5" in got["errors"][0]["image"]
    a, b = _tree(tmp_path / "seq"), _tree(tmp_path / "par")
    assert a.keys() == b.keys() and len(a) == 3 * 7 + 3
    for k in a:
        if k != JOURNAL:
            assert a[k] == b[k], k
    # the journal: same records in the same order (its header differs only if settings did)
    assert a[JOURNAL].splitlines()[1:] == b[JOURNAL].splitlines()[1:]


def test_streamed_crash_keeps_journal_in_order_and_resume_matches(tmp_path, photos, one_thread):
    ck = make_checkpoint(tmp_path / "m.pt", "regression")

    class Crash(Exception):
        pass

    class Crashing(Predictor):
        calls = 0

        def predict_array(self, rgb, name="", **kw):
            self.calls += 1
            if self.calls == 4:
                raise Crash(name)
            return super().predict_array(rgb, name, **kw)

    ref = predict_paths(Predictor.from_checkpoint(ck, max_side=192), photos, tmp_path / "ref", prefetch=0,
                        log=lambda m: None)
    with pytest.raises(Crash):
        predict_paths(Crashing.from_checkpoint(ck, max_side=192), photos, tmp_path / "out", log=lambda m: None)
    lines = (tmp_path / "out" / JOURNAL).read_text().splitlines()
    assert len(lines) == 1 + 3  # header + the 3 images counted before the crash, all written
    got = predict_paths(Predictor.from_checkpoint(ck, max_side=192), photos, tmp_path / "out", resume=True,
                        log=lambda m: None)
    assert got["images"] == ref["images"]
    assert (tmp_path / "out" / "counts.csv").read_bytes() == (tmp_path / "ref" / "counts.csv").read_bytes()


def test_failed_write_in_the_writer_thread_is_one_error(tmp_path, photos, one_thread):
    ck = make_checkpoint(tmp_path / "m.pt", "regression")
    out = tmp_path / "out"
    (out / "maps" / "IMG_2.npy").mkdir(parents=True)  # the second image's map cannot replace a folder
    with pytest.raises(AutoScaleError, match="IMG_2.npy") as exc:
        predict_paths(Predictor.from_checkpoint(ck, max_side=192), photos, out, log=lambda m: None)
    assert "\n" not in str(exc.value)
    lines = (out / JOURNAL).read_text().splitlines()
    assert len(lines) == 2 and '"IMG_1"' in lines[1]  # the first image is complete, nothing after it
    assert not (out / "counts.csv").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_reader_and_writer_threads_run_at_the_lowest_priority(tmp_path, photos, one_thread, monkeypatch):
    """The streaming threads decode and write at nice 19 (they must not take a core from the
    network's parallel regions); the caller's thread keeps its priority."""
    ck = make_checkpoint(tmp_path / "m.pt", "regression")
    seen: dict[str, set[int]] = {"read": set(), "write": set()}

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    class Recording(Predictor):
        def read(self, path, *a, **kw):
            seen["read"].add(nice())
            return super().read(path, *a, **kw)

    import autoscale.runner as runner

    real = runner.atomic_write_bytes

    def recording_write(path, *a, **kw):
        if threading.current_thread() is not threading.main_thread():
            seen["write"].add(nice())
        return real(path, *a, **kw)

    before = nice()
    monkeypatch.setattr(runner, "atomic_write_bytes", recording_write)
    predict_paths(Recording.from_checkpoint(ck, max_side=192), photos, tmp_path / "out", prefetch=3,
                  log=lambda m: None)
    assert seen == {"read": {19}, "write": {19}}
    assert nice() == before
