"""Big inputs in bounded memory: ``read_image(path, size=...)`` decodes a JPEG reduced by the
decoder (Pillow's draft, DCT scaling) and area-averages it to the exact target with the
large-image rule's geometry; the full-resolution pixels never exist in memory."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from autoscale.data.image_io import DRAFT_GAP, _area_resize, read_image
from autoscale.data.preprocess import ResizeRule
from autoscale.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _real_photo(part: str, name: str) -> Path:
    from conftest import SHARED_DATA  # ../shared/data, or $AUTOSCALE_SHARED_DATA

    p = SHARED_DATA / "shanghaitech" / part / ("test_data" if part == "part_B" else "train_data") / "images" / name
    if not p.is_file():
        pytest.skip(f"real photo {p} not available (see ../shared/data/README.md)")
    return p


def _blob_jpeg(path: Path, width: int, height: int, cx: float, cy: float, sigma: float,
               orientation: int = 1) -> Path:
    """A grey JPEG (quality 95) holding one Gaussian blob centred at continuous pixel coordinates
    ``(cx, cy)`` of the *stored* grid (pixel ``c`` covers ``[c, c+1)``, so its centre is c + 0.5)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    blob = 40 + 200 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    rgb = np.repeat(np.clip(np.rint(blob), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, quality=95, exif=exif.tobytes())
    return path


def _centroid(img: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted centre ``(x, y)`` above the background, continuous pixel coordinates."""
    v = img[..., 0].astype(np.float64) - 40.0
    v[v < 5] = 0.0
    yy, xx = np.mgrid[0:v.shape[0], 0:v.shape[1]] + 0.5
    return float((v * xx).sum() / v.sum()), float((v * yy).sum() / v.sum())


def _exact_area(arr: np.ndarray, size: tuple[int, int], extent: tuple[float, float]) -> np.ndarray:
    """Independent reference: explicit overlap-weight matrices per axis (float64)."""
    def weights(length: int, e: float, n: int) -> np.ndarray:
        m = np.zeros((n, length))
        step = e / n
        for i in range(n):
            a, b = i * step, (i + 1) * step
            for j in range(int(np.floor(a)), min(length, int(np.ceil(b)))):
                m[i, j] = max(0.0, min(b, j + 1) - max(a, j))
        return m / step
    mh, mw = weights(arr.shape[0], extent[1], size[1]), weights(arr.shape[1], extent[0], size[0])
    return np.einsum("ij,jkc,lk->ilc", mh, arr.astype(np.float64), mw)


# ------------------------------------------------------------------------------------ area resize
@pytest.mark.parametrize("shape,size,extent", [((37, 53, 3), (20, 11), (53.0, 37.0)),
                                               ((37, 53, 3), (17, 9), (52.25, 36.5)),
                                               ((8, 9, 3), (3, 2), (8.125, 7.5))])
def test_area_resize_is_the_exact_area_average(shape, size, extent):
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = _area_resize(arr, size, extent)
    assert out.shape == (size[1], size[0], 3) and out.dtype == np.uint8
    ref = _exact_area(arr, size, extent)
    assert np.abs(out.astype(np.float64) - ref).max() <= 0.5 + 1e-6  # rounding only
    if extent == (shape[1], shape[0]):  # the whole array: OpenCV's INTER_AREA, within rounding
        cv = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
        assert np.abs(out.astype(int) - cv.astype(int)).max() <= 1


# ------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("width,height", [(1600, 1200), (1001, 667)])  # s divides W, H / partial last block
def test_reduced_decode_keeps_exact_geometry(tmp_path, width, height):
    cx, cy = 0.83 * width, 0.71 * height  # far from the origin: a scale error would show
    path = _blob_jpeg(tmp_path / "blob.jpg", width, height, cx, cy, sigma=0.04 * width)
    w, h = ResizeRule("cap", max_long=200).output_size(width, height)
    with Image.open(path) as im:  # the decoder does reduce here (independent check of the premise)
        assert im.draft(None, (w * DRAFT_GAP, h * DRAFT_GAP)) is not None and im.size[0] < width
    out = read_image(path, size=(w, h))
    assert out.shape == (h, w, 3)
    x, y = _centroid(out)
    assert abs(x - cx * w / width) < 0.05 and abs(y - cy * h / height) < 0.05
    full = cv2.resize(read_image(path), (w, h), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - full.astype(int)).mean() < 0.5


@pytest.mark.parametrize("orientation", range(1, 9))
def test_reduced_decode_applies_exif_orientation(tmp_path, orientation):
    W, H, cx, cy = 1200, 800, 300.0, 200.0  # stored grid; the blob sits in the top-left quadrant
    path = _blob_jpeg(tmp_path / "o.jpg", W, H, cx, cy, sigma=40.0, orientation=orientation)
    # Where the stored point (cx, cy) is displayed (PIL's exif_transpose, applied to a mark).
    mark = Image.new("L", (W, H))
    mark.putpixel((int(cx), int(cy)), 255)
    mark.info["exif"] = Image.open(path).info.get("exif", b"")
    shown = np.asarray(ImageOps.exif_transpose(mark))
    r, c = np.argwhere(shown == 255)[0]
    dw, dh = shown.shape[1], shown.shape[0]
    ex, ey = c + 0.5, r + 0.5  # displayed coordinates of the blob centre
    w, h = dw // 8, dh // 8
    out = read_image(path, exif=True, size=(w, h))
    assert out.shape == (h, w, 3)
    x, y = _centroid(out)
    assert abs(x - ex * w / dw) < 0.1 and abs(y - ey * h / dh) < 0.1
    full = cv2.resize(read_image(path, exif=True), (w, h), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - full.astype(int)).mean() < 0.5


# ------------------------------------------------------------------------------------ real photos
@pytest.mark.parametrize("part,name", [("part_B", "IMG_1.jpg"), ("part_A", "IMG_10.jpg")])
def test_reduced_decode_matches_full_decode_on_real_photos(part, name):
    path = _real_photo(part, name)
    full = read_image(path)
    H, W = full.shape[:2]
    for w, h in ((W // 4, H // 4), (round(W * 0.3), round(H * 0.3))):
        out = read_image(path, size=(w, h))
        ref = cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA)
        assert out.shape == ref.shape
        d = np.abs(out.astype(int) - ref.astype(int))
        # DCT-domain scaling is not an exact block average: ~1 grey level on average.
        assert d.mean() < 1.5 and np.percentile(d, 99) <= 12


def test_no_reduction_is_bit_identical_to_the_resize_rule(tmp_path):
    # PNG: no decoder reduction; a JPEG asked for more than half its size: none either; a JPEG
    # that would be reduced, with draft=False: none.
    rng = np.random.default_rng(1)
    arr = cv2.resize(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), (400, 300), interpolation=cv2.INTER_CUBIC)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=90)
    for name, size, draft in (("a.png", (100, 75), True), ("a.jpg", (300, 225), True), ("a.jpg", (400, 300), True),
                              ("a.jpg", (100, 75), False)):
        full = read_image(tmp_path / name)
        expect, _, _, _ = ResizeRule("cap", max_long=size[0]).apply(full, np.zeros((0, 2)))
        np.testing.assert_array_equal(read_image(tmp_path / name, size=size, draft=draft), expect)
    reduced = read_image(tmp_path / "a.jpg", size=(100, 75))  # the decoder reduces by 2: close, not equal
    assert 0 < np.abs(reduced.astype(int) - expect.astype(int)).mean() < 1.5


def test_bad_size_is_one_config_error(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.jpg")
    for size in ((41, 30), (0, 10), (10,), (10.5, 5), "big", (10, 5, 1)):
        with pytest.raises(ConfigError) as ei:
            read_image(tmp_path / "a.jpg", size=size)
        msg = str(ei.value)
        assert "\n" not in msg and "a.jpg" in msg and "size must be (width, height)" in msg


# ------------------------------------------------------------------------------------ memory
_CHILD = r"""
import sys
import cv2, numpy
from autoscale.data.image_io import read_image

def hwm():  # this process's own peak (ru_maxrss would include the parent's: it survives exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

path, w, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
before = hwm()
img = read_image(path, size=(w, h)) if w else read_image(path)
print(before, hwm(), img.shape[1], img.shape[0])
"""


def _decode_peak_mib(path: Path, size: tuple[int, int] | None) -> tuple[float, tuple[int, int]]:
    """Growth of the peak RSS (MiB) of a fresh process over its own pre-decode peak."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    w, h = size or (0, 0)
    res = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(w), str(h)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=60, check=True)
    before, after, ow, oh = (int(v) for v in res.stdout.split())
    return (after - before) / 1024.0, (ow, oh)


def test_big_jpeg_decoded_reduced_in_bounded_memory(tmp_path):
    # 6000 x 4000 (24 MP): a full decode holds ~96 MB (Pillow, 4 bytes/pixel) + 72 MB (array).
    rng = np.random.default_rng(2)
    arr = cv2.resize(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), (6000, 4000), interpolation=cv2.INTER_CUBIC)
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=85)
    del arr
    full_mib, full_size = _decode_peak_mib(tmp_path / "big.jpg", None)
    small_mib, small_size = _decode_peak_mib(tmp_path / "big.jpg", (750, 500))
    assert full_size == (6000, 4000) and small_size == (750, 500)
    assert full_mib > 140  # the measurement sees a full decode
    assert small_mib < 40  # decoded at 1/4 (1500 x 1000): a few MB


