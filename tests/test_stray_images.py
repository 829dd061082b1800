"""Dataset folders with stray files (issue 10, item 7; docs/reliability.md).

Stray images (an image without its annotation file, as real mirrors have: ``IMG_999.jpg`` without
``GT_IMG_999.mat``) in each folder-based format (shanghaitech, qnrf, jhu, vgg_cells: in the split's
folder; nwpu, trancos: named by the split's list file): one error listing how many and which;
``skip_unannotated`` / ``--skip-unannotated`` / ``data.skip_unannotated`` reads the rest with a
one-line notice (train and evaluate; ``skipped_stray`` in metrics.json). ``generic`` (list file
with an annotation per line) and NWPU's withheld test ground truth are unaffected. Every dataset is
generated here (tiny images, ``.mat`` files written with scipy.io.savemat).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from autoscale.cli import main as cli_main
from autoscale.data.formats import read_dataset
from autoscale.engine.checkpoint import load_training_checkpoint
from autoscale.errors import DataError
from conftest import err_lines, write_tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _img(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _sh_mat(path: Path, pts) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    struct = np.zeros((1, 1), dtype=[("location", "O"), ("number", "O")])
    struct[0, 0]["location"] = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    struct[0, 0]["number"] = np.array([[len(pts)]], dtype=np.uint8)
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = struct
    scipy.io.savemat(path, {"image_info": cell})


PTS = [[5.5, 6.5], [20.0, 30.0], [40.25, 10.75]]


def _shanghaitech(root: Path) -> tuple[str, list[str]]:
    for i in (1, 2):
        _img(root / "train_data" / "images" / f"IMG_{i}.jpg", seed=i)
        _sh_mat(root / "train_data" / "ground-truth" / f"GT_IMG_{i}.mat", PTS)
    for i in (998, 999):  # mirrors have these: an image without its GT_IMG_n.mat
        _img(root / "train_data" / "images" / f"IMG_{i}.jpg", seed=i)
    return "train", ["IMG_998.jpg", "IMG_999.jpg"]


def _qnrf(root: Path) -> tuple[str, list[str]]:
    for i in (1, 2, 998, 999):
        _img(root / "Train" / f"img_{i:04d}.jpg", seed=i)
        if i < 998:
            scipy.io.savemat(root / "Train" / f"img_{i:04d}_ann.mat", {"annPoints": np.array(PTS)})
    return "train", ["img_0998.jpg", "img_0999.jpg"]


def _jhu(root: Path) -> tuple[str, list[str]]:
    (root / "train" / "gt").mkdir(parents=True)
    for i in (1, 2, 998, 999):
        _img(root / "train" / "images" / f"{i:04d}.jpg", seed=i)
        if i < 998:
            (root / "train" / "gt" / f"{i:04d}.txt").write_text("10 12 4 6 1 0\n30 20 4 6 1 0\n")
    return "train", ["0998.jpg", "0999.jpg"]


def _nwpu(root: Path) -> tuple[str, list[str]]:
    (root / "jsons").mkdir(parents=True)
    for i in (1, 2, 998, 999):
        _img(root / "images" / f"{i:04d}.jpg", seed=i)
        if i < 998:
            (root / "jsons" / f"{i:04d}.json").write_text(json.dumps({"points": PTS, "human_num": 3}))
    (root / "train.txt").write_text("0001 1 0\n0998 1 0\n0002 2 1\n0999 0 0\n")
    _img(root / "images" / "0005.jpg")  # in no list file: never read
    (root / "test.txt").write_text("0001\n0002\n0998\n")  # ground truth withheld: annotated=False, not stray
    return "train", ["0998.jpg", "0999.jpg"]


def _trancos(root: Path) -> tuple[str, list[str]]:
    names = [f"image-1-{i:06d}.jpg" for i in (1, 2, 998, 999)]
    for i, n in enumerate(names):
        img = _img(root / "images" / n, seed=i)
        if i < 2:
            img.with_suffix(".txt").write_text("2\t3\n15.5\t11\n")
            scipy.io.savemat(img.with_name(f"{img.stem}mask.mat"), {"BW": np.ones((48, 64), dtype=bool)})
    (root / "image_sets").mkdir()
    (root / "image_sets" / "training.txt").write_text("\n".join(names) + "\n")
    return "train", names[2:]


def _vgg_cells(root: Path) -> tuple[str, list[str]]:
    for i in (1, 2, 98, 99):
        _img(root / f"{i:03d}cell.png", seed=i)
        if i < 98:
            dots = np.zeros((48, 64, 3), dtype=np.uint8)
            dots[10, 20] = (255, 0, 0)
            Image.fromarray(dots).save(root / f"{i:03d}dots.png")
    return "train", ["098cell.png", "099cell.png"]


LAYOUTS = {"shanghaitech": _shanghaitech, "qnrf": _qnrf, "jhu": _jhu, "nwpu": _nwpu, "trancos": _trancos,
           "vgg_cells": _vgg_cells}


@pytest.mark.parametrize("fmt", list(LAYOUTS))
def test_every_folder_reader_lists_stray_images_or_skips_them(tmp_path, fmt):
    root = tmp_path / "part_B"
    split, strays = LAYOUTS[fmt](root)
    with pytest.raises(DataError) as ei:
        read_dataset(fmt, root, split)
    msg = str(ei.value)
    assert f"2 of 4 images have no annotation: {strays[0]}, {strays[1]} (expected e.g. " in msg
    assert "--skip-unannotated" in msg and "read the other 2" in msg and "\n" not in msg
    skipped: list[Path] = []
    recs = read_dataset(fmt, root, split, skip_unannotated=True, skipped=skipped)
    assert len(recs) == 2 and all(r.annotated and r.count > 0 for r in recs)
    assert [p.name for p in skipped] == strays
    if fmt == "nwpu":  # withheld ground truth is not a stray file: every listed test image, unannotated
        test = read_dataset(fmt, root, "test", skipped=skipped)
        assert [r.annotated for r in test] == [False, False, False] and len(skipped) == 2


def test_error_names_the_first_five_and_the_count(tmp_path):
    root = tmp_path / "part_A"
    _shanghaitech(root)
    for i in range(10, 17):
        _img(root / "train_data" / "images" / f"IMG_{i}.jpg", seed=i)
    with pytest.raises(DataError, match=r"9 of 11 images have no annotation: IMG_10.jpg, IMG_11.jpg, IMG_12.jpg, "
                                        r"IMG_13.jpg, IMG_14.jpg and 4 more \(expected e.g. .*GT_IMG_10.mat\)"):
        read_dataset("shanghaitech", root, "train")


def test_generic_list_files_are_unaffected(tmp_path):
    """generic reads only what its list names; a named image without annotation stays an error."""
    _img(tmp_path / "a.png")
    (tmp_path / "train.txt").write_text("a.png\n")
    with pytest.raises(DataError, match="no annotation found"):
        read_dataset("generic", tmp_path, "train", skip_unannotated=True)


def test_cli_train_and_evaluate_with_stray_images(tmp_path, capsys):
    root = tmp_path / "part_B"
    _shanghaitech(root)
    images = root / "train_data" / "images"
    cfg = write_tiny_config(tmp_path / "c.yaml", root, data__format="shanghaitech", optim__epochs=1)
    capsys.readouterr()
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(cfg), "--out", str(out)]) == 2
    lines = err_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"autoscale: error: {images}: 2 of 4 images have no annotation: "
                                                   f"IMG_998.jpg, IMG_999.jpg")
    assert not out.exists()
    notice = f"autoscale: notice: {images}: skipped 2 images without an annotation (IMG_998.jpg, IMG_999.jpg)"
    for args, dest in ((["--skip-unannotated"], out), (["data.skip_unannotated=true"], tmp_path / "run2")):
        assert cli_main(["train", "--config", str(cfg), "--out", str(dest), *args]) == 0
        err = err_lines(capsys)
        assert err.count(notice) == 1, err
        assert load_training_checkpoint(dest / "last.pt")["step"] == 1  # 2 images, batch 2
    ev = ["evaluate", "--checkpoint", str(out / "last.pt"), "--format", "shanghaitech", "--root", str(root),
          "--split", "train", "--no-knn"]
    assert cli_main([*ev, "--out", str(tmp_path / "ev0")]) == 2
    assert "2 of 4 images have no annotation" in err_lines(capsys)[-1] and not (tmp_path / "ev0").exists()
    assert cli_main([*ev, "--out", str(tmp_path / "ev"), "--skip-unannotated"]) == 0
    assert notice in err_lines(capsys)
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["num_images"] == 2 and m["skipped_stray"] == 2 and m["skipped_unannotated"] == 0
    cfg2 = write_tiny_config(tmp_path / "c2.yaml", root, data__format="shanghaitech", data__skip_unannotated=True,
                             optim__epochs=1)
    assert cli_main(["evaluate", "--checkpoint", str(out / "last.pt"), "--config", str(cfg2), "--split", "train",
                     "--no-knn", "--out", str(tmp_path / "ev2")]) == 0
    assert notice in err_lines(capsys)
