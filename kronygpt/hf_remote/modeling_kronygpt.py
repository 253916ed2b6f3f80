"""
Hugging Face wrapper of an exported KronyGPT model: `AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)` builds this class, whose `gpt` is this repo's own GPT (model.py, kronecker.py and
the modules they use are copied next to this file by export.py, with only their imports made relative), so
the forward is the repo's factored one: no weight matrix is materialised.

Limits: no padding mask (generate from one prompt, or prompts of equal length) and no key/value cache across
generation steps (each step recomputes the prefix).
"""

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_kronygpt import KronyGPTConfig
from .model import GPT, GPTConfig, rotary_table


class KronyGPTForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = KronyGPTConfig
    base_model_prefix = "gpt"
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

    def get_output_embeddings(self):
        return self.gpt.lm_head

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        T = self.gpt.config.block_size
        logits, _ = self.gpt(input_ids[:, -T:], all_logits=True)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, -T:][:, 1:].flatten(),
                                   ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        return {"input_ids": input_ids}

    @torch.no_grad()
    def num_parameters_factored(self):
        """Parameters as stored (tied embeddings once)."""
        return self.gpt.param_counts()["total"]
