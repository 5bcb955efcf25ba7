"""Exact-resume RNG state in a checkpoint: torch CPU and CUDA, Python `random` and named generators, stored in
types that `torch.load(weights_only=True)` rebuilds."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from diffwave.checkpoints.safe_load import reason
from diffwave.errors import CheckpointError

logger = logging.getLogger("diffwave.checkpoint")


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Torch CPU and CUDA, Python `random` and the named generators, in types weights_only loads.

    Numpy's global state is left out on purpose: `np.random.get_state()` does not load under weights_only,
    so diffwave draws its randomness from torch generators and seeds instead.
    """
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "generators": {name: generator.get_state() for name, generator in (generators or {}).items()},
    }


@contextlib.contextmanager
def _restoring(part: str) -> Iterator[None]:
    """Turn any failure while restoring `part` into a CheckpointError: a skipped restore breaks exact resume."""
    try:
        yield
    except CheckpointError:
        raise
    except KeyError as error:
        raise CheckpointError(f"cannot restore the {part} RNG state from the checkpoint: missing {error}") from None
    except (TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
        raise CheckpointError(f"cannot restore the {part} RNG state from the checkpoint: {reason(error)}") from None


def _byte_tensor(value: Any) -> Tensor:
    """An RNG state as the CPU uint8 tensor torch wants (`map_location` may have moved it to a GPU)."""
    if not isinstance(value, Tensor) or value.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 tensor, found {type(value).__name__}")
    return value.cpu()


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore what `capture_rng_state` saved; anything missing or damaged is a CheckpointError.

    CUDA states are restored for the devices both machines have; a different device count (or a CPU-only
    resume of a GPU run) is logged as a warning, since GPU draws then cannot match the original run.
    """
    generators = generators or {}
    with _restoring("torch CPU"):
        torch.set_rng_state(_byte_tensor(state["torch"]))
    with _restoring("Python"):
        python = state["python"]
        random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    with _restoring("generator"):
        saved = state["generators"]
        missing = sorted(set(generators) - set(saved))
        if missing:
            raise CheckpointError(f"cannot restore the generator RNG state from the checkpoint: it has none for "
                                  f"{', '.join(missing)}")
        for name in sorted(set(saved) - set(generators)):
            logger.warning("the checkpoint has RNG state for generator '%s', which this run does not use", name)
    for name, generator in generators.items():
        with _restoring(f"'{name}' generator"):
            generator.set_state(_byte_tensor(saved[name]))
    with _restoring("CUDA"):
        cuda_states = list(state["cuda"])
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if len(cuda_states) != available:
            logger.warning("the checkpoint has CUDA RNG states for %d devices, this machine has %d: GPU random "
                           "draws will differ from the original run", len(cuda_states), available)
        for device, cuda_state in enumerate(cuda_states[:available]):
            torch.cuda.set_rng_state(_byte_tensor(cuda_state), device)
