"""Prediction API and `autoscale predict`: output layout, resize rule, coordinates, inputs, errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from autoscale.cli import main
from autoscale.errors import CheckpointError, ConfigError, DataError
from autoscale.metrics.nwpu import read_counts, read_loc_pred
from autoscale.models.registry import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, get_model
from autoscale.models.vgg import normalize
from autoscale.pipeline import PipelineConfig
from autoscale.predict import Predictor, load_autoscale, pipeline_config_from_checkpoint, predict_paths


def make_checkpoint(path: Path, variant: str, *, seed: int = 3, l2s: bool = True, pipeline: bool = True) -> Path:
    """A tiny (width 1/16) checkpoint in the registry format; Kaiming re-init so the maps depend on
    the image (seed 3 gives refined dense regions on the synthetic images used here)."""
    torch.manual_seed(seed)
    fpn = get_model(f"fpn_{variant}", width=0.0625)
    for m in fpn.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
    net = get_model(f"l2s_{variant}", in_channels=fpn.feature_channels)
    ckpt = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "variant": variant,
            "model": {"name": f"fpn_{variant}", "kwargs": {"width": 0.0625}}, "state_dict": fpn.state_dict(),
            "l2s_state_dict": net.state_dict() if l2s else None,
            "l2s": {"head": net.head, "bound": net.bound, "pool": net.pool} if l2s else None,
            "method": "autoscale" if l2s else "fpn", "code_version": "test", "config": {}}
    if pipeline:
        ckpt["pipeline"] = {"variant": variant, "zoom": "stn", "sigma": 4.0}
    torch.save(ckpt, path)
    return path


def crowd_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Textured RGB image with a few bright blobs (deterministic)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 0)
    for _ in range(12):
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), 3, (250, 230, 200), -1)
    return img


def save_png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def read_counts_csv(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "count"]
    return {r[0]: float(r[1]) for r in rows[1:]}


def read_points_csv(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    assert lines[0] == "x,y"
    return np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]]).reshape(-1, 2)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {v: make_checkpoint(d / f"{v}.pt", v) for v in ("regression", "localization")}


def test_image_layout_and_api_matches_cli(tmp_path, ckpts, capsys):
    img = save_png(tmp_path / "crowd.png", crowd_image(64, 80))
    out = tmp_path / "out"
    assert main(["predict", str(img), "--checkpoint", str(ckpts["regression"]), "--out", str(out)]) == 0
    counts = read_counts_csv(out / "counts.csv")
    assert list(counts) == ["crowd"]
    summary = json.loads((out / "counts.json").read_text())
    assert summary["errors"] == [] and summary["images"][0]["image"] == "crowd"
    m = np.load(out / "maps" / "crowd.npy")
    assert m.shape == (64, 80) and m.dtype == np.float32
    assert sorted(q.name for q in (out / "overlays").iterdir()) == ["crowd.jpg"]  # JPEG by default
    overlay = cv2.imread(str(out / "overlays" / "crowd.jpg"))
    assert overlay.shape == (64, 80, 3)
    assert (out / "points" / "crowd.csv").read_text().splitlines()[0] == "x,y"
    # Python API on the same file gives the same count and map.
    pred = Predictor.from_checkpoint(ckpts["regression"])(img)
    assert pred.regions, "the test checkpoint should refine a dense region on this image"
    assert counts["crowd"] == pytest.approx(pred.count, abs=1e-5)
    assert summary["images"][0]["count"] == pytest.approx(pred.count, rel=1e-9)
    assert float(m.sum(dtype=np.float64)) == pytest.approx(pred.count, rel=1e-5, abs=1e-3)
    np.testing.assert_allclose(m, pred.map, rtol=1e-6)
    # No temporary files left behind.
    assert not [p for p in out.rglob(".*tmp*")]
    # The progress journal (what --resume reads): the run header, then one line for the image.
    lines = (out / "progress.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["format"] == "autoscale-predict-progress"
    assert [json.loads(ln)["image"] for ln in lines[1:]] == ["crowd"]
    # The runner moved to autoscale.runner; the old import path still works.
    from autoscale.runner import predict_paths as runner_predict_paths

    assert predict_paths is runner_predict_paths


def test_overlay_formats(tmp_path, ckpts):
    """Overlays are JPEG (quality 92) by default and lossless PNG with --overlay-format png: the
    JPEG is cv2's encoding of the PNG's picture, every other output identical; a bad format is
    one ConfigError."""
    img = save_png(tmp_path / "crowd.png", crowd_image(64, 80))
    outs = {}
    for fmt, flag in (("png", ["--overlay-format", "png"]), ("jpg", [])):
        outs[fmt] = tmp_path / fmt
        assert main(["predict", str(img), "--checkpoint", str(ckpts["regression"]), "--out", str(outs[fmt]),
                     *flag]) == 0
    assert sorted(q.name for q in (outs["png"] / "overlays").iterdir()) == ["crowd.png"]
    assert sorted(q.name for q in (outs["jpg"] / "overlays").iterdir()) == ["crowd.jpg"]
    assert (outs["jpg"] / "overlays" / "crowd.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG magic
    png = cv2.imread(str(outs["png"] / "overlays" / "crowd.png"))  # lossless: the overlay itself
    assert png.shape == (64, 80, 3)
    ok, want = cv2.imencode(".jpg", png, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok and (outs["jpg"] / "overlays" / "crowd.jpg").read_bytes() == want.tobytes()
    for rel in ("counts.csv", "maps/crowd.npy", "points/crowd.csv"):
        assert (outs["jpg"] / rel).read_bytes() == (outs["png"] / rel).read_bytes(), rel
    with pytest.raises(ConfigError, match="overlay_format must be one of"):
        predict_paths(Predictor.from_checkpoint(ckpts["regression"]), img, tmp_path / "bad", overlay_format="gif")
    assert not (tmp_path / "bad").exists()


def test_folder_with_corrupt_file_natural_order(tmp_path, ckpts, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    save_png(folder / "img10.png", crowd_image(48, 64, 1))
    save_png(folder / "img2.png", crowd_image(40, 56, 2))
    (folder / "bad.jpg").write_bytes(b"not a jpeg at all")
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    rc = main(["predict", str(folder), "--checkpoint", str(ckpts["regression"]), "--out", str(out), "--no-overlays"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "bad.jpg" in err
    counts = read_counts_csv(out / "counts.csv")
    assert list(counts) == ["img2", "img10"]
    errors = json.loads((out / "counts.json").read_text())["errors"]
    assert len(errors) == 1 and errors[0]["image"].endswith("bad.jpg")
    assert np.load(out / "maps" / "img2.npy").shape == (40, 56)
    assert not (out / "overlays" / "img2.png").exists()
    p = Predictor.from_checkpoint(ckpts["regression"])
    assert counts["img10"] == pytest.approx(p(folder / "img10.png").count, abs=1e-5)


def test_video_sampled_every_n_frames(tmp_path, ckpts):
    path = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert vw.isOpened()
    for i in range(7):
        vw.write(crowd_image(48, 64, 10 + i))
    vw.release()
    out = tmp_path / "out"
    p = Predictor.from_checkpoint(ckpts["localization"])
    summary = predict_paths(p, path, out, every_n_frames=3, overlays=False)
    names = [r["image"] for r in summary["images"]]
    assert names == ["clip_f000000", "clip_f000003", "clip_f000006"]
    assert list(read_counts_csv(out / "counts.csv")) == names
    # Independent decode of frame 3.
    cap = cv2.VideoCapture(str(path))
    frames = [cap.read()[1] for _ in range(4)]
    cap.release()
    expect = p(cv2.cvtColor(frames[3], cv2.COLOR_BGR2RGB))
    assert summary["images"][1]["count"] == expect.count
    cls = np.load(out / "maps" / "clip_f000003.npy")
    assert cls.shape == (48, 64) and cls.dtype == np.uint8
    np.testing.assert_array_equal(cls, expect.map)
    # fps sampling: 10 fps video at 5 fps -> every 2nd frame.
    s2 = predict_paths(p, path, tmp_path / "out2", fps=5.0, overlays=False)
    assert [r["image"] for r in s2["images"]] == [f"clip_f{i:06d}" for i in (0, 2, 4, 6)]


def test_large_image_resize_rule_and_count_preserved(tmp_path, ckpts):
    img = crowd_image(300, 500, 3)
    p = Predictor.from_checkpoint(ckpts["regression"], max_side=128)
    pred = p(img)
    assert pred.map.shape == (300, 500)
    assert pred.network_size == (77, 128)  # round(300 * 128 / 500) = 77
    assert float(pred.map.sum(dtype=np.float64)) == pytest.approx(pred.count, rel=1e-5, abs=1e-3)
    # The rule: the network sees the INTER_AREA-downscaled image.
    small = cv2.resize(img, (128, 77), interpolation=cv2.INTER_AREA)
    ref = Predictor.from_checkpoint(ckpts["regression"], max_side=None)(small)
    assert pred.count == pytest.approx(ref.count, rel=1e-6)
    # Regions come back in input pixels by the inverse per-axis factors.
    for a, b in zip(pred.regions, ref.regions):
        assert a["x"] == pytest.approx(b["x"] * 500 / 128) and a["h"] == pytest.approx(b["h"] * 300 / 77)
    # Odd-sized image below max_side: untouched, map at input resolution.
    odd = p(crowd_image(67, 93, 4))
    assert odd.map.shape == (67, 93) and odd.network_size == (67, 93)


def test_localization_points_in_original_coordinates(tmp_path, ckpts):
    img = crowd_image(150, 250, 5)
    path = save_png(tmp_path / "loc.png", img)
    out = tmp_path / "out"
    assert main(["predict", str(path), "--checkpoint", str(ckpts["localization"]), "--out", str(out),
                 "--max-side", "96", "--no-overlays"]) == 0
    pts = read_points_csv(out / "points" / "loc.csv")
    # Independent: resize by hand, run the pipeline directly, unscale by the per-axis factors.
    small = cv2.resize(img, (96, 58), interpolation=cv2.INTER_AREA)  # round(150 * 96 / 250) = 58
    model, _ = load_autoscale(ckpts["localization"])
    res = model.predict(normalize(small))
    expect = res.points * np.array([250 / 96, 150 / 58])
    assert len(expect) > 0 and len(pts) == len(expect) == int(res.count)
    np.testing.assert_allclose(pts, expect, atol=1e-3)
    assert read_counts_csv(out / "counts.csv")["loc"] == res.count
    cls = np.load(out / "maps" / "loc.npy")
    assert cls.shape == (150, 250) and cls.dtype == np.uint8


def test_input_kinds_gray_rgba_16bit_exif(tmp_path, ckpts):
    p = Predictor.from_checkpoint(ckpts["regression"])
    rgb = crowd_image(40, 56, 6)
    gray = rgb[..., 1].copy()
    ref_gray = p(np.repeat(gray[..., None], 3, axis=2)).count
    assert p(save_png(tmp_path / "g.png", gray)).count == pytest.approx(ref_gray, rel=1e-6)
    assert p(gray).count == pytest.approx(ref_gray, rel=1e-6)
    Image.fromarray((gray.astype(np.uint16) * 257)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert p(tmp_path / "g16.png").count == pytest.approx(ref_gray, rel=1e-6)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    ref_rgb = p(rgb).count
    assert p(save_png(tmp_path / "a.png", rgba)).count == pytest.approx(ref_rgb, rel=1e-6)
    assert p(Image.fromarray(rgba)).count == pytest.approx(ref_rgb, rel=1e-6)
    # EXIF orientation 6: displayed image is the stored one rotated 90 degrees clockwise.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "rot.png", exif=exif.tobytes())
    pred = p(tmp_path / "rot.png")
    assert pred.map.shape == (56, 40)
    assert pred.count == pytest.approx(p(np.ascontiguousarray(np.rot90(rgb, -1))).count, rel=1e-6)


def test_single_pass_equals_network_sum(tmp_path, ckpts):
    img = crowd_image(64, 80, 7)
    path = save_png(tmp_path / "s.png", img)
    out = tmp_path / "out"
    assert main(["predict", str(path), "--checkpoint", str(ckpts["regression"]), "--out", str(out), "--single-pass"]) == 0
    model, _ = load_autoscale(ckpts["regression"])
    with torch.no_grad():
        raw = float(model.counter(normalize(img)).final.sum(dtype=torch.float64))
    # float32 rounding only: the CLI runs in inference mode (final map without side maps, the same
    # linear map summed in another order); a float32 count near 1e3 resolves ~1e-4
    assert read_counts_csv(out / "counts.csv")["s"] == pytest.approx(raw, rel=1e-6)
    assert json.loads((out / "counts.json").read_text())["images"][0]["regions"] == []


def test_nwpu_files_and_peaks(tmp_path, ckpts):
    folder = tmp_path / "nwpu"
    folder.mkdir()
    for i in (3110, 3098):
        save_png(folder / f"{i}.png", crowd_image(48, 64, i))
    out = tmp_path / "out"
    p = Predictor.from_checkpoint(ckpts["regression"], points="peaks")
    s = predict_paths(p, folder, out, nwpu=True, overlays=False)
    assert [r["image"] for r in s["images"]] == ["3098", "3110"]
    counts = read_counts(out / "nwpu_counts.txt")
    assert counts[3110] == pytest.approx(s["images"][1]["count"], abs=1e-4)
    loc = read_loc_pred(out / "nwpu_loc.txt")
    pts = read_points_csv(out / "points" / "3098.csv")
    assert len(pts) > 0
    np.testing.assert_array_equal(loc[3098], np.floor(pts))


def test_bad_inputs_one_line_exit_2(tmp_path, ckpts, capsys):
    img = save_png(tmp_path / "x.png", crowd_image(32, 32))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    cases = [
        [str(tmp_path / "missing.png"), "--checkpoint", str(ckpts["regression"]), "--out", str(tmp_path / "o1")],
        [str(img), "--checkpoint", str(bad), "--out", str(tmp_path / "o2")],
        [str(img), "--checkpoint", str(ckpts["regression"]), "--out", str(img / "sub")],  # under a file
        [str(img), "--checkpoint", str(ckpts["regression"]), "--variant", "localization", "--out", str(tmp_path / "o3")],
    ]
    for args in cases:
        capsys.readouterr()
        assert main(["predict", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("autoscale: error:") and "\n" not in err
    for o in ("o1", "o2", "o3"):
        assert not (tmp_path / o / "counts.csv").exists()
    with pytest.raises(CheckpointError, match="regression checkpoint"):
        Predictor.from_checkpoint(ckpts["regression"], variant="localization")
    torch.save({"format": "something-else"}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an autoscale checkpoint"):
        Predictor.from_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(DataError):
        Predictor.from_checkpoint(ckpts["regression"])(np.zeros((8, 8, 3), np.float32))


def test_failed_run_keeps_earlier_outputs_and_a_new_run_replaces_them(tmp_path, ckpts):
    """A run that counts nothing (single corrupt image, or a folder of them) fails with one
    DataError and leaves the earlier run's outputs untouched; a run that counts replaces counts.*."""
    out = tmp_path / "out"
    (out / "maps").mkdir(parents=True)
    (out / "counts.csv").write_text("image,count\nold,1\n")
    (out / "counts.json").write_text("{}\n")
    (out / "maps" / "old.npy").write_bytes(b"old map")
    before = {q: q.read_bytes() for q in out.rglob("*") if q.is_file()}
    corrupt = tmp_path / "c.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    folder = tmp_path / "bad_folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    p = Predictor.from_checkpoint(ckpts["regression"])
    with pytest.raises(DataError, match="c.png"):
        predict_paths(p, corrupt, out)
    notices: list[str] = []
    with pytest.raises(DataError, match=r"bad_folder: none of the 2 inputs could be read \(first: a.png"):
        predict_paths(p, folder, out, log=notices.append)
    assert notices == []  # the skip notices are folded into the one error
    assert {q: q.read_bytes() for q in out.rglob("*") if q.is_file()} == before
    assert sorted(q.name for q in out.iterdir()) == ["counts.csv", "counts.json", "maps"]
    with pytest.raises(DataError, match="c.png"):
        predict_paths(p, corrupt, tmp_path / "new")
    assert not (tmp_path / "new").exists()  # not even created
    save_png(folder / "c.png", crowd_image(24, 24))
    predict_paths(p, folder, out, log=notices.append, overlays=False)
    assert list(read_counts_csv(out / "counts.csv")) == ["c"] and len(notices) == 2