# ---------------------------------------------------------------------------------- the predict path
# Predictor.read / the runner on a photo above READ_SIDE: READ_SIDE is lowered so a real 1024 x 768
# ShanghaiTech B photo plays the big photo (the geometry is the same at any size).
def _big_predictor(tmp_path, monkeypatch, variant="regression", read_side=400, max_side=192):
    import autoscale.predict as P
    from autoscale.predict import Predictor
    from test_predict import make_checkpoint

    monkeypatch.setattr(P, "READ_SIDE", read_side)
    return Predictor.from_checkpoint(make_checkpoint(tmp_path / "m.pt", variant), max_side=max_side, points="peaks")


def test_predictor_reads_a_big_photo_reduced_with_the_same_geometry(tmp_path, monkeypatch, one_thread):
    photo = _real_photo("part_B", "IMG_1.jpg")
    p = _big_predictor(tmp_path, monkeypatch)
    rgb, size = p.read(photo)
    assert size == (768, 1024) and rgb.shape == (300, 400, 3)  # longer side READ_SIDE, aspect kept
    full = read_image(photo, exif=True)
    ref = cv2.resize(full, (400, 300), interpolation=cv2.INTER_AREA)
    assert np.abs(rgb.astype(int) - ref).mean() < 1.5  # the decoder's reduction: ~1 grey level
    got = p(photo)  # a path goes through read()
    want = p.predict_array(full, name="IMG_1")  # the full decode, as before
    assert got.input_size == want.input_size == (768, 1024)
    assert got.network_size == want.network_size == p.network_size(768, 1024) == (144, 192)
    assert got.map.shape == want.map.shape == (768, 1024)
    # an untrained (Kaiming) net amplifies the ~1 grey level; a trained lite0 moved 1.2 % per image
    assert got.count == pytest.approx(want.count, rel=0.06)
    assert abs(float(got.map.sum()) - got.count) < 1e-3 * max(1.0, got.count)
    # input_size maps back exactly: given the full path's own network input, every output agrees
    from autoscale.predict import resize_for_inference

    small, _, _ = resize_for_inference(full, 192)
    same = p.predict_array(small, name="IMG_1", input_size=(768, 1024))
    assert same.count == want.count and np.array_equal(same.points, want.points) and same.regions == want.regions
    assert np.array_equal(same.map, want.map)
    for r in got.regions:
        assert 0 <= r["x"] and r["x"] + r["w"] <= 1024 + 1e-6 and r["y"] + r["h"] <= 768 + 1e-6


