"""Safe reading of torch files: `weights_only=True` only, with no fallback, so loading never unpickles code.

A file that is not a torch zip (a legacy pickle renamed .pt, say) is refused before torch sees it, naming the
globals its pickle references (read with pickletools, never executed). Every failure is one line naming the
file. Both our checkpoints and the reference implementation's are read here.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any

import torch

from diffwave.checkpoints import reference
from diffwave.errors import CheckpointError

ZIP_MAGIC = b"PK\x03\x04"


def reason(error: BaseException) -> str:
    """The first sentence of a library error, for one-line messages (some have none: EOFError())."""
    text = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else ""
    return text or type(error).__name__


def read_head(path: Path, size: int) -> bytes:
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
        raise CheckpointError(f"{path}: cannot be read ({error.strerror or reason(error)})") from None


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
    head = read_head(path, len(ZIP_MAGIC))
    if not head:
        raise CheckpointError(f"{path}: checkpoint file is empty (0 bytes)")
    if head != ZIP_MAGIC:
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
        raise CheckpointError(f"{path}: checkpoint is truncated or corrupt ({reason(error)})") from None
    return checkpoint


def _unsafe_detail(error: pickle.UnpicklingError) -> str:
    """The line of torch's long weights_only message that says what was refused."""
    lines = [line.strip() for line in str(error).splitlines()]
    detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), "")
    return detail.removeprefix("WeightsUnpickler error:").strip() or "unreadable"
