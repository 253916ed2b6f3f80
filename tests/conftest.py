"""Shared fixtures: tiny random Hugging Face models saved to temp dirs, a tiny prepared dataset."""

import os

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from kronygpt.data_utils import write_meta, write_tokens  # noqa: E402


@pytest.fixture(autouse=True)
def restore_tf32():
    """Each test starts with torch's float32 matmul settings: a run of train.py turns TF32 on for the whole
    process (setup_runtime on CUDA), which made later float32 comparisons on the GPU fail at 1e-4."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def save_hf(model, path):
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A random GPT-2 (2 layers, n_embd 32, vocab 256) saved as a Hugging Face directory."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=256, n_positions=64))
    return save_hf(m, tmp_path_factory.mktemp("tiny_gpt2"))


@pytest.fixture(scope="session")
def odd_gpt2_dir(tmp_path_factory):
    """A GPT-2 of non-standard sizes: n_embd 48, 3 heads, 3 layers, vocab 1000."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(1)
    m = GPT2LMHeadModel(GPT2Config(n_layer=3, n_head=3, n_embd=48, vocab_size=1000, n_positions=64))
    return save_hf(m, tmp_path_factory.mktemp("odd_gpt2"))


def make_llama(tie, n_kv_head, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=n_kv_head, max_position_embeddings=64, tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0}))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return save_hf(make_llama(tie=True, n_kv_head=2), tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A prepared dataset with a 256-token vocabulary: a noisy repeating pattern a model can learn."""
    d = tmp_path_factory.mktemp("tiny_data")
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 256, size=97)
    stream = np.tile(pattern, 400)
    noise = rng.random(stream.size) < 0.05
    stream[noise] = rng.integers(0, 256, size=noise.sum())
    cut = int(stream.size * 0.9)
    write_tokens(stream[:cut], d / "train.bin", 256)
    write_tokens(stream[cut:], d / "val.bin", 256)
    write_meta(str(d), None, 256)  # synthetic ids: no tokenizer (any model with >= 256 tokens may train on it)
    return str(d)
