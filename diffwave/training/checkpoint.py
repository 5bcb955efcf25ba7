"""Checkpoints: atomic saves, safe loads, exact-resume RNG state, config checks and safetensors export.

A checkpoint is one `torch.save` zip holding plain types and tensors only (the trainer builds the dict:
format_version, config, step, epoch, model, ema, optimizer, scaler, rng, ...), so it always loads with
`torch.load(weights_only=True)` and no allow-list; `save_checkpoint` walks the state and refuses anything
else (numpy arrays or scalars, `Path`s, custom objects) before a file is written. "model" and "ema" are
plain model state dicts with the same keys (the trainer stores `AveragedModel.module.state_dict()`).

Loading never unpickles code: it is `weights_only=True` only, with no fallback, and a file that is not a
torch zip (a legacy pickle renamed .pt, say) is refused before torch sees it. Every failure is one line
naming the file.

Layout: `run_dir/checkpoints/step_00000100.pt` plus a `latest` pointer file holding the newest name. Each
file is written to a temp file and renamed into place (`fileio.atomic_write`), and the pointer is written
last, so a save killed at any moment leaves the previous complete checkpoint as `latest`. When the pointer
names a missing or corrupt file, `latest_checkpoint` refuses rather than falling back silently: it names the
bad file and the newest older valid checkpoint, so the user decides to resume from that one (and loses the
steps since) instead of the run doing so unnoticed.

For inference (`load_model_weights`, `export_safetensors`) a checkpoint of the reference implementation
(lmnt-com/diffwave) loads too, read just as safely and converted by `reference`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import pickletools
import random
import re
import shutil
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from diffwave.config import Config, config_from_dict, config_to_dict
from diffwave.errors import CheckpointError
from diffwave.fileio import atomic_write
from diffwave.training import reference

logger = logging.getLogger("diffwave.checkpoint")

FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
MAX_SAFETENSORS_HEADER = 100_000_000  # bytes; a larger length prefix is damage or an attack, not a header

_STEP_FILE = re.compile(r"step_(\d{8})\.pt")
_ZIP_MAGIC = b"PK\x03\x04"
# Types that `torch.load(weights_only=True)` rebuilds without an allow-list (each tried on torch 2.14);
# exact type matches, because subclasses (np.float64 is a float) pickle as their own class.
_CONTAINERS = (dict, OrderedDict, list, tuple, set)
_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None),
           Tensor, torch.nn.Parameter, torch.Size, torch.dtype, torch.device)
# Config fields that change tensor shapes or what the weights mean: a resume must match them exactly.
_WEIGHT_SECTIONS = ("audio.", "model.")
_WEIGHT_FIELDS = {"diffusion.num_steps", "diffusion.schedule", "diffusion.beta_start", "diffusion.beta_end",
                  "diffusion.prior", "diffusion.prior_floor",  # the prior changes what the network predicts
                  "distill.student"}  # a consistency student's output means x_0 through f, not a noise estimate
_ABSENT = "<absent>"


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
    return f"could not write checkpoint {path.name} in {folder} ({free}): {_reason(error)}; {kept}"


def _step_files(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step_NNNNNNNN.pt` in `folder`, oldest first; temp files never match."""
    if not folder.is_dir():
        return []
    found = ((_STEP_FILE.fullmatch(path.name), path) for path in folder.iterdir())
    return sorted((int(match[1]), path) for match, path in found if match and path.is_file())


# --- loading ------------------------------------------------------------------------------------------
def _reason(error: BaseException) -> str:
    """The first sentence of a library error, for one-line messages (some have none: EOFError())."""
    text = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else ""
    return text or type(error).__name__