def test_checkpoint_without_pipeline_or_l2s(tmp_path):
    ck = make_checkpoint(tmp_path / "off.pt", "localization", l2s=False, pipeline=False)
    raw = torch.load(ck, weights_only=True)
    cfg = pipeline_config_from_checkpoint(raw)
    assert cfg == PipelineConfig(variant="localization", zoom="bilinear")
    p = Predictor.from_checkpoint(ck)
    assert p.single_pass  # no L2S weights and no fixed scale: the baseline
    img = crowd_image(40, 48, 8)
    pred = p(img)
    assert pred.regions == [] and pred.count == pred.first_count


def test_bf16_and_cuda_devices(ckpts):
    img = crowd_image(48, 64, 9)
    ref = Predictor.from_checkpoint(ckpts["regression"], single_pass=True)(img)
    half = Predictor.from_checkpoint(ckpts["regression"], single_pass=True, bf16=True)(img)
    assert half.map.dtype == np.float32 and half.map.shape == (48, 64)
    assert half.count == pytest.approx(ref.count, rel=0.05)
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="CUDA is not available"):
            Predictor.from_checkpoint(ckpts["regression"], device="cuda")
        return
    gpu = Predictor.from_checkpoint(ckpts["regression"], device="cuda")(img)
    cpu = Predictor.from_checkpoint(ckpts["regression"])(img)
    assert gpu.count == pytest.approx(cpu.count, rel=1e-3)
    assert len(gpu.regions) == len(cpu.regions)
