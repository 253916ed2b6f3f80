"""train.py: learning, exact resume, DDP equivalence, freezing, parameter groups, safe checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from kronygpt.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from kronygpt.errors import UserError
from conftest import REPO
from model import GPT, GPTConfig
from kronygpt.trainer import TrainConfig, is_frozen, lr_multiplier, make_optimizer, parse_freeze_schedule

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--eval_tokens=1024",
        "--log_interval=1", "--warmup_iters=2", "--learning_rate=3e-3", "--min_lr=3e-4"]


def args(data, out, *extra):
    return [f"--dataset={data}", f"--out_dir={out}", *TINY, *extra]


def records(out, kind):
    """Records of one type; a last line still being written by a running process is skipped."""
    with open(os.path.join(out, "log.jsonl")) as f:
        lines = [line for line in f if line.endswith("\n")]
    return [r for r in map(json.loads, lines) if r["type"] == kind]


@pytest.mark.parametrize("kron", [[], ["--kron_plan=*: mlp=16x8*2"]])
def test_training_lowers_loss(tiny_data_dir, tmp_path, kron):
    train.main(args(tiny_data_dir, tmp_path, "--max_iters=40", "--eval_interval=40", *kron))
    evals = records(tmp_path, "eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    if kron:
        assert load_checkpoint(tmp_path / "last.pt")["model_args"]["kron_plan"].endswith("*2")


def test_resume_is_exact(tiny_data_dir, tmp_path):
    common = ["--eval_interval=4", "--lr_decay_iters=8", "--dropout=0.1", "--kron_plan=*: mlp=16x8*1"]
    a, b = tmp_path / "a", tmp_path / "b"
    train.main(args(tiny_data_dir, a, "--max_iters=8", *common))
    train.main(args(tiny_data_dir, b, "--max_iters=4", *common))
    train.main(args(tiny_data_dir, b, "--max_iters=8", "--init_from=resume", *common))
    la = [r["loss"] for r in records(a, "train")]
    lb = [r["loss"] for r in records(b, "train")]
    assert len(la) == len(lb) == 8
    assert la == lb  # bitwise on the CPU
    wa, wb = load_checkpoint(a / "last.pt")["model"], load_checkpoint(b / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_compile_blocks_trains_like_eager_and_saves_plain_keys(tiny_data_dir, tmp_path):
    """--compile_blocks (regional compilation) follows eager training's losses to float tolerance, through a
    freeze phase that recompiles, and writes the same checkpoint keys."""
    common = ["--max_iters=4", "--eval_interval=4", "--kron_plan=0: mlp=16x8*1; 1: mlp=lowrank*4",
              "--freeze_schedule=freeze:2"]
    train.main(args(tiny_data_dir, tmp_path / "eager", *common))
    train.main(args(tiny_data_dir, tmp_path / "blocks", "--compile_blocks=True", *common))
    la, lb = ([r["loss"] for r in records(tmp_path / d, "train")] for d in ("eager", "blocks"))
    assert len(la) == len(lb) == 4
    assert max(abs(a - b) for a, b in zip(la, lb)) < 1e-4
    wa, wb = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("eager", "blocks"))
    assert list(wa) == list(wb)


def test_freezing_keeps_pretrained_bitwise_and_costs_no_state(tiny_data_dir, tmp_path):
    common = ["--kron_plan=*: mlp=16x8*1", "--eval_interval=3", "--max_iters=3"]
    train.main(args(tiny_data_dir, tmp_path / "init", "--max_iters=1", "--eval_interval=1", *common[:2]))
    init = str(tmp_path / "init" / "last.pt")
    train.main(args(tiny_data_dir, tmp_path / "f", f"--init_from={init}", "--freeze_schedule=freeze:3",
                    *common))
    before, after = load_checkpoint(init), load_checkpoint(tmp_path / "f" / "last.pt")
    for k, v in before["model"].items():
        frozen = not k.endswith((".A", ".B", ".scalars"))
        assert torch.equal(v, after["model"][k]) == frozen, k
    n_new = sum(k.endswith((".A", ".B")) for k in before["model"])
    assert len(after["optimizer"]["state"]) == n_new  # no AdamW moments for frozen tensors
    assert all(r["frozen"] for r in records(tmp_path / "f", "train"))


def test_freeze_schedule_parsing_and_lr_groups():
    sched = parse_freeze_schedule("freeze:2,release:1*2")
    assert [is_frozen(sched, i) for i in range(7)] == [True, True, False, True, True, False, False]
    cfg = TrainConfig(learning_rate=1e-4, min_lr=1e-5, new_learning_rate=1e-2, weight_decay=0.1, new_weight_decay=0.0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, block_size=8, kron_plan="*: mlp=8x4*1",
                          kron_scalars=True))
    groups = {g["name"]: g for g in make_optimizer(model, cfg, "cpu").param_groups}
    assert groups["new"]["lr"] == 1e-2 and groups["pretrained"]["lr"] == 1e-4
    assert groups["new"]["weight_decay"] == 0.0 and groups["pretrained"]["weight_decay"] == 0.1
    assert groups["new_no_decay"]["weight_decay"] == 0.0  # the scalars
    cfg.max_iters, cfg.warmup_iters = 100, 10
    assert lr_multiplier(cfg, 10) == pytest.approx(1.0)
    assert lr_multiplier(cfg, 100) == pytest.approx(0.1)


def test_dense_model_cannot_freeze_everything(tiny_data_dir, tmp_path):
    with pytest.raises(UserError, match="nothing to train"):
        train.main(args(tiny_data_dir, tmp_path, "--max_iters=2", "--freeze_schedule=freeze:2"))


def test_nan_stops_with_last_good_checkpoint(tiny_data_dir, tmp_path, monkeypatch):
    train.main(args(tiny_data_dir, tmp_path, "--max_iters=2", "--eval_interval=2"))
    real = train.lm_loss

    def poisoned(model, x, y, it):
        loss, m = real(model, x, y, it)
        return loss * float("nan"), m
    monkeypatch.setattr(train, "lm_loss", poisoned)
    with pytest.raises(UserError, match="last good checkpoint"):
        train.main(args(tiny_data_dir, tmp_path, "--max_iters=4", "--eval_interval=2", "--init_from=resume"))
    assert load_checkpoint(tmp_path / "last.pt")["iter_num"] == 2


def test_eval_only_reports_the_checkpoint_loss(tiny_data_dir, tmp_path):
    train.main(args(tiny_data_dir, tmp_path / "r", "--max_iters=4", "--eval_interval=4"))
    ckpt = str(tmp_path / "r" / "last.pt")
    loss = train.main(args(tiny_data_dir, tmp_path / "e", "--eval_only=True", f"--init_from={ckpt}"))
    assert loss == pytest.approx(load_checkpoint(ckpt)["extra"]["val_loss"], abs=1e-6)
    assert not os.path.exists(tmp_path / "e" / "last.pt")


def run_train(*argv, env_extra=None, **kw):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_sigterm_saves_and_resumes(tiny_data_dir, tmp_path):
    p = run_train(*args(tiny_data_dir, tmp_path, "--max_iters=100000", "--eval_interval=100000"))
    log = tmp_path / "log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and len(records(tmp_path, "train")) >= 3):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, err  # saved, then a distinct code: requeue with resume
    stop = records(tmp_path, "stop")[0]
    assert load_checkpoint(tmp_path / "last.pt")["iter_num"] == stop["iter"] >= 3
    assert "init_from='resume'" in out


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, block_size=8)),
                    training=TrainingState(iter_num=1))
    code = f"""
