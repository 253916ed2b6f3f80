"""
The whole job as one resumable run: a pretrained model in, a smaller one out, measured and shipped. compress.py
is its command; every stage is the library code of the commands a user would otherwise run one by one:

    stage        output (in --out)           what runs                                   the command it stands for
    dense        dense.pt                    the source model, saved once (fast reloads) -
    data         data/<name>/                the calibration, recovery and evaluation    data/*/prepare.py
                                             sets, prepared where missing
    decompose    decomposed.pt, .json        calibrate, plan, factorise (decompose.py)   kron_decomp.py
    fit          fit/fitted.pt               every block fitted to the dense one         train_distillation.py
                                                                                         --mode=layerwise
    recover      recover/last.pt             logit distillation on the same mixture      train_distillation.py
    baseline     baseline.pt                 layer drop to the same size (ShortGPT)      kron_decomp.py
                                                                                         --keep_blocks importance
    evaluate     eval.json                   the general suite of every model            eval.py --suite general
    export       hf/                         a Hugging Face directory                    export.py
    report       report.md, loss.png         the table, the loss curve, greedy answers   -

A stage whose output exists is skipped, so a stopped run (Ctrl-C, SIGTERM, a lost machine) continues where it
stopped: the fit and the recovery resume inside themselves too, from their own progress files.

The default method, lowrank_width_fit, is this repo's pipeline: one exact allocation of the budget over every block
matrix, each dense or low rank (fisher, with the teacher's own labels) and each block's MLP alternatively narrowed
(its units of largest activation kept, W_down refitted), all scored by the predicted loss increase; then each block
fitted to the dense one, then distilled on half Shakespeare and half teacher text. krony is the same with low rank
alone. The frontier study (results/frontier.md) measures them against the methods people use instead at every
size; --method takes those methods too.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from .checkpoint import atomic_json, load_model, save_checkpoint
from .claims import Claim
from .data_utils import REPO, dataset_name, prepare_command
from .decompose import DecompConfig, decompose, save
from .distiller import DistillConfig, distil
from .errors import ConfigError, UserError
from .evaluation import FACTS, general_row, load_facts, markdown_table
from .exporting import export_model
from .planner import parse_count
from .plots import plot_runs
from .runtime import setup_runtime
from .tokenizer import get_tokenizer
from .trainer import launch

# kron_decomp options of each method (the frontier study's names); 'krony' is 'alloc' plus block-wise fitting,
# 'width_fit' is 'width' plus block-wise fitting (FITTED)
ALLOC = ["--init", "fisher", "--fisher_labels", "model", "--allocate", "--scope", "blocks"]
WIDTH = ["--width", "auto", "--width_criterion", "activation"]
WIDTHS = ["--width", "allocate", "--width_criterion", "activation", "--fisher_labels", "model"]
MIXED = [*ALLOC, "--families", "lowrank,width", "--width_criterion", "activation"]
METHODS = {
    "krony": ALLOC,
    "lowrank_width_fit": MIXED,
    "width_fit": WIDTH,
    "width_alloc_fit": WIDTHS,
    "alloc": ALLOC,
    "width_alloc": WIDTHS,
    "lowrank_width": MIXED,
    "svdllm": ["--shape", "lowrank", "--scope", "blocks", "--init", "aware"],
    "width_obs": ["--width", "auto", "--width_criterion", "obs"],
    "width": WIDTH,
    "layerdrop": ["--keep_blocks", "importance"],
}
# the methods whose decomposition is then fitted block by block
FITTED = ("krony", "width_fit", "width_alloc_fit", "lowrank_width_fit")
# the methods that give blocks MLPs of different widths (exported factored: a Hugging Face config has one)
PER_BLOCK_WIDTHS = ("width_alloc", "width_alloc_fit", "lowrank_width", "lowrank_width_fit")
PROMPT = "The capital of France is"


@dataclass
class CompressConfig:
    model: str = "smollm2-135m"     # what to compress: smollm2-135m, a hub name (gpt2), a Hugging Face directory or a
                                    # checkpoint
    size: str = "0.8"               # the compressed model's size: a fraction of the parameters (0.8) or a count (108M)
    out: str = ""                   # the run's folder: every stage's output, report.md and the export hf/
    method: str = "lowrank_width_fit"  # one allocation over low rank and narrowed MLPs, fitted; krony (allocated low
                                    # rank alone, fitted), width_fit (narrower MLPs, fitted),
                                    # width_alloc_fit (each block's MLP its own width, fitted); alloc, lowrank_width,
                                    # width_alloc: the same without fitting; or a peer: svdllm, width_obs, width,
                                    # layerdrop (results/frontier.md)
    data: str = "auto"              # calibration, fitting and recovery text: a prepared dataset or mixture, or 'auto':
                                    # Shakespeare and the model's shipped teacher text, half each (Shakespeare alone
                                    # when none is shipped for its tokenizer)
    calib_tokens: int = 65536       # calibration tokens
    fisher_tokens: int = 16384      # tokens of output gradients (fisher)
    fit_tokens: int = 65536         # teacher activations each block is fitted on
    fit_steps: int = 150            # Adam steps per block
    steps: int = 300                # recovery steps (0: none)
    learning_rate: float = 3e-5     # recovery: peak rate of the kept weights (new factors 5x); the general study's
                                    # sweep chose 3e-5 for this recipe
    batch_size: int = 4             # recovery: sequences per step
    block_size: int = 256           # recovery and evaluation windows (the model keeps its own context)
    eval_tokens: int = 16384        # tokens of each evaluation set
    suite_data: str = ""            # evaluation sets other than the defaults, e.g. 'milton=my_milton,pydoc='
                                    # (an empty name drops that set)
    facts: bool = True              # the 117-item fact probe in the evaluation
    baseline: bool = True           # also evaluate layer drop to the same size (the equal-size baseline people use)
    format: str = "factored"        # the export: 'factored' (small and fast; trust_remote_code) or 'dense'
    device: str = "auto"            # 'auto' (cuda if available), 'cpu', 'cuda'
    seed: int = 1337
    decomp_options: str = ""        # more kron_decomp.py options for the decompose stage, e.g. '--rank_multiple=8'
    fit_options: str = ""           # more train_distillation.py options for the fit, e.g. '--layerwise_lr=3e-4'
    recover_options: str = ""       # more train_distillation.py options for the recovery, e.g. '--hidden_weight=1'
    force: bool = False             # start over in an --out that holds a compress run

    def validate(self):
        if not self.out:
            raise ConfigError("--out DIRECTORY is required: the run's folder (stages, report.md, the export)")
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.format not in ("factored", "dense"):
            raise ConfigError(f"--format must be factored or dense, got {self.format!r}")
        if self.format == "dense" and self.method in PER_BLOCK_WIDTHS:
            raise ConfigError(f"--method {self.method} gives each block's MLP its own width, which a standard "
                              f"Hugging Face config cannot describe; use --format factored (or --method krony)")
        for name in ("calib_tokens", "fisher_tokens", "fit_tokens", "batch_size", "block_size", "eval_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("steps", "fit_steps", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"--learning_rate must be a small positive rate, got {self.learning_rate}")
        fraction(self.size)  # a size it cannot read is refused before any work


def fraction(size):
    """('fraction', f) for '0.8', or ('count', n) for '108M' / 108000000."""
    try:
        f = float(size)
    except ValueError:
        return "count", parse_count(size)
    if 0 < f < 1:
        return "fraction", f
    if f >= 1000:
        return "count", int(f)
    raise ConfigError(f"--size {size!r} must be a fraction of the parameters between 0 and 1 (0.8) or a count (108M)")


def with_options(cfg, text, where):
    """cfg with the '--key=value' overrides of `text` applied (the configurator's parsing)."""
    from configurator import apply_override
    for item in text.split():
        key, eq, value = item.lstrip("-").partition("=")
        if not eq:
            raise ConfigError(f"--{where} item {item!r} must be --key=value")
        apply_override(cfg, key, value)
    return cfg


class Compression:
    """One compress run in cfg.out: stage by stage (the module docstring)."""

    def __init__(self, cfg: CompressConfig, log=print):
        self.cfg, self.log = cfg, log
        self.out = os.path.abspath(cfg.out)
        self.path = lambda *p: os.path.join(self.out, *p)  # noqa: E731

    # -- stages

    def dense(self):
        """The source model as a checkpoint in the run's folder (the GGUF and the hub are read once)."""
        path = self.path("dense.pt")
        if not os.path.isfile(path):
            model = load_model(self.cfg.model)
            if model.config.is_factorized:
                raise UserError(f"{self.cfg.model} is already factorised; compress the dense model it came from")
            save_checkpoint(path, model, tokenizer=getattr(model, "tokenizer_name", "gpt2"))
            self.log(f"dense: {self.cfg.model} saved as {path} ({model.param_counts()['total']:,} parameters)")
        return path

    def tokenizer(self):
        return load_model(self.path("dense.pt")).tokenizer_name

    def datasets(self):
        """{role: dataset} of the run: 'train' (calibration, fitting and recovery; a mixture), and the evaluation
        sets (shakespeare, milton, pydoc, teacher), each prepared here if missing."""
        tok = self.tokenizer()
        if not isinstance(tok, str):
            raise UserError(f"{self.cfg.model} has its own character tokenizer; compress.py works with Hugging Face "
                            f"tokenizers (GPT-2, SmolLM2, a local model's own)")
        suite = {c: dataset_name(c, tok) for c in ("shakespeare", "milton", "pydoc")}
        suite["teacher"] = f"teacher_{os.path.basename(str(self.cfg.model).rstrip('/'))}"
        if self.cfg.data != "auto":
            train = self.cfg.data
        else:
            have_teacher = self.ensure(suite["teacher"], required=False)
            train = f"{suite['shakespeare']}:0.5,{suite['teacher']}:0.5" if have_teacher else suite["shakespeare"]
            if not have_teacher:
                self.log(f"data: no teacher text for {self.cfg.model}; training on Shakespeare alone (sample some with "
                         f"`{prepare_command(os.path.join(REPO, 'data', suite['teacher']))}` and pass --data)")
        for name in {d.split(":")[0] for d in train.split(",")}:
            self.ensure(name)
        for item in filter(None, self.cfg.suite_data.split(",")):
            col, eq, name = item.partition("=")
            if not eq or col not in suite:
                raise UserError(f"--suite_data item {item!r} must be COLUMN=DATASET with COLUMN one of "
                                f"{', '.join(suite)}")
            suite[col] = name
        return train, {role: name for role, name in suite.items() if name and self.ensure(name, required=False)}

    def ensure(self, name, required=True):
        """Whether the prepared dataset `name` exists, after preparing it with its own command if it was missing
        (teacher text is only unpacked where it ships: sampling it takes long, so the command is named instead)."""
        path = name if os.path.isabs(name) else os.path.join(REPO, "data", name)
        if os.path.isfile(os.path.join(path, "val.bin")):
            return True
        command = prepare_command(path)
        if command.startswith("python data/teacher/") or command.startswith("a data"):
            if required:
                raise UserError(f"dataset {name} is not prepared; prepare it first: {command}")
            return False
        self.log(f"data: preparing {name}: {command}")
        argv = (["tar", "-xzf", command.split()[2], "-C", "data"] if command.startswith("tar ")
                else [sys.executable, *command.split()[1:]])
        r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        if r.returncode:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            if not required:
                self.log(f"data: {name} left out: preparing it failed ({tail[0]})")
                return False
            raise UserError(f"preparing {name} failed ({tail[0]}); run `{command}` yourself and try again")
        return os.path.isfile(os.path.join(path, "val.bin"))

    def target(self):
        kind, value = fraction(self.cfg.size)
        if kind == "count":
            return value
        dense = load_model(self.path("dense.pt")).param_counts()["total"]
        return int(round(value * dense))

    def decompose(self, train, method, out_name):
        """kron_decomp's library call for `method` to the target size; returns the checkpoint."""
        path = self.path(f"{out_name}.pt")
        if os.path.isfile(path) and os.path.isfile(self.path(f"{out_name}.json")):
            return path
        c = self.cfg
        dc = DecompConfig()
        with_options(dc, " ".join(f"--{k}={v}" for k, v in pairs(METHODS[method])), "method")
        dc.model, dc.out, dc.force = self.path("dense.pt"), path, True
        dc.target_params, dc.calib = str(self.target()), train
        dc.calib_tokens, dc.fisher_tokens, dc.seed = c.calib_tokens, c.fisher_tokens, c.seed
        dc.calib_seq = c.block_size
        dc.device = "cuda" if c.device.startswith("cuda") else "cpu"
        with_options(dc, c.decomp_options if method == c.method else "", "decomp_options")
        dc.validate()
        result = decompose(dc, log=self.log)
        save(result, path, self.path(f"{out_name}.json"))
        self.log(f"{out_name}: {result.report['params_after']['total']:,} parameters in "
                 f"{result.report['seconds']:.0f}s")
        return path

    def distil_stage(self, init, out_dir, train, extra, options=""):
        """train_distillation's library call (DistillConfig with `extra` set, then the user's `options`) into
        out_dir."""
        c = self.cfg
        dc = DistillConfig(out_dir=out_dir, init_from=init, teacher=self.path("dense.pt"), dataset=train,
                           batch_size=c.batch_size, block_size=c.block_size, eval_tokens=min(c.eval_tokens, 16384),
                           device=c.device, seed=c.seed, log_interval=1)  # a line a step: never long silent
        for k, v in extra.items():
            setattr(dc, k, v)
        with_options(dc, options, "options")
        dc.validate()
        launch(dc, distil)

    def fit(self, decomposed, train):
        """Every factorised or narrowed block fitted to the dense one on the teacher's activations (fit/fitted.pt)."""
        path = self.path("fit", "fitted.pt")
        if not os.path.isfile(path):
            c = self.cfg
            extra = dict(mode="layerwise", max_iters=0, fit_dataset=train, layerwise_tokens=c.fit_tokens,
                         layerwise_steps=c.fit_steps, layerwise_batch=1024, force=True)
            self.distil_stage(decomposed, self.path("fit"), train, extra, c.fit_options)
        return path

    def recover(self, start, train):
        """Logit distillation from the dense model on the training mixture (recover/last.pt), resumed if stopped."""
        c, run = self.cfg, self.path("recover")
        if c.steps == 0:
            return start
        if finished(run, c.steps):
            return os.path.join(run, "last.pt")
        resume = os.path.isfile(os.path.join(run, "last.pt"))
        extra = dict(mode="e2e", alpha=0.0, beta=1.0, temperature=1.0, max_iters=c.steps, lr_decay_iters=c.steps,
                     learning_rate=c.learning_rate, new_learning_rate=5 * c.learning_rate, min_lr=c.learning_rate / 10,
                     warmup_iters=max(1, min(10, c.steps // 10)), eval_interval=max(1, c.steps // 4),
                     weight_decay=0.1, grad_clip=1.0, force=not resume)
        self.distil_stage("resume" if resume else start, run, train, extra, c.recover_options)
        return os.path.join(run, "last.pt")

    def evaluate(self, models, sets):
        """The general suite of each (name, checkpoint), kept in eval.json as each finishes."""
        path, c = self.path("eval.json"), self.cfg
        rows = json.load(open(path)) if os.path.isfile(path) else []
        done = {r["model"] for r in rows}
        todo = [(n, p) for n, p in models if n not in done]
        if not todo:
            return rows
        rt = setup_runtime(c.device, "auto")
        teacher = load_model(self.path("dense.pt"), device=rt.device).eval()
        facts = load_facts(FACTS) if c.facts else None
        for name, ckpt in todo:
            model = teacher if name == "dense" else load_model(ckpt, device=rt.device).eval()
            row = {"model": name, "params": model.param_counts()["total"]}
            row.update(general_row(model, teacher, sets, facts, c.block_size, c.eval_tokens, 8, rt))
            rows.append(row)
            atomic_json(path, rows)
            self.log(f"evaluated {name}")
        return rows

    def export(self, final):
        out = self.path("hf")
        if not os.path.isfile(os.path.join(out, "kronygpt_export.json")):
            export_model(load_model(final).eval(), out, self.cfg.format, source=final)
        return out

    def answers(self, models):
        """{name: greedy continuation of PROMPT} (answers.json)."""
        path = self.path("answers.json")
        answers = json.load(open(path)) if os.path.isfile(path) else {}
        for name, ckpt in models:
            if name not in answers:
                model = load_model(ckpt).eval()
                try:
                    tok = get_tokenizer(model.tokenizer_name)
                except UserError as e:  # a test model without tokenizer files
                    self.log(f"answers: none ({e})")
                    return answers
                x = torch.tensor([tok.encode(PROMPT)], dtype=torch.long)
                with torch.no_grad():
                    y = model.generate(x, 16, temperature=0)
                answers[name] = tok.decode(y[0, x.shape[1]:].tolist())
                atomic_json(path, answers)
        return answers

    # -- the run

    def run(self):
        os.makedirs(self.out, exist_ok=True)
        with Claim(os.path.join(self.out, ".compress.lock"), f"--out {self.out}"):  # one compress run per folder
            return self.stages()

    def stages(self):
        c, t0 = self.cfg, time.time()
        self.dense()
        train, sets = self.datasets()
        self.log(f"data: training on {train}; evaluating on {', '.join(sets.values()) or 'nothing'}")
        decomposed = self.decompose(train, c.method, "decomposed")
        zero_shot = self.fit(decomposed, train) if c.method in FITTED else decomposed
        final = self.recover(zero_shot, train)
        models = [("dense", self.path("dense.pt")), ("compressed, zero-shot", zero_shot)]
        if final != zero_shot:
            models.append((f"compressed, {c.steps} recovery steps", final))
        if c.baseline and c.method != "layerdrop":
            models.append(("layer drop (ShortGPT), zero-shot", self.decompose(train, "layerdrop", "baseline")))
        rows = self.evaluate(models, sets) if sets else []
        hf = self.export(final)
        answers = self.answers(models)
        report = self.report(rows, answers, hf)
        self.log(f"compress: done in {time.time() - t0:.0f}s")
        return report, rows, answers, hf

    def report(self, rows, answers, hf):
        """report.md: what ran, the suite's table, the recovery's loss curve, each model's greedy answer."""
        c, lines = self.cfg, []
        run = self.path("recover")
        if os.path.isfile(os.path.join(run, "log.jsonl")):
            plot_runs([run], self.path("loss.png"), ["recovery"], "val_loss", "tokens", "recovery: validation loss")
        dec = json.load(open(self.path("decomposed.json")))
        kinds = {}
        for r in dec.get("matrices", []):
            kind = "low rank" if r["kind"].startswith("low rank") else "width-pruned MLPs" \
                if r["kind"].startswith("width") else "Kronecker"
            kinds[kind] = kinds.get(kind, 0) + 1
        made = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())) or "no matrix factorised"
        lines += [f"# {c.model} compressed to {dec['params_after']['total']:,} parameters", "",
                  f"Method `{c.method}` ({made}; the full plan is in decomposed.json); size {c.size} of "
                  f"{dec['params_before']['total']:,}. Calibration {c.calib_tokens:,} tokens, recovery {c.steps} "
                  f"steps of {c.batch_size} x {c.block_size} tokens (logit distillation from the dense model).", ""]
        if rows:
            lines += ["## General suite (lower is better except the fact probe)", "", markdown_table(rows), "",
                      f"{c.eval_tokens:,}-token fixed sets in {c.block_size}-token windows; one seed.", ""]
        if os.path.isfile(self.path("loss.png")):
            lines += ["![recovery](loss.png)", ""]
        lines += [f"## Greedy answers to `{PROMPT}`", "", "| model | answer |", "|---|---|"]
        lines += [f"| {n} | {a.strip().replace('|', '/').replace(chr(10), ' ')} |" for n, a in answers.items()]
        lines += ["", f"Export: `{hf}` (load with `AutoModelForCausalLM.from_pretrained(dir"
                  + (", trust_remote_code=True" if c.format == "factored" else "") + ")`).", ""]
        path = self.path("report.md")
        with open(path + ".tmp", "w") as f:
            f.write("\n".join(lines))
        os.replace(path + ".tmp", path)
        return path


def pairs(argv):
    """['--a', 'x', '--flag', '--b', 'y'] -> [('a', 'x'), ('flag', 'True'), ('b', 'y')]."""
    out, i = [], 0
    while i < len(argv):
        key = argv[i].lstrip("-")
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append((key, argv[i + 1]))
            i += 2
        else:
            out.append((key, "True"))
            i += 1
    return out


def finished(run, steps):
    path = os.path.join(run, "log.jsonl")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return any(r.get("type") == "eval" and r.get("iter") == steps for r in map(json.loads, f))


def compress(cfg: CompressConfig, log=print):
    """Run (or continue) the compress run cfg.out; returns (report path, suite rows, answers, export dir)."""
    return Compression(cfg, log).run()
