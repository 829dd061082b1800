"""Dataset readers on byte-level replicas of each format (built in tmp_path), on the real
ShanghaiTech / VGG cells data, bad-input errors, the generic writer round trip and the
``autoscale data stats`` command."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from autoscale.cli import main as cli_main
from autoscale.data.formats import (
    FORMATS,
    get_format,
    load_roi,
    natural_key,
    read_dataset,
    write_generic_annotation,
    write_generic_list,
)
from autoscale.errors import ConfigError, DataError


# --------------------------------------------------------------------------------------------
# replica helpers
# --------------------------------------------------------------------------------------------
def save_img(path: Path, w: int, h: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def sh_mat(path: Path, loc, number_dtype=np.uint8) -> Path:
    """ShanghaiTech layout: image_info = 1x1 cell -> 1x1 struct {location, number}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    loc = np.asarray(loc, dtype=np.float64).reshape(-1, 2)
    struct = np.zeros((1, 1), dtype=[("location", "O"), ("number", "O")])
    struct[0, 0]["location"] = loc
    struct[0, 0]["number"] = np.array([[len(loc)]], dtype=number_dtype)
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = struct
    scipy.io.savemat(path, {"image_info": cell})
    return path


def mat_signature(path: Path):
    """Structure of a loaded GT .mat, independent of our reader."""
    info = scipy.io.loadmat(str(path))["image_info"]
    inner = info[0, 0]
    s = inner[0, 0]
    loc = s["location"]
    return (info.dtype, info.shape, inner.dtype.names, inner.shape, loc.dtype, loc.ndim, loc.shape[1])


def make_shanghaitech(root: Path, gt_name: str = "ground-truth") -> dict[str, np.ndarray]:
    """Part folder with a train split: IMG_1, IMG_2, IMG_10 (natural order test), 32x24 images."""
    pts = {
        "IMG_1": np.array([[1.5, 2.5], [31.9, 23.9], [32.0, 5.0], [-0.1, 3.0]]),  # 2 outside
        "IMG_2": np.zeros((0, 2)),
        "IMG_10": np.array([[0.0, 0.0], [10.0, 23.999]]),
    }
    for i, (name, p) in enumerate(pts.items()):
        save_img(root / "train_data" / "images" / f"{name}.jpg", 32, 24, seed=i)
        sh_mat(root / "train_data" / gt_name / f"GT_{name}.mat", p)
    return pts


# --------------------------------------------------------------------------------------------
# registry and generic errors
# --------------------------------------------------------------------------------------------
def test_registry_and_unknown_names(tmp_path):
    assert set(FORMATS) >= {"shanghaitech", "qnrf", "jhu", "nwpu", "trancos", "vgg_cells", "generic"}
    from autoscale.data.preprocess import RESIZE_RULES

    for f in FORMATS.values():
        assert f.resize_rule in RESIZE_RULES and f.default_sigma > 0 and f.splits
    assert get_format("qnrf").default_sigma == 6 and get_format("qnrf").paper_sigma == 8
    assert get_format("jhu").default_sigma == 8 and get_format("nwpu").default_sigma == 6
    with pytest.raises(ConfigError, match="shanghaitech"):
        get_format("shanghai")
    make_shanghaitech(tmp_path / "part_B")
    with pytest.raises(ConfigError, match="valid splits: train, test"):
        read_dataset("shanghaitech", tmp_path / "part_B", "val")
    with pytest.raises(ConfigError, match="outside"):
        read_dataset("shanghaitech", tmp_path / "part_B", "train", outside="wrap")
    with pytest.raises(DataError, match="not found"):
        read_dataset("shanghaitech", tmp_path / "missing", "train")


def test_natural_key():
    names = ["IMG_10.jpg", "IMG_2.jpg", "img_1.jpg", "IMG_100.jpg"]
    assert sorted(names, key=natural_key) == ["img_1.jpg", "IMG_2.jpg", "IMG_10.jpg", "IMG_100.jpg"]


# --------------------------------------------------------------------------------------------
# ShanghaiTech
# --------------------------------------------------------------------------------------------
def test_shanghaitech_replica_layout_matches_real(tmp_path, shared_data):
    real = shared_data / "shanghaitech/part_B/train_data/ground-truth/GT_IMG_1.mat"
    rep = sh_mat(tmp_path / "GT_IMG_1.mat", [[1.0, 2.0], [3.0, 4.0]])
    assert mat_signature(rep) == mat_signature(real)