import os, signal, sys, torch
sys.path.insert(0, {REPO!r})
from kronygpt.checkpoint import TrainingState, save_checkpoint
from model import GPT, GPTConfig
real = torch.save
def dying_save(obj, f):
    f.write(b"partial checkpoint bytes"); f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
save_checkpoint({str(path)!r}, GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, block_size=8)),
                training=TrainingState(iter_num=2))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == -signal.SIGKILL
    assert load_checkpoint(path)["iter_num"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["*: mlp=16x8*1", "*: mlp=lowrank*4, attn=8x4*2"])
def test_torchrun_two_processes_match_one(tiny_data_dir, tmp_path, plan):
    common = args(tiny_data_dir, tmp_path / "x", "--max_iters=4", "--eval_interval=4",
                  "--gradient_accumulation_steps=2", f"--kron_plan={plan}")
    one = [a.replace(str(tmp_path / "x"), str(tmp_path / "one")) for a in common]
    two = [a.replace(str(tmp_path / "x"), str(tmp_path / "two")) for a in common]
    train.main(one)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        os.path.join(REPO, "train.py"), *two], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "strides do not match" not in r.stderr  # DDP copies a gradient whose strides differ from its bucket's
    l1 = [x["loss"] for x in records(tmp_path / "one", "train")]
    l2 = [x["loss"] for x in records(tmp_path / "two", "train")]
    # same batches, same mean gradient; only the order of float additions differs (gloo all-reduce)
    assert l1 == pytest.approx(l2, abs=1e-5)
    v1, v2 = records(tmp_path / "one", "eval")[-1]["val_loss"], records(tmp_path / "two", "eval")[-1]["val_loss"]
    assert v1 == pytest.approx(v2, abs=1e-5)


