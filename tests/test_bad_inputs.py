"""A corpus of bad inputs, run through the CLI as a user would (issue 10, item 1).

Every input is generated here (no committed binaries). The contract for each failure: exit code 2,
exactly one stderr line ``autoscale: error: <file>: <problem>`` naming the file (and the config
key where there is one), no traceback, no partial output on stdout, and the output folder of an
earlier run (or a pre-existing output file) exactly as it was. Legitimate but unusual inputs
(16-bit and grayscale images, a ~100 MP header, an empty prediction file) must work.

Classes covered: images (zero-byte, truncated, not an image, decompression-bomb header; the
configurable pixel limit), videos (zero-byte, random bytes, truncated: FFmpeg's own log must stay
silent - in a clean subprocess), checkpoints (missing, zero-byte, random bytes, a pickle that would
run code, wrong variant / backbone, foreign dicts), configs (unknown key, wrong type, unknown
format, missing or unset root, malformed YAML, not a mapping, bad override), dataset readers (one
empty root per format; the readers' detailed errors are in tests/test_formats.py), and every
command: train, evaluate, predict, export, eval-points, data stats / targets / synth,
convert-official (detailed parser errors of eval-points: tests/test_eval_points.py).

The CLI runs in-process (``autoscale.cli.main``) except for the video case, which needs a process
whose OpenCV has not initialised FFmpeg yet.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autoscale.cli import main
from autoscale.data.image_io import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, image_size, read_image
from autoscale.errors import DataError
from autoscale.models.registry import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, get_model

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ helpers
def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_error(result: tuple[int, str, str], *names) -> str:
    """Exit 2, one stderr line naming every one of ``names``, no traceback, nothing on stdout."""
    rc, out, err = result
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("autoscale: error: "), line
    for name in names:
        assert str(name) in line, (name, line)
    assert len(line) < 700, line  # a summary, never kilobytes of key names
    assert out == "", out
    return line


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header declares ``width x height`` RGB pixels (a decompression bomb
    for large sizes: nothing is decoded before the size is known)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def noise(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


BAD_IMAGES = {  # name -> (bytes, what the one-line error says)
    "zero.png": (lambda: b"", "not a recognised image format"),
    "truncated.png": (lambda: png_bytes(noise())[:300], "cannot decode image"),
    "text.jpg": (lambda: b"this is not an image\n", "not a recognised image format"),
    "bomb.png": (lambda: png_header(100_000, 100_000), "100000x100000"),
}


def bad_image(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(BAD_IMAGES[name][0]())
    return path


def generic_dataset(root: Path, images: dict[str, bytes], split: str = "train") -> Path:
    """``root/<split>.txt`` listing ``images`` (name -> file bytes), each with a JSON of 2 points."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (root / name).write_bytes(data)
        (root / name).with_suffix(".json").write_text(json.dumps({"points": [[3.5, 4.5], [10.0, 12.0]]}))
    (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in images))
    return root


def save_checkpoint(path: Path, variant: str = "regression", *, weights_of: str | None = None,
                    kwargs: dict | None = None) -> Path:
    """A tiny (width 1/16) checkpoint in our format; ``weights_of`` / ``kwargs`` make its header
    lie about the weights (a checkpoint of the wrong variant or backbone)."""
    torch.manual_seed(0)
    fpn = get_model(f"fpn_{weights_of or variant}", width=0.0625)
    l2s = get_model(f"l2s_{variant}", in_channels=fpn.feature_channels)
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "variant": variant,
                "model": {"name": f"fpn_{variant}", "kwargs": kwargs or {"width": 0.0625}},
                "state_dict": fpn.state_dict(), "l2s_state_dict": l2s.state_dict(),
                "l2s": {"head": l2s.head, "bound": l2s.bound, "pool": l2s.pool},
                "method": "autoscale", "code_version": "test"}, path)
    return path


