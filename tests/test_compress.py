"""compress.py: the pipeline as one resumable command (kronygpt/pipeline.py), on a tiny Llama in smoke sizes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from kronygpt.errors import ConfigError
from kronygpt.pipeline import CompressConfig, fraction, pairs


def test_sizes_read_as_fractions_or_counts():
    assert fraction("0.8") == ("fraction", 0.8)
    assert fraction("108M") == ("count", 108_000_000)
    assert fraction("distilgpt2") == ("count", 81_912_576)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        fraction("1.5")


@pytest.mark.parametrize("field,value,match", [("method", "magic", "--method must be one of"),
                                               ("size", "2", "--size"), ("out", "", "--out DIRECTORY"),
                                               ("steps", -1, "--steps must be >= 0"),
                                               ("format", "dense", "--format factored")])
def test_bad_settings_are_refused_before_any_work(field, value, match):
    cfg = CompressConfig(out="x")
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=match):
        cfg.validate()


def test_method_options_become_kron_decomp_settings():
    assert pairs(["--init", "fisher", "--allocate", "--scope", "blocks"]) == [("init", "fisher"), ("allocate", "True"),
                                                                              ("scope", "blocks")]


def argv(model, data, out):
    return [sys.executable, os.path.join(REPO, "compress.py"), "--model", model, "--size", "0.8", "--out", str(out),
            "--data", data, f"--suite_data=shakespeare={data},milton={data},pydoc=,teacher={data}", "--facts=False",
            "--calib_tokens", "512", "--fisher_tokens", "256", "--fit_tokens", "512", "--fit_steps", "3",
            "--steps", "6", "--batch_size", "2", "--block_size", "32", "--eval_tokens", "512", "--device", "cpu"]


def finished_run(out):
    rows = {r["model"]: r for r in json.loads((out / "eval.json").read_text())}
    weights = torch.load(out / "recover" / "last.pt", map_location="cpu", weights_only=True)["model"]
    return rows, weights


@pytest.mark.slow
def test_compress_end_to_end_and_a_stop_at_any_stage_changes_nothing(tiny_llama_dir, tiny_data_dir, tmp_path):
    """The whole pipeline on a tiny Llama: every stage's output, a report, an export that transformers loads; then
    runs stopped by SIGTERM at different moments and run again end with the same evaluation and weights."""
    env = {**os.environ, "KRONY_PROGRESS": "0"}
    full = tmp_path / "full"
    r = subprocess.run(argv(tiny_llama_dir, tiny_data_dir, full), cwd=REPO, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("dense.pt", "decomposed.pt", "decomposed.json", "fit/fitted.pt", "recover/last.pt", "baseline.pt",
                 "eval.json", "report.md", "hf/config.json"):
        assert (full / name).exists(), name
    report = (full / "report.md").read_text()
    assert "| compressed, 6 recovery steps |" in report and "layer drop" in report
    rows, weights = finished_run(full)
    assert rows["compressed, zero-shot"]["params"] < 0.85 * rows["dense"]["params"]
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(full / "hf", trust_remote_code=True)
    assert sum(p.numel() for p in hf.parameters()) > 0
    again = subprocess.run(argv(tiny_llama_dir, tiny_data_dir, full), cwd=REPO, capture_output=True, text=True,
                           env=env, timeout=600)
    assert again.returncode == 0 and "layer-wise fitting" not in again.stdout  # every stage's output reused
    seen = set()
    for delay in (4.0, 7.0, 10.0):
        out = tmp_path / f"stopped_{delay:g}"
        p = subprocess.Popen(argv(tiny_llama_dir, tiny_data_dir, out), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
        time.sleep(delay)
        p.send_signal(signal.SIGTERM)
        log, _ = p.communicate(timeout=300)
        seen.add(p.returncode)
        r = subprocess.run(argv(tiny_llama_dir, tiny_data_dir, out), cwd=REPO, capture_output=True, text=True,
                           env=env, timeout=600)
        assert r.returncode == 0, log[-2000:] + r.stdout[-2000:] + r.stderr[-2000:]
        rows_again, weights_again = finished_run(out)
        for name, row in rows.items():
            for k, v in row.items():
                if isinstance(v, float):
                    assert rows_again[name][k] == pytest.approx(v, abs=1e-5), (delay, name, k)
        for k, v in weights.items():
            torch.testing.assert_close(weights_again[k], v, rtol=0, atol=1e-6, msg=k)
    assert seen - {0}, "no run was stopped: the delays are longer than the whole pipeline"


def test_width_fit_narrows_every_mlp_and_fits_it(tiny_llama_dir, tiny_data_dir, tmp_path):
    """--method width_fit: MLPs narrowed to the size (no factorised matrix anywhere), then every block fitted to the
    dense one; the fitted model is the zero-shot row, smaller than the dense one."""
    from kronygpt.checkpoint import load_model
    from kronygpt.pipeline import compress
    cfg = CompressConfig(model=tiny_llama_dir, size="0.8", out=str(tmp_path), method="width_fit", data=tiny_data_dir,
                         suite_data=f"shakespeare={tiny_data_dir},milton=,pydoc=,teacher=", facts=False,
                         calib_tokens=512, fisher_tokens=256, fit_tokens=512, fit_steps=3, steps=0, baseline=False,
                         block_size=32, eval_tokens=512, device="cpu")
    cfg.validate()
    _, rows, _, _ = compress(cfg, log=lambda s: None)
    fitted = load_model(str(tmp_path / "fit" / "fitted.pt"))
    dense = load_model(str(tmp_path / "dense.pt"))
    assert not fitted.config.plan.layers and fitted.config.mlp_hidden < dense.config.mlp_hidden
    fit = [json.loads(line) for line in open(tmp_path / "fit" / "log.jsonl")]
    assert len(next(r for r in fit if r["type"] == "layerwise")["layers"]) == dense.config.n_layer
    by_name = {r["model"]: r for r in rows}
    assert by_name["compressed, zero-shot"]["params"] < 0.85 * by_name["dense"]["params"]
