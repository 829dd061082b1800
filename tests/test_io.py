"""autoscale.io atomic writes: permissions as a plain open() gives, nothing left behind, and a
failed write keeps the previous file with one error line naming it."""
from __future__ import annotations

import os

import pytest

from autoscale.errors import AutoScaleError
from autoscale.io import atomic_path, atomic_write_bytes, atomic_write_text


def test_atomic_write_mode_content_and_no_leftovers(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what the umask gives a normal file
    out = atomic_write_text(tmp_path / "a.json", "{}\n", "report")
    assert out.read_text() == "{}\n"
    assert os.stat(out).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
    atomic_write_bytes(out, b"new")
    assert out.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "plain.txt"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = atomic_write_bytes(tmp_path / "last.pt", b"good", "checkpoint")
    with pytest.raises(AutoScaleError, match=r"last\.pt: cannot write checkpoint \(No space left on device\); "
                                             r"the previous last\.pt is intact"):
        with atomic_path(target, "checkpoint") as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    with pytest.raises(AutoScaleError, match="no x.bin was written"):
        atomic_write_bytes(tmp_path / "missing_dir" / "x.bin", b"1")
