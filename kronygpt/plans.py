"""
Factorisation plans: which matrices are sums of Kronecker products, with what shape and how many factors.
A plan is written as one string (GPTConfig.kron_plan, a config file, kron_decomp.py --plan), parsed once
into a Plan when it enters, and queried from then on:

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
    'mlp' (every MLP matrix: the down matrices take the opposite of the given up shape), or
    'attn' (both attention matrices; the shape must divide both, or be lowrank),
and SHAPE is the shape of the first factor A, 'm1xn1', or 'lowrank', the family member (out,1)x(1,in):
W = sum_k a_k b_k^T, a rank-FACTORS matrix (for 'mlp', every matrix is low rank). Matrices a plan does not
mention stay dense.

    plan = Plan.parse(text, layout)     # layout: the model's blocks and matrix sizes (GPTConfig.layout())
    plan.spec(3, "c_fc")                # MatrixSpec(shape, factors), or None when the matrix stays dense
    plan.spec(EMBED, "wte")             # the token embedding is a planned matrix like any other
    plan.restrict([0, 1])               # the same plan with every other layer dense
    plan.text                           # the shortest string for it (stored in checkpoints)
"""

import re
from dataclasses import dataclass

from .errors import ConfigError
from .families import ATTENTION
from .kronecker import KronShape, kron_shape

EMBED = "embed"   # the 'layer' of the token embedding (matrix 'wte'); blocks are 0..n_layer-1


@dataclass(frozen=True)
class MatrixSpec:
    """One factorised matrix: W = sum_k A_k (x) B_k with `factors` terms of `shape`."""
    shape: KronShape
    factors: int

    @property
    def lowrank(self):
        """Whether this is the low-rank member of the family ((out,1)x(1,in) or (1,in)x(out,1))."""
        s = self.shape
        return (s.n1 == 1 and s.m2 == 1) or (s.m1 == 1 and s.n2 == 1)

    def params(self, scalars=False):
        return self.shape.params(self.factors, scalars)

    @property
    def text(self):
        s = self.shape
        return f"{'lowrank' if (s.n1, s.m2) == (1, 1) else f'{s.m1}x{s.n1}'}*{self.factors}"

    def describe(self):
        return f"low rank {self.factors}" if self.lowrank else f"{self.factors} x {self.shape}"


@dataclass(frozen=True)
class Layout:
    """What a plan is resolved against: the number of blocks, each block's factorisable matrices with their
    (out, in) sizes, the family's up and down MLP matrices, and (vocab_size, n_embd) of the embedding when it
    may be factorised (a tied embedding), else None."""
    n_layer: int
    dims: dict
    up: tuple
    down: tuple
    embed: tuple = None


# -----------------------------------------------------------------------------
# parsing

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


def parse_matrix_spec(text, out_features, in_features, where="plan"):
    """'m1xn1*F' or 'lowrank*F' -> the MatrixSpec of an (out, in) matrix."""
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
    return MatrixSpec(s, factors)


