"""Mixed precision: which autocast dtype ``--amp`` means on a device."""

from __future__ import annotations

import torch

__all__ = ["amp_dtype", "cpu_has_bf16"]


def cpu_has_bf16() -> bool:
    """The CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 autocast made training
    steps 1.5-2x faster with the same losses (bench/speed.py, docs/performance.md); elsewhere
    bf16 is emulated and slower than fp32."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)  # private torch probes: absent means no
        try:
            if probe is not None and probe():
                return True
        except Exception:  # failing means no
            continue
    return False


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on ``device`` (None: fp32). ``auto``: bf16 on CUDA GPUs
    that support it, else fp16 (with a GradScaler); bf16 on CPUs with native bf16, else fp32."""
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None