def _read_head(path: Path, size: int) -> bytes:
    """The first `size` bytes; missing, folder and unreadable paths are CheckpointErrors."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file (nor a reference model folder holding "
                              f"{reference.MODEL_FILE})")
    try:
        with path.open("rb") as file:
            return file.read(size)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror or _reason(error)})") from None


def _pickle_globals(path: Path) -> list[str]:
    """Best-effort names of the globals a plain pickle references, read with pickletools (never executed).

    Strings are tracked (through the memo too) because STACK_GLOBAL takes its module and name from the
    two strings pushed before it. A legacy `torch.save` file is five pickles and then raw bytes, so at most
    five are read; a damaged stream ends the scan with what was found before the damage.
    """
    found: dict[str, None] = {}
    strings: list[str] = []
    memo: dict[int, str | None] = {}
    top: str | None = None  # the value last pushed, when it is a string
    with path.open("rb") as file, contextlib.suppress(Exception):
        for _ in range(5):
            for opcode, arg, _position in pickletools.genops(file):
                name = opcode.name
                if name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):  # store the top, push nothing
                    memo[len(memo) if name == "MEMOIZE" else int(arg)] = top
                    continue
                if name in ("GLOBAL", "INST"):
                    found[str(arg).replace(" ", ".")] = None
                elif name == "STACK_GLOBAL" and len(strings) >= 2:
                    found[f"{strings[-2]}.{strings[-1]}"] = None
                if name in ("GET", "BINGET", "LONG_BINGET"):
                    top = memo.get(int(arg))
                else:
                    top = arg if isinstance(arg, str) and ("UNICODE" in name or "STRING" in name) else None
                if top is not None:
                    strings.append(top)
    return list(found)


def _unsafe_globals(path: Path) -> list[str]:
    with contextlib.suppress(Exception):
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    return []


def read_torch_file(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """Whatever a torch zip file holds, read with `weights_only=True` only (a file of ours or the reference
    implementation's); every failure is a one-line CheckpointError naming the file."""
    path = Path(path)
    head = _read_head(path, len(_ZIP_MAGIC))
    if not head:
        raise CheckpointError(f"{path}: checkpoint file is empty (0 bytes)")
    if head != _ZIP_MAGIC:
        names = _pickle_globals(path)
        refs = f"; it references {', '.join(names)}" if names else ""
        raise CheckpointError(f"{path}: not a zip-format torch checkpoint (a legacy pickle or another format); "
                              f"refused without unpickling it, so no code ran{refs}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = _unsafe_globals(path)
        why = (f"it references {', '.join(unsafe)}, which safe loading (weights_only) does not allow" if unsafe
               else f"safe loading (weights_only) rejected its pickle ({_unsafe_detail(error)})")
        raise CheckpointError(f"{path}: refused to load: {why}; no code ran (load only checkpoints from "
                              "sources you trust)") from None
    except Exception as error:  # a damaged file makes torch raise anything: EOFError, RuntimeError, KeyError
        raise CheckpointError(f"{path}: checkpoint is truncated or corrupt ({_reason(error)})") from None
    return checkpoint


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


def _unsafe_detail(error: pickle.UnpicklingError) -> str:
    """The line of torch's long weights_only message that says what was refused."""
    lines = [line.strip() for line in str(error).splitlines()]
    detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), "")
    return detail.removeprefix("WeightsUnpickler error:").strip() or "unreadable"


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
        raise CheckpointError(f"{pointer}: cannot read the checkpoint pointer ({_reason(error)})") from None
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


# --- RNG state ----------------------------------------------------------------------------------------
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
        raise CheckpointError(f"cannot restore the {part} RNG state from the checkpoint: {_reason(error)}") from None


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