class Plan:
    """A resolved plan: {(layer, matrix): MatrixSpec} over a Layout; layer is a block index or EMBED."""

    def __init__(self, specs, layout):
        self.layout = layout
        self._specs = {k: specs[k] for k in sorted(specs, key=_order)}

    @classmethod
    def parse(cls, text, layout):
        """The Plan of a plan string (grammar above), or a ConfigError naming the bad item."""
        specs = {}
        for item in filter(None, (t.strip() for t in (text or "").split(";"))):
            where = f"kron_plan item {item!r}"
            if item.partition("=")[0].strip() == EMBED:
                if layout.embed is None:
                    raise ConfigError(f"{where}: this model's embedding cannot be factorised (it needs "
                                      f"tie_embeddings=True: the lm_head then uses the same factors)")
                specs[(EMBED, "wte")] = parse_matrix_spec(item.partition("=")[2], *layout.embed, where)
                continue
            blocks_text, colon, spec = item.partition(":")
            if not colon:
                raise ConfigError(f"{where} must look like 'BLOCKS: SPEC', e.g. '*: mlp=lowrank*64' or '3: dense'")
            blocks = parse_blocks(blocks_text, layout.n_layer, where)
            if spec.strip() == "dense":
                specs = {k: v for k, v in specs.items() if k[0] not in blocks}
                continue
            entries = {}
            for part in filter(None, (p.strip() for p in spec.split(","))):
                entries.update(_parse_entry(part, layout, where))
            for b in blocks:
                specs.update({(b, n): s for n, s in entries.items()})
        return cls(specs, layout)

    @classmethod
    def dense(cls, layout):
        return cls({}, layout)

    # -- queries

    def spec(self, layer, name):
        """The MatrixSpec of matrix `name` of block `layer` (EMBED, 'wte' for the embedding), or None: dense."""
        return self._specs.get((layer, name))

    def layer_specs(self, layer):
        """{matrix: MatrixSpec} of one block (empty when it is dense)."""
        return {n: s for (b, n), s in self._specs.items() if b == layer}

    def items(self):
        """((layer, matrix), MatrixSpec) of every factorised matrix, blocks in order, the embedding last."""
        return self._specs.items()

    @property
    def layers(self):
        """Sorted indices of the blocks with at least one factorised matrix."""
        return sorted({b for b, _ in self._specs if b != EMBED})

    @property
    def embed(self):
        return self._specs.get((EMBED, "wte"))

    def __bool__(self):
        return bool(self._specs)

    def __eq__(self, other):
        return isinstance(other, Plan) and self._specs == other._specs and self.layout == other.layout

    def __repr__(self):
        return f"Plan({self.text!r})"

    # -- new plans from this one

    def restrict(self, layers):
        """This plan with only the listed layers factorised (block indices; EMBED for the embedding)."""
        keep = set(layers)
        return Plan({k: s for k, s in self._specs.items() if k[0] in keep}, self.layout)

    def updated(self, specs):
        """This plan with some matrices' specs replaced: {(layer, matrix): MatrixSpec or None (dense)}."""
        new = dict(self._specs)
        for k, s in specs.items():
            if s is None:
                new.pop(k, None)
            else:
                new[k] = s
        return Plan(new, self.layout)

    @property
    def text(self):
        """The shortest plan string for this plan: each (matrix, spec) pair is listed once with the blocks that
        use it, and pairs used by the same blocks share one item; the embedding's spec last."""
        blocks_of = {}
        for (b, n), s in self._specs.items():
            if b != EMBED:
                blocks_of.setdefault((n, s.text), []).append(b)
        items = {}
        for (n, text), bs in blocks_of.items():
            items.setdefault(tuple(bs), []).append(f"{n}={text}")
        order = sorted(items, key=lambda bs: (-len(bs), bs))
        parts = [f"{format_blocks(bs, self.layout.n_layer)}: {', '.join(items[bs])}" for bs in order]
        if self.embed is not None:
            parts.append(f"{EMBED}={self.embed.text}")
        return "; ".join(parts)


def _order(key):
    layer, name = key
    return (1, 0, name) if layer == EMBED else (0, layer, name)


def _parse_entry(part, layout, where):
    """{matrix: MatrixSpec} of one MATRIX=SHAPE*FACTORS entry (several matrices for mlp, up, down, attn)."""
    name, eq, value = part.partition("=")
    name = name.strip()
    if not eq:
        raise ConfigError(f"{where}: {part!r} must look like MATRIX=SHAPE*FACTORS")
    up, down, dims = layout.up, layout.down, layout.dims
    if name == "mlp" and value.strip().startswith("lowrank"):
        targets = [(n, value) for n in (*up, *down)]
    elif name == "mlp":  # the down matrices take the opposite of the up shape
        s = parse_matrix_spec(value, *dims[up[0]], where)
        f = s.factors
        targets = [(n, f"{s.shape.m1}x{s.shape.n1}*{f}") for n in up] + \
            [(n, f"{s.shape.n1}x{s.shape.m1}*{f}") for n in down]
    elif name in ("up", "down"):
        targets = [(n, value) for n in (up if name == "up" else down)]
    elif name == "attn":
        targets = [(n, value) for n in ATTENTION]
    elif name in dims:
        targets = [(name, value)]
    else:
        raise ConfigError(f"{where}: unknown matrix {name!r}; use mlp, up, down, attn, embed or one of "
                          f"{', '.join(dims)}")
    return {n: parse_matrix_spec(v, *dims[n], where) for n, v in targets}
