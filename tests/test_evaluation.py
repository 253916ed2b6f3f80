"""The general-ability suite (kronygpt/evaluation.py), dataset mixtures, and teacher text."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from kronygpt.data_utils import Mixture, TokenData, write_meta, write_tokens
from kronygpt.errors import UserError
from kronygpt.evaluation import fact_probe, load_facts, teacher_agreement
from kronygpt.factorize import InitSpec
from kronygpt.hf_io import load_pretrained
from kronygpt.runtime import setup_runtime
from kronygpt.surgery import decompose_model
from kronygpt.tokenizer import get_tokenizer


def make_dataset(path, ids, vocab=256, tokenizer=None, train=True):
    path.mkdir(parents=True, exist_ok=True)
    write_tokens(ids, path / "val.bin", vocab)
    if train:
        write_tokens(ids, path / "train.bin", vocab)
    write_meta(str(path), tokenizer, vocab)
    return str(path)


@pytest.fixture(scope="module")
def small_gpt2(tmp_path_factory):
    """A random 1-block GPT with GPT-2's vocabulary (so real text encodes), saved as a checkpoint."""
    from kronygpt.checkpoint import save_checkpoint
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=64))
    return save_checkpoint(str(tmp_path_factory.mktemp("small") / "m.pt"), model, tokenizer="gpt2")


def test_the_fact_probe_is_well_formed():
    items = load_facts()
    assert len(items) >= 100
    assert all(len(i["choices"]) == 4 and len(set(i["choices"])) == 4 and 0 <= i["answer"] < 4 for i in items)
    assert len({i["context"] for i in items}) == len(items)
    assert 0.15 < np.mean([i["answer"] == 0 for i in items]) < 0.35  # the correct choice's position is shuffled


def test_fact_probe_scores_likelihoods_as_lm_eval_does(small_gpt2):
    """A model whose bias makes one token overwhelmingly likely picks the choice made of it: acc 1 when that choice
    is always the answer, 0 when it never is."""
    from kronygpt.checkpoint import load_model
    model = load_model(small_gpt2).eval()
    tok = get_tokenizer(model.tokenizer_name)
    target = tok.encode(" Paris")
    assert len(target) == 1
    model.lm_head.register_forward_hook(lambda m, a, out: out + 50.0 * torch.nn.functional.one_hot(
        torch.tensor(target[0]), out.shape[-1]).to(out))
    rt = setup_runtime("cpu", "float32")
    items = [dict(context="The capital of France is", choices=[" Rome", " Paris", " Lyon", " Nice"], answer=1)]
    assert fact_probe(model, tok, items, rt) == (1.0, 1.0)
    items[0]["answer"] = 0
    assert fact_probe(model, tok, items, rt) == (0.0, 0.0)


def test_teacher_agreement_is_zero_kl_for_the_teacher_itself(tiny_gpt2_dir):
    teacher = load_pretrained(tiny_gpt2_dir).eval()
    student, _ = decompose_model(teacher, "*: mlp=16x8*1", InitSpec("vl"))
    x = torch.randint(0, 256, (3, 16))
    rt = setup_runtime("cpu", "float32")
    ce, kl = teacher_agreement(teacher, teacher, (x, x.roll(-1, 1)), 2, rt)
    assert abs(kl) < 1e-6 and ce > 0
    _, kl_student = teacher_agreement(student, teacher, (x, x.roll(-1, 1)), 2, rt)
    assert kl_student > 1e-4


def test_general_suite_rows_from_the_command_line(small_gpt2, tmp_path):
    rng = np.random.default_rng(0)
    names = {}
    for col in ("shakespeare", "milton", "pydoc", "teacher"):
        names[col] = make_dataset(tmp_path / col, rng.integers(0, 50257, 3000), vocab=50257, tokenizer="gpt2")
    tiny_gpt2_dir = small_gpt2
    given = ",".join(f"{c}={p}" for c, p in names.items())
    r = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), "--suite", "general", "--teacher",
                        tiny_gpt2_dir, "--models", f"{tiny_gpt2_dir},{tiny_gpt2_dir}", "--suite_data", given,
                        "--eval_tokens", "512", "--block_size", "32", "--json", str(tmp_path / "g.json"), "--md",
                        str(tmp_path / "g.md")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    assert len(rows) == 2 and rows[0]["teacher_kl"] == pytest.approx(0.0, abs=1e-6)
    assert all(0 <= rows[0][k] <= 1 for k in ("facts_acc", "facts_acc_norm"))
    assert rows[0]["milton"] > 0 and "facts_acc_norm" in (tmp_path / "g.md").read_text()


