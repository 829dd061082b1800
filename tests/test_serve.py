"""``autoscale serve``: the HTTP API through FastAPI's TestClient on real ShanghaiTech photos with a
checkpoint trained here by ``engine.train`` (two steps, width 1/16): counts equal ``Predictor``'s
on the same file, every error status, auth on and off, request logs; and one real uvicorn server
for the streamed-upload limit."""
from __future__ import annotations

import base64
import io
import json
import logging
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

pytest.importorskip("fastapi", reason="autoscale serve needs the [serve] extra (python3 dev.py test installs it)")
TestClient = pytest.importorskip("fastapi.testclient", reason="FastAPI's TestClient needs httpx2 (the [dev] extra)"
                                 ).TestClient

from autoscale.cli import main  # noqa: E402
from autoscale.predict import Predictor  # noqa: E402
from autoscale.serve import create_app, is_loopback, model_card  # noqa: E402
from conftest import SHARED_DATA, tiny_train_config  # noqa: E402

LOCAL = "http://127.0.0.1"
MAX_SIDE = 384  # the network sees at most 384 px: fast tests; coordinates still come back in photo pixels
PHOTOS = {"B_test_IMG_1": "part_B/test_data/images/IMG_1.jpg",        # 1024x768 RGB street photo
          "A_train_IMG_153": "part_A/train_data/images/IMG_153.jpg"}  # 600x400 grayscale crowd


def train_checkpoint(root: Path, out: Path, variant: str) -> Path:
    """A real checkpoint (+ model card): ``engine.train`` for two steps on the synthetic crowds.
    The regression pipeline uses a low density threshold and gate so untrained maps still yield a
    refined dense region on the photos (the region code paths are exercised)."""
    extra = {"pipeline__dense_k": 1.0, "pipeline__area_ratio": 0.002} if variant == "regression" else {}
    from autoscale.engine.trainer import train

    train(tiny_train_config(root, out, method="autoscale", model__variant=variant, optim__max_steps=2,
                            optim__epochs=1, val_every=0, **extra))
    return out / "last.pt"


@pytest.fixture(scope="module")
def threads1():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpts(synth, tmp_path_factory, threads1) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("serve_ckpt")
    return {v: train_checkpoint(synth, d / v, v) for v in ("regression", "localization")}


