"""
Hugging Face wrapper of an exported KronyGPT model: `AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)` builds KronyGPTForCausalLM (and `AutoModel` the base KronyGPTModel), whose `gpt` is this
repo's own GPT (model.py, kronecker.py and the modules they use are copied next to this file by export.py, with
only their imports made relative), so the forward is the repo's factored one: no weight matrix is materialised.

It behaves like any causal LM of transformers: a KV cache through transformers' Cache classes (`cache`, the
deprecated `past_key_values`, `use_cache`), including the StaticCache of `generate(cache_implementation="static")`,
whose decoding step compiles as one graph (transformers does that by itself on a GPU), padding masks
(`attention_mask`; a left-padded row gets its own positions and the same tokens as the prompt alone),
`attn_implementation` 'sdpa' (default) or 'eager' (which alone returns `output_attentions`),
`output_hidden_states`, stop tokens from generation_config.json, and a clear error for inputs longer than the
context.
"""

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_kronygpt import KronyGPTConfig
from .errors import UserError
from .model import GPT, GPTConfig, Padding, rotary_table


class CacheView:
    """model.py's KV-cache interface (update(layer, k, v) -> all keys and values, pos) over a transformers Cache."""
    static = False

    def __init__(self, cache):
        self.cache, self.pos = cache, cache.get_seq_length()

    def update(self, layer, k, v):
        return self.cache.update(k, v, layer)


class StaticCacheView(CacheView):
    """The same over a transformers StaticCache (fixed-size buffers: what torch.compile'd decoding needs), as
    model.py's StaticKVCache: attention runs over all max_len slots, the ones not yet written masked. The cache
    writes each step at its own fill count (a tensor, so compiled code is not specialised on it)."""
    static = True

    def __init__(self, cache):
        self.cache, self.max_len, self.index = cache, cache.get_max_length(), None

    def slots(self, T, device):
        """(T,) the slots this step writes: the cache's fill count onwards."""
        filled = torch.as_tensor(self.cache.get_seq_length(), device=device).reshape(())
        return filled + torch.arange(T, device=device)


class KronyGPTPreTrainedModel(PreTrainedModel):
    config_class = KronyGPTConfig
    base_model_prefix = "gpt"
    _supports_sdpa = True
    _tied_weights_keys = {"gpt.lm_head.weight": "gpt.transformer.wte.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.gpt = GPT(GPTConfig.from_dict(config.model_args))
        if self.gpt.lm_head is self.gpt.transformer.wte:  # a factorised embedding: the lm_head is that module
            self._tied_weights_keys = {f"gpt.lm_head.{n}": f"gpt.transformer.wte.{n}"
                                       for n, _ in self.gpt.transformer.wte.named_parameters()}
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        """Every weight comes from the checkpoint; only the rotary tables (buffers that are not saved, left
        uninitialised by Hugging Face's meta-device loading) are computed again."""
        if isinstance(module, GPT) and hasattr(module, "rope_cos"):
            cos, sin = rotary_table(module.config, device=module.rope_cos.device)
            module.rope_cos.copy_(cos)
            module.rope_sin.copy_(sin)

    def get_input_embeddings(self):
        return self.gpt.transformer.wte

    def trunk(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None, **kwargs):
        """(final hidden states, cache, hidden states, attentions) of the GPT's blocks, the Hugging Face way; kwargs:
        transformers' output_hidden_states, output_attentions, inputs_embeds (refused), past_key_values."""
        output_hidden_states, output_attentions, inputs_embeds, past_key_values = (
            kwargs.get(k) for k in ("output_hidden_states", "output_attentions", "inputs_embeds", "past_key_values"))
        if inputs_embeds is not None:
            raise ValueError("KronyGPT takes input_ids, not inputs_embeds (its embedding may be factorised)")
        cache = cache if cache is not None else past_key_values
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        output_attentions = getattr(self.config, "output_attentions", False) if output_attentions is None \
            else output_attentions
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError("output_attentions needs attn_implementation='eager' (sdpa never forms the weights); "
                             "load the model with attn_implementation='eager'")
        static = cache is not None and cache.is_compileable
        view = (StaticCacheView if static else CacheView)(cache) if cache is not None else None
        B, T = input_ids.shape
        keep = mask = slots = None
        if static:
            slots = view.slots(T, input_ids.device)
        if attention_mask is not None and attention_mask.dim() == 4:  # transformers' own (B, 1, T, S) mask: generate
            # builds one for a static cache; boolean (True: attend) or additive (0: attend)
            mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        elif attention_mask is not None and (static or not bool(attention_mask.all())):  # (static: no data-dependent
            keep = attention_mask                                                          # branch, any mask is used)
            if static and keep.size(1) < view.max_len:  # over every slot (unwritten ones are masked anyway)
                keep = F.pad(keep, (0, view.max_len - keep.size(1)), value=1)
        if position_ids is None:
            if mask is not None:  # each token sees its row's real tokens up to itself
                position_ids = (mask[:, 0].sum(-1) - 1).clamp_min(0)
            elif keep is not None:  # a left-padded row counts its positions from its first token
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -T:]
            elif static:
                position_ids = slots.expand(B, T)
        hidden = [] if output_hidden_states else None
        attentions = [] if output_attentions else None
        try:
            x = self.gpt.trunk(input_ids, view, hidden, position_ids, attentions, embeddings=hidden is not None,
                               padding=Padding(keep, slots, mask))
        except UserError as e:  # an input longer than the context, say
            raise ValueError(str(e)) from None
        if hidden is not None:
            hidden[-1] = x  # transformers' convention: the last hidden state after the final norm
        return x, cache, tuple(hidden) if hidden is not None else None, \
            tuple(attentions) if attentions is not None else None


class KronyGPTModel(KronyGPTPreTrainedModel):
    """The base model (AutoModel): the blocks' final hidden states, without the head."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None, **kwargs):
        x, cache, hidden, attentions = self.trunk(input_ids, attention_mask, position_ids, cache, use_cache, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=x, cache=cache, hidden_states=hidden, attentions=attentions)


class KronyGPTForCausalLM(KronyGPTPreTrainedModel, GenerationMixin):

    def get_output_embeddings(self):
        return self.gpt.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, labels=None, use_cache=None,
                logits_to_keep=0, **kwargs):
        x, cache, hidden, attentions = self.trunk(input_ids, attention_mask, position_ids, cache, use_cache, **kwargs)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.gpt.lm_head(x)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache, hidden_states=hidden,
                                      attentions=attentions)

    @torch.no_grad()
    def num_parameters_factored(self):
        """Parameters as stored (tied embeddings once)."""
        return self.gpt.param_counts()["total"]
