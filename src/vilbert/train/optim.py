"""AdamW with BERT's no-decay groups, and the linear warm-up / linear decay schedule."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _is_norm(module: nn.Module) -> bool:
    # Custom norms (a model's own LayerNorm class) are recognised by name as well as by type.
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


def lr_scale_of(name: str, lr_scales: Mapping[str, float]) -> float:
    """The multiplier for parameter `name`: that of the longest key that is the name itself or a
    prefix of it ending in "." (a module path), else 1."""
    best, scale = -1, 1.0
    for key, value in lr_scales.items():
        if (name == key or (key.endswith(".") and name.startswith(key))) and len(key) > best:
            best, scale = len(key), float(value)
    return scale


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                 lr_scales: Mapping[str, float] | None = None) -> list[dict]:
    """AdamW groups: decayed weights, and biases + norm parameters without decay; each split again
    by learning-rate multiplier when `lr_scales` (parameter name or module prefix -> multiplier)
    is given. The groups at the full rate come first, so `param_groups[0]["lr"]` is the base rate.

    Shared (tied) parameters appear once. Frozen parameters are left out.
    """
    lr_scales = dict(lr_scales or {})
    for key, value in lr_scales.items():
        if not value > 0:
            raise ValueError(f"learning-rate multiplier for {key!r} must be > 0, got {value}")
    grouped: dict[tuple[float, bool], list] = {}
    seen = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            decayed = not (name.endswith("bias") or _is_norm(module))
            grouped.setdefault((lr_scale_of(full, lr_scales), decayed), []).append(param)
    groups = []
    for (scale, decayed), params in sorted(grouped.items(), key=lambda kv: (kv[0][0] != 1.0, -kv[0][0], not kv[0][1])):
        group = {"params": params, "weight_decay": weight_decay if decayed else 0.0}
        if lr is not None:
            group["lr"] = lr * scale
        groups.append(group)
    return groups


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
    lr_scales: Mapping[str, float] | None = None,
) -> torch.optim.AdamW:
    """AdamW, fused where this torch supports it for the parameters' device (else foreach)."""
    groups = param_groups(model, weight_decay, lr, lr_scales)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError, TypeError):
        # fused needs floating tensors on a supported device; foreach is the next fastest path
        return torch.optim.AdamW(param_groups(model, weight_decay, lr, lr_scales), lr=lr, betas=betas, eps=eps, foreach=True)


def warmup_linear_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """LR multiplier of optimizer step `step` (0-based): 0 -> 1 over warm-up, then 1 -> 0 at the end."""
    if step < warmup_steps:
        return step / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float) -> LambdaLR:
    """Linear warm-up over `warmup_fraction` of the steps, then linear decay to 0."""
    warmup_steps = int(round(warmup_fraction * total_steps))
    return LambdaLR(optimizer, lambda step: warmup_linear_factor(step, total_steps, warmup_steps))