@pytest.fixture(scope="module")
def photos() -> dict[str, Path]:
    paths = {k: SHARED_DATA / "shanghaitech" / v for k, v in PHOTOS.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.skip(f"ShanghaiTech photos not found ({', '.join(missing)}); set AUTOSCALE_SHARED_DATA")
    return paths


def client_for(ckpt: Path, **kw) -> TestClient:
    app = create_app(Predictor.from_checkpoint(ckpt, max_side=MAX_SIDE), card=model_card(ckpt), **kw)
    return TestClient(app, base_url=LOCAL, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def clients(ckpts):
    with client_for(ckpts["regression"]) as reg, client_for(ckpts["localization"]) as loc:
        yield {"regression": reg, "localization": loc}


def displayed_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).size


def assert_error(r, status: int, error: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == error, body
    assert "Traceback" not in body["detail"] and "autoscale-serve-" not in body["detail"]
    assert "/tmp" not in body["detail"]
    return body


# ------------------------------------------------------------------------------ counting
@pytest.mark.parametrize("variant", ["regression", "localization"])
def test_counts_equal_the_predictors_on_real_photos(variant, clients, ckpts, photos):
    reference = Predictor.from_checkpoint(ckpts[variant], max_side=MAX_SIDE)
    client = clients[variant]
    for name, path in photos.items():
        expected = reference(path)
        data = path.read_bytes()
        multipart = client.post("/v1/count", files={"file": (path.name, data, "image/jpeg")})
        raw = client.post("/v1/count", content=data, headers={"Content-Type": "image/jpeg"})
        for r in (multipart, raw):
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["count"] == pytest.approx(expected.count, rel=1e-6, abs=1e-9), name
            assert body["first_pass_count"] == pytest.approx(expected.first_count, rel=1e-6, abs=1e-9)
            assert (body["width"], body["height"]) == displayed_size(path)
            pts = np.array(body["points"], dtype=np.float64).reshape(-1, 2)
            np.testing.assert_allclose(pts, expected.points, atol=0.0051)  # served rounded to 0.01 px
            if variant == "localization":
                assert len(pts) == round(expected.count)
                assert (pts >= 0).all() and (pts[:, 0] < body["width"]).all() and (pts[:, 1] < body["height"]).all()
            assert len(body["regions"]) == len(expected.regions)
            for got, want in zip(body["regions"], expected.regions):
                assert got["box"] == pytest.approx([want["x"], want["y"], want["w"], want["h"]])
                assert got["scale"] == pytest.approx(want["scale"])
                assert got["count_before"] == pytest.approx(want["count_before"])
                assert got["count_after"] == pytest.approx(want["count_after"])
            assert body["model"] == {"name": "last", "variant": variant, "backbone": "vgg16", "method": "autoscale"}
            assert body["elapsed_ms"] > 0 and body["overlay"] is None
    if variant == "regression":
        assert reference(photos["B_test_IMG_1"]).regions, "the test checkpoint should refine a region on IMG_1"


def test_overlay_png_and_inline(clients, photos):
    path = photos["B_test_IMG_1"]
    client = clients["regression"]
    body = client.post("/v1/count", content=path.read_bytes()).json()
    r = client.post("/v1/count?overlay=png", content=path.read_bytes())
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert float(r.headers["X-Count"]) == body["count"]
    assert float(r.headers["X-First-Pass-Count"]) == body["first_pass_count"]
    overlay = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    photo = np.asarray(Image.open(path).convert("RGB"))
    assert overlay.shape == photo.shape
    assert np.abs(overlay.astype(int) - photo.astype(int)).mean() > 5  # the heat map is blended in
    x, y, w, h = body["regions"][0]["box"]
    cy = int(round(y + h / 2))
    edge = overlay[cy, int(round(x)): int(round(x)) + 2]  # the left edge of the region's box: drawn red
    assert ((edge[:, 0] > 200) & (edge[:, 1] < 90) & (edge[:, 2] < 90)).any(), edge
    inline = client.post("/v1/count?overlay=inline", content=path.read_bytes()).json()
    assert inline["count"] == body["count"]
    head, b64 = inline["overlay"].split(",", 1)
    assert head == "data:image/jpeg;base64"
    small = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert small.format == "JPEG" and small.size == (1024, 768)  # below 1280 px: full size
    assert_error(client.post("/v1/count?overlay=gif", content=path.read_bytes()), 422, "invalid_request")


def test_model_card_health_and_schema(clients, ckpts, tmp_path):
    client = clients["localization"]
    card = client.get("/v1/model").json()
    written = json.loads(ckpts["localization"].with_suffix(".json").read_text())
    assert card["source"] == "model card" and "use" not in card
    assert {k: card[k] for k in ("checkpoint", "variant", "method", "model", "backbone", "steps")} == \
        {k: written[k] for k in ("checkpoint", "variant", "method", "model", "backbone", "steps")}
    assert card["data"]["root"] == Path(written["data"]["root"]).name  # no server path leaves the server
    # Without a model card: what the checkpoint header says.
    bare = tmp_path / "bare.pt"
    shutil.copy(ckpts["localization"], bare)
    header = model_card(bare)
    assert header["source"] == "checkpoint header" and header["checkpoint"] == "bare.pt"
    assert header["variant"] == "localization" and header["steps"] == 2 and header["backbone"] == "vgg16"
    assert header["model"]["name"] == "fpn_localization"

    assert client.get("/healthz").json() == {"status": "ok", "queue": {"pending": 0, "capacity": 16}}
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/v1/count", "/v1/model", "/healthz"}
    props = schema["components"]["schemas"]["CountResponse"]["properties"]
    assert {"count", "first_pass_count", "width", "height", "points", "regions", "model", "elapsed_ms"} <= set(props)
    assert "multipart/form-data" in schema["paths"]["/v1/count"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 404  # Swagger UI would load scripts from a CDN: not served
    page = client.get("/")
    assert page.status_code == 200 and 'src="/static/app.js"' in page.text and "http" not in page.text.lower()
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for asset in ("app.js", "style.css"):
        text = client.get(f"/static/{asset}").text
        assert "http://" not in text and "https://" not in text  # nothing loads from elsewhere


# ------------------------------------------------------------------------------ errors
def png_bomb(width: int, height: int) -> bytes:
    """A valid-looking PNG that declares ``width x height`` pixels in a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_uploads_get_one_clear_json_error(clients, ckpts, photos):
    client = clients["regression"]
    photo = photos["B_test_IMG_1"].read_bytes()
    # Not an image -> 415 (raw text, a JSON body, a multipart text file).
    assert_error(client.post("/v1/count", content=b"hello, I am not a photo"), 415, "unsupported_media_type")
    assert_error(client.post("/v1/count", json={"path": "/etc/passwd"}), 415, "unsupported_media_type")
    assert_error(client.post("/v1/count", files={"file": ("notes.txt", b"plain text", "text/plain")}), 415,
                 "unsupported_media_type")
    # Decompression bomb: 100000 x 100000 declared in ~100 bytes -> 400 before decoding.
    body = assert_error(client.post("/v1/count", content=png_bomb(100_000, 100_000)), 400, "too_many_pixels")
    assert "100000x100000" in body["detail"]
    # A truncated photo: header fine, pixels missing -> 400.
    assert_error(client.post("/v1/count", content=photo[:3000]), 400, "invalid_image")
    # Empty body, multipart without a 'file' field, malformed multipart.
    assert_error(client.post("/v1/count", content=b""), 400, "bad_request")
    assert_error(client.post("/v1/count", files={"image": ("a.jpg", photo, "image/jpeg")}), 400, "bad_request")
    assert_error(client.post("/v1/count", content=b"--x\r\nnonsense",
                             headers={"Content-Type": "multipart/form-data; boundary=x"}), 400, "bad_request")
    assert_error(client.get("/v1/count"), 405, "method_not_allowed")
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert client.get("/healthz").json()["queue"]["pending"] == 0  # every refusal left the queue empty


def test_limits_upload_size_and_pixels(ckpts, photos):
    photo = photos["B_test_IMG_1"].read_bytes()  # 1024 x 768 = 786,432 pixels, ~140 kB
    with client_for(ckpts["regression"], max_upload_bytes=100_000, max_pixels=500_000) as client:
        body = assert_error(client.post("/v1/count", content=photo), 413, "payload_too_large")
        assert "0.0953674 MiB" in body["detail"]
        assert_error(client.post("/v1/count", files={"file": ("a.jpg", photo, "image/jpeg")}), 413, "payload_too_large")
        small = io.BytesIO()
        Image.open(photos["B_test_IMG_1"]).save(small, format="JPEG", quality=30)
        assert len(small.getvalue()) < 100_000
        body = assert_error(client.post("/v1/count", content=small.getvalue()), 400, "too_many_pixels")
        assert body["detail"] == ("image declares 1024x768 = 786,432 pixels, above this server's limit of "
                                  "500,000 pixels")


class GatedPredictor(Predictor):
    """A real Predictor whose worker waits for ``gate`` before counting (to hold the queue full)."""

    gate: threading.Event

    def predict_array(self, rgb, name="", **kw):
        assert self.gate.wait(60)
        return super().predict_array(rgb, name, **kw)


def test_full_queue_answers_503_with_retry_after(ckpts, photos):
    pred = Predictor.from_checkpoint(ckpts["regression"], max_side=MAX_SIDE)
    pred.__class__ = GatedPredictor
    pred.gate = threading.Event()
    photo = photos["B_test_IMG_1"].read_bytes()
    app = create_app(pred, card=model_card(ckpts["regression"]), queue_size=2)
    with TestClient(app, base_url=LOCAL) as client:
        answers: list = []
        held = [threading.Thread(target=lambda: answers.append(client.post("/v1/count", content=photo)))
                for _ in range(2)]
        for t in held:
            t.start()
        deadline = time.monotonic() + 30
        while client.get("/healthz").json()["queue"]["pending"] < 2:
            assert time.monotonic() < deadline, "the two held requests never reached the queue"
            time.sleep(0.02)
        refused = client.post("/v1/count", content=photo)
        assert_error(refused, 503, "queue_full")
        assert int(refused.headers["Retry-After"]) >= 1
        pred.gate.set()
        for t in held:
            t.join(60)
        assert [a.status_code for a in answers] == [200, 200]
        assert client.post("/v1/count", content=photo).status_code == 200  # drained: admitted again
        assert client.get("/healthz").json()["queue"]["pending"] == 0


class BrokenPredictor(Predictor):
    def predict_array(self, rgb, name="", **kw):
        raise RuntimeError("simulated fault in the network at /secret/server/path")


def test_internal_error_is_json_without_traceback(ckpts, photos, caplog):
    pred = Predictor.from_checkpoint(ckpts["regression"], max_side=MAX_SIDE)
    pred.__class__ = BrokenPredictor
    with TestClient(create_app(pred), base_url=LOCAL, raise_server_exceptions=False) as client:
        with caplog.at_level(logging.INFO, logger="autoscale.serve"):
            body = assert_error(client.post("/v1/count", content=photos["B_test_IMG_1"].read_bytes()), 500,
                                "internal_error")
    assert "secret" not in body["detail"]
    assert any("RuntimeError" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------ auth, host, origin, logs
def test_token_auth(ckpts, photos, caplog):
    token = "s3cret-token-for-tests-0123456789"
    photo = photos["A_train_IMG_153"].read_bytes()
    with client_for(ckpts["localization"], token=token) as client, \
            caplog.at_level(logging.INFO, logger="autoscale.serve"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"},
                        {"Authorization": f"Bearer {token}x"}):
            r = client.post("/v1/count", content=photo, headers=headers)
            assert_error(r, 401, "unauthorized")
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert_error(client.get("/v1/model", headers=headers), 401, "unauthorized")
        good = {"Authorization": f"Bearer {token}"}
        r = client.post("/v1/count", content=photo, headers=good)
        assert r.status_code == 200
        assert client.get("/v1/model", headers=good).json()["variant"] == "localization"
        assert client.get("/healthz").status_code == 200  # liveness needs no token
        # With a token the Host check is off (the server may sit behind any name).
        assert client.get("/healthz", headers={"Host": "counter.example.org"}).status_code == 200
    expected = Predictor.from_checkpoint(ckpts["localization"], max_side=MAX_SIDE)(photos["A_train_IMG_153"])
    assert r.json()["count"] == pytest.approx(expected.count)
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "autoscale.serve"]
    assert lines and all(token not in ln for ln in lines)


def test_host_and_origin_guards_and_one_log_line_per_request(clients, photos, caplog):
    client = clients["regression"]
    photo = photos["B_test_IMG_1"].read_bytes()
    assert_error(client.get("/healthz", headers={"Host": "attacker.example:8000"}), 400, "bad_host")
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "127.1.2.3:9"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    assert_error(client.post("/v1/count", content=photo, headers={"Origin": "https://attacker.example"}), 403,
                 "cross_origin")
    assert client.post("/v1/count", content=photo, headers={"Origin": "http://127.0.0.1"}).status_code == 200
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="autoscale.serve"):
        client.post("/v1/count?overlay=inline", content=photo)
        client.post("/v1/count", content=b"nope")
        client.get("/healthz")
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "autoscale.serve"]
    assert len(lines) == 3, lines
    assert lines[0].startswith("testclient POST /v1/count 200 in=%d out=" % len(photo)) and lines[0].endswith("ms")
    assert " POST /v1/count 415 in=4 " in lines[1] and " GET /healthz 200 in=0 " in lines[2]
    assert all("overlay" not in ln and "\\x" not in ln and len(ln) < 200 for ln in lines)


def test_is_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.4", "10.0.0.1", "example.org", ""]))


# ------------------------------------------------------------------------------ the command
PROBE = """
import json, sys
from autoscale.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules, "fastapi": "fastapi" in sys.modules}), file=sys.stderr)
"""


def test_cli_help_is_light_and_refuses_unsafe_or_bad_setups(ckpts, tmp_path, capsys, monkeypatch):
    proc = subprocess.run([sys.executable, "-c", PROBE, "serve", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"rc": 0, "torch": False, "fastapi": False}
    assert "--max-upload-mb" in proc.stdout and "--token-file" in proc.stdout
    monkeypatch.delenv("AUTOSCALE_TOKEN", raising=False)
    ck = str(ckpts["regression"])
    cases = [
        (["--host", "0.0.0.0"], "is not a loopback address"),
        (["--host", "192.168.1.20", "--token", "  "], "the token is empty"),
        (["--token", "a", "--token-file", str(tmp_path / "t")], "give the token one way"),
        (["--token-file", str(tmp_path / "missing")], "cannot read the token file"),
    ]
    for extra, message in cases:
        assert main(["serve", "--checkpoint", ck, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("autoscale: error: ") and message in err[0], err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["serve", "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ckpt: Path, *args: str, timeout: float = 90) -> tuple[subprocess.Popen, str]:
    """``autoscale serve`` as a subprocess on a free loopback port; returns (process, base URL)."""
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "autoscale", "serve", "--checkpoint", str(ckpt), "--port",
                             str(port), "--max-side", str(MAX_SIDE), "--threads", "1", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"autoscale serve did not start: {proc.communicate()[0][-2000:]}")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        return proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


def test_real_server_stops_reading_an_oversized_streamed_upload(ckpts):
    """A chunked upload without Content-Length is cut off at the limit: 413 arrives while the
    client is still sending, long before its 64 MiB are through."""
    proc, url = start_server(ckpts["regression"], "--max-upload-mb", "1")
    port = int(url.rsplit(":", 1)[1])
    sent = 0
    reply = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/count HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n" % 65536 + b"\xff" * 65536 + b"\r\n"
            s.settimeout(2)
            while sent < 64 * 2**20:
                if select.select([s], [], [], 0)[0]:  # the server answered: stop sending
                    break
                try:
                    s.sendall(chunk)
                except OSError:  # timeout (the server stopped reading) or reset
                    break
                sent += 65536
            s.settimeout(10)
            try:
                while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                    data = s.recv(65536)
                    if not data:
                        break
                    reply += data
            except OSError:
                pass
    finally:
        log = stop_server(proc)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:300]
    assert json.loads(body)["error"] == "payload_too_large"
    assert sent < 16 * 2**20, f"the client could send {sent} bytes before the refusal"
    assert "POST /v1/count 413" in log
