"""Precision: the dtype names, and the one place that decides what "auto" means, for training and for inference.

- Training (`training_precision`): "auto" is bf16 on a CUDA device that supports it, fp16 on an older GPU, and
  fp32 on the CPU (bf16 training on a CPU is an explicit choice: `train.precision=bf16`).
- Inference (`resolve_dtype`): "auto" is fp32 off the CPU (half precision on a GPU is an explicit choice), and
  on the CPU bf16 only where it was *measured* faster on this machine: `calibrate` times one residual layer of
  the network's own shapes (a `Workload`, e.g. `model.cpu_kernels.LayerWorkload`) in fp32 and in bf16, a few
  milliseconds once per machine and shape, and bf16 must beat fp32 by `AUTO_MARGIN` (it costs fidelity, so a
  tie is fp32). One log line gives the choice and both timings. CPUs without bf16 matrix units (AMX,
  AVX512-BF16) emulate bf16 GEMMs and lose; CPUs with them win only as far as the kernels make them.
  The measurements are also kept in a small per-machine JSON file (`cache_path`: ~/.cache/diffwave/
  precision.json, or `DIFFWAVE_PRECISION_CACHE=FILE`; `=off` keeps none), keyed by the CPU model, torch
  version, thread count and shapes, so every later process on the machine reuses the first one's: the same
  choice each time, however loaded the machine is when a later process starts (a layer whose bf16 time is
  near the margin would otherwise flip between processes). Only a measurement made on a quiet machine is kept
  (`machine_busy`): one made beside other work can be far off, and would stick. A file that cannot be read is
  measured over, and one that cannot be written is skipped; neither stops a run.
Only the network's GEMMs change precision; the reverse chain (`diffusion.sampling.sample`) stays fp32. Both
policies run the network under `autocast`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Protocol, TypeVar

import torch

from diffwave.errors import DiffwaveError
from diffwave.fileio import atomic_write

logger = logging.getLogger("diffwave.precision")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", *DTYPES)  # the names configs and the CLI accept
AUTO_MARGIN = 0.9  # bf16 is picked only at under 90% of fp32's time
CALIBRATION_REPEATS = 3  # best of, per precision, after one warm-up call each
CACHE_ENV = "DIFFWAVE_PRECISION_CACHE"  # optional per-machine file of calibrations
clock = time.perf_counter  # what `calibrate` reads (tests give it a fake one)
load_average = getattr(os, "getloadavg", None)  # what `machine_busy` reads (None: not this OS; tests fake it)


class Workload(Protocol):
    """What `calibrate` times: one call runs the network's layer shapes once with GEMMs in `dtype`."""

    key: Hashable  # the shapes, so that one measurement serves every network of the same shapes

    def __call__(self, dtype: torch.dtype) -> None: ...


Choice = TypeVar("Choice", bound=Hashable)
_calibrations: dict[Hashable, dict[torch.dtype, float]] = {}  # per process: (device, workload key) -> seconds
_provenance: dict[Hashable, str] = {}  # per process: where each calibration came from or went, for the log


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
    precisions interleaved so that a passing disturbance hits both), measured once per shape in a process, and
    read from the cache file where an earlier process kept it."""
    key, timer = (str(device), workload.key), timer or clock
    if key not in _calibrations and (cached := _read_cache(key)) is not None:
        _calibrations[key], _provenance[key] = cached, f" by an earlier process, read from {cache_path()}"
    if key not in _calibrations:
        best = best_seconds((torch.float32, torch.bfloat16), workload, timer)
        _calibrations[key] = best
        _provenance[key] = _write_cache(key, best)
    return _calibrations[key]


def best_seconds(choices: Iterable[Choice], run: Callable[[Choice], None], timer: Callable[[], float],
                 select: Callable[[Choice], None] = lambda choice: None) -> dict[Choice, float]:
    """Seconds of `run(choice)` for each choice: one warm-up call each (weights, buffers, the GEMM library's
    kernels for these shapes), then the best of `CALIBRATION_REPEATS`, the choices interleaved so that a passing
    disturbance hits all. `select(choice)`, untimed, comes before each call (`threads` sets the thread count)."""
    best = dict.fromkeys(choices, float("inf"))
    with torch.inference_mode():
        for choice in best:
            select(choice)
            run(choice)
        for _ in range(CALIBRATION_REPEATS):
            for choice in best:
                select(choice)
                start = timer()
                run(choice)
                best[choice] = min(best[choice], timer() - start)
    return best


def machine_busy() -> str | None:
    """Why a measurement made now should not be kept, or None: other runnable work beyond the CPUs this process
    leaves free contends with its threads. Other work is the 1-minute load average, or the threads running
    right now less this process's own where that is more (a job started seconds ago barely moves the
    average). Where the load is a whole busy host's (a container) the machine looks busy, and every process
    measures for itself, as without a cache."""
    with contextlib.suppress(OSError):
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        load = load_average()[0] if load_average else 0.0
        other = max(load, running_threads() - torch.get_num_threads())
        if other > max(0, cpus - torch.get_num_threads()) + 0.5:
            return f"load {other:.2f} on {cpus} CPUs"
    return None


def running_threads() -> int:
    """Threads running or runnable on the machine now (procs_running of /proc/stat; 0 where there is none)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("procs_running"):
                return int(line.split()[1])
    return 0


