"""Exported weights as safetensors: no pickle at all, so the format to share; the config and step are metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from diffwave.checkpoints import reference
from diffwave.checkpoints.compatibility import current_keys
from diffwave.checkpoints.safe_load import ZIP_MAGIC, read_head, reason
from diffwave.checkpoints.store import FORMAT_VERSION, model_state
from diffwave.config import config_from_dict
from diffwave.errors import CheckpointError
from diffwave.fileio import atomic_write

MAX_SAFETENSORS_HEADER = 100_000_000  # bytes; a larger length prefix is damage or an attack, not a header


def export_safetensors(checkpoint_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                       use_ema: bool = True, changes: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write a checkpoint's EMA (or raw) weights as safetensors, with its config and step as metadata; a
    reference (lmnt-com/diffwave) checkpoint or model folder gives its only weights and converted config; an
    exported .safetensors gives its own weights and step (tensors kept bit for bit).

    `changes` (section -> key -> value) update the config on the way, e.g. a tuned diffusion.fast_schedule;
    the result must still be a valid config, checked before anything is written. The output holds no pickle
    at all, so it is the format to share; `load_model_weights` reads it.
    """
    path, out = reference.model_file(Path(checkpoint_path)), Path(out_path)
    if is_safetensors(path):
        weights, config, step = _read(path)
    else:
        weights, config, step = model_state(path, use_ema)
    if not out.parent.is_dir():
        raise CheckpointError(f"{out}: the output folder {out.parent} does not exist")
    for section, values in (changes or {}).items():
        config = {**config, section: {**config.get(section, {}), **values}}
    config_from_dict(current_keys(config), source=f"{path} with {changes}")
    metadata = {"format": "diffwave", "format_version": str(FORMAT_VERSION), "config": json.dumps(config),
                "step": str(step)}
    # safetensors refuses tensors that share storage or are not contiguous: give it private copies.
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in weights.items()}
    with atomic_write(out) as temp:
        save_file(tensors, str(temp), metadata=metadata)
    return out


def is_safetensors(path: Path) -> bool:
    """Whether the model file `path` is read as safetensors: a `.safetensors` name always is (so that a torch
    checkpoint under that name is named as "not a safetensors file"; torch would misread it as safetensors:
    "header too large"); another name is when it holds a JSON header after the 8-byte length prefix."""
    head = read_head(path, 9)
    return path.suffix == ".safetensors" or (not head.startswith(ZIP_MAGIC) and head[8:9] == b"{")


def load_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(weights, config dict) of a file written by `export_safetensors`; damage is a one-line CheckpointError.

    The 8-byte length prefix is checked first, so a torch file given by mistake is named as such (rather
    than "header too large") and a hostile length never reaches the parser.
    """
    weights, config, _ = _read(Path(path))
    return weights, config


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, Any], int | None]:
    """(weights, config dict, step) of a safetensors file written here (step None when it has none)."""
    head = read_head(path, 8)
    if not head:
        raise CheckpointError(f"{path}: safetensors file is empty (0 bytes)")
    size = path.stat().st_size
    length = int.from_bytes(head, "little") if len(head) == 8 else None
    if length is None or length > MAX_SAFETENSORS_HEADER or length > size - 8:
        if head.startswith((b"PK", b"\x80")):
            raise CheckpointError(f"{path}: not a safetensors file (looks like a torch checkpoint: load it as a .pt)")
        found = ("shorter than the 8-byte header length" if length is None
                 else f"its header length prefix says {length} bytes, the file has {size}")
        raise CheckpointError(f"{path}: not a safetensors file ({found})")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            config = _safetensors_config(metadata, path)
            step = metadata.get("step")
            weights = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: corrupt safetensors file ({reason(error)})") from None
    return weights, config, int(step) if step and step.isdigit() else None


def _safetensors_config(metadata: dict[str, str], path: Path) -> dict[str, Any]:
    if metadata.get("format") != "diffwave" or "config" not in metadata:
        raise CheckpointError(f"{path}: safetensors file without diffwave metadata (export it with "
                              "`diffwave export`)")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: safetensors format v{version} is not supported "
                              f"(this diffwave reads v{FORMAT_VERSION})")
    try:
        config = json.loads(metadata["config"])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: its config metadata is not valid JSON ({reason(error)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its config metadata is not a mapping of sections")
    return current_keys(config)
