"""Image decoding: modes, bit depths, EXIF orientation and broken files (all created in tmp_path)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from autoscale.data.image_io import image_size, read_image
from autoscale.errors import DataError


def _rng():
    return np.random.default_rng(0)


def test_rgb_png_is_exact(tmp_path):
    arr = _rng().integers(0, 256, (7, 11, 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (7, 11, 3)
    np.testing.assert_array_equal(out, arr)
    assert image_size(tmp_path / "a.png") == (11, 7)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_replicated(tmp_path, mode):
    gray = _rng().integers(0, 256, (5, 6), dtype=np.uint8)
    if mode == "1":
        gray = np.where(gray > 127, 255, 0).astype(np.uint8)
    Image.fromarray(gray, "L").convert(mode).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (5, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_and_la_composite_on_black(tmp_path):
    rgba = _rng().integers(0, 256, (4, 9, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0
    rgba[0, 1, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    expect = np.floor(rgba[..., :3].astype(float) * rgba[..., 3:4] / 255.0 + 0.5).astype(np.uint8)
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out, expect)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 1], rgba[0, 1, :3])

    la = rgba[..., [0, 3]]
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    g = np.floor(la[..., 0].astype(float) * la[..., 1] / 255.0 + 0.5).astype(np.uint8)
    out = read_image(tmp_path / "la.png")
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_palette_with_and_without_transparency(tmp_path):
    idx = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    pal = [10, 20, 30, 200, 100, 50, 7, 8, 9] + [0] * (256 * 3 - 9)
    im = Image.fromarray(idx, "P")
    im.putpalette(pal)
    im.save(tmp_path / "p.png")
    table = np.array(pal, dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), table[idx])
    im.save(tmp_path / "pt.png", transparency=1)  # palette entry 1 fully transparent -> black
    expect = table[idx].copy()
    expect[idx == 1] = 0
    np.testing.assert_array_equal(read_image(tmp_path / "pt.png"), expect)


def test_16bit_png_scaled_by_257(tmp_path):
    v = np.array([[0, 128, 129, 257], [385, 386, 65279, 65535]], dtype=np.uint16)
    Image.fromarray(v).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = read_image(tmp_path / "d.png")
    # round(v / 257); 257 is odd so no exact ties occur
    expect = np.array([[0, 0, 1, 1], [1, 2, 254, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(expect, np.round(v / 257.0).astype(np.uint8))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expect)


def test_int32_mode_i_tiff(tmp_path):
    v = np.array([[0, 257 * 10, 65535]], dtype=np.int32)
    Image.fromarray(v, "I").save(tmp_path / "i.tif")
    out = read_image(tmp_path / "i.tif")
    np.testing.assert_array_equal(out[..., 0], [[0, 10, 255]])


def test_cmyk(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tif")
    out = read_image(tmp_path / "c.tif")
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 255, 255], [255, 0, 255], [0, 0, 0]])


def test_exif_orientation_6(tmp_path):
    # stored 40 wide x 20 high: left half red, right half blue; orientation 6 = rotate 90 deg clockwise
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=95)
    stored = read_image(tmp_path / "r.jpg")
    assert stored.shape == (20, 40, 3)
    assert image_size(tmp_path / "r.jpg") == (40, 20)
    assert image_size(tmp_path / "r.jpg", exif=True) == (20, 40)
    rot = read_image(tmp_path / "r.jpg", exif=True)
    assert rot.shape == (40, 20, 3)
    # exact: the same decoded pixels, rotated clockwise (the stored left, red half becomes the top)
    np.testing.assert_array_equal(rot, np.rot90(stored, k=-1))
    assert rot[5, 10, 0] > 200 and rot[35, 10, 2] > 200


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(tmp_path, orientation):
    # PNG (lossless): the reader's own orientation transforms against Pillow's exif_transpose
    arr = _rng().integers(0, 256, (5, 8, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(tmp_path / "o.png", exif=exif.tobytes())
    with Image.open(tmp_path / "o.png") as im:
        expect = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    out = read_image(tmp_path / "o.png", exif=True)
    np.testing.assert_array_equal(out, expect)
    assert out.flags.c_contiguous
    assert image_size(tmp_path / "o.png", exif=True) == (expect.shape[1], expect.shape[0])
    np.testing.assert_array_equal(read_image(tmp_path / "o.png"), arr)  # stored grid without exif


def test_truncated_jpeg(tmp_path):
    arr = _rng().integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert image_size(tmp_path / "cut.jpg") == (64, 64)  # header is intact
    with pytest.raises(DataError, match="cannot decode image") as ei:
        read_image(tmp_path / "cut.jpg")
    assert "cut.jpg" in str(ei.value)


def test_text_file_named_jpg_and_missing(tmp_path):
    (tmp_path / "fake.jpg").write_text("this is not an image\n")
    for fn in (read_image, image_size):
        with pytest.raises(DataError, match="cannot decode image") as ei:
            fn(tmp_path / "fake.jpg")
        assert ei.value.path == str(tmp_path / "fake.jpg")
        with pytest.raises(DataError, match="not found"):
            fn(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError):
        read_image(tmp_path / "empty.png")