def cpu_model() -> str:
    """The CPU's model name (lscpu's), which measurements are quoted with and cached for."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _machine_key(key: Hashable) -> str:
    """What a cached calibration is valid for: this CPU model, torch build, thread count, device and shapes."""
    return f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {key}"


def _cache_entries(path: Path) -> dict[str, dict[str, float]]:
    try:
        entries = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(entries, dict):
            raise ValueError("not a JSON object")
        return entries
    except (OSError, ValueError) as error:
        logger.warning("precision cache %s: unreadable (%s); measuring again", path, error)
        return {}


def cache_path() -> Path | None:
    """The calibration cache file: DIFFWAVE_PRECISION_CACHE's, "off" (or empty) for none, and by default
    diffwave/precision.json in the user's cache folder (XDG_CACHE_HOME, else ~/.cache)."""
    named = os.environ.get(CACHE_ENV)
    if named is not None:
        return None if named.strip().lower() in ("", "off") else Path(named).expanduser()
    with contextlib.suppress(RuntimeError):  # no home folder to find
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffwave" / "precision.json"
    return None


def _read_cache(key: Hashable) -> dict[torch.dtype, float] | None:
    if (path := cache_path()) is None:
        return None
    entry = _cache_entries(path).get(_machine_key(key))
    try:
        return {DTYPES[name]: float(entry[name]) for name in ("fp32", "bf16")} if entry else None
    except (KeyError, TypeError, ValueError):
        logger.warning("precision cache %s: a malformed entry; measuring again", path)
        return None


def _write_cache(key: Hashable, seconds: dict[torch.dtype, float]) -> str:
    """Keeps a fresh measurement in the cache file where there is one and the machine was quiet; says which, as
    the end of `auto_dtype`'s log line."""
    if (path := cache_path()) is None:
        return ""
    if busy := machine_busy():
        return f"; not kept in {path}: the machine was busy ({busy}), so the next process measures again"
    names = {dtype: name for name, dtype in DTYPES.items()}
    entries = _cache_entries(path) | {_machine_key(key): {names[d]: value for d, value in seconds.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as temp:
            temp.write_text(json.dumps(entries, indent=1))
    except OSError as error:  # a read-only home only loses the reuse: a warning where the user named the file
        logger.log(logging.WARNING if CACHE_ENV in os.environ else logging.DEBUG, "precision cache %s: not "
                   "written (%s)", path, error)
        return f"; not kept: {path} could not be written"
    return f"; kept in {path} for later processes ({CACHE_ENV}=off: measure in every process)"


def auto_dtype(device: torch.device, workload: Workload | None,
               timer: Callable[[], float] | None = None) -> tuple[torch.dtype, str]:
    """The precision `dtype="auto"` picks on `device` for a network of `workload`'s shapes, and why."""
    if device.type != "cpu":
        return torch.float32, f"fp32 on {device.type} (half precision there is an explicit choice: --dtype)"
    if workload is None:
        return torch.float32, "fp32 (no network shapes to measure bf16 against)"
    seconds = calibrate(workload, device, timer)
    fp32, bf16 = seconds[torch.float32], seconds[torch.bfloat16]
    where = _provenance.get((str(device), workload.key), "")
    timings = f"one residual layer: fp32 {fp32 * 1e3:.2f} ms, bf16 {bf16 * 1e3:.2f} ms, measured on this CPU{where}"
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
