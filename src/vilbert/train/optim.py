"""AdamW with BERT's no-decay groups, and the linear warm-up / linear decay schedule."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _is_norm(module: nn.Module) -> bool:
    # Custom norms (a model's own LayerNorm class) are recognised by name as well as by type.
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights, and biases + norm parameters without decay.

    Shared (tied) parameters appear once. Frozen parameters are left out.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            if name.endswith("bias") or _is_norm(module):
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6
) -> torch.optim.AdamW:
    """AdamW, fused where this torch supports it for the parameters' device (else foreach)."""
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError, TypeError):
        # fused needs floating tensors on a supported device; foreach is the next fastest path
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, foreach=True)


def warmup_linear_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """LR multiplier of optimizer step `step` (0-based): 0 -> 1 over warm-up, then 1 -> 0 at the end."""
    if step < warmup_steps:
        return step / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float) -> LambdaLR:
    """Linear warm-up over `warmup_fraction` of the steps, then linear decay to 0."""
    warmup_steps = int(round(warmup_fraction * total_steps))
    return LambdaLR(optimizer, lambda step: warmup_linear_factor(step, total_steps, warmup_steps))
