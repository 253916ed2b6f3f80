"""
Fully sharded training (--fsdp under torchrun): parameters, gradients and optimizer states split over the
processes (torch.distributed.fsdp.fully_shard, FSDP2), one unit per transformer block plus the root (embedding,
final norm, head), for students that do not fit one device with DDP's full replicas.

Checkpoints stay in the one format: on save every rank takes part in gathering the full model and optimizer
state (CPU, rank 0 writes), the optimizer state converted to the integer-keyed layout a single process writes;
on resume the full state is loaded into the unsharded model before sharding and into the sharded optimizer
after. So a run may resume with or without --fsdp, on any number of processes.
"""

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(model, rt):
    """Shard `model` in place over the process group: each block its own unit, then the root."""
    mesh = init_device_mesh(rt.device_type, (rt.world_size,))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model):
    return any(isinstance(p, DTensor) for p in model.parameters())


def local(t):
    """This rank's shard of a DTensor (a plain tensor is returned as it is)."""
    return t.to_local() if isinstance(t, DTensor) else t


def full(t):
    """The whole tensor of a DTensor (a collective: every rank calls it); a plain tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def _param_names(model, optimizer):
    """[[name, ...] per optimizer group], the order a plain optimizer's state_dict numbers parameters in."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]


def full_state(model, optimizer):
    """(model state, optimizer state) gathered from every rank, as one process would save them (integer-keyed
    optimizer state); complete on rank 0 (the others get empty dicts). A collective: every rank calls it."""
    msd = get_model_state_dict(model, options=FULL)
    osd = get_optimizer_state_dict(model, optimizer, options=FULL)
    if not msd:
        return {}, {}
    index, groups = {}, []
    for g, names in zip(osd["param_groups"], _param_names(model, optimizer), strict=True):
        ids = []
        for n in names:
            index[n] = len(index)
            ids.append(index[n])
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
    state = {index[n]: s for n, s in osd["state"].items()}
    return msd, {"state": state, "param_groups": groups}


def load_optimizer(model, optimizer, saved):
    """Load an integer-keyed optimizer state (a checkpoint's) into the optimizer of a sharded model."""
    names = [n for group in _param_names(model, optimizer) for n in group]
    state = {names[i]: s for i, s in saved["state"].items()}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[i] for i in g["params"]]}
              for g in saved["param_groups"]]
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))


def all_sum(t):
    """Sum a tensor over the ranks (in place) and return it."""
    dist.all_reduce(t)
    return t


def same_steps(n_local, device):
    """The largest per-rank count: with sharded parameters every rank must run the same number of forwards
    (each gathers the parameters with the others)."""
    t = torch.tensor([n_local], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
