"""Training checkpoints: atomic saves, the `latest` pointer, pruning, and safe loads of our format.

A checkpoint is one `torch.save` zip holding plain types and tensors only (the trainer builds the dict:
format_version, config, step, epoch, model, ema, optimizer, scaler, rng, ...), so it always loads with
`torch.load(weights_only=True)` and no allow-list; `save_checkpoint` walks the state and refuses anything
else (numpy arrays or scalars, `Path`s, custom objects) before a file is written. "model" and "ema" are
plain model state dicts with the same keys (the trainer stores `AveragedModel.module.state_dict()`).

Layout: `run_dir/checkpoints/step_00000100.pt` plus a `latest` pointer file holding the newest name. Each
file is written to a temp file and renamed into place (`fileio.atomic_write`), and the pointer is written
last, so a save killed at any moment leaves the previous complete checkpoint as `latest`. When the pointer
names a missing or corrupt file, `latest_checkpoint` refuses rather than falling back silently: it names the
bad file and the newest older valid checkpoint, so the user decides to resume from that one (and loses the
steps since) instead of the run doing so unnoticed.

For inference (`model_state`) a checkpoint of the reference implementation (lmnt-com/diffwave) loads too, read
just as safely (safe_load.py) and converted by `reference`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffwave.checkpoints import reference
from diffwave.checkpoints.compatibility import current_keys
from diffwave.checkpoints.safe_load import read_torch_file, reason
from diffwave.errors import CheckpointError
from diffwave.fileio import atomic_write

logger = logging.getLogger("diffwave.checkpoint")

FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"

_STEP_FILE = re.compile(r"step_(\d{8})\.pt")
# Types that `torch.load(weights_only=True)` rebuilds without an allow-list (each tried on torch 2.14);
# exact type matches, because subclasses (np.float64 is a float) pickle as their own class.
_CONTAINERS = (dict, OrderedDict, list, tuple, set)
_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None),
           Tensor, torch.nn.Parameter, torch.Size, torch.dtype, torch.device)

# --- saving -------------------------------------------------------------------------------------------
def _check_weights_only_types(value: Any, where: str = "state") -> None:
    """Raise TypeError naming the first value that `torch.load(weights_only=True)` would refuse."""
    kind = type(value)
    if kind in _LEAVES:
        return
    if kind not in _CONTAINERS:
        raise TypeError(f"checkpoint {where} is a {kind.__module__}.{kind.__qualname__}, which "
                        "torch.load(weights_only=True) refuses; store plain Python types or tensors instead")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_weights_only_types(key, f"{where} (key {key!r})")
            _check_weights_only_types(item, f"{where}[{key!r}]")
    else:
        for index, item in enumerate(value):
            _check_weights_only_types(item, f"{where}[{index}]")


def save_checkpoint(run_dir: str | os.PathLike[str], step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write `run_dir/checkpoints/step_{step:08d}.pt`, then the `latest` pointer, then prune old ones.

    The pointer goes last so that a save killed part-way leaves `latest` on a complete checkpoint; the
    current format version is stamped on the state. Temp files of an earlier killed save are removed first,
    which frees their space before the new file is written.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    _check_weights_only_types(state)
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stray in folder.glob(".*.tmp"):
        logger.info("removing %s, left by an interrupted save", stray)
        stray.unlink(missing_ok=True)
    path = folder / f"step_{step:08d}.pt"
    try:
        with atomic_write(path) as temp:
            torch.save({**state, "format_version": FORMAT_VERSION}, temp)
        with atomic_write(folder / LATEST) as temp:
            temp.write_text(f"{path.name}\n")
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as RuntimeError "unexpected pos"
        raise CheckpointError(_failed_save(folder, path, error)) from None
    older = [old for _, old in _step_files(folder) if old != path]
    for old in older[:max(0, len(older) - (keep_last - 1))]:
        old.unlink(missing_ok=True)
    return path


def _failed_save(folder: Path, path: Path, error: BaseException) -> str:
    """One line for a save that failed (a full disk, most often): what, where, the space left, and which
    checkpoint is still the last good one (the temp file is gone and `latest` was not touched)."""
    free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
    pointer = folder / LATEST
    last_good = folder / pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
    kept = f"the last good checkpoint is still {last_good}" if last_good else "no earlier checkpoint exists"
    return f"could not write checkpoint {path.name} in {folder} ({free}): {reason(error)}; {kept}"


def _step_files(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step_NNNNNNNN.pt` in `folder`, oldest first; temp files never match."""
    if not folder.is_dir():
        return []
    found = ((_STEP_FILE.fullmatch(path.name), path) for path in folder.iterdir())
    return sorted((int(match[1]), path) for match, path in found if match and path.is_file())


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a diffwave checkpoint with `weights_only=True` only; every failure is a one-line CheckpointError."""
    path = Path(path)
    return _our_format(read_torch_file(path, map_location), path)


def _our_format(checkpoint: Any, path: Path) -> dict[str, Any]:
    """`checkpoint` when it is a diffwave checkpoint of the version this code reads; refused otherwise."""
    if reference.is_reference_checkpoint(checkpoint):
        raise CheckpointError(f"{path}: a reference (lmnt-com/diffwave) checkpoint: vocode, generate, denoise and "
                              "export read it, but diffwave training cannot resume from it")
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise CheckpointError(f"{path}: not a diffwave checkpoint (it has no format_version)")
    version = checkpoint["format_version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format v{version} is not supported "
                              f"(this diffwave reads v{FORMAT_VERSION})")
    return checkpoint


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint named by `run_dir/checkpoints/latest`, verified by a full safe load; None if none exist.

    A pointer to a missing or corrupt file is an error naming that file and the newest older valid one:
    resuming from an older checkpoint silently would throw away steps unnoticed. Checkpoint files without
    a pointer (a first save killed before its pointer was written) are an error too, saying how to resume.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    pointer = folder / LATEST
    steps = _step_files(folder)
    if not pointer.is_file():
        if not steps:
            return None
        valid = _newest_valid(steps, below=steps[-1][0] + 1)
        fix = f"to resume from {valid}, write '{valid.name}' into {pointer}" if valid else "none of them loads"
        raise CheckpointError(f"{folder} holds checkpoints but no '{LATEST}' pointer (a first save was "
                              f"interrupted, or it was deleted); {fix}")
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{pointer}: cannot read the checkpoint pointer ({reason(error)})") from None
    match = _STEP_FILE.fullmatch(name)
    if not match:
        raise CheckpointError(f"{pointer}: names '{name}', which is not a checkpoint file name (step_NNNNNNNN.pt)")
    target = folder / name
    if target.is_file():
        try:
            load_checkpoint(target)
            return target
        except CheckpointError as error:
            problem, fix = str(error), f"delete {target} and write"
    else:
        problem, fix = f"{pointer} names {target}, which does not exist", "write"
    older = _newest_valid(steps, below=int(match[1]))
    if older is None:
        raise CheckpointError(f"{problem}; no older valid checkpoint exists in {folder}")
    raise CheckpointError(f"{problem}; the newest older valid checkpoint is {older} (to resume from it, {fix} "
                          f"'{older.name}' into {pointer})")


def _newest_valid(steps: list[tuple[int, Path]], below: int) -> Path | None:
    for step, path in reversed(steps):
        if step < below:
            with contextlib.suppress(CheckpointError):
                load_checkpoint(path)
                return path
    return None


def _weights(checkpoint: dict[str, Any], key: str, path: Path) -> dict[str, Tensor]:
    weights = checkpoint.get(key)
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                for k, v in weights.items()):
        raise CheckpointError(f"{path}: has no '{key}' model weights (a mapping of names to tensors)")
    return dict(weights)


def _config(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    config = checkpoint.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: has no config (a mapping of sections)")
    return current_keys(config)


def model_state(path: Path, use_ema: bool) -> tuple[dict[str, Tensor], dict[str, Any], Any]:
    """(weights, config dict, step) of a torch file: ours (EMA or raw weights), or the reference's, converted."""
    checkpoint = read_torch_file(path)
    if reference.is_reference_checkpoint(checkpoint):
        return reference.convert(checkpoint, path)
    checkpoint = _our_format(checkpoint, path)
    key = "ema" if use_ema and checkpoint.get("ema") is not None else "model"
    return _weights(checkpoint, key, path), _config(checkpoint, path), checkpoint.get("step")
