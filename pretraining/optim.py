"""Optimizer parameter groups and learning-rate schedules of the released recipes."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import get_scheduler


def decays(module: nn.Module, name: str, param: nn.Parameter, scope: str) -> bool:
    """Whether parameter ``name`` of ``module`` gets weight decay under ``scope``.

    * ``all`` — every trainable parameter, biases and norms included. This is what fairseq's five
      released data2vec recipes do: plain ``adam`` has one group, and its ``composite`` optimizer never
      applies the ``weight_decay_scale: 0`` that ``data2vec2.py`` puts on 1-D parameters.
    * ``no_1d_bias`` — what ``data2vec2.py`` intends: no decay for 1-D parameters, biases and ALiBi scales.
    * ``matrices`` — only Linear/Conv weight matrices (the usual timm/transformers convention).
    """
    if scope == "all":
        return True
    if scope == "no_1d_bias":
        return not (param.dim() == 1 or name.endswith("bias") or "alibi_scale" in name)
    if scope == "matrices":
        return isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d) and name == "weight"
    raise ValueError(f"unknown weight decay scope {scope!r}")


def param_groups(model: nn.Module, weight_decay: float, scope: str = "all") -> list[dict]:
    """AdamW groups ``[decayed, not decayed]`` of the trainable parameters (the EMA teacher is frozen,
    so it is never in them). Each group also lists its ``param_names``."""
    groups = {True: ([], []), False: ([], [])}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            params, names = groups[decays(module, name, param, scope)]
            params.append(param)
            names.append(f"{module_name}.{name}" if module_name else name)
    return [
        {"params": groups[True][0], "param_names": groups[True][1], "weight_decay": weight_decay},
        {"params": groups[False][0], "param_names": groups[False][1], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, args) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; torch's fused kernel when the parameters are plain tensors on the
    CPU or a GPU (on the CPU the default per-tensor loop is ~4x slower and allocates temporaries the
    size of the embedding every step); the default implementation for sharded (DTensor) parameters."""
    groups = param_groups(model, args.weight_decay, args.weight_decay_scope)
    params = [p for group in groups for p in group["params"]]
    fused = all(type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        groups,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        fused=fused or None,
    )


def tri_stage_lambda(total_steps: int, ratios: tuple[float, float, float], init_scale=0.01, final_scale=0.01):
    """fairseq's tri-stage schedule: linear warmup from ``init_scale``, hold, exponential decay to
    ``final_scale`` (multipliers of the peak learning rate)."""
    warmup, hold = (round(r * total_steps) for r in ratios[:2])
    decay = max(total_steps - warmup - hold, 0)
    decay_factor = -math.log(final_scale) / decay if decay else 0.0

    def multiplier(step: int) -> float:
        if step < warmup:
            return init_scale + (1 - init_scale) * step / warmup
        if step < warmup + hold:
            return 1.0
        if step < warmup + hold + decay:
            return math.exp(-decay_factor * (step - warmup - hold))
        return final_scale

    return multiplier


def build_scheduler(args, optimizer):
    """The schedule of ``--lr_scheduler_type``, stepped once per optimizer update."""
    if args.lr_scheduler_type == "tri_stage":
        ratios = tuple(float(r) for r in args.tri_stage_ratios.split(","))
        if len(ratios) != 3 or abs(sum(ratios) - 1) > 1e-6:
            raise ValueError(
                f"--tri_stage_ratios must be three fractions summing to 1, got {args.tri_stage_ratios}"
            )
        return torch.optim.lr_scheduler.LambdaLR(optimizer, tri_stage_lambda(args.max_train_steps, ratios))
    warmup = args.num_warmup_steps
    if warmup is None:
        warmup = int(args.warmup_fraction * args.max_train_steps)
    return get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=args.max_train_steps
    )
