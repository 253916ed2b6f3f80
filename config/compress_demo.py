# make demo: SmolLM2-135M compressed to 0.8x by the whole pipeline, sized for about ten minutes on a 2-core CPU
# (fewer calibration, fitting, recovery and evaluation tokens than config/compress_smollm2.py; the same stages)
model = "smollm2-135m"
size = "0.8"
out = "out-demo/smollm2-108M"
calib_tokens = 8192
fisher_tokens = 2048
fit_tokens = 8192
fit_steps = 15
steps = 20
eval_tokens = 2048