@pytest.mark.parametrize("gt_name", ["ground-truth", "ground_truth"])
def test_shanghaitech_replica(tmp_path, gt_name):
    root = tmp_path / "part_B"
    pts = make_shanghaitech(root, gt_name)
    recs = read_dataset("shanghaitech", root, "train")
    assert [r.name for r in recs] == ["IMG_1", "IMG_2", "IMG_10"]
    assert [(r.width, r.height) for r in recs] == [(32, 24)] * 3
    assert [r.count for r in recs] == [2, 0, 2]
    assert [r.dropped_points for r in recs] == [2, 0, 0]
    np.testing.assert_array_equal(recs[0].points, pts["IMG_1"][:2])
    assert recs[0].meta["part"] == "B" and recs[0].boxes is None
    keep = read_dataset("shanghaitech", root, "train", outside="keep")
    assert [r.count for r in keep] == [4, 0, 2] and sum(r.dropped_points for r in keep) == 0
    clip = read_dataset("shanghaitech", root, "train", outside="clip")
    p = clip[0].points
    assert len(p) == 4 and np.all((p[:, 0] >= 0) & (p[:, 0] < 32) & (p[:, 1] >= 0) & (p[:, 1] < 24))
    assert get_format("shanghaitech").sigma_for(root) == 8
    assert get_format("shanghaitech").sigma_for(tmp_path / "part_A_final") == 4


def test_shanghaitech_bad_inputs(tmp_path):
    root = tmp_path / "part_A_final"
    make_shanghaitech(root)
    gt = root / "train_data" / "ground-truth"
    img = root / "train_data" / "images"
    # annotation without image
    sh_mat(gt / "GT_IMG_7.mat", [[1, 1]])
    with pytest.raises(DataError, match="annotation without an image") as ei:
        read_dataset("shanghaitech", root, "train")
    assert "GT_IMG_7.mat" in str(ei.value)
    (gt / "GT_IMG_7.mat").unlink()
    # image without annotation
    save_img(img / "IMG_8.jpg", 8, 8)
    with pytest.raises(DataError, match="no annotation") as ei:
        read_dataset("shanghaitech", root, "train")
    assert "IMG_8.jpg" in str(ei.value)
    (img / "IMG_8.jpg").unlink()
    target = gt / "GT_IMG_2.mat"
    # truncated .mat
    good = target.read_bytes()
    target.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="cannot read .mat") as ei:
        read_dataset("shanghaitech", root, "train")
    assert "GT_IMG_2.mat" in str(ei.value)
    # missing variable
    scipy.io.savemat(target, {"annPoints": np.zeros((1, 2))})
    with pytest.raises(DataError, match="image_info.*found: \\['annPoints'\\]"):
        read_dataset("shanghaitech", root, "train")
    # wrong layout / shape / NaN
    scipy.io.savemat(target, {"image_info": np.zeros((1, 1))})
    with pytest.raises(DataError, match="layout"):
        read_dataset("shanghaitech", root, "train")
    struct = np.zeros((1, 1), dtype=[("location", "O"), ("number", "O")])
    struct[0, 0]["location"] = np.ones((3, 3))
    struct[0, 0]["number"] = np.array([[3]])
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = struct
    scipy.io.savemat(target, {"image_info": cell})
    with pytest.raises(DataError, match="N x 2"):
        read_dataset("shanghaitech", root, "train")
    sh_mat(target, [[1.0, np.nan]])
    with pytest.raises(DataError, match="non-finite") as ei:
        read_dataset("shanghaitech", root, "train")
    assert "GT_IMG_2.mat" in str(ei.value)
    shutil.rmtree(gt)
    with pytest.raises(DataError, match="ground-truth"):
        read_dataset("shanghaitech", root, "train")


