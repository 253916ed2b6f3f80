"""
KronyGPT's library: everything the commands at the top of the repo share.

    errors, families        user-error types; the model families (GPT-2, Llama) as one table
    kronecker, plans        the factorised layer; factorisation plans, parsed once into a Plan
    decompose, permute      the decomposition maths and the model surgery; hidden-unit permutation
    calib, planner          calibration statistics; budgets, shape choice and allocation
    checkpoint, hf_io       the one checkpoint format and loader; Hugging Face import and export
    tokenizer, data_utils   tokenizers; prepared token datasets
    trainer, optim, runtime, distill   the training loop, optimiser, device/DDP, distillation
"""
