"""Every experiment script, bench.py and plot.py run end to end in smoke mode (figures printed, not asserted)."""

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import REPO
from kronygpt.plots import read_log

pytestmark = pytest.mark.slow  # whole experiments in smoke mode: minutes


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


def test_flagship_smoke(tiny_llama_dir, tiny_data_dir, tmp_path):
    """The flagship study end to end on a tiny Llama: the pipelines (fisher allocation over the MLPs, or over
    whole blocks at a given rate; layer-wise fit) and the truncation baseline with its learning-rate sweep;
    the report lists commands, not their output, and is rewritten from finished runs alone."""
    def flagship(*argv):
        r = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "flagship.py"), "--smoke",
                            f"--model={tiny_llama_dir}", f"--data={tiny_data_dir}", f"--out={tmp_path}", "--steps=2",
                            "--sweep_steps=1", "--rows=pipeline,pipeline_blocks,truncate", *argv], cwd=REPO,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        md = (tmp_path / "flagship.md").read_text()
        table = md.split("## Greedy completions")[0]
        return md, {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}

    md, rows = flagship("--given_lr=pipeline_blocks=1e-3")
    for key in ("pipeline", "pipeline_blocks", "truncate"):
        assert key in rows and "not run yet" not in rows[key], md
    assert "fitted" in rows["pipeline"] and "fitted" in rows["pipeline_blocks"]  # decomposed -> fitted
    assert "rate given" in rows["pipeline_blocks"] and "1e-3:" in rows["truncate"]  # given rate vs its sweep
    commands = md.split("## Commands")[1].strip().strip("`").strip().splitlines()
    assert commands and all(c.startswith("$ ") for c in commands), commands[:3]
    # every row reused in an out dir without a command log (runs copied from elsewhere): the report still
    # comes out (this once raised FileNotFoundError)
    os.remove(tmp_path / "commands.log")
    md_again, rows_again = flagship("--given_lr=pipeline_blocks=1e-3", "--report_only")
    assert rows_again == rows


def test_calibrated_smoke(tiny_data_dir, tmp_path):
    """The calibrated-decomposition table on a tiny GPT, two rows: decomposition and layer-wise fitting."""
    r = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "calibrated.py"), "--smoke",
                        f"--data={tiny_data_dir}", f"--out={tmp_path}", "--rows=current vl,lowrank fisher"],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [line for line in (tmp_path / "calibrated.md").read_text().splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in lines[1:]] == ["current vl", "lowrank fisher"]  # after the header


def test_bench_smoke():
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench.py"), "--smoke"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Models:" in r.stdout and "Layers:" in r.stdout