@pytest.mark.slow
def test_fsdp_two_processes_match_one_and_resume(tiny_data_dir, tmp_path):
    """--fsdp (parameters, gradients and Adam states sharded over two gloo ranks) follows the one-process loss
    curve, and a sharded run stopped at iter 3 and resumed (sharded) continues it: the checkpoint is the
    one-process format."""
    common = ["--eval_interval=3", "--gradient_accumulation_steps=2", "--lr_decay_iters=6",
              "--kron_plan=*: mlp=16x8*2, attn=lowrank*4", "--dropout=0"]
    train.main(args(tiny_data_dir, tmp_path / "one", "--max_iters=6", *common))

    def torchrun(*extra):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            os.path.join(REPO, "train.py"), *args(tiny_data_dir, tmp_path / "two", "--fsdp=True",
                                                                  *common, *extra)],
                           cwd=REPO, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 0, r.stderr[-3000:]

    torchrun("--max_iters=3")
    assert load_checkpoint(tmp_path / "two" / "last.pt")["iter_num"] == 3
    torchrun("--max_iters=6", "--init_from=resume")
    l1 = [x["loss"] for x in records(tmp_path / "one", "train")]
    l2 = [x["loss"] for x in records(tmp_path / "two", "train")]
    assert len(l1) == len(l2) == 6
    assert l1 == pytest.approx(l2, abs=1e-5)
    v1, v2 = records(tmp_path / "one", "eval")[-1]["val_loss"], records(tmp_path / "two", "eval")[-1]["val_loss"]
    assert v1 == pytest.approx(v2, abs=1e-5)
    # the sharded run's checkpoint loads in one process and holds the same weights as the unsharded one
    a, b = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5)
    assert len(a["optimizer"]["state"]) == len(b["optimizer"]["state"])


# -----------------------------------------------------------------------------
# the run directory: nothing overwritten without --force, one run at a time