def _independent_counts(split_dir: Path, size=None):
    """Kept and dropped counts per image, computed with loadmat and PIL directly."""
    out = {}
    for m in sorted((split_dir / "ground-truth").glob("GT_*.mat")):
        loc = scipy.io.loadmat(str(m))["image_info"][0, 0][0, 0]["location"]
        name = m.stem[3:]
        w, h = size or Image.open(split_dir / "images" / f"{name}.jpg").size
        inside = (loc[:, 0] >= 0) & (loc[:, 0] < w) & (loc[:, 1] >= 0) & (loc[:, 1] < h)
        out[name] = (int(inside.sum()), int((~inside).sum()))
    return out


def test_shanghaitech_real_data(shared_data):
    sh = shared_data / "shanghaitech"
    train_b = read_dataset("shanghaitech", sh / "part_B", "train")
    assert len(train_b) == 400
    assert {(r.width, r.height) for r in train_b} == {(1024, 768)}
    test_b = read_dataset("shanghaitech", sh / "part_B", "test")
    assert len(test_b) == 316
    expect = _independent_counts(sh / "part_B/test_data", size=(1024, 768))
    assert {r.name: (r.count, r.dropped_points) for r in test_b} == expect
    assert [r.name for r in test_b[:3]] == ["IMG_1", "IMG_2", "IMG_3"]
    train_a = read_dataset("shanghaitech", sh / "part_A", "train")
    assert len(train_a) == 300 and train_a[0].meta["part"] == "A"
    expect_a = _independent_counts(sh / "part_A/train_data")
    assert {r.name: (r.count, r.dropped_points) for r in train_a} == expect_a
    sizes = {r.name: (r.width, r.height) for r in train_a}
    assert len(set(sizes.values())) > 10  # part A has varying sizes


def test_shanghaitech_real_image_boundary_point(tmp_path, shared_data):
    src = shared_data / "shanghaitech/part_B/test_data"
    loc = scipy.io.loadmat(str(src / "ground-truth/GT_IMG_1.mat"))["image_info"][0, 0][0, 0]["location"]
    root = tmp_path / "part_B"
    (root / "test_data/images").mkdir(parents=True)
    shutil.copy(src / "images/IMG_1.jpg", root / "test_data/images/IMG_1.jpg")
    extra = np.array([[1024.0, 10.0], [5.0, 768.0], [-0.5, 3.0], [1023.99, 767.99]])
    sh_mat(root / "test_data/ground-truth/GT_IMG_1.mat", np.vstack([loc, extra]))
    (rec,) = read_dataset("shanghaitech", root, "test")
    assert rec.count == len(loc) + 1 and rec.dropped_points == 3
    (rec,) = read_dataset("shanghaitech", root, "test", outside="keep")
    assert rec.count == len(loc) + 4 and rec.dropped_points == 0


# --------------------------------------------------------------------------------------------
# UCF-QNRF
# --------------------------------------------------------------------------------------------
def test_qnrf_replica_and_errors(tmp_path):
    root = tmp_path / "UCF-QNRF_ECCV18"
    for split, ids in (("Train", (1, 2)), ("Test", (1,))):
        for i in ids:
            save_img(root / split / f"img_{i:04d}.jpg", 20, 10, seed=i)
            scipy.io.savemat(root / split / f"img_{i:04d}_ann.mat", {"annPoints": np.array([[1.0, 1.0], [19.5, 9.5], [20.0, 1.0]]) * i})
    recs = read_dataset("qnrf", root, "train")
    assert [r.name for r in recs] == ["img_0001", "img_0002"]
    assert [r.count for r in recs] == [2, 1] and [r.dropped_points for r in recs] == [1, 2]
    assert len(read_dataset("qnrf", root, "test")) == 1
    ann = root / "Test" / "img_0001_ann.mat"
    scipy.io.savemat(ann, {"points": np.zeros((2, 2))})
    with pytest.raises(DataError, match="annPoints") as ei:
        read_dataset("qnrf", root, "test")
    assert "img_0001_ann.mat" in str(ei.value)
    scipy.io.savemat(ann, {"annPoints": np.zeros((2, 5))})
    with pytest.raises(DataError, match="shape"):
        read_dataset("qnrf", root, "test")
    scipy.io.savemat(ann, {"annPoints": np.array(["ab", "cd"])})
    with pytest.raises(DataError, match="numeric"):
        read_dataset("qnrf", root, "test")
    ann.unlink()
    with pytest.raises(DataError, match="no annotation"):
        read_dataset("qnrf", root, "test")
    (root / "Test" / "img_0001.jpg").write_text("not a jpeg")
    scipy.io.savemat(ann, {"annPoints": np.zeros((0, 2))})
    with pytest.raises(DataError, match="cannot decode image"):
        read_dataset("qnrf", root, "test")