def test_bench_models_in_parts(tmp_path):
    """A model benchmark measured in parts, as GPU calls allow: the dense row from an earlier --json (reused, not
    rerun), only the workloads asked for (the others nan), each row saved as it finishes; a dense row of other
    settings is refused in one sentence."""
    import json
    import math
    bench = [sys.executable, os.path.join(REPO, "bench.py"), "--mode=models", "--smoke"]
    first, second = tmp_path / "dense.json", tmp_path / "rest.json"
    r = subprocess.run([*bench, f"--json={first}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*bench, f"--dense_from={first}", "--workloads=train", f"--json={second}"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    dense, rows = json.loads(first.read_text())["models"][0], json.loads(second.read_text())["models"]
    assert rows[0]["train_tok_s"] == dense["train_tok_s"] and rows[0]["seconds"] == dense["seconds"]
    assert len(rows) == 3 and all(r["train_tok_s"] > 0 and math.isnan(r["prefill_tok_s"]) for r in rows[1:])
    assert all(math.isnan(v) for v in rows[1]["gen_tok_s"].values())
    r = subprocess.run([*bench, f"--dense_from={first}", "--dtype=bfloat16"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "measured with other settings" in r.stderr + r.stdout


def test_experiment_reuses_a_finished_teacher_and_resumes_an_interrupted_one(tmp_path, monkeypatch):
    # a rerun of an experiment once trained its teacher again from scratch, overwriting the one the finished
    # rows were decomposed from
    import argparse
    import json
    sys.path.insert(0, os.path.join(REPO, "experiments"))
    from common import Experiment
    args = argparse.Namespace(smoke=True, out=str(tmp_path), data="unused", teacher="unused")
    ex = Experiment("x", args)
    runs = []
    monkeypatch.setattr(ex, "run", lambda script, *argv: runs.append(argv))
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "last.pt").write_bytes(b"")
    log = [{"type": "start", "config": {"max_iters": 6}}, {"type": "eval", "iter": 3}]
    (teacher / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    ex.teacher()  # interrupted at iteration 3: resumed
    assert len(runs) == 1 and "--init_from=resume" in runs[0]
    log.append({"type": "eval", "iter": 6})
    (teacher / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (teacher / "best.pt").write_bytes(b"")
    assert ex.teacher() == str(teacher / "best.pt") and len(runs) == 1  # finished: reused, not retrained


def test_general_rows_train_on_their_data():
    """Every kd_mix row trains on the mixture whatever its start (kd_mix_bcal once fell through to the training
    corpus), every kd_broad row on the broader mixture with the technical teacher text, kd_teacher on teacher
    text, the others on the training corpus."""
    sys.path.insert(0, os.path.join(REPO, "experiments"))
    import general
    study = general.General.__new__(general.General)
    study.args = SimpleNamespace(data="shakespeare", teacher_data="teacher", technical_data="tech")
    mix, broad = "shakespeare:0.5,teacher:0.5", "shakespeare:0.4,teacher:0.3,tech:0.3"
    for key in general.ALL_ROWS:
        want = (mix if key.startswith("kd_mix") else broad if key.startswith("kd_broad") else
                "teacher" if key == "kd_teacher" else "shakespeare")
        assert study.data_of(key) == want, key
    assert sum(k.startswith("kd_mix") for k in general.ALL_ROWS) >= 4 and "kd_broad_bxcal" in general.ALL_ROWS
    # kd_mix_bxcal: kd_broad_bxcal's start, kd_mix's data
    assert general.CALIBRATED_ON["kd_mix_bxcal"] == general.CALIBRATED_ON["kd_broad_bxcal"] == "bxcal"
    assert study.data_of("kd_mix_bxcal") == mix != study.data_of("kd_broad_bxcal")


def test_general_hidden_row_adds_block_outputs_to_its_twin():
    """kd_mix_bmcal_hid is kd_mix_bmcal (the same start, data and distillation loss) with the relative hidden-state
    loss added: the recipes differ by exactly those options, and no other row carries them."""
    sys.path.insert(0, os.path.join(REPO, "experiments"))
    import general
    study = general.General.__new__(general.General)
    study.args, study.model = SimpleNamespace(data="shakespeare", teacher_data="teacher", technical_data="tech"), "m"
    script, hid = study.recipe("kd_mix_bmcal_hid")
    assert script == "train_distillation.py" and study.recipe("kd_mix_bmcal") == (script, hid[:-2])
    assert hid[-2:] == ["--hidden_weight=10", "--hidden_loss=relative"]
    assert general.CALIBRATED_ON["kd_mix_bmcal_hid"] == general.CALIBRATED_ON["kd_mix_bmcal"] == "bmcal"
    assert [k for k in general.ALL_ROWS if any("--hidden" in o for o in study.recipe(k)[1])] == ["kd_mix_bmcal_hid"]


def test_general_study_smoke(tiny_llama_dir, tiny_data_dir, tmp_path):
    """The general-ability study end to end on a tiny Llama: the decomposed start, a cross-entropy row at a
    given rate and a distillation row on a mixture with its sweep, each measured by the general suite; then the
    same from a fresh clone's state (the kept records alone): only what had not finished runs again."""
    argv = [sys.executable, os.path.join(REPO, "experiments", "general.py"), "--smoke", f"--model={tiny_llama_dir}",
            f"--data={tiny_data_dir}", f"--out={tmp_path}", "--steps=2", "--sweep_steps=1",
            "--rows=dense_zeroshot,ce_shakespeare,kd_mix,start_zeroshot", "--given_lr=ce_shakespeare=1e-3"]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    md = (tmp_path / "general.md").read_text()
    rows = {line.split(" | ")[0][2:]: line for line in md.split("## Greedy")[0].splitlines() if line.startswith("| ")}
    assert all(k in rows and "not run yet" not in rows[k] for k in ("dense_zeroshot", "ce_shakespeare", "kd_mix"))
    assert "(given)" in rows["ce_shakespeare"] and "(given)" not in rows["kd_mix"]
    reading = md.split("## Reading")[1].split("![")[0]  # each compressed row against the targets, none for dense
    assert "`kd_mix`: Milton <= 4.70" in reading and "`ce_shakespeare`:" in reading
    assert "`dense_zeroshot`:" not in reading
    suite = json.loads((tmp_path / "kd_mix" / "row.json").read_text())["suite"]
    assert {"shakespeare", "milton", "pydoc", "teacher_loss", "teacher_kl"} <= set(suite)
    # the start's own row is the decomposed model before recovery: its losses are kd_mix's step-0 evals, and the
    # reading splits each column into what the decomposition lost and what recovery won back
    start = json.loads((tmp_path / "start_zeroshot" / "row.json").read_text())["suite"]
    step0 = next(json.loads(line) for line in (tmp_path / "kd_mix" / "run" / "log.jsonl").read_text().splitlines()
                 if '"eval"' in line)
    assert abs(start["shakespeare"] - step0["val_loss"]) < 1e-4, (start, step0)
    assert "What the decomposition lost and what 2 recoveries from `start` won back" in reading

    # a fresh clone: only the kept records (state/general/, committed beside the report) survive, and kd_mix's
    # 2-step run is taken back to its sweep. The finished rows and the sweep are reused, the run is redone
    state = tmp_path / "state" / "general"
    assert list((state / "kd_mix").glob("sweep_*/log.jsonl")) and not list(state.rglob("*.pt"))
    shutil.rmtree(state / "kd_mix" / "run")
    os.remove(state / "kd_mix" / "row.json")
    for p in tmp_path.iterdir():
        if p.name != "state":
            shutil.rmtree(p) if p.is_dir() else os.remove(p)
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ran = [line for line in r.stdout.splitlines() if line.startswith("$ python")]
    assert not any("ce_shakespeare" in c or "sweep_" in c or "dense_zeroshot" in c for c in ran), ran
    assert any("kd_mix/run" in c for c in ran), ran
    md_again = (tmp_path / "general.md").read_text()
    rows_again = {line.split(" | ")[0][2:]: line for line in md_again.split("## Greedy")[0].splitlines()
                  if line.startswith("| ")}
    assert rows_again["ce_shakespeare"] == rows["ce_shakespeare"]
    assert rows_again["dense_zeroshot"] == rows["dense_zeroshot"]


@pytest.mark.parametrize("row", ["ttcal_zeroshot", "bcal_zeroshot", "bmcal_zeroshot", "bxcal_zeroshot"])
def test_general_study_starts_calibrated_on_other_text(row, tiny_llama_dir, tiny_data_dir, tmp_path):
    """ttcal_zeroshot and bcal_zeroshot: starts of their own, measured before any recovery. ttcal is calibrated
    and fitted on the teacher text alone (not the training corpus, not the mixture) with the usual token counts;
    bcal on the mixture with 4x the calibration, gradient and fitting tokens and the fit's steps unchanged; bmcal
    as bcal with the output gradients' targets drawn from the teacher (--fisher_labels=model); bxcal as bmcal on the
    broader mixture (Shakespeare, teacher prose, technical teacher text)."""
    teacher = tmp_path / "teacher_text"
    shutil.copytree(tiny_data_dir, teacher)
    out = tmp_path / "out"
    argv = [sys.executable, os.path.join(REPO, "experiments", "general.py"), "--smoke", f"--model={tiny_llama_dir}",
            f"--data={tiny_data_dir}", f"--teacher_data={teacher}", f"--technical_data={teacher}", f"--out={out}",
            f"--rows={row}"]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ran = [line for line in r.stdout.splitlines() if line.startswith("$ python")]
    name = row.split("_")[0]
    decomp = next(c for c in ran if "kron_decomp.py" in c and f"start_{name}" in c)  # (the first sets the budget)
    fit = next(c for c in ran if "--mode=layerwise" in c)
    data = (str(teacher) if name == "ttcal" else f"{tiny_data_dir}:0.4,{teacher}:0.3,{teacher}:0.3" if name == "bxcal"
            else f"{tiny_data_dir}:0.5,{teacher}:0.5")
    times = 4 if name in ("bcal", "bmcal", "bxcal") else 1
    assert ("--fisher_labels=model" in decomp) == (name in ("bmcal", "bxcal")), decomp
    assert f"--calib={data} " in decomp + " ", decomp
    assert f"--fit_dataset={data} " in fit + " ", fit
    # the smoke scale's counts (common.Study: 256 calibration, 128 gradient and 512 fitting tokens), scaled
    for option, tokens, command in (("calib_tokens", 256, decomp), ("fisher_tokens", 128, decomp),
                                    ("layerwise_tokens", 512, fit)):
        assert f"--{option}={tokens * times} " in command + " ", command
    assert "--layerwise_steps=5 " in fit + " ", fit
    info = json.loads((out / row / "row.json").read_text())
    assert info["init"].endswith(os.path.join(f"start_{name}", "start.pt")) and "teacher_loss" in info["suite"]


def test_families_smoke(tiny_llama_dir, tiny_data_dir, tmp_path):
    """The families study end to end on a tiny Llama: every row decomposed by its families and fitted; the
    table says which family each allocation used; the two trained rows swept, trained from their own fitted
    starts and evaluated on the general suite beside the dense teacher."""
    cmd = [sys.executable, os.path.join(REPO, "experiments", "families.py"), "--smoke", f"--model={tiny_llama_dir}",
           f"--data={tiny_data_dir}", f"--out={tmp_path}", "--steps=2", "--sweep_steps=1", "--lrs=1e-3"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    table = (tmp_path / "families.md").read_text()
    decomposed, trained = table.split("## After 2 recovery steps")
    rows = {line.split(" | ")[0][2:]: line for line in decomposed.splitlines() if line.startswith("| ")}
    assert {"lowrank", "kron", "mixed", "mixed_wide"} <= set(rows), table
    assert "lowrank only" in rows["lowrank"] and "kron" in rows["kron"].split(" | ")[3], table
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in trained.splitlines() if line.startswith("| ")}
    assert {"dense (no training)", "lowrank", "kron"} <= set(rows), trained
    for key in ("lowrank", "kron"):
        log = read_log(tmp_path / f"train_{key}" / "run")
        first, last = next(r for r in log if r["type"] == "start"), [r for r in log if r["type"] == "eval"][-1]
        assert first["config"]["init_from"].endswith(os.path.join(f"fit_{key}", "fitted.pt"))
        assert float(rows[key][5]) == pytest.approx(last["val_loss"], abs=1e-4)
    r = subprocess.run(cmd + ["--rows=lowrank"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode != 0 and "--train names ['kron']" in r.stderr

    # a fresh clone from the kept state (results/state/families/ in a full run), with kron's recovery run taken
    # back: nothing is decomposed, fitted or trained again but that row, which needs its fitted checkpoint
    state = tmp_path / "state" / "families"
    assert (state / "lowrank.json").is_file() and not list(state.rglob("*.pt"))
    shutil.rmtree(state / "train_kron" / "run")
    os.remove(state / "train_kron" / "suite.json")
    for p in tmp_path.iterdir():
        if p.name != "state":
            shutil.rmtree(p) if p.is_dir() else os.remove(p)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ran = [line for line in r.stdout.splitlines() if line.startswith("$ python")]
    assert all("kron.pt" in c or "fit_kron" in c or "train_kron" in c for c in ran), "\n".join(ran)
    assert any("kron_decomp.py" in c for c in ran) and any("train_kron/run" in c for c in ran), ran
    again = (tmp_path / "families.md").read_text().split("## After 2 recovery steps")
    assert again[0].split("| row |")[1] == decomposed.split("| row |")[1]  # the decomposition table, unchanged
    line = {ln.split(" | ")[0][2:]: ln for ln in again[1].splitlines() if ln.startswith("| ")}
    assert line["lowrank"] == next(ln for ln in trained.splitlines() if ln.startswith("| lowrank |"))


def test_sums_study_runs_and_reuses_finished_blocks(tiny_llama_dir, tiny_data_dir, tmp_path):
    """experiments/sums.py on a tiny Llama: every matrix and budget gets a row with low rank, a near-low-rank
    (2x1) and a balanced (4x4) Kronecker shape and their sums; a rerun reuses the finished blocks."""
    argv = [sys.executable, os.path.join(REPO, "experiments", "sums.py"), "--model", tiny_llama_dir, "--data",
            tiny_data_dir, "--blocks", "0,1", "--budgets", "0.4,0.6", "--shapes", "2x1,4x4", "--calib_tokens", "512",
            "--state", str(tmp_path / "state"), "--calib_cache", str(tmp_path / "calib.pt"),
            "--out", str(tmp_path / "sums.md")]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "block 1 done" in r.stdout
    report = (tmp_path / "sums.md").read_text()
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| ") and " 0.40 | " in line]
    assert len(rows) == 3 * 5  # three tables (errors, compute, uncalibrated) x a block's five matrices (q, k, v fused)
    errors = [row for row in rows if len(row) == 9]
    for row in errors:
        lowrank = float(row[2])
        assert 0 < lowrank < 1, row
        assert all(c == "-" or float(c) > 0 for c in row[3:8]), row
    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "done" not in again.stdout.replace("wrote", ""), again.stdout
    assert (tmp_path / "sums.md").read_text().split("## Compute")[0].split("\n", 9)[-1] == \
        report.split("## Compute")[0].split("\n", 9)[-1]


def test_frontier_smoke(tiny_llama_dir, tiny_data_dir, tmp_path):
    """The frontier study end to end on a tiny Llama: the peers and this repo's rows at one size, the recovered
    rows (sweep and training through train_distillation.py), the speed pass, the report and its plot; a second
    run reuses every finished row."""
    def frontier(*argv):
        r = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "frontier.py"), "--smoke",
                            f"--model={tiny_llama_dir}", f"--data={tiny_data_dir}", f"--out={tmp_path}", "--steps=2",
                            "--sweep_steps=1", "--lrs=1e-3", "--sizes=0.6", *argv], cwd=REPO,
                           capture_output=True, text=True, timeout=2400)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout
    frontier("--recover", "--speed")
    md = (tmp_path / "frontier.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    methods = {line.split(" | ")[0][2:] for line in rows}
    assert {"dense", "svd", "svdllm", "asvd", "fwsvd", "layerdrop", "width", "width_obs", "alloc", "krony",
            "width_fit", "width_alloc", "width_alloc_fit", "lowrank_width", "lowrank_width_fit"} <= methods
    assert any("recovered 2" in line for line in rows)
    assert (tmp_path / "frontier.png").stat().st_size > 1000
    assert json.loads((tmp_path / "frontier_speed.json").read_text())["models"]
    again = frontier("--recover")
    assert "kron_decomp.py" not in again and "eval.py" not in again  # every row reused


def test_gpu_window_plan_smoke(tmp_path):
    """scripts/gpu_window.py's whole plan on the CPU in smoke mode: every row's process and JSON, eager rows before
    compiled ones, a second call skipping the finished rows, a row that does not fit the budget left for later."""
    script = os.path.join(REPO, "scripts", "gpu_window.py")
    r = subprocess.run([sys.executable, script, "--smoke", "--out", str(tmp_path), "--budget", "2000", "--eager_only"],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    eager = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(eager) == 9 and not any("compiled" in n for n in eager), eager
    assert "remaining plan: smollm2_dense (compiled), smollm2_mix060 (compiled)" in r.stdout
    again = subprocess.run([sys.executable, script, "--smoke", "--out", str(tmp_path), "--budget", "3"], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "== smollm2_dense\n" not in again.stdout  # finished rows skipped
    assert "next call" in again.stdout  # 3 s left: no compiled row started
