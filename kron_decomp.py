"""
Decompose a dense model's matrices into sums of Kronecker products and write a checkpoint that train.py
(init_from=PATH), train_distillation.py, sample.py, eval.py and export.py load.

    python kron_decomp.py --model gpt2 --factors 1 --shape 768x768 --init vl_norm --out out-decomp/gpt2_81M.pt
    python kron_decomp.py --model gpt2 --target_params distilgpt2 --init vl --out out-decomp/gpt2_82M.pt
    python kron_decomp.py --model gpt2 --factors 1 --shape 3072x384 --init prune --out out-decomp/gpt2_96M_prune.pt
    python kron_decomp.py --model gpt2 --list_shapes            # every valid shape and its parameter counts
    python kron_decomp.py --model smollm2-135m --target_params 81.4M --init aware --calib shakespeare_smollm2-135m \\
        --out out-decomp/smollm2_81M.pt                          # the calibrated planner picks shape and factors
    python kron_decomp.py --model smollm2-135m --target_params 81.4M --init fisher --calib shakespeare_smollm2-135m \\
        --allocate --scope blocks --out out-decomp/smollm2_81M_alloc.pt   # each matrix its own rank (or dense)
    python kron_decomp.py --model smollm2-135m --target_params 81.4M --init fisher --calib shakespeare_smollm2-135m \
        --allocate --scope blocks --families lowrank,kron:3x1 --permute --out out-decomp/smollm2_81M_mixed.pt
                                                                 # low rank or Kronecker, matrix by matrix
    python kron_decomp.py --model gpt2-xl --target_params 935M --init fisher --calib shakespeare --allocate \
        --scope blocks --calib_tokens 2048 --stream --out out-decomp/gpt2xl.pt   # one block's statistics at a time
    python kron_decomp.py --model smollm2-135m --keep_blocks even --out out-decomp/smollm2_15blocks.pt  # truncation
    python kron_decomp.py config/decomp_smollm2_81M.py           # the same settings from a config file

--shape m1xn1 is the first factor A of c_fc (Llama: gate_proj and up_proj), of shape (hidden, n_embd); B is
(hidden/m1, n_embd/n1), and c_proj (down_proj) uses the opposite shapes. --shape lowrank is the family member
(out,1)x(1,in) for every matrix: W = sum_k a_k b_k^T, with --factors the rank. --plan gives any plan (grammar
in kronygpt/plans.py). The maths of every --init is in kronygpt/factorize.py; 'aware' and 'fisher' need
--calib. The checkpoint and a JSON report beside it (same name, .json) are written only if neither exists
(--force overwrites both).
"""

import sys

from configurator import configure, run_cli
from kronygpt.checkpoint import check_output_file, refuse_clashes
from kronygpt.claims import Claim
from kronygpt.decompose import DecompConfig, decompose, load_dense, print_table, save
from kronygpt.planner import list_shapes
from kronygpt.runtime import return_large_frees_to_os


def print_shapes(config, layers):
    print(f"\nshapes of the {config.mlp_hidden}x{config.n_embd} up matrices (down matrices take the opposite); "
          f"total model parameters for 1..4 factors; 'keeps rank' = fewest factors whose product can "
          f"have the dense rank {min(config.mlp_hidden, config.n_embd)}")
    print(f"{'A (m1,n1)':<12} {'B (m2,n2)':<12} {'max rank':>8} {'keeps rank':>10} "
          + " ".join(f"{f'{f} factor' + ('s' if f > 1 else ''):>13}" for f in range(1, 5)))
    for s, max_rank, keep, counts in list_shapes(config, layers):
        print(f"{f'({s.m1},{s.n1})':<12} {f'({s.m2},{s.n2})':<12} {max_rank:>8} {keep or '>4':>10} "
              + " ".join(f"{c:>13,}" if c else f"{'-':>13}" for c in counts))


def main(argv=None):
    cfg = configure(DecompConfig(), sys.argv[1:] if argv is None else argv, doc=__doc__)
    return_large_frees_to_os()  # peak memory is this tool's limit: freed statistics go back to the system
    if cfg.list_shapes:
        dense, layers = load_dense(cfg)
        return print_shapes(dense.config, layers)
    out, report_path = check_output_file(cfg.out, cfg.force, cfg.model, report=True)
    refuse_clashes([("--out", out), ("its report", report_path), ("--calib_cache", cfg.calib_cache)],
                   [("--model", cfg.model)])
    with Claim(out + ".lock", f"--out {out}"):  # a second kron_decomp to the same --out is refused meanwhile
        result = decompose(cfg)
        print_table(result.rows)
        save(result, out, report_path)
    print(f"wrote {out} and {report_path} in {result.report['seconds']:.1f}s")


if __name__ == "__main__":
    run_cli(main)