# --- config compatibility -----------------------------------------------------------------------------
def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_compatible(saved_config: dict[str, Any], config: Config,
                     source: str | os.PathLike[str] = "the checkpoint") -> list[str]:
    """Differences between a checkpoint's config and this run's, as "key: saved X != now Y" lines.

    Fields that change tensor shapes or the meaning of the weights (audio.*, model.*, the training noise
    schedule) must match: a CheckpointError lists every one that differs. The rest (learning rate, log
    cadence, ...) may change on resume and are returned for the caller to log.
    """
    if not isinstance(saved_config, dict):
        raise CheckpointError(f"{source}: its config is a {type(saved_config).__name__}, not a mapping")
    # A key the saved config lacks (written before that setting existed) has its default value.
    saved = _flatten(config_to_dict(config_from_dict(saved_config, source=str(source))))
    now = _flatten(config_to_dict(config))
    breaking, allowed = [], []
    for key in sorted(saved.keys() | now.keys()):
        before, after = saved.get(key, _ABSENT), now.get(key, _ABSENT)
        if before != after:
            line = f"{key}: saved {before!r} != now {after!r}"
            weights = key.startswith(_WEIGHT_SECTIONS) or key in _WEIGHT_FIELDS
            (breaking if weights else allowed).append(line)
    if breaking:
        raise CheckpointError(f"{source} was trained with a different model or audio setup: {'; '.join(breaking)}")
    return allowed


# --- weights for inference ----------------------------------------------------------------------------
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
    return config


def export_safetensors(checkpoint_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                       use_ema: bool = True) -> Path:
    """Write a checkpoint's EMA (or raw) weights as safetensors, with its config and step as metadata; a
    reference (lmnt-com/diffwave) checkpoint or model folder gives its only weights and converted config.

    The result holds no pickle at all, so it is the format to share; `load_model_weights` reads it.
    """
    path, out = Path(checkpoint_path), Path(out_path)
    weights, config, step = _torch_model_state(reference.model_file(path), use_ema)
    if not out.parent.is_dir():
        raise CheckpointError(f"{out}: the output folder {out.parent} does not exist")
    metadata = {"format": "diffwave", "format_version": str(FORMAT_VERSION), "config": json.dumps(config),
                "step": str(step)}
    # safetensors refuses tensors that share storage or are not contiguous: give it private copies.
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in weights.items()}
    with atomic_write(out) as temp:
        save_file(tensors, str(temp), metadata=metadata)
    return out


def load_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(weights, config dict) of a file written by `export_safetensors`; damage is a one-line CheckpointError.

    The 8-byte length prefix is checked first, so a torch file given by mistake is named as such (rather
    than "header too large") and a hostile length never reaches the parser.
    """
    path = Path(path)
    head = _read_head(path, 8)
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
            weights = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: corrupt safetensors file ({_reason(error)})") from None
    return weights, config


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
        raise CheckpointError(f"{path}: its config metadata is not valid JSON ({_reason(error)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its config metadata is not a mapping of sections")
    return config


def load_model_weights(path: str | os.PathLike[str],
                       use_ema: bool = True) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(weights, config dict) for inference from a training checkpoint (its EMA weights, or the raw ones with
    use_ema=False), a reference (lmnt-com/diffwave) checkpoint or model folder, or a .safetensors.

    A `.safetensors` name always goes to `load_safetensors`, which names a torch checkpoint under that name
    as "not a safetensors file" (torch itself would misread it as safetensors: "header too large"); other
    names holding a JSON header after the 8-byte prefix are safetensors too; the rest is read as a torch
    file, which is refused with the reason when it cannot be loaded.
    """
    path = reference.model_file(Path(path))
    head = _read_head(path, 9)
    if path.suffix == ".safetensors" or (not head.startswith(_ZIP_MAGIC) and head[8:9] == b"{"):
        return load_safetensors(path)
    weights, config, _ = _torch_model_state(path, use_ema)
    return weights, config


def _torch_model_state(path: Path, use_ema: bool) -> tuple[dict[str, Tensor], dict[str, Any], Any]:
    """(weights, config dict, step) of a torch file: ours (EMA or raw weights), or the reference's, converted."""
    checkpoint = read_torch_file(path)
    if reference.is_reference_checkpoint(checkpoint):
        return reference.convert(checkpoint, path)
    checkpoint = _our_format(checkpoint, path)
    key = "ema" if use_ema and checkpoint.get("ema") is not None else "model"
    return _weights(checkpoint, key, path), _config(checkpoint, path), checkpoint.get("step")
