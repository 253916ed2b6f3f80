"""
Factorisation plans: which matrices of which blocks are sums of Kronecker products, with what shape and how
many factors. A plan is one string a person can write in a config file (GPTConfig.kron_plan):

    "*: mlp=768x768*1"                          every block: c_fc (768,768)x(4,1), c_proj the opposite shape
    "*: mlp=lowrank*139; 11,28: dense"          rank 139 everywhere, blocks 11 and 28 stay dense
    "0-14: up=512x576*1, down=lowrank*96"       per matrix: different shapes, factor counts, or dense
    "*: mlp=lowrank*200, attn=lowrank*96; embed=lowrank*256"   attention and the token embedding too

Items are separated by ';' and apply in order: a later item overrides an earlier one for the same matrix.
Each item is BLOCKS: SPEC, or embed=SHAPE*FACTORS for the token embedding (and the lm_head tied to it).
BLOCKS is '*' or indices and ranges ('0,2,5-9'). SPEC is 'dense' or a comma-separated list of
MATRIX=SHAPE*FACTORS, where MATRIX is
    one matrix of the block by its name: the MLP's (c_fc, c_proj; gate_proj, up_proj, down_proj) or the
    attention's (attn.c_attn, the fused q/k/v projection, and attn.c_proj, the output projection),
    'up' or 'down' (every up or down matrix of the MLP),
    'mlp' (every MLP matrix: the down matrices take the opposite of the given up shape, as kron_shape does), or
    'attn' (both attention matrices; the shape must divide both, or be lowrank),
and SHAPE is the shape of the first factor A, 'm1xn1', or 'lowrank', the family member (out,1)x(1,in):
W = sum_k a_k b_k^T, a truncated-SVD-style rank-FACTORS matrix (for 'mlp', every matrix is low rank).
Blocks a plan does not mention stay dense. format_plan writes the shortest string for a resolved plan.
"""

import re

from .errors import ConfigError
from .families import ATTENTION
from .kronecker import kron_shape


def parse_blocks(text, n_layer, where="plan"):
    """'*' or '0,2,5-9' -> sorted block indices, or a ConfigError naming the bad part."""
    text = text.strip()
    if text == "*":
        return list(range(n_layer))
    out = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise ConfigError(f"{where}: blocks {text!r} must be '*' or indices and ranges like 0,2,5-9")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise ConfigError(f"{where}: block range {part.strip()!r} is reversed; write {b}-{a}")
        if b >= n_layer:
            raise ConfigError(f"{where}: block {b} is outside 0..{n_layer - 1}")
        out.update(range(a, b + 1))
    return sorted(out)


def format_blocks(blocks, n_layer):
    """The inverse of parse_blocks: '*' or '0-3,7'."""
    blocks = sorted(blocks)
    if blocks == list(range(n_layer)):
        return "*"
    runs, start = [], None
    for i, b in enumerate(blocks):
        if start is None:
            start = b
        if i + 1 == len(blocks) or blocks[i + 1] != b + 1:
            runs.append(str(start) if start == b else f"{start}-{b}")
            start = None
    return ",".join(runs)


def parse_matrix_spec(text, out_features, in_features, where):
    """'m1xn1*F' or 'lowrank*F' -> (m1, n1, F) for an (out, in) matrix."""
    m = re.fullmatch(r"\s*(?:(\d+)\s*x\s*(\d+)|(lowrank))\s*\*\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"{where}: {text!r} must look like m1xn1*F (e.g. 768x768*1) or lowrank*F")
    m1, n1 = (out_features, 1) if m.group(3) else (int(m.group(1)), int(m.group(2)))
    factors = int(m.group(4))
    try:
        s = kron_shape(out_features, in_features, m1, n1)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not 1 <= factors <= s.max_rank:
        raise ConfigError(f"{where}: {factors} factors for shape {s}; use 1..{s.max_rank} (its maximum Kronecker rank)")
    return m1, n1, factors


def parse_plan(text, n_layer, up, down, dims, embed_dims=None):
    """Resolve a plan string: ({block: {matrix: (m1, n1, factors)}} (dense matrices absent), the token
    embedding's (m1, n1, factors) or None). up, down: the family's up and down matrix names; dims:
    {matrix: (out, in)}; embed_dims: (vocab_size, n_embd)."""
    plan, embed = {}, None
    for item in filter(None, (t.strip() for t in text.split(";"))):
        where = f"kron_plan item {item!r}"
        if item.startswith("embed") and item.partition("=")[0].strip() == "embed":
            if embed_dims is None:
                raise ConfigError(f"{where}: this model has no factorisable embedding")
            embed = parse_matrix_spec(item.partition("=")[2], *embed_dims, where)
            continue
        blocks_text, colon, spec = item.partition(":")
        if not colon:
            raise ConfigError(f"{where} must look like 'BLOCKS: SPEC', e.g. '*: mlp=lowrank*64' or '3: dense'")
        blocks = parse_blocks(blocks_text, n_layer, where)
        if spec.strip() == "dense":
            for b in blocks:
                plan.pop(b, None)
            continue
        entries = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, eq, value = part.partition("=")
            name = name.strip()
            if not eq:
                raise ConfigError(f"{where}: {part!r} must look like MATRIX=SHAPE*FACTORS")
            if name == "mlp" and value.strip().startswith("lowrank"):
                targets = [(n, value) for n in (*up, *down)]
            elif name == "mlp":
                m1, n1, f = parse_matrix_spec(value, *dims[up[0]], where)
                targets = [(n, f"{m1}x{n1}*{f}") for n in up] + [(n, f"{n1}x{m1}*{f}") for n in down]
            elif name in ("up", "down"):
                targets = [(n, value) for n in (up if name == "up" else down)]
            elif name == "attn":
                targets = [(n, value) for n in ATTENTION]
            elif name in dims:
                targets = [(name, value)]
            else:
                raise ConfigError(f"{where}: unknown matrix {name!r}; use mlp, up, down, attn, embed or one of "
                                  f"{', '.join(dims)}")
            for n, v in targets:
                entries[n] = parse_matrix_spec(v, *dims[n], where)
        for b in blocks:
            plan.setdefault(b, {}).update(entries)
    return plan, embed


def matrix_spec_text(m1, n1, factors, out_features):
    return f"{'lowrank' if (m1, n1) == (out_features, 1) else f'{m1}x{n1}'}*{factors}"


def format_plan(plan, n_layer, dims, embed=None, embed_dims=None):
    """A short plan string for a resolved plan: each (matrix, spec) pair is listed once with the blocks
    that use it, and pairs used by the same blocks share one item; the embedding's spec last."""
    blocks_of = {}
    for b in sorted(plan):
        for n in dims:
            if n in plan[b]:
                blocks_of.setdefault((n, matrix_spec_text(*plan[b][n], dims[n][0])), []).append(b)
    items = {}
    for (n, spec), bs in blocks_of.items():
        items.setdefault(tuple(bs), []).append(f"{n}={spec}")
    order = sorted(items, key=lambda bs: (-len(bs), bs))
    text = "; ".join(f"{format_blocks(bs, n_layer)}: {', '.join(items[bs])}" for bs in order)
    if embed is not None:
        text += ("; " if text else "") + f"embed={matrix_spec_text(*embed, embed_dims[0])}"
    return text
