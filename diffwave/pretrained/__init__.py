"""The models shipped with the package: weights (.safetensors), model cards (.md) and `manifest.json`.

The manifest beside the weights is the registry: one entry per model with its file, sha256, a one-line
description and whether it is the default. Loading checks the file against the manifest's sha256 first, so a
damaged or swapped file is refused with the reason rather than vocoding noise. `Vocoder.from_pretrained` is
the way in; `diffwave pretrained` lists what is shipped; recipes/pretrained/ship.py writes the entries.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from diffwave.errors import CheckpointError

MANIFEST = "manifest.json"
VOCODER, DENOISER = "vocoder", "denoiser"  # what a model is for; each task has its own default
TASKS = (VOCODER, DENOISER)


@dataclass(frozen=True)
class PretrainedModel:
    """One shipped model, as its manifest entry describes it."""

    name: str
    file: str  # the .safetensors, beside the manifest
    sha256: str
    description: str  # one line
    default: bool = False  # the default of its task
    card: str = ""  # the model card (.md), beside the manifest
    task: str = VOCODER  # vocoder (mel -> waveform) or denoiser (an unconditional speech prior)

    @property
    def path(self) -> Path:
        return pretrained_dir() / self.file

    @property
    def card_path(self) -> Path:
        return pretrained_dir() / self.card


def pretrained_dir() -> Path:
    """The folder of the installed package data (a plain folder: setuptools installs it unzipped)."""
    return Path(str(resources.files(__name__)))


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: str | os.PathLike[str] | None = None) -> list[PretrainedModel]:
    """The entries of `folder`/manifest.json (default: the package's); no manifest means nothing shipped."""
    path = Path(folder or pretrained_dir()) / MANIFEST
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["models"]
        return [PretrainedModel(**entry) for entry in entries]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: not a valid pretrained manifest ({error})") from None


def manifest_text(models: list[PretrainedModel]) -> str:
    """The manifest's JSON for `models` (sorted by name, so rewrites give stable diffs)."""
    entries: list[dict[str, Any]] = [asdict(model) for model in sorted(models, key=lambda m: m.name)]
    return json.dumps({"models": entries}, indent=1) + "\n"


def shipped() -> list[PretrainedModel]:
    return read_manifest()


def find(name: str | None = None, task: str = VOCODER) -> PretrainedModel:
    """The `task`'s model called `name`, or its default one for None; refused with what is shipped otherwise."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    models = [model for model in shipped() if model.task == task]
    if not models:
        raise CheckpointError(f"no pretrained {task} is shipped in {pretrained_dir()} (no {MANIFEST} entries); "
                              "pass a checkpoint instead")
    if name is None:
        defaults = [model for model in models if model.default]
        if len(defaults) != 1:
            raise CheckpointError(f"{pretrained_dir() / MANIFEST}: expected one default {task}, found "
                                  f"{len(defaults)}; name one of: {', '.join(m.name for m in models)}")
        return defaults[0]
    for model in models:
        if model.name == name:
            return model
    raise CheckpointError(f"no pretrained {task} '{name}'; shipped: {', '.join(m.name for m in models)}")


def verified_path(model: PretrainedModel) -> Path:
    """The model's weights file, after checking it exists and matches the manifest's sha256."""
    path = model.path
    if not path.is_file():
        raise CheckpointError(f"{path}: the weights of pretrained model '{model.name}' are missing from the package")
    digest = sha256_of(path)
    if digest != model.sha256:
        raise CheckpointError(f"{path}: sha256 {digest} does not match the manifest's {model.sha256} for "
                              f"'{model.name}' (a damaged or replaced file); reinstall the package")
    return path
