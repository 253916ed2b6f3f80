# SmolLM2-135M-Instruct (the GGUF on PyPI, the pretrained model available offline) compressed to 0.8x with this
# repo's pipeline and the general study's recovery recipe: python compress.py config/compress_smollm2.py
model = "smollm2-135m"
size = "0.8"
out = "out-compress/smollm2-108M"
method = "lowrank_width_fit"
steps = 300
