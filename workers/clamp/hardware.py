"""Device and precision choices for inference, kept apart so callers need not touch torch."""

from __future__ import annotations

import torch


def resolve_device(setting: str) -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; anything else is passed through."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def bf16_supported(device: str) -> bool:
    """Whether bf16 autocast is worth using on this device (fast and numerically safe)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        # Without native bf16 units (AVX512-BF16 / AMX) CPU autocast is slower than fp32.
        try:
            return bool(
                torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported()
            )
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast_dtype(device: str) -> torch.dtype:
    """The reduced precision `fast` mode runs in on this device."""
    if torch.device(device).type == "cuda" and not bf16_supported(device):
        return torch.float16
    return torch.bfloat16