class _RunsCode:
    """Unpickling this calls ``os.mkdir(marker)``: a stand-in for a checkpoint that runs code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def bad_checkpoint(folder: Path, kind: str) -> Path:
    path = folder / f"{kind}.pt"
    if kind == "missing":
        return path
    if kind == "zero_byte":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "runs_code_zip":
        torch.save({"state_dict": _RunsCode(folder / "PWNED_zip")}, path)
    elif kind == "runs_code_pickle":
        path.write_bytes(pickle.dumps(_RunsCode(folder / "PWNED_pickle"), protocol=2))
    elif kind == "wrong_variant":
        save_checkpoint(path, "regression", weights_of="localization")
    elif kind == "wrong_backbone":
        save_checkpoint(path, "regression", kwargs={"width": 0.0625, "backbone": "efficientnet_lite0"})
    elif kind == "foreign_dict":
        torch.save({"epoch": 3, "weights": {"a": torch.zeros(2)}}, path)
    elif kind == "plain_state_dict":
        torch.save(get_model("fpn_regression", width=0.0625).state_dict(), path)
    elif kind == "directory":
        path.mkdir()
    return path


CHECKPOINT_CASES = {  # kind -> what the one-line error says
    "missing": "checkpoint file not found",
    "zero_byte": "cannot read as a torch checkpoint",
    "random_bytes": "cannot read as a torch checkpoint",
    "runs_code_zip": "holds pickled objects or code, which are never unpickled",
    "runs_code_pickle": "holds pickled objects or code, which are never unpickled",
    "wrong_variant": "mis-shaped keys (",
    "wrong_backbone": "missing keys (",
    "foreign_dict": "not an autoscale checkpoint",
    "plain_state_dict": "not an autoscale checkpoint",
    "directory": "checkpoint file not found",
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def earlier_run(tmp_path) -> Path:
    """An output folder holding a previous predict run."""
    out = tmp_path / "earlier"
    (out / "maps").mkdir(parents=True)
    (out / "counts.csv").write_text("image,count\nold,12.5\n")
    (out / "counts.json").write_text('{"num_images": 1}\n')
    (out / "maps" / "old.npy").write_bytes(b"old map")
    return out


# ------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_image_failure_modes_predict(tmp_path, capsys, ckpt, earlier_run, name):
    img = bad_image(tmp_path, name)
    with pytest.raises(DataError, match=name):
        read_image(img)
    before = snapshot(earlier_run)
    one_error(cli(capsys, "predict", img, "--checkpoint", ckpt, "--out", earlier_run), img, BAD_IMAGES[name][1])
    assert snapshot(earlier_run) == before
    one_error(cli(capsys, "predict", img, "--checkpoint", ckpt, "--out", tmp_path / "new"), img)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name", ["zero.png", "text.jpg", "bomb.png"])  # header-only reads: truncation passes
def test_image_failure_modes_data_stats_and_train(tmp_path, capsys, name):
    root = generic_dataset(tmp_path / "ds", {"good.png": png_bytes(noise())})
    img = bad_image(root, name)
    img.with_suffix(".json").write_text('{"points": []}')
    (root / "train.txt").write_text(f"good.png\n{name}\n")
    one_error(cli(capsys, "data", "stats", "--format", "generic", "--root", root, "--split", "train"),
              img, BAD_IMAGES[name][1])
    out = tmp_path / "run"
    one_error(cli(capsys, "train", "--config", write_config(tmp_path, {"data": {"root": str(root)}}),
                  "--out", out), img)
    assert not out.exists()


def test_bomb_message_names_size_and_limit(tmp_path):
    bomb = bad_image(tmp_path, "bomb.png")
    for read in (read_image, image_size):
        with pytest.raises(DataError) as exc:
            read(bomb)
        msg = str(exc.value)
        assert msg.startswith(f"{bomb}: image declares 100000x100000 = 10,000,000,000 pixels")
        assert f"{DEFAULT_MAX_PIXELS:,}" in msg and MAX_PIXELS_ENV in msg and "\n" not in msg


def test_large_legitimate_photo_no_pillow_warning(tmp_path, capsys, monkeypatch):
    """A ~100 MP photo (header only here: 12000 x 9000) is below our limit: no Pillow
    DecompressionBombWarning, from the library or through the CLI."""
    big = tmp_path / "ds" / "big.png"
    generic_dataset(tmp_path / "ds", {"big.png": png_header(12000, 9000)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert image_size(big) == (12000, 9000)
    assert caught == []
    rc, out, err = cli(capsys, "data", "stats", "--format", "generic", "--root", tmp_path / "ds", "--split", "train",
                       "--json")
    assert rc == 0 and err == "" and json.loads(out)["images"][0]["width"] == 12000
    # A real decode below our limit stays silent even when Pillow's own limit is lower, which is
    # restored afterwards.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    small = tmp_path / "small.png"
    small.write_bytes(png_bytes(noise(20, 20)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(small).shape == (20, 20, 3)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_pixel_limit_is_configurable(tmp_path, capsys, ckpt, monkeypatch):
    img = tmp_path / "img.png"
    img.write_bytes(png_bytes(noise(30, 40)))  # 1200 pixels
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(DataError, match="40x30 = 1,200 pixels, above the decoding limit of 1,000"):
        read_image(img)
    monkeypatch.setenv(MAX_PIXELS_ENV, "none")
    assert read_image(img).shape == (30, 40, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    one_error(cli(capsys, "predict", img, "--checkpoint", ckpt, "--out", tmp_path / "o1"), MAX_PIXELS_ENV, "'lots'")
    monkeypatch.delenv(MAX_PIXELS_ENV)
    one_error(cli(capsys, "predict", img, "--checkpoint", ckpt, "--out", tmp_path / "o2", "--max-pixels", "1000"),
              img, "1,200 pixels")
    assert MAX_PIXELS_ENV not in os.environ  # --max-pixels holds for the command only
    rc, _, err = cli(capsys, "predict", img, "--checkpoint", ckpt, "--out", tmp_path / "o3", "--max-pixels", "1200",
                     "--no-overlays")
    assert rc == 0 and "Traceback" not in err


def test_legitimate_gray_and_16bit_images(tmp_path, capsys, ckpt):
    folder = tmp_path / "imgs"
    folder.mkdir()
    gray = noise()[..., 0]
    Image.fromarray(gray).save(folder / "gray.png")
    Image.fromarray((gray.astype(np.uint16) * 257)).save(folder / "deep.png")  # 16-bit grayscale
    assert np.array_equal(read_image(folder / "deep.png"), read_image(folder / "gray.png"))
    rc, out, err = cli(capsys, "predict", folder, "--checkpoint", ckpt, "--out", tmp_path / "out", "--no-overlays")
    assert rc == 0 and len(err.strip().splitlines()) == 1 and "2 image(s)" in err


# -------------------------------------------------------------------------- predict outputs
def test_predict_folder_of_unreadable_images_keeps_earlier_run(tmp_path, capsys, ckpt, earlier_run):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in BAD_IMAGES:
        bad_image(folder, name)
    before = snapshot(earlier_run)
    line = one_error(cli(capsys, "predict", folder, "--checkpoint", ckpt, "--out", earlier_run), folder,
                     "none of the 4 inputs could be read")
    assert "skipped" not in line
    assert snapshot(earlier_run) == before


VIDEO_SCRIPT = """
import sys
from autoscale.cli import main
ckpt, videos = sys.argv[1], sys.argv[2:]
rcs = [main(["predict", v, "--checkpoint", ckpt, "--out", v + ".out"]) for v in videos]
print(rcs)
"""


def test_corrupt_videos_print_only_our_line(tmp_path, ckpt):
    """FFmpeg's and OpenCV's own log lines ("moov atom not found", "[ERROR:0@...]") are silenced:
    stderr holds exactly our one line per bad video (a fresh process: FFmpeg reads its log level
    once)."""
    import cv2

    good = tmp_path / "good.avi"
    w = cv2.VideoWriter(str(good), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for i in range(6):
        w.write(noise(24, 32, i))
    w.release()
    videos = {"zero.mp4": b"", "random.mp4": np.random.default_rng(2).integers(0, 256, 3000, np.uint8).tobytes(),
              "truncated.avi": good.read_bytes()[: good.stat().st_size // 2]}
    mp4 = tmp_path / "tmp.mp4"
    w = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), 5, (32, 24))
    for i in range(6):
        w.write(noise(24, 32, i))
    w.release()
    if mp4.is_file() and mp4.stat().st_size > 400:  # an encoder is available: a real file cut short
        videos["header_only.mp4"] = mp4.read_bytes()[:200]
        videos["half.mp4"] = mp4.read_bytes()[: mp4.stat().st_size // 2]
    paths = []
    for name, data in videos.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    env.update(OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-c", VIDEO_SCRIPT, str(ckpt), *paths], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([2] * len(paths))
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == len(paths), proc.stderr
    for line, path in zip(lines, paths):
        assert line == f"autoscale: error: {path}: cannot open video (unsupported codec or corrupt file)"
    assert not any(Path(p + ".out").exists() for p in paths)


# -------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", list(CHECKPOINT_CASES))
def test_checkpoint_failure_modes(tmp_path, capsys, earlier_run, kind):
    bad = bad_checkpoint(tmp_path, kind)
    img = tmp_path / "img.png"
    img.write_bytes(png_bytes(noise()))
    before = snapshot(earlier_run)
    line = one_error(cli(capsys, "predict", img, "--checkpoint", bad, "--out", earlier_run), bad,
                     CHECKPOINT_CASES[kind])
    assert snapshot(earlier_run) == before
    assert not list(tmp_path.glob("PWNED*"))  # the pickled code never ran
    if kind.startswith("wrong_"):  # counts and the first few names, not every key
        assert " more" in line or kind == "wrong_variant"
    root = generic_dataset(tmp_path / "data", {"a.png": png_bytes(noise())}, split="test")
    one_error(cli(capsys, "evaluate", "--checkpoint", bad, "--format", "generic", "--root", root,
                  "--out", tmp_path / "ev"), bad)
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("kind", ["random_bytes", "wrong_variant"])
def test_export_bad_checkpoint_keeps_existing_file(tmp_path, capsys, kind):
    pytest.importorskip("onnx")
    bad = bad_checkpoint(tmp_path, kind)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    one_error(cli(capsys, "export", "--checkpoint", bad, "--out", out), bad, CHECKPOINT_CASES[kind])
    assert out.read_bytes() == b"an earlier export"


@pytest.mark.parametrize("kind", ["random_bytes", "runs_code_zip", "runs_code_pickle", "foreign_dict",
                                  "foreign_keys", "missing"])
def test_convert_official_bad_sources(tmp_path, capsys, kind):
    if kind == "foreign_keys":  # an official-looking file of some other network: a summary
        src = tmp_path / "foreign_keys.pth"
        torch.save({"state_dict": {f"module.layer{i}.weight": torch.zeros(1) for i in range(40)}}, src)
        expected = "missing keys ("
    else:
        src = bad_checkpoint(tmp_path, kind)
        expected = {"foreign_dict": "no 'state_dict'", "missing": "not found"}.get(kind, "cannot read")
    out = tmp_path / "ours.pt"
    out.write_bytes(b"an earlier conversion")
    line = one_error(cli(capsys, "convert-official", src, "--variant", "regression", "--out", out), src, expected)
    if kind == "foreign_keys":
        assert "unexpected keys (40): layer0.weight, layer1.weight" in line and "and 36 more" in line
    assert out.read_bytes() == b"an earlier conversion"
    assert not list(tmp_path.glob("PWNED*"))


# ---------------------------------------------------------------------------------- configs
def write_config(folder: Path, doc, name: str = "cfg.yaml") -> Path:
    path = folder / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))  # JSON is YAML
    return path


@pytest.fixture
def train_root(tmp_path) -> Path:
    return generic_dataset(tmp_path / "data", {"a.png": png_bytes(noise())})


CONFIG_CASES = {  # name -> (config document, override args, what the line names besides the file)
    "unknown_key": ({"data": {"root": "ROOT", "rooot": "x"}}, [], "'data.rooot'"),
    "unknown_section": ({"data": {"root": "ROOT"}, "optimiser": {}}, [], "'optimiser'"),
    "wrong_type": ({"data": {"root": "ROOT"}, "optim": {"lr": "fast"}}, [], "'optim.lr'"),
    "unknown_format": ({"data": {"root": "ROOT", "format": "shanghai"}}, [], "'data.format'"),
    "unknown_resize": ({"data": {"root": "ROOT", "resize": "half"}}, [], "'data.resize'"),
    "root_not_set": ({"optim": {"lr": 0.001}}, [], "'data.root'"),
    "malformed_yaml": ("data: [unclosed\n  root: x\n", [], "malformed YAML"),
    "not_a_mapping": ("- data\n- model\n", [], "YAML mapping"),
    "bad_override": ({"data": {"root": "ROOT"}}, ["optim.lr=[1"], "'optim.lr'"),
    "bad_override_value": ({"data": {"root": "ROOT"}}, ["optim.epochs=many"], "'optim.epochs'"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_failures_train_and_evaluate(tmp_path, capsys, ckpt, train_root, case):
    doc, overrides, key = CONFIG_CASES[case]
    if isinstance(doc, dict):
        doc = json.loads(json.dumps(doc).replace("ROOT", str(train_root)))
    cfg = write_config(tmp_path, doc)
    out = tmp_path / "run"
    one_error(cli(capsys, "train", "--config", cfg, *overrides, "--out", out), cfg, key)
    assert not out.exists()
    one_error(cli(capsys, "evaluate", "--checkpoint", ckpt, "--config", cfg, *overrides, "--out", tmp_path / "ev"),
              cfg, key)
    assert not (tmp_path / "ev").exists()


def test_config_missing_root_and_unknown_preset(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    cfg = write_config(tmp_path, {"data": {"root": str(missing)}})
    out = tmp_path / "run"
    one_error(cli(capsys, "train", "--config", cfg, "--out", out), missing, "'data.root'")
    assert not out.exists()
    one_error(cli(capsys, "train", "--config", "no_such_preset", "data.root=/x"), "'no_such_preset'")
    one_error(cli(capsys, "train", "--config", tmp_path / "absent.yaml"), tmp_path / "absent.yaml", "not found")


# --------------------------------------------------------------------------- dataset readers
READER_SPLITS = {"shanghaitech": "train", "qnrf": "train", "jhu": "train", "nwpu": "train", "trancos": "train",
                 "vgg_cells": "train", "generic": "train"}


@pytest.mark.parametrize("fmt", list(READER_SPLITS))
def test_each_reader_on_an_empty_root(tmp_path, capsys, fmt):
    """One cheap case per reader: an empty dataset root names the missing folder / list file under
    it (every reader's detailed errors: tests/test_formats.py)."""
    root = tmp_path / "root"
    root.mkdir()
    one_error(cli(capsys, "data", "stats", "--format", fmt, "--root", root, "--split", READER_SPLITS[fmt]), root)
    one_error(cli(capsys, "data", "stats", "--format", fmt, "--root", tmp_path / "absent", "--split",
                  READER_SPLITS[fmt]), tmp_path / "absent", "not found")


# ---------------------------------------------------------------------------------- commands
def test_train_bad_data_writes_nothing(tmp_path, capsys, train_root):
    """A run that never started leaves no run.json (nor anything else) in its output folder."""
    (train_root / "train.txt").write_text("")
    cfg = write_config(tmp_path, {"data": {"root": str(train_root)}, "device": "cpu"})
    empty_out = tmp_path / "empty_out"
    empty_out.mkdir()
    for out in (tmp_path / "new_out", empty_out):
        one_error(cli(capsys, "train", "--config", cfg, "--out", out), train_root / "train.txt", "no usable images")
    assert not (tmp_path / "new_out").exists() and list(empty_out.iterdir()) == []
    (train_root / "train.txt").write_text("a.png\nmissing.png\n")
    one_error(cli(capsys, "train", "--config", cfg, "--out", empty_out), train_root / "missing.png", "not found")
    (train_root / "train.txt").write_text("a.png\n")
    (train_root / "val.txt").write_text("")
    one_error(cli(capsys, "train", "--config", cfg, "--out", empty_out), train_root / "val.txt")
    assert list(empty_out.iterdir()) == []
    cfg2 = write_config(tmp_path, {"data": {"root": str(train_root)}, "device": "cpu",
                                   "model": {"imagenet": str(tmp_path / "no_weights.pth")}}, "cfg2.yaml")
    one_error(cli(capsys, "train", "--config", cfg2, "--out", empty_out, "data.val_split=null"),
              tmp_path / "no_weights.pth")
    assert list(empty_out.iterdir()) == []


def test_evaluate_empty_split_and_unknown_format(tmp_path, capsys, ckpt):
    root = generic_dataset(tmp_path / "data", {"a.png": png_bytes(noise())})
    (root / "test.txt").write_text("# nothing listed\n")
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"earlier": true}\n')
    before = snapshot(out)
    one_error(cli(capsys, "evaluate", "--checkpoint", ckpt, "--format", "generic", "--root", root, "--split", "test",
                  "--out", out), root / "test.txt", "has no images")
    one_error(cli(capsys, "evaluate", "--checkpoint", ckpt, "--format", "nope", "--root", root, "--out", out),
              "--format", "'nope'")
    cfg = write_config(tmp_path, {"data": {"root": str(root), "format": "nope"}})
    one_error(cli(capsys, "evaluate", "--checkpoint", ckpt, "--config", cfg, "--out", out), cfg, "'data.format'")
    one_error(cli(capsys, "evaluate", "--checkpoint", ckpt, "--config", cfg, "data.format=generic", "--split", "test",
                  "--out", out), root / "test.txt")
    assert snapshot(out) == before