# --------------------------------------------------------------------------------------------
# JHU-Crowd++
# --------------------------------------------------------------------------------------------
def make_jhu(root: Path) -> None:
    d = root / "train"
    save_img(d / "images" / "0001.jpg", 40, 30, 1)
    save_img(d / "images" / "0002.jpg", 40, 30, 2)
    (d / "gt").mkdir(parents=True)
    # x y w h o b ; the second head is outside (x == width)
    (d / "gt" / "0001.txt").write_text("10 12 4 6 1 0\n40 5 2 2 2 1\n39 29 10 8 3 1\n")
    (d / "gt" / "0002.txt").write_text("")
    (d / "image_labels.txt").write_text("0001,3,stadium,2,0\n0002,0,water park,0,1\n")


def test_jhu_replica(tmp_path):
    make_jhu(tmp_path)
    r1, r2 = read_dataset("jhu", tmp_path, "train")
    assert r1.count == 2 and r1.dropped_points == 1
    np.testing.assert_array_equal(r1.points, [[10, 12], [39, 29]])
    np.testing.assert_array_equal(r1.boxes, [[8, 9, 12, 15], [34, 25, 44, 33]])
    np.testing.assert_array_equal(r1.meta["occlusion"], [1, 3])
    np.testing.assert_array_equal(r1.meta["blur"], [0, 1])
    assert r1.meta["scene_type"] == "stadium" and r1.meta["weather"] == 2 and r1.meta["total_count"] == 3
    assert r2.count == 0 and r2.boxes.shape == (0, 4) and r2.meta["distractor"] == 1
    assert r2.meta["scene_type"] == "water park"
    (keep,) = read_dataset("jhu", tmp_path, "train", outside="keep")[:1]
    assert keep.count == 3 and len(keep.meta["occlusion"]) == 3


@pytest.mark.parametrize(
    "content,match",
    [
        ("10 12 4 6 1\n", "line 1: expected 6"),
        ("10 12 4 6 1 0\n10 abc 4 6 1 0\n", "line 2: non-numeric"),
        ("nan 12 4 6 1 0\n", "non-finite"),
    ],
)
def test_jhu_bad_gt(tmp_path, content, match):
    make_jhu(tmp_path)
    bad = tmp_path / "train" / "gt" / "0001.txt"
    bad.write_text(content)
    with pytest.raises(DataError, match=match) as ei:
        read_dataset("jhu", tmp_path, "train")
    assert "0001.txt" in str(ei.value)


def test_jhu_bad_image_labels(tmp_path):
    make_jhu(tmp_path)
    (tmp_path / "train" / "image_labels.txt").write_text("0001,3,stadium,fog,0\n")
    with pytest.raises(DataError, match="image_labels.txt: line 1: non-integer"):
        read_dataset("jhu", tmp_path, "train")
    (tmp_path / "train" / "image_labels.txt").write_text("0001,3\n")
    with pytest.raises(DataError, match="line 1: expected"):
        read_dataset("jhu", tmp_path, "train")


def test_jhu_missing_split_folder(tmp_path):
    make_jhu(tmp_path)
    with pytest.raises(DataError, match="val"):
        read_dataset("jhu", tmp_path, "val")


# --------------------------------------------------------------------------------------------
# NWPU-Crowd
# --------------------------------------------------------------------------------------------
def make_nwpu(root: Path) -> None:
    for i in (1, 2, 3):
        save_img(root / "images" / f"{i:04d}.jpg", 30, 20, i)
    (root / "jsons").mkdir()
    docs = {
        1: {"img_id": "0001.jpg", "human_num": 2, "points": [[3, 4], [29.5, 19.5]], "boxes": [[1, 2, 5, 6], [28, 18, 30, 20]]},
        2: {"img_id": "0002.jpg", "human_num": 0, "points": [], "boxes": []},
    }
    for i, d in docs.items():
        (root / "jsons" / f"{i:04d}.json").write_text(json.dumps(d))
    (root / "train.txt").write_text("0002 1 0\n0001 2 3\n")
    (root / "test.txt").write_text("0003\n")


