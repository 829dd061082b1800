"""Smoke test of benchmarks/bench_serve.py (``--smoke``: a width-1/16 VGG16 checkpoint served by a
real ``autoscale serve`` process, a handful of requests at concurrency 1 and 3 and an overload of 6
clients on a queue of 2). Its figures are checked against values recomputed here: the served
counts against ``Predictor`` on the same photo bytes, the status tallies, the percentiles' order."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="autoscale serve needs the [serve] extra (python3 dev.py test installs it)")

from autoscale.predict import Predictor  # noqa: E402
from conftest import SHARED_DATA  # noqa: E402


def test_bench_serve_smoke(load_bench, tmp_path):
    if not (SHARED_DATA / "shanghaitech" / "part_B" / "test_data" / "images").is_dir():
        pytest.skip(f"ShanghaiTech B photos not found under {SHARED_DATA}")
    bench = load_bench("bench_serve")
    out, work = tmp_path / "out", tmp_path / "work"
    res = bench.main(["--smoke", "--out", str(out), "--work", str(work), "--quiet"])
    assert json.loads((out / "serve.json").read_text()) == res
    md = (out / "serve.md").read_text()
    assert md.count("| vgg16_tiny |") == 4  # three levels + the memory row

    m = res["models"]["vgg16_tiny"]
    kinds = [(lv["kind"], lv["concurrency"]) for lv in m["levels"]]
    assert kinds == [("load", 1), ("load", 3), ("overload", 6)]
    for lv in m["levels"]:
        assert lv["n_connection_failures"] == 0
        assert set(lv["by_status"]) <= {"200", "503"}, lv["by_status"]  # every request answered, 200 or 503
        assert sum(lv["by_status"].values()) == lv["answered"] == lv["requests_sent"] == lv["requests_planned"]
        assert lv["retry_after_present"] and lv["consistent_counts"]
        lat = lv["latency_ms"]
        assert lat["n"] == lv["by_status"].get("200", 0) and lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert lv["throughput_rps"] == pytest.approx(lat["n"] / lv["wall_s"], rel=0.02)
    assert m["levels"][0]["by_status"] == {"200": 6}  # one client never meets a full queue of 2
    assert m["health_after"] == {"status": "ok", "queue": {"pending": 0, "capacity": 2}}
    mem = m["memory_mib"]
    assert 50 < mem["before"]["VmHWM"] <= mem["after"]["VmHWM"] and mem["after"]["VmRSS"] > 0
    assert mem["vmhwm_growth"] == pytest.approx(mem["after"]["VmHWM"] - mem["before"]["VmHWM"], abs=0.11)

    # The served counts are the Predictor's on the same photo bytes (the server used --max-side 128).
    photos = dict(bench.load_photos(2, (128, 96)))
    assert list(photos) == res["config"]["photo_names"] == ["IMG_1.jpg", "IMG_2.jpg"]
    predictor = Predictor.from_checkpoint(work / "vgg16_tiny.pt", max_side=128)
    served = {}
    for lv in m["levels"]:
        for name, count in lv["counts"].items():
            served.setdefault(name, set()).add(count)
    assert set(served) == set(photos)
    for name, data in photos.items():
        expected = predictor(Image.open(io.BytesIO(data))).count
        assert len(served[name]) == 1 and served[name].pop() == pytest.approx(expected, rel=1e-6), name
