"""NWPU file formats and ``autoscale eval-points``: known answers from the official scorers."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscale.cli import main as cli_main
from autoscale.errors import DataError
from autoscale.metrics.nwpu import (
    LocGT,
    read_counts,
    read_loc_gt,
    read_loc_pred,
    read_nwpu_meta,
    score_loc,
    write_counts,
    write_loc_gt,
    write_loc_pred,
)


def _run_json(capsys, *argv: str) -> dict:
    assert cli_main(["eval-points", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------- known answers


def test_nwpu_val_known_answers(shared_data):
    ref = shared_data / "eval_reference" / "nwpu_val"
    gt = read_loc_gt(ref / "val_gt_loc.txt")
    pred = read_loc_pred(ref / "pred_raz_loc.txt")
    assert len(gt) == 500 and 3098 in gt and 3169 not in gt  # id_std[59] = 3098
    res = score_loc(gt, pred, ["large", "small"])
    expected = {"large": (0.69291, 0.56904, 0.62490), "small": (0.60457, 0.49650, 0.54523)}
    for kind, (p, r, f) in expected.items():
        m = res["loc"][kind]
        assert round(m["precision"], 5) == p and round(m["recall"], 5) == r and round(m["f1"], 5) == f
    c = res["counting"]
    assert c["n"] == 500
    assert c["mae"] == pytest.approx(128.71, abs=5e-5)
    assert c["rmse"] == pytest.approx(665.39, abs=5e-3)
    assert c["nae"] == pytest.approx(0.5082, abs=5e-5)


def test_cli_nwpu_val_large(shared_data, capsys):
    ref = shared_data / "eval_reference" / "nwpu_val"
    out = _run_json(capsys, "--gt", str(ref / "val_gt_loc.txt"), "--pred", str(ref / "pred_raz_loc.txt"),
                    "--sigma", "large")
    assert (round(out["precision"], 5), round(out["recall"], 5), round(out["f1"], 5)) == (0.69291, 0.56904, 0.62490)
    gt = read_loc_gt(ref / "val_gt_loc.txt")
    assert out["tp"] + out["fn"] == sum(len(g.points) for g in gt.values())
    assert round(out["mae"], 2) == 128.71 and round(out["rmse"], 2) == 665.39 and round(out["nae"], 4) == 0.5082


@pytest.mark.parametrize("sigma,expected", [("4", (0.5914, 0.5825, 0.5869)), ("8", (0.7820, 0.7702, 0.7760))])
def test_cli_shanghaitech_a_known_answers(shared_data, capsys, sigma, expected):
    ref = shared_data / "eval_reference" / "shanghaitech_test"
    gt = read_loc_gt(ref / "A_gt.txt")
    assert list(gt)[:3] == [1, 2, 3] and len(gt) == 182  # ids are line numbers (sorted names)
    assert len(gt[2].points) == 502  # line 2 is IMG_10
    out = _run_json(capsys, "--gt", str(ref / "A_gt.txt"), "--pred", str(ref / "A_pred.txt"), "--sigma", sigma)
    assert (round(out["precision"], 4), round(out["recall"], 4), round(out["f1"], 4)) == expected
    assert round(out["mae"], 2) == 57.01 and round(out["rmse"], 2) == 103.36
    assert out["n_images"] == 182


def test_cli_several_sigmas_in_one_call_match_separate_calls(shared_data, capsys):
    """--sigma small large 4 8: one JSON object keyed by sigma, each entry equal to its own call
    (and the published known answers for sigma_s / sigma_l)."""
    ref = shared_data / "eval_reference" / "nwpu_val"
    files = ["--gt", str(ref / "val_gt_loc.txt"), "--pred", str(ref / "pred_raz_loc.txt")]
    many = _run_json(capsys, *files, "--sigma", "small", "large", "4", "8")
    assert list(many) == ["small", "large", "4", "8"]
    for key in many:
        assert many[key] == _run_json(capsys, *files, "--sigma", key)
    assert round(many["small"]["f1"], 5) == 0.54523 and round(many["large"]["f1"], 5) == 0.62490
    assert many["4"]["tp"] < many["8"]["tp"] < many["large"]["tp"]  # wider thresholds match more
    assert cli_main(["eval-points", *files, "--sigma", "small", "large"]) == 0
    text = capsys.readouterr().out
    assert "sigma small" in text and "sigma large" in text and "f1 0.62490" in text


# ---------------------------------------------------------------- CLI behaviour on tiny files


def test_cli_missing_pred_images_count_as_zero(tmp_path, capsys):
    gt = tmp_path / "gt.txt"
    gt.write_text("1 2 0 0 2 4 1 10 0 2 4 1\n2 1 5 5 2 4 1\n")
    pred = tmp_path / "pred.txt"
    pred.write_text("1 1 3 0\n")  # image 2 missing; (3,0) is 3 from GT (0,0): only sigma_l = 4 reaches
    out = _run_json(capsys, "--gt", str(gt), "--pred", str(pred), "--sigma", "large")
    assert (out["tp"], out["fp"], out["fn"]) == (1, 0, 2)
    assert out["mae"] == pytest.approx(1.0) and out["nae"] == pytest.approx((1 / 2 + 1) / 2)
    small = _run_json(capsys, "--gt", str(gt), "--pred", str(pred), "--sigma", "small")
    assert (small["tp"], small["fp"], small["fn"]) == (0, 1, 3)
    fixed = _run_json(capsys, "--gt", str(gt), "--pred", str(pred), "--sigma", "3")
    assert fixed["tp"] == 1  # inclusive: distance 3 <= 3
    assert cli_main(["eval-points", "--gt", str(gt), "--pred", str(pred)]) == 0
    assert "precision" in capsys.readouterr().out


def test_cli_pred_id_not_in_gt_is_an_error(tmp_path, capsys):
    gt = tmp_path / "gt.txt"
    gt.write_text("1 1 0 0 2 4 1\n")
    pred = tmp_path / "pred.txt"
    pred.write_text("1 0\n7 1 3 3\n")
    assert cli_main(["eval-points", "--gt", str(gt), "--pred", str(pred), "--sigma", "small"]) == 2
    err = capsys.readouterr().err
    assert "pred.txt" in err and "7" in err and "not in the ground truth" in err


def test_cli_bad_sigma_is_rejected(tmp_path):
    with pytest.raises(SystemExit):
        cli_main(["eval-points", "--gt", "a", "--pred", "b", "--sigma", "medium"])


# ---------------------------------------------------------------- formats


def test_loc_gt_roundtrip(tmp_path):
    gt = {5: LocGT(np.array([[1.0, 2.0], [3.5, 4.0]]), np.array([2.0, 3.0]), np.array([4.0, 6.0]),
                   np.array([1, 2])),
          6: LocGT(np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64))}
    p = tmp_path / "gt.txt"
    write_loc_gt(p, gt)
    assert p.read_text().splitlines() == ["5 2 1 2 2 4 1 3.5 4 3 6 2", "6 0"]
    back = read_loc_gt(p)
    assert list(back) == [5, 6]
    for k in gt:
        for a, b in zip(gt[k], back[k]):
            np.testing.assert_array_equal(a, b)


def test_pred_write_floor_and_read_floats(tmp_path):
    p = tmp_path / "pred.txt"
    write_loc_pred(p, {3: np.array([[3.7, 0.2], [-0.5, 9.999]]), 4: np.zeros((0, 2))})
    assert p.read_text().splitlines() == ["3 2 3 0 -1 9", "4 0"]
    write_loc_pred(p, {3: np.array([[3.7, 0.2]])}, rounding="round")
    assert p.read_text().splitlines() == ["3 1 4 0"]
    p.write_text("3 2 3.25 0 -1 9.5\n\n")  # floats and a blank line are accepted
    np.testing.assert_array_equal(read_loc_pred(p)[3], [[3.25, 0.0], [-1.0, 9.5]])


@pytest.mark.parametrize("text,line,words", [
    ("1 1 0 0\n2 2 1 1 2\n", 2, "tokens"),  # 2 + 2*2 = 6 expected, 5 found
    ("1 1 0 0\n\n2 1 x 1\n", 3, "not a number"),
    ("1 1 0 0\n1 0\n", 2, "duplicate image id 1"),
    ("1 -1\n", 1, "negative point count"),
    ("1.5 0\n", 1, "not an integer"),
    ("7\n", 1, "expected"),
])
def test_pred_format_errors_name_file_and_line(tmp_path, text, line, words):
    p = tmp_path / "bad_pred.txt"
    p.write_text(text)
    with pytest.raises(DataError) as ei:
        read_loc_pred(p)
    msg = str(ei.value)
    assert "bad_pred.txt" in msg and f"line {line}:" in msg and words in msg


@pytest.mark.parametrize("text,line,words", [
    ("1 1 0 0 2 4\n", 1, "tokens"),  # needs 2 + 5 = 7
    ("1 1 0 0 2 4 1\n2 1 0 0 -2 4 1\n", 2, "negative sigma"),
    ("1 1 0 0 2 4 1.5\n", 1, "non-integer level"),
    ("1 1 0 0 2 nan 1\n", 1, "finite"),
])
def test_gt_format_errors_name_file_and_line(tmp_path, text, line, words):
    p = tmp_path / "bad_gt.txt"
    p.write_text(text)
    with pytest.raises(DataError) as ei:
        read_loc_gt(p)
    msg = str(ei.value)
    assert "bad_gt.txt" in msg and f"line {line}:" in msg and words in msg


def test_missing_file_is_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_loc_gt(tmp_path / "nope.txt")


def test_counts_and_meta_files(tmp_path):
    p = tmp_path / "sub.txt"
    write_counts(p, {3610: 12.25, 3611: 0})
    assert p.read_text().splitlines() == ["3610 12.2500", "3611 0.0000"]
    assert read_counts(p) == {3610: 12.25, 3611: 0.0}
    p.write_text("3610 1\n3610 2\n")
    with pytest.raises(DataError, match="line 2: duplicate"):
        read_counts(p)
    m = tmp_path / "val.txt"
    m.write_text("3110 1 2\n3111 0 0 12.5\n")
    assert read_nwpu_meta(m) == {3110: (1, 2), 3111: (0, 0)}
    m.write_text("3110 1 7\n")
    with pytest.raises(DataError, match="line 1: .*out of range"):
        read_nwpu_meta(m)


# ---------------------------------------------------------------- fast reader and two-process scoring

_WS = st.sampled_from([" ", "  ", "\t", " \t "])


@st.composite
def _integer_point_file(draw, per_point: int) -> tuple[str, dict[int, list[int]]]:
    """An all-integer point file (random spacing, blank lines, LF or CRLF) and what it holds."""
    ids = draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=6, unique=True))
    records, lines = {}, []
    for i in ids:
        n = draw(st.integers(0, 4))
        vals = draw(st.lists(st.integers(0, 2**31 - 1), min_size=n * per_point, max_size=n * per_point))
        records[i] = vals
        sep = draw(_WS)
        lines.append(draw(st.sampled_from(["", " "])) + sep.join(str(v) for v in [i, n, *vals]))
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["", "  ", "\t"])))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    return end.join(lines) + draw(st.sampled_from(["", end])), records


def _general_only(monkeypatch):
    import autoscale.metrics.nwpu as nwpu
    monkeypatch.setattr(nwpu, "_integer_records", lambda data, per_point: None)


def _fast_and_general(tmp_path, monkeypatch, text: str, reader, per_point: int):
    """``reader`` on ``text`` by the fast path (asserted taken) and by the per-token reader."""
    import autoscale.metrics.nwpu as nwpu
    p = tmp_path / "points.txt"
    p.write_bytes(text.encode())
    assert nwpu._integer_records(text.encode(), per_point) is not None
    fast = reader(p)
    with monkeypatch.context() as m:
        _general_only(m)
        return fast, reader(p)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_integer_point_file(5))
def test_fast_gt_reader_equals_the_per_token_reader(tmp_path, monkeypatch, case):
    text, records = case
    fast, slow = _fast_and_general(tmp_path, monkeypatch, text, read_loc_gt, 5)
    assert list(fast) == list(slow) == list(records)
    for k, v in records.items():
        want = np.array(v, dtype=np.float64).reshape(-1, 5)
        np.testing.assert_array_equal(fast[k].points, want[:, :2])
        for a, b in zip(fast[k], slow[k]):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_integer_point_file(2))
def test_fast_pred_reader_equals_the_per_token_reader(tmp_path, monkeypatch, case):
    text, records = case
    fast, slow = _fast_and_general(tmp_path, monkeypatch, text, read_loc_pred, 2)
    assert list(fast) == list(slow) == list(records)
    for k, v in records.items():
        assert fast[k].dtype == slow[k].dtype == np.float64
        np.testing.assert_array_equal(fast[k], np.array(v, dtype=np.float64).reshape(-1, 2))
        np.testing.assert_array_equal(fast[k], slow[k])


@pytest.mark.parametrize("text", [
    "1 1 -3 4\n",            # a sign
    "1 1 3.5 4\n",           # a decimal
    "1 1 3 4\r2 0\n",        # a lone CR is a line break for the per-token reader
    "1 1 3 4\n1 0\n",        # duplicate id (error)
    "1 2 3 4\n",             # too few tokens (error)
    "1 1 1234567890123456 4\n",  # 16 digits
    "1\n",                   # header only (error)
])
def test_fast_reader_leaves_everything_else_to_the_per_token_reader(tmp_path, monkeypatch, text):
    import autoscale.metrics.nwpu as nwpu
    assert nwpu._integer_records(text.encode(), 2) is None
    p = tmp_path / "pred.txt"
    p.write_bytes(text.encode())
    try:
        got = read_loc_pred(p)
    except DataError as exc:
        got = str(exc)
    _general_only(monkeypatch)
    try:
        want = read_loc_pred(p)
    except DataError as exc:
        want = str(exc)
    if isinstance(want, str):
        assert got == want and "pred.txt" in want and "line " in want
    else:
        assert list(got) == list(want) and all(np.array_equal(got[k], want[k]) for k in want)


def test_two_process_scoring_equals_one_process(shared_data):
    ref = shared_data / "eval_reference" / "nwpu_val"
    gt = dict(list(read_loc_gt(ref / "val_gt_loc.txt").items())[:80])
    pred = {k: v for k, v in read_loc_pred(ref / "pred_raz_loc.txt").items() if k in gt}
    one = score_loc(gt, pred, ["small", "large", 8.0], workers=1)
    two = score_loc(gt, pred, ["small", "large", 8.0], workers=2)
    assert one == two
    assert one["loc"]["large"]["tp"] > 0


def test_reading_the_files_does_not_import_the_matcher():
    code = ("import sys, autoscale.metrics.nwpu as n; "
            "print(int(any(m.startswith(('scipy.sparse', 'scipy.spatial', 'torch')) for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0"