def test_nwpu_replica(tmp_path):
    make_nwpu(tmp_path)
    r1, r2 = read_dataset("nwpu", tmp_path, "train")
    assert (r1.name, r2.name) == ("0001", "0002")
    assert r1.count == 2 and r1.meta["illumination"] == 2 and r1.meta["level"] == 3 and r1.meta["human_num"] == 2
    np.testing.assert_array_equal(r1.boxes, [[1, 2, 5, 6], [28, 18, 30, 20]])
    assert r2.count == 0 and r2.meta["level"] == 0
    (t,) = read_dataset("nwpu", tmp_path, "test")
    assert not t.annotated and t.count == 0 and (t.width, t.height) == (30, 20)


@pytest.mark.parametrize(
    "doc,match",
    [
        ({"points": [[1, 2]], "boxes": []}, "0 boxes for 1 points"),
        ({"points": [[1, 2, 3]]}, r"points\[0\] must be a list of 2"),
        ({"points": "abc"}, "must be a list"),
        ({"points": [["a", 2]]}, "non-numeric"),
        ({"boxes": []}, "'points'"),
        ({"points": [[1, 2]], "boxes": [[1, 2, 3]]}, r"boxes\[0\]"),
    ],
)
def test_nwpu_bad_json(tmp_path, doc, match):
    make_nwpu(tmp_path)
    (tmp_path / "jsons" / "0001.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=match) as ei:
        read_dataset("nwpu", tmp_path, "train")
    assert "0001.json" in str(ei.value)


def test_nwpu_missing_files(tmp_path):
    make_nwpu(tmp_path)
    with pytest.raises(DataError, match="list file not found") as ei:
        read_dataset("nwpu", tmp_path, "val")
    assert "val.txt" in str(ei.value)
    (tmp_path / "jsons" / "0001.json").write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON"):
        read_dataset("nwpu", tmp_path, "train")
    (tmp_path / "jsons" / "0001.json").unlink()
    with pytest.raises(DataError, match="0001.json"):
        read_dataset("nwpu", tmp_path, "train")
    (tmp_path / "images" / "0003.jpg").unlink()
    with pytest.raises(DataError, match="0003.jpg.*not found"):
        read_dataset("nwpu", tmp_path, "test")


# --------------------------------------------------------------------------------------------
# TRANCOS and ROI masks
# --------------------------------------------------------------------------------------------
def make_trancos(root: Path) -> np.ndarray:
    img_dir = root / "images"
    save_img(img_dir / "image-1-000001.jpg", 16, 12, 1)
    (img_dir / "image-1-000001.txt").write_text("2\t3\n15.5\t11\n16\t2\n")
    bw = np.zeros((12, 16), dtype=np.uint8)
    bw[:, 8:] = 1
    scipy.io.savemat(img_dir / "image-1-000001mask.mat", {"BW": bw.astype(bool)})
    (root / "image_sets").mkdir()
    (root / "image_sets" / "training.txt").write_text("image-1-000001.jpg\n")
    return bw


def test_trancos_replica_and_roi(tmp_path):
    bw = make_trancos(tmp_path)
    (r,) = read_dataset("trancos", tmp_path, "train")
    assert r.count == 2 and r.dropped_points == 1
    np.testing.assert_array_equal(r.points, [[2, 3], [15.5, 11]])
    mask = load_roi(r.roi_path, expected_size=(r.width, r.height))
    assert mask.dtype == bool and mask.shape == (12, 16)
    np.testing.assert_array_equal(mask, bw != 0)
    with pytest.raises(DataError, match="16x12.*image is 10x12"):
        load_roi(r.roi_path, expected_size=(10, 12))
    with pytest.raises(ConfigError, match="valid splits"):
        read_dataset("trancos", tmp_path, "everything")
    with pytest.raises(DataError, match="test.txt"):
        read_dataset("trancos", tmp_path, "test")


def test_load_roi_variants_and_errors(tmp_path):
    png = tmp_path / "roi.png"
    g = np.zeros((5, 7), dtype=np.uint8)
    g[1:3, 2:6] = 255
    Image.fromarray(g, "L").save(png)
    np.testing.assert_array_equal(load_roi(png), g > 0)
    scipy.io.savemat(tmp_path / "nobw.mat", {"mask": np.ones((3, 3))})
    with pytest.raises(DataError, match="no variable 'BW'"):
        load_roi(tmp_path / "nobw.mat")
    scipy.io.savemat(tmp_path / "bw3.mat", {"BW": np.ones((3, 3, 2))})
    with pytest.raises(DataError, match="2-D"):
        load_roi(tmp_path / "bw3.mat")
    with pytest.raises(DataError, match="not found"):
        load_roi(tmp_path / "missing.png")


# --------------------------------------------------------------------------------------------
# VGG cells
# --------------------------------------------------------------------------------------------
def test_vgg_cells_replica(tmp_path):
    for n in (1, 2, 101):
        save_img(tmp_path / f"{n:03d}cell.png", 10, 8, n)
        dots = np.zeros((8, 10, 3), dtype=np.uint8)
        dots[2, 3] = (255, 0, 0)
        dots[7, 9] = (255, 0, 0)
        dots[4, 4] = (254, 0, 0)  # not pure red
        dots[5, 5] = (255, 1, 0)  # not pure red
        Image.fromarray(dots).save(tmp_path / f"{n:03d}dots.png")
    train = read_dataset("vgg_cells", tmp_path, "train")
    assert [r.name for r in train] == ["001cell", "002cell"]
    np.testing.assert_array_equal(train[0].points, [[3.5, 2.5], [9.5, 7.5]])
    assert [r.name for r in read_dataset("vgg_cells", tmp_path, "test")] == ["101cell"]
    assert len(read_dataset("vgg_cells", tmp_path, "all")) == 3
    (tmp_path / "002dots.png").unlink()
    with pytest.raises(DataError, match="no annotation"):
        read_dataset("vgg_cells", tmp_path, "train")


def test_vgg_cells_real(shared_data):
    root = shared_data / "vgg_cells"
    train = read_dataset("vgg_cells", root, "train")
    test = read_dataset("vgg_cells", root, "test")
    assert len(train) == 100 and len(test) == 100
    counts = {r.name: r.count for r in train + test}
    assert (counts["001cell"], counts["002cell"], counts["101cell"], counts["200cell"]) == (135, 233, 104, 124)
    assert {(r.width, r.height) for r in train} == {(256, 256)}


# --------------------------------------------------------------------------------------------
# generic format
# --------------------------------------------------------------------------------------------
def test_generic_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "ds"
    pts_a = rng.uniform(0, 20, (5, 2))
    boxes_a = np.concatenate([pts_a - 1.25, pts_a + 1.0 / 3], axis=1)
    save_img(root / "images" / "a.png", 20, 20)
    save_img(root / "images" / "b.png", 24, 16)
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(root / "roi_a.png")
    write_generic_annotation(root / "images" / "a.json", pts_a, boxes_a, meta={"scene": np.int64(3)}, roi="roi_a.png")
    pts_b = np.array([[0.1, 0.2], [23.9, 15.9], [24.0, 1.0]])  # last is outside
    write_generic_annotation(root / "annotations" / "b.csv", pts_b, np.tile([1.0, 2.0, 3.0, 4.0], (3, 1)))
    write_generic_list(root, "train", [root / "images" / "a.png", Path("images/b.png")])
    text = (root / "train.txt").read_text()
    assert text == "images/a.png\nimages/b.png\n"
    a, b = read_dataset("generic", root, "train")
    np.testing.assert_array_equal(a.points, pts_a)  # exact float round trip
    np.testing.assert_array_equal(a.boxes, boxes_a)
    assert a.meta == {"scene": 3} and a.roi_path == root / "roi_a.png"
    assert load_roi(a.roi_path, expected_size=(a.width, a.height)).all()
    np.testing.assert_array_equal(b.points, pts_b[:2])
    assert b.boxes.shape == (2, 4) and b.dropped_points == 1 and (b.width, b.height) == (24, 16)
    # explicit annotation column, comments and blank lines
    write_generic_annotation(root / "other.csv", [[1.0, 1.0]])
    (root / "val.txt").write_text("# comment\n\nimages/b.png other.csv\n")
    (v,) = read_dataset("generic", root, "val")
    np.testing.assert_array_equal(v.points, [[1.0, 1.0]])
    assert v.boxes is None


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("a.csv", "x,y\n1,2\n3,nan\n", "line 3: non-finite"),
        ("a.csv", "x,y\n1,zz\n", "line 2: non-numeric"),
        ("a.csv", "col,row\n1,2\n", "header"),
        ("a.csv", "x,y\n1,2,3\n", "line 2: expected 2"),
        ("a.json", '{"points": [[1, 2], [3]]}', r"points\[1\]"),
        ("a.json", '[[1, 2]]', "JSON object"),
        ("a.json", '{"points": [[1, NaN]]}', "non-finite"),
        ("a.json", '{"points": [[1, 2]], "roi": "nope.png"}', "ROI mask"),
    ],
)
def test_generic_bad_annotations(tmp_path, name, content, match):
    save_img(tmp_path / "a.png", 8, 8)
    (tmp_path / name).write_text(content)
    (tmp_path / "train.txt").write_text("a.png\n")
    with pytest.raises(DataError, match=match):
        read_dataset("generic", tmp_path, "train")


