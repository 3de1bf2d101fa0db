"""The pictures of the documentation are made by commands (issue 16).

* ``python -m cybn --plot FILE``: the demo's training curves, with and without batch norm;
* ``python benchmarks/compare.py --chart FILE`` (or ``--from-json RUN.json --chart FILE``):
  the benchmark's ratios.

Both need matplotlib (the ``plot`` extra; the ``test`` extra installs it). The images are
checked as images: a PNG that matplotlib reads back, of the size the code asks for, with
more than one colour in it.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cybn import _demo

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "benchmarks" / "compare.py"


def _read_png(path):
    image = pytest.importorskip("matplotlib.image", reason="matplotlib reads the PNG back")
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    # a blank canvas has one colour; curves, bars and text make many
    assert len(np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)) > 50
    return pixels


@pytest.mark.slow
def test_demo_plot_writes_the_training_curves(tmp_path, capsys):
    pytest.importorskip("sklearn", reason='the demo trains on scikit-learn\'s digits')
    out = tmp_path / "curves.png"
    assert _demo.main(["--epochs", "2", "--plot", str(out)]) == 0
    assert f"training curves written to {out}" in capsys.readouterr().out
    pixels = _read_png(out)
    assert pixels.shape[:2] == (396, 990)  # figsize (9, 3.6) inches at 110 dpi


def test_demo_plot_without_matplotlib_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    out = tmp_path / "curves.png"
    assert _demo.main(["--epochs", "1", "--plot", str(out)]) == 1
    captured = capsys.readouterr()
    assert 'pip install "cybn[plot]"' in captured.err
    assert "MLP" not in captured.out   # refused before training, not after
    assert not out.exists()


def _compare(*args, cwd):
    proc = subprocess.run([sys.executable, str(COMPARE), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_benchmark_chart_from_a_run_and_from_its_json(tmp_path):
    if not COMPARE.exists():
        pytest.fail(f"{COMPARE} is missing: benchmarks/ belongs next to tests/")
    pytest.importorskip("matplotlib", reason="the chart is drawn with matplotlib")
    run_json, chart, again = tmp_path / "run.json", tmp_path / "chart.png", tmp_path / "b.png"
    # The smallest run: two tiny cases, one thread, no torch or compiled SoL needed.
    proc = _compare("--shapes", "2x3,32x64", "--dtypes", "float32", "--threads", "1",
                    "--no-sol", "--no-torch", "--repeat", "3", "--json", str(run_json),
                    "--chart", str(chart), cwd=tmp_path)
    assert "# cybn benchmark" in proc.stdout
    saved = json.loads(run_json.read_text())
    assert len(saved["runs"]) == 1 and len(saved["runs"][0]) == 2 and saved["meta"]["date"]
    _read_png(chart)
    # Redrawn from the saved run without timing anything: the same report and picture.
    proc2 = _compare("--from-json", str(run_json), "--chart", str(again), cwd=tmp_path)
    assert proc2.stdout.splitlines()[:3] == proc.stdout.splitlines()[:3]
    assert again.read_bytes() == chart.read_bytes()


def test_chart_rows_take_the_largest_thread_count():
    sys.path.insert(0, str(COMPARE.parent))
    try:
        import compare
    finally:
        sys.path.remove(str(COMPARE.parent))
    tm = {"cybn": {"median_ns": 50.0}, "torch": {"median_ns": 100.0},
          "numpy": {"median_ns": 200.0}}
    results = [{"spec": {"shape": [4, 8], "dtype": "float32", "threads": t},
                "ops": {"bwd": tm}} for t in (1, 2)]
    results.append({"spec": {"shape": [9, 9], "dtype": "float64", "threads": 2},
                    "error": "boom"})
    rows, threads = compare._chart_rows(results, {"t_all": 2})
    assert threads == 2
    assert rows == [{"label": "(4, 8) f32", "op": "bwd",
                     "ratios": {"torch": 0.5, "numpy": 0.25, "sol": None}}]
