"""
Hugging Face configuration of an exported KronyGPT model (written by `export.py --format factored` next to
the weights, together with the model code it needs). `model_args` is this repo's GPTConfig as a dict:
the architecture and the full factorisation plan.
"""

from transformers import PretrainedConfig


class KronyGPTConfig(PretrainedConfig):
    model_type = "kronygpt"

    def __init__(self, model_args=None, tokenizer_spec=None, **kwargs):
        self.model_args = dict(model_args or {})
        self.tokenizer_spec = tokenizer_spec  # how this repo names the tokenizer ('gpt2', a hub/dir name, ...)
        for ours, theirs in (("vocab_size", "vocab_size"), ("n_embd", "hidden_size"), ("n_layer", "num_hidden_layers"),
                             ("n_head", "num_attention_heads"), ("block_size", "max_position_embeddings")):
            if ours in self.model_args:
                kwargs.setdefault(theirs, self.model_args[ours])
        kwargs.setdefault("tie_word_embeddings", bool(self.model_args.get("tie_embeddings", True)))
        kwargs.setdefault("use_cache", True)  # keys and values of past positions kept in transformers' Cache
        super().__init__(**kwargs)