def test_generic_missing_files(tmp_path):
    with pytest.raises(DataError, match="list file not found") as ei:
        read_dataset("generic", tmp_path, "train")
    assert "train.txt" in str(ei.value)
    save_img(tmp_path / "a.png", 8, 8)
    (tmp_path / "train.txt").write_text("a.png\n")
    with pytest.raises(DataError, match="no annotation found"):
        read_dataset("generic", tmp_path, "train")
    (tmp_path / "train.txt").write_text("b.png\n")
    with pytest.raises(DataError, match="b.png: image listed"):
        read_dataset("generic", tmp_path, "train")
    (tmp_path / "train.txt").write_text("a.png x.json extra\n")
    with pytest.raises(DataError, match="line 1"):
        read_dataset("generic", tmp_path, "train")
    with pytest.raises(ConfigError):
        read_dataset("generic", tmp_path, "../etc")
    with pytest.raises(ConfigError, match="CSV"):
        write_generic_annotation(tmp_path / "m.csv", [[1, 2]], meta={"a": 1})


# --------------------------------------------------------------------------------------------
# autoscale data stats
# --------------------------------------------------------------------------------------------
def test_cli_stats_real_shanghaitech_b_test(shared_data, capsys):
    root = shared_data / "shanghaitech/part_B"
    assert cli_main(["data", "stats", "--format", "shanghaitech", "--root", str(root), "--split", "test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["images"]) == 316 and out["dropped_points"] == 0
    expect = _independent_counts(root / "test_data", size=(1024, 768))
    assert {i["name"]: i["count"] for i in out["images"]} == {k: v[0] for k, v in expect.items()}
    assert all((i["width"], i["height"]) == (1024, 768) for i in out["images"])
    assert cli_main(["data", "stats", "--format", "shanghaitech", "--root", str(root), "--split", "test"]) == 0
    text = capsys.readouterr().out
    assert "316" in text and f"total {sum(v[0] for v in expect.values())}" in text


def test_cli_stats_replica_and_errors(tmp_path, capsys):
    root = tmp_path / "part_B"
    make_shanghaitech(root)
    args = ["data", "stats", "--format", "shanghaitech", "--root", str(root), "--split", "train", "--json"]
    assert cli_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "images": [
            {"name": "IMG_1", "width": 32, "height": 24, "count": 2},
            {"name": "IMG_2", "width": 32, "height": 24, "count": 0},
            {"name": "IMG_10", "width": 32, "height": 24, "count": 2},
        ],
        "dropped_points": 2,
    }
    assert cli_main(args + ["--outside", "keep"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [i["count"] for i in out["images"]] == [4, 0, 2] and out["dropped_points"] == 0
    (root / "train_data/ground-truth/GT_IMG_2.mat").write_bytes(b"garbage")
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "GT_IMG_2.mat" in err and "cannot read .mat" in err and len(err.splitlines()) == 1
