"""Every experiment script, bench.py and plot.py run end to end in smoke mode (figures printed, not asserted)."""

import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.parametrize("name", ["inits", "factors", "freezing", "distill_modes"])
def test_experiment_smoke(name, tiny_data_dir, tmp_path):
    extra = ["--seconds=2"] if name == "distill_modes" else ["--steps=4"]
    r = subprocess.run([sys.executable, os.path.join(REPO, "experiments", f"{name}.py"), "--smoke",
                        f"--data={tiny_data_dir}", f"--out={tmp_path}", *extra],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / f"{name}.md").read_text().count("|") > 10
    assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_smollm2_experiment_smoke(tiny_llama_dir, tiny_data_dir, tmp_path):
    """The SmolLM2 flagship script end to end on a tiny random Llama (same code path as the real GGUF)."""
    r = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "smollm2.py"), "--smoke",
                        f"--model={tiny_llama_dir}", f"--data={tiny_data_dir}", f"--out={tmp_path}", "--steps=2",
                        "--train=vl_norm,prune"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    table = (tmp_path / "smollm2.md").read_text()
    assert table.count("\n| ") == 7  # header + 6 plans
    assert "(32,64)x(3,1)" in table and "(48,8)x(2,8)" in table


def test_bench_smoke():
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench.py"), "--smoke"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Models:" in r.stdout and "Layers:" in r.stdout