def test_a_new_run_never_overwrites_an_old_one(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    train.main(args(tiny_data_dir, out, "--max_iters=2", "--eval_interval=2"))
    before = (out / "last.pt").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        train.main(args(tiny_data_dir, out, "--max_iters=2", "--eval_interval=2"))
    assert (out / "last.pt").read_bytes() == before and len(records(out, "start")) == 1
    train.main(args(tiny_data_dir, out, "--max_iters=3", "--eval_interval=3", "--force"))
    assert load_checkpoint(out / "last.pt")["iter_num"] == 3
    assert len(records(out, "start")) == 1 and (out / "log.1.jsonl").exists()  # the old log set aside, not mixed


def test_out_dir_holding_the_start_checkpoint_is_refused_through_a_symlink(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    train.main(args(tiny_data_dir, out, "--max_iters=2", "--eval_interval=2"))
    os.symlink(out, tmp_path / "alias")
    with pytest.raises(UserError, match="holds the checkpoint init_from starts from"):
        train.main(args(tiny_data_dir, tmp_path / "alias", f"--init_from={out / 'best.pt'}", "--force"))


def test_a_second_run_in_a_locked_out_dir_is_refused_and_a_stale_lock_taken_over(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(str(holder.pid))
        with pytest.raises(UserError, match=f"being written by another command \\(pid {holder.pid}\\)"):
            train.main(args(tiny_data_dir, out, "--max_iters=1", "--eval_interval=1"))
    finally:
        holder.kill()
        holder.wait()
    train.main(args(tiny_data_dir, out, "--max_iters=1", "--eval_interval=1"))  # its process is gone: taken over
    assert load_checkpoint(out / "last.pt")["iter_num"] == 1 and not (out / ".lock").exists()


def test_a_non_finite_validation_loss_never_replaces_the_last_good_checkpoint(tiny_data_dir, tmp_path, monkeypatch):
    import kronygpt.trainer as trainer
    real, calls = trainer.evaluate, []

    def evaluate(*a, **k):
        calls.append(1)
        return real(*a, **k) if len(calls) <= 2 else float("nan")
    monkeypatch.setattr(trainer, "evaluate", evaluate)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="validation loss became nan at iter 4.*last.pt is the last good"):
        train.main(args(tiny_data_dir, out, "--max_iters=6", "--eval_interval=2"))
    assert load_checkpoint(out / "last.pt")["iter_num"] == 2


def test_a_new_group_alone_decays_to_its_floor():
    """learning_rate=0 (pretrained weights still) with new_learning_rate > 0: the new group's cosine still ends at
    min_lr, not at its peak."""
    cfg = TrainConfig(learning_rate=0.0, new_learning_rate=1e-3, min_lr=1e-4, warmup_iters=0, max_iters=100)
    assert lr_multiplier(cfg, 100) == pytest.approx(0.1)


def test_resume_applies_the_new_rates_and_the_saved_config_tells_the_truth(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    common = ["--kron_plan=*: mlp=16x8*1", "--eval_interval=2", "--decay_lr=False"]
    train.main(args(tiny_data_dir, out, *common, "--max_iters=2"))
    train.main(args(tiny_data_dir, out, *common, "--max_iters=4", "--init_from=resume", "--learning_rate=1e-4",
                    "--new_weight_decay=0.0", "--beta2=0.99"))
    ckpt = load_checkpoint(out / "last.pt")
    groups = {g["name"]: g for g in ckpt["optimizer"]["param_groups"]}
    assert groups["pretrained"]["lr"] == pytest.approx(1e-4) and groups["new"]["weight_decay"] == 0.0
    assert all(g["betas"] == (0.9, 0.99) for g in groups.values())
    assert ckpt["config"]["learning_rate"] == 1e-4
    resume = records(out, "resume")[0]
    assert any("base_lr 0.003 -> 0.0001" in c for c in resume["changed"])
    with pytest.raises(UserError, match="n_layer=3 was given, but the model"):
        train.main(args(tiny_data_dir, out, *common, "--max_iters=6", "--init_from=resume", "--n_layer=3"))
    assert load_checkpoint(out / "last.pt")["config"]["n_layer"] == 2  # the model's own value, recorded


def test_non_finite_new_learning_rate_is_refused():
    from configurator import configure
    with pytest.raises(UserError, match="new_learning_rate must be a finite number"):
        configure(TrainConfig(), ["--new_learning_rate=nan"], verbose=False)