def test_small_photos_are_decoded_in_full(tmp_path, monkeypatch, one_thread):
    photo = _real_photo("part_B", "IMG_1.jpg")
    p = _big_predictor(tmp_path, monkeypatch, read_side=4096)
    rgb, size = p.read(photo)
    assert np.array_equal(rgb, read_image(photo, exif=True)) and size == (768, 1024)
    a, b = p(photo), p.predict_array(rgb, name="IMG_1")
    assert a.count == b.count and np.array_equal(a.map, b.map)
    # no large-image rule: the network sees the file's pixels, so nothing is reduced either
    p.max_side = None
    assert p.read(photo)[0].shape == (768, 1024, 3)


def test_runner_overlay_of_a_big_photo_at_the_decoded_resolution(tmp_path, monkeypatch, one_thread):
    from autoscale.runner import predict_paths

    photo = _real_photo("part_B", "IMG_1.jpg")
    p = _big_predictor(tmp_path, monkeypatch)
    s = predict_paths(p, photo, tmp_path / "out", log=lambda m: None)
    rec = s["images"][0]
    assert (rec["height"], rec["width"]) == (768, 1024)
    assert rec["count"] == pytest.approx(p(photo).count, abs=1e-9)  # one read path for API and runner
    m = np.load(tmp_path / "out" / "maps" / "IMG_1.npy")
    assert m.shape == (768, 1024) and m.dtype == np.float32
    assert float(m.sum()) == pytest.approx(rec["count"], rel=1e-4, abs=1e-3)
    ov = cv2.imread(str(tmp_path / "out" / "overlays" / "IMG_1.jpg"))
    assert ov.shape == (300, 400, 3)
    pts = np.loadtxt(tmp_path / "out" / "points" / "IMG_1.csv", delimiter=",", skiprows=1, ndmin=2)
    assert len(pts) == rec["num_points"] and (pts[:, 0] < 1024).all() and (pts[:, 1] < 768).all()
    assert pts[:, 0].max() > 400 or pts[:, 1].max() > 300 or len(pts) == 0  # file pixels, not overlay pixels


