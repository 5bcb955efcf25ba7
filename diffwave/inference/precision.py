"""Inference precision: names to dtypes, what `auto` picks on a device and why, and the autocast a model runs
under. Only the network's GEMMs change precision; the reverse chain (`diffusion.sampling.sample`) stays fp32."""

from __future__ import annotations

import logging

import torch

from diffwave.errors import DiffwaveError

logger = logging.getLogger("diffwave.precision")

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX tiles or AVX512-BF16); elsewhere PyTorch
    emulates bf16 GEMMs through fp32, slower than fp32 itself (measured: see the README's inference table)."""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def auto_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    """The precision `dtype="auto"` picks on `device`, and why (for the log line)."""
    if device.type != "cpu":
        return torch.float32, f"fp32 on {device.type} (half precision there is an explicit choice: --dtype)"
    if cpu_has_bf16_matmul():
        return torch.bfloat16, "bf16: this CPU has bf16 matrix units (AMX or AVX512-BF16)"
    return torch.float32, "fp32: this CPU has no bf16 matrix units (no AMX, no AVX512-BF16), so bf16 would be slower"


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device,
                  error: type[DiffwaveError] = DiffwaveError) -> torch.dtype:
    """None means fp32; "auto" picks per device (`auto_dtype`) and logs which and why; fp16 needs CUDA."""
    if dtype == "auto":
        resolved, why = auto_dtype(device)
        logger.info("precision auto -> %s", why)
        return resolved
    resolved = PRECISIONS.get(dtype, dtype) if isinstance(dtype, str) else dtype or torch.float32
    if resolved not in PRECISIONS.values():
        raise error(f"dtype must be auto or one of {', '.join(PRECISIONS)}, got {dtype}")
    if resolved == torch.float16 and device.type != "cuda":
        raise error(f"{dtype} inference needs a CUDA device; on {device} use fp32 or bf16")
    return resolved


def autocast(device: torch.device, dtype: torch.dtype) -> torch.autocast:
    """The network's GEMMs in `dtype` (a no-op for fp32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