def test_a_mixture_draws_each_sequence_from_one_component_deterministically(tmp_path):
    a = make_dataset(tmp_path / "a", np.full(2000, 7))
    b = make_dataset(tmp_path / "b", np.full(2000, 9))
    mix = Mixture.parse(f"{a}:0.75,{b}:0.25")
    x1, y1 = mix.get_batch("train", 400, 8, seed=123)
    x2, _ = mix.get_batch("train", 400, 8, seed=123)
    assert torch.equal(x1, x2)                                       # a pure function of the seed: resume is exact
    rows_a = (x1 == 7).all(1)
    assert torch.equal(rows_a | (x1 == 9).all(1), torch.ones(400, dtype=torch.bool))  # never mixed within a row
    assert 0.68 < rows_a.float().mean().item() < 0.82
    assert torch.equal(mix.val_windows(8, 64)[0], TokenData(a).val_windows(8, 64)[0])  # validation: the first
    with pytest.raises(UserError, match="positive weight"):
        Mixture.parse(f"{a}:0,{b}:1")
    c = make_dataset(tmp_path / "c", np.full(2000, 9), vocab=300)
    with pytest.raises(UserError, match="tokenised differently"):
        Mixture.parse(f"{a}:1,{c}:1")


def read_prompts(path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("teacher_prepare",
                                                  os.path.join(REPO, "data", "teacher", "prepare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.read_prompts(path)


def test_teacher_prompts_read_line_breaks_and_hold_out_every_fifth(tmp_path):
    """A prompt file's \\n is a line break (code prompts), '#' lines are comments, every fifth prompt is val; the
    shipped technical stems copy no sentence of the Python language reference (an evaluation corpus) and none is a
    fact-probe question."""
    f = tmp_path / "p.txt"
    f.write_text("# a comment\n" + "".join(f"def f{i}(x):\\n    return x\n" for i in range(10)))
    prompts = read_prompts(str(f))
    assert prompts["val"] == ["def f0(x):\n    return x", "def f5(x):\n    return x"] and len(prompts["train"]) == 8
    shipped = read_prompts(os.path.join(REPO, "data", "teacher", "prompts_technical.txt"))
    stems = shipped["val"] + shipped["train"]
    assert len(stems) >= 50 and not set(shipped["val"]) & set(shipped["train"])
    assert sum("\n" in s for s in stems) >= 15  # the code stems really break lines
    from pydoc_data.topics import topics
    reference = "\n".join(topics.values())
    # (a copied sentence, not a shared idiom: 'for i in range(10):' is in the reference's examples too)
    assert not [s for s in stems if len(s) >= 25 and s.strip() in reference], "a stem is copied from the reference"
    contexts = {item["context"] for item in load_facts()}
    assert not [s for s in stems if any(c in s for c in contexts)]


@pytest.mark.slow
def test_teacher_text_is_resumable_and_held_out(small_gpt2, tmp_path):
    """Sampling is a pure function of (seed, split, batch): a run interrupted after its val split and restarted
    gives the same corpus as one uninterrupted run; val prompts are never train prompts."""
    cmd = [sys.executable, os.path.join(REPO, "data", "teacher", "prepare.py"), "--model", small_gpt2,
           "--tokens", "300", "--val_tokens", "100", "--sample_len", "8", "--batch_size", "2"]
    r = subprocess.run([*cmd, "--out_dir", str(tmp_path / "a")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["top_k"] == 0 and meta["batches"]["val"] >= 1
    # an interrupted run: its val split done, then a batch torn mid-write after the last progress record
    val = (tmp_path / "a" / "val.bin").read_bytes()
    partial = tmp_path / "b.partial"
    partial.mkdir()
    (partial / "val.bin").write_bytes(val + b"\x01\x02\x03")
    settings = {k: meta[k] for k in ("model", "sample_len", "batch_size", "temperature", "top_k", "seed",
                                     "unconditional", "prompts", "model_weights")}
    (partial / "progress.json").write_text(json.dumps(dict(settings=settings, val=meta["batches"]["val"], train=0,
                                                           val_tokens=len(val) // 2, train_tokens=0)))
    r = subprocess.run([*cmd, "--out_dir", str(tmp_path / "b")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming" in r.stdout + r.stderr and not partial.exists()
    for split in ("train", "val"):
        assert (tmp_path / "a" / f"{split}.bin").read_bytes() == (tmp_path / "b" / f"{split}.bin").read_bytes()


@pytest.mark.slow
def test_lm_eval_harness_scores_an_export_as_the_fact_probe_does(small_gpt2, tmp_path):
    """lm-evaluation-harness (optional: requirements-optional.txt) runs on a factored export with a local task, and
    its multiple-choice accuracy equals this repo's fact probe on the same items and model."""
    pytest.importorskip("lm_eval")
    from kronygpt.checkpoint import load_model
    items = load_facts()[:40]
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in items))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "krony_facts.yaml").write_text(
        f"task: krony_facts\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: context\ndoc_to_choice: choices\n"
        "doc_to_target: answer\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    out = tmp_path / "hf"
    r = subprocess.run([sys.executable, os.path.join(REPO, "export.py"), "--init_from", small_gpt2, "--out", str(out),
                        "--format", "factored"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                        f"pretrained={out},trust_remote_code=True", "--tasks", "krony_facts", "--include_path",
                        str(tmp_path / "tasks"), "--device", "cpu", "--batch_size", "1", "--output_path",
                        str(tmp_path / "lm_eval")], capture_output=True, text=True, cwd=tmp_path, timeout=900,
                       env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    found = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "lm_eval") for f in fs if f.endswith(".json")]
    scores = json.loads(open(found[0]).read())["results"]["krony_facts"]
    acc, acc_norm = fact_probe(load_model(small_gpt2).eval(), get_tokenizer("gpt2"), items,
                               setup_runtime("cpu", "float32"))
    assert scores["acc,none"] == pytest.approx(acc) and scores["acc_norm,none"] == pytest.approx(acc_norm)


@pytest.mark.slow
def test_eval_py_with_a_start_token_agrees_with_lm_eval_rolling_perplexity(small_gpt2, tmp_path):
    """eval.py --start_token (non-overlapping windows, the document-start token in front) scores a document as
    lm-evaluation-harness's loglikelihood_rolling does: the same total log-likelihood."""
    pytest.importorskip("lm_eval")
    text = " ".join(load_facts()[k]["context"] + load_facts()[k]["choices"][0] + "." for k in range(60))
    (tmp_path / "doc.jsonl").write_text(json.dumps({"text": text}) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "krony_ppl.yaml").write_text(
        f"task: krony_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'doc.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: text\n"
        "metric_list:\n  - metric: bits_per_byte\n")
    out = tmp_path / "hf"
    assert subprocess.run([sys.executable, os.path.join(REPO, "export.py"), "--init_from", small_gpt2, "--out",
                           str(out)], capture_output=True, cwd=REPO, timeout=300).returncode == 0
    r = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                        f"pretrained={out},trust_remote_code=True", "--tasks", "krony_ppl", "--include_path",
                        str(tmp_path / "tasks"), "--device", "cpu", "--batch_size", "1", "--output_path",
                        str(tmp_path / "lm_eval")], capture_output=True, text=True, cwd=tmp_path, timeout=900,
                       env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    found = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "lm_eval") for f in fs if f.endswith(".json")]
    bpb = json.loads(open(found[0]).read())["results"]["krony_ppl"]["bits_per_byte,none"]
    theirs = bpb * len(text.encode("utf-8")) * math.log(2)
    r = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), "--models", str(out), "--datasets",
                        f"file:{tmp_path / 'doc.jsonl'}", "--block_size", "64", "--start_token", "--json",
                        str(tmp_path / "ours.json")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads((tmp_path / "ours.json").read_text())["rows"][0]
    name = f"file:{tmp_path / 'doc.jsonl'}"
    ours = math.log(row[name]) * row[f"{name}_tokens"]
    assert ours == pytest.approx(theirs, rel=1e-4)


def test_the_fact_probe_ships_as_an_lm_eval_task_over_its_own_items():
    """data/facts/krony_facts.yaml: a multiple_choice task on the local items, its templates naming their fields,
    the choices joined to the context with no delimiter (each starts with its own space), acc and acc_norm."""
    import yaml
    task = yaml.safe_load(open(os.path.join(REPO, "data", "facts", "krony_facts.yaml")))
    assert task["output_type"] == "multiple_choice" and task["target_delimiter"] == ""
    path = os.path.join(REPO, task["dataset_kwargs"]["data_files"][task["test_split"]])
    items = [json.loads(line) for line in open(path)]
    fields = {t.strip("{} ") for t in (task["doc_to_text"], task["doc_to_choice"], task["doc_to_target"])}
    assert fields <= set(items[0]) and len(items) == 117
    assert all(c.startswith(" ") for item in items for c in item["choices"])
    assert {m["metric"] for m in task["metric_list"]} == {"acc", "acc_norm"}