def _video(path: Path, frames: int) -> Path:
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        wr.write(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    wr.release()
    return path


def test_predict_progress_bar_names_each_stage(tmp_path, monkeypatch, one_thread):
    from test_predict import make_checkpoint

    photo = _real_photo("part_B", "IMG_1.jpg")
    ck = make_checkpoint(tmp_path / "m.pt", "regression")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "autoscale", "predict", "--checkpoint", str(ck), "--max-side", "128"]
    on = subprocess.run(base + [str(photo), "--out", str(tmp_path / "a"), "--progress", "on"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert on.returncode == 0, on.stderr
    shown = on.stderr.replace("\r", "\n")
    for stage in ("reading IMG_1.jpg", "counting IMG_1", "writing IMG_1", "1/1"):
        assert stage in shown, (stage, shown)
    off = subprocess.run(base + [str(photo), "--out", str(tmp_path / "b")], capture_output=True, text=True,
                         env=env, timeout=120)  # auto: stderr is a pipe here, so no bar
    assert off.returncode == 0 and off.stderr.strip().count("\n") == 0 and "predict:" not in off.stderr
    # a video: the bar's total is the number of sampled frames the file states (23 frames, every 5th)
    vid = _video(tmp_path / "v.mp4", 23)
    v = subprocess.run(base + [str(vid), "--out", str(tmp_path / "c"), "--every", "5", "--progress", "on"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert v.returncode == 0, v.stderr
    assert "5/5" in v.stderr.replace("\r", "\n")


@pytest.mark.parametrize("var", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_bounded_heap_leaves_an_explicit_setting(monkeypatch, var):
    from autoscale.device import bounded_heap

    monkeypatch.setenv(var, "65536")
    assert bounded_heap() is False  # the user's explicit setting wins


def test_bounded_heap():
    import platform

    from autoscale.device import HEAP_MMAP_THRESHOLD

    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("mallopt is glibc's")
    # In a child (the setting is process-wide): a block above the mmap threshold goes back to the
    # system when freed; a block below it (an activation) freed and allocated again is reused
    # from the heap without page faults (0 measured) - with a 128 KiB threshold every round
    # mapped it afresh: 2,640 faults in 5 rounds of 32 MiB here, >= 80 even with 2 MiB pages.
    child = ("import re, resource, numpy as np\n"
             "from autoscale.device import HEAP_MMAP_THRESHOLD, bounded_heap\n"
             "def rss():\n"
             "    return int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
             "def faults():\n"
             "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
             "assert bounded_heap()\n"
             "big = np.ones(HEAP_MMAP_THRESHOLD + (32 << 20), dtype=np.uint8)\n"
             "before = rss(); del big; returned = before - rss()\n"
             "np.ones(HEAP_MMAP_THRESHOLD - (1 << 20), dtype=np.uint8)\n"  # allocated, touched, freed
             "f = faults()\n"
             "for _ in range(5):\n"
             "    np.ones(HEAP_MMAP_THRESHOLD - (1 << 20), dtype=np.uint8)\n"
             "print(returned, faults() - f)\n")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=True)
    returned, faults = map(int, out.stdout.split())
    assert returned > 0.9 * (HEAP_MMAP_THRESHOLD + (32 << 20)) / 1024  # KiB: the block went back at once
    assert faults < 50
