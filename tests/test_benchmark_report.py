"""benchmarks/compare.py writes the benchmark documentation from runs (issue 17, item 4).

Several full runs are combined into one table (the median of the runs' medians, the
median and range of their same-process ratios); ``--update-docs`` writes the report into
docs/benchmarks.md and the summary into the README between markers, and refuses fewer than
three runs or a subset of the default cases. The combination is checked on made-up timings
whose medians and ratios are known; the documents are checked to hold the markers and, where
they are, a generated table (never a hand-edited one).
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "benchmarks" / "compare.py"


@pytest.fixture(scope="module")
def compare():
    if not COMPARE.exists():
        pytest.fail(f"{COMPARE} is missing: benchmarks/ belongs next to tests/")
    sys.path.insert(0, str(COMPARE.parent))
    try:
        import compare as module
    finally:
        sys.path.remove(str(COMPARE.parent))
    return module


def _run(cybn_ns, torch_ns, shape=(4, 8)):
    return [{"spec": {"shape": list(shape), "dtype": "float32", "threads": 2},
             "ops": {"bwd": {"cybn": {"median_ns": cybn_ns, "q1_ns": cybn_ns,
                                      "q3_ns": cybn_ns, "err": 1e-7, "ok": True},
                             "torch": {"median_ns": torch_ns, "q1_ns": torch_ns,
                                       "q3_ns": torch_ns}}}}]


def test_combine_takes_medians_and_same_run_ratios(compare):
    runs = [_run(50.0, 100.0), _run(90.0, 100.0), _run(60.0, 300.0)]
    (res,) = compare._combine(runs)
    tm = res["ops"]["bwd"]
    assert tm["cybn"]["median_ns"] == 60.0 and tm["torch"]["median_ns"] == 100.0
    assert (tm["cybn"]["q1_ns"], tm["cybn"]["q3_ns"]) == (50.0, 90.0)
    # same-run ratios 0.5, 0.9, 0.2: median 0.5 (the ratio of the medians would be 0.6)
    assert sorted(tm["cybn"]["ratio_runs"]["torch"]) == [0.2, 0.5, 0.9]
    assert compare._ratio(tm, "cybn", "torch") == 0.5
    assert compare._ratio_cell(tm, "cybn", "torch") == "0.50 (0.20-0.90)"
    assert res["runs"] == 3


def test_combine_keeps_a_failed_check_and_a_failed_case(compare):
    bad = _run(50.0, 100.0)
    bad[0]["ops"]["bwd"]["cybn"].update(ok=False, err=1e-2)
    (res,) = compare._combine([_run(50.0, 100.0), bad, _run(50.0, 100.0)])
    assert res["ops"]["bwd"]["cybn"]["ok"] is False
    assert res["ops"]["bwd"]["cybn"]["err"] == 1e-2
    failed = [{"spec": _run(1, 1)[0]["spec"], "error": "boom"}]
    (res,) = compare._combine([_run(50.0, 100.0), failed, _run(50.0, 100.0)])
    assert res["error"] == "boom"


def test_summary_ranges_over_size_classes(compare):
    small = _run(50.0, 100.0, shape=(4, 8))[0]                   # 128 B
    large = _run(300.0, 1000.0, shape=(8192, 1024))[0]           # 32 MiB
    meta = {"t_all": 2, "runs": 3, "date": "2026-12-07", "cpu": "cpu", "cybn_kernels": "avx2",
            "torch": "2.13.0", "torch_note": ""}
    text = compare._summary([small, large], meta)
    assert "| < 64 KiB | backward | 0.50 | — | — |" in text
    assert "| 32-128 MiB | backward | 0.30 | — | — |" in text
    assert "Median of 3 full runs" in text


def test_update_docs_refuses_fewer_than_three_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(COMPARE), "--runs", "2", "--update-docs"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2
    assert "at least 3 full runs" in proc.stderr
    proc = subprocess.run([sys.executable, str(COMPARE), "--runs", "3", "--quick",
                           "--update-docs"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2
    assert "full default cases" in proc.stderr


def test_documents_hold_the_generated_blocks(compare):
    for path, name in ((compare.DOCS, "report"), (compare.README, "summary")):
        text = Path(path).read_text(encoding="utf-8")
        begin = compare._MARK.format(name, "begin")
        end = compare._MARK.format(name, "end")
        assert text.count(begin) == 1 and text.count(end) == 1, (path, name)
        block = text.split(begin)[1].split(end)[0]
        if name == "summary":
            assert "Median of" in block and "full runs" in block
        else:
            assert "full runs, one after another" in block   # a report of several runs