GT_TEXT = "1 2 10 10 4 8 1 20 20 4 8 2\n2 0\n"


def test_eval_points_empty_files(tmp_path, capsys):
    gt, pred, empty, blank = (tmp_path / n for n in ("gt.txt", "pred.txt", "empty.txt", "blank.txt"))
    gt.write_text(GT_TEXT)
    pred.write_text("1 1 11 11\n2 0\n")
    empty.write_text("")
    blank.write_text("\n  \n")
    for bad_gt in (empty, blank):  # an NWPU GT file lists every image: an empty one is an error
        for flag in ([], ["--json"]):
            one_error(cli(capsys, "eval-points", "--gt", bad_gt, "--pred", pred, *flag), bad_gt, "ground-truth")
    one_error(cli(capsys, "eval-points", "--gt", tmp_path / "absent.txt", "--pred", pred), tmp_path / "absent.txt")
    # an empty prediction file is valid: nobody predicted anywhere
    rc, out, err = cli(capsys, "eval-points", "--gt", gt, "--pred", empty)
    assert rc == 0 and err == "" and "recall 0.00000" in out and "(tp 0, fp 0, fn 2)" in out
    assert out.splitlines()[-1] == "mae 1.00  rmse 1.41  nae 1.0000"
    rc, out, err = cli(capsys, "eval-points", "--gt", gt, "--pred", empty, "--json")
    res = json.loads(out)
    assert rc == 0 and err == "" and (res["tp"], res["fp"], res["fn"], res["n_images"]) == (0, 0, 2, 2)


