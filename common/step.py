"""The two helpers a training step uses: copy this file with a `train_step` and it runs on its own.

    # bf16/fp16 autocast, or float32 when amp_dtype is None
    autocast = autocast_to(real.device.type, amp_dtype)
    # G's loss through D, without D's weight gradients
    with autocast, frozen(D):
        loss_g = ...
"""
import contextlib

import torch
import torch.nn as nn

DDP = nn.parallel.DistributedDataParallel


def autocast_to(device_type: str, amp_dtype) -> torch.autocast:
    """torch.autocast to amp_dtype (torch.bfloat16 or torch.float16); a disabled one (float32) for
    None. Reusable: a step may enter it several times."""
    return torch.autocast(device_type, dtype=amp_dtype or torch.float32,
                          enabled=amp_dtype is not None)


@contextlib.contextmanager
def frozen(net: nn.Module):
    """Inside, forwards of `net` (plain, DDP or compiled) record no gradient for its weights, only
    through it. For D in G's step: G needs the gradient through D, while D's weight gradients would
    be computed, all-reduced under DDP and thrown away. The backward may run after the block. Under
    DDP the block is also no_sync(), so the reducer waits for no gradient."""
    inner = getattr(net, "_orig_mod", net)  # torch.compile's wrapper shares the module it compiles
    plain = inner.module if isinstance(inner, DDP) else inner
    flags = [p.requires_grad for p in plain.parameters()]
    plain.requires_grad_(False)
    try:
        with inner.no_sync() if inner is not plain else contextlib.nullcontext():
            yield
    finally:
        for p, flag in zip(plain.parameters(), flags):
            p.requires_grad_(flag)
