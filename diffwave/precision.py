"""Precision: the dtype names, and the one place that decides what "auto" means, for training and for inference.

- Training (`training_precision`): "auto" is bf16 on a CUDA device that supports it, fp16 on an older GPU, and
  fp32 on the CPU (bf16 training on a CPU is an explicit choice: `train.precision=bf16`).
- Inference (`resolve_dtype`): "auto" is fp32 off the CPU (half precision on a GPU is an explicit choice), and
  on the CPU bf16 only where it was *measured* faster on this machine: `calibrate` times one residual layer of
  the network's own shapes (a `Workload`, e.g. `model.cpu_kernels.LayerWorkload`) in fp32 and in bf16, a few
  milliseconds once per process and shape, and bf16 must beat fp32 by `AUTO_MARGIN` (it costs fidelity, so a
  tie is fp32). One log line gives the choice and both timings. CPUs without bf16 matrix units (AMX,
  AVX512-BF16) emulate bf16 GEMMs and lose; CPUs with them win only as far as the kernels make them.
Only the network's GEMMs change precision; the reverse chain (`diffusion.sampling.sample`) stays fp32. Both
policies run the network under `autocast`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Protocol

import torch

from diffwave.errors import DiffwaveError

logger = logging.getLogger("diffwave.precision")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", *DTYPES)  # the names configs and the CLI accept
AUTO_MARGIN = 0.9  # bf16 is picked only at under 90% of fp32's time
CALIBRATION_REPEATS = 3  # best of, per precision, after one warm-up call each
clock = time.perf_counter  # what `calibrate` reads (tests give it a fake one)


class Workload(Protocol):
    """What `calibrate` times: one call runs the network's layer shapes once with GEMMs in `dtype`."""

    key: Hashable  # the shapes, so that one measurement serves every network of the same shapes

    def __call__(self, dtype: torch.dtype) -> None: ...


_calibrations: dict[Hashable, dict[torch.dtype, float]] = {}  # per process: (device, workload key) -> seconds


def training_precision(precision: str, device: torch.device) -> str:
    """The precision a training run uses: 'auto' is bf16 on a CUDA device that supports it, fp16 on an older
    GPU, fp32 on the CPU; any other name is itself."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def calibrate(workload: Workload, device: torch.device,
              timer: Callable[[], float] | None = None) -> dict[torch.dtype, float]:
    """Seconds of one `workload` call in fp32 and in bf16 (the best of `CALIBRATION_REPEATS`, the two
    precisions interleaved so that a passing disturbance hits both), measured once per process and shape."""
    key, timer = (str(device), workload.key), timer or clock
    if key not in _calibrations:
        dtypes = (torch.float32, torch.bfloat16)
        best = dict.fromkeys(dtypes, float("inf"))
        with torch.inference_mode():
            for dtype in dtypes:
                workload(dtype)  # warm-up: weights, buffers, the GEMM library's kernels for these shapes
            for _ in range(CALIBRATION_REPEATS):
                for dtype in dtypes:
                    start = timer()
                    workload(dtype)
                    best[dtype] = min(best[dtype], timer() - start)
        _calibrations[key] = best
    return _calibrations[key]


def auto_dtype(device: torch.device, workload: Workload | None,
               timer: Callable[[], float] | None = None) -> tuple[torch.dtype, str]:
    """The precision `dtype="auto"` picks on `device` for a network of `workload`'s shapes, and why."""
    if device.type != "cpu":
        return torch.float32, f"fp32 on {device.type} (half precision there is an explicit choice: --dtype)"
    if workload is None:
        return torch.float32, "fp32 (no network shapes to measure bf16 against)"
    seconds = calibrate(workload, device, timer)
    fp32, bf16 = seconds[torch.float32], seconds[torch.bfloat16]
    timings = f"one residual layer: fp32 {fp32 * 1e3:.2f} ms, bf16 {bf16 * 1e3:.2f} ms, measured on this CPU"
    if bf16 < AUTO_MARGIN * fp32:
        return torch.bfloat16, f"bf16, measured faster ({timings})"
    return torch.float32, f"fp32, bf16 is not measurably faster here ({timings})"


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device, error: type[DiffwaveError] = DiffwaveError,
                  *, workload: Workload | None = None) -> torch.dtype:
    """The inference precision: None means fp32; "auto" picks per device (`auto_dtype`, measured on the CPU on
    `workload`) and logs which and why; fp16 needs CUDA."""
    if dtype == "auto":
        resolved, why = auto_dtype(device, workload)
        logger.info("precision auto -> %s", why)
        return resolved
    resolved = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype or torch.float32
    if resolved not in DTYPES.values():
        raise error(f"dtype must be auto or one of {', '.join(DTYPES)}, got {dtype}")
    if resolved == torch.float16 and device.type != "cuda":
        raise error(f"{dtype} inference needs a CUDA device; on {device} use fp32 or bf16")
    return resolved


def autocast(device: torch.device, dtype: torch.dtype) -> torch.autocast:
    """The network's GEMMs in `dtype` (a no-op for fp32), in training and in inference."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