def test_data_targets_and_synth_keep_existing_outputs(tmp_path, capsys):
    root = generic_dataset(tmp_path / "data", {"a.png": png_bytes(noise())})
    (root / "train.txt").write_text("a.png\nghost.png\n")
    out = tmp_path / "targets"
    out.mkdir()
    (out / "targets.json").write_text('{"earlier": true}\n')
    before = snapshot(out)
    one_error(cli(capsys, "data", "targets", "--format", "generic", "--root", root, "--split", "train",
                  "--out", out), root / "ghost.png")
    bad_image(root, "bomb.png")
    (root / "bomb.json").write_text('{"points": []}')
    (root / "train.txt").write_text("a.png\nbomb.png\n")
    one_error(cli(capsys, "data", "targets", "--format", "generic", "--root", root, "--split", "train",
                  "--out", out), root / "bomb.png", "100000x100000")
    one_error(cli(capsys, "data", "targets", "--format", "generic", "--root", root, "--split", "train",
                  "--edges", "0,x", "--out", out), "--edges")
    assert snapshot(out) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    one_error(cli(capsys, "data", "synth", "--out", foreign, "--n", "1", "--size", "32x32"), foreign, "not empty")
    one_error(cli(capsys, "data", "synth", "--out", tmp_path / "s", "--size", "big"), "'big'")
    assert snapshot(foreign) == {"notes.txt": b"mine"} and not (tmp_path / "s").exists()
