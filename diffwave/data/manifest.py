"""The preprocessed feature folder: what `preprocess` writes and what training reads.

Layout of a feature folder (all files written atomically)::

    manifest.json        format version, the AudioConfig the features were made with, one entry per utterance
    audio/ID.npy         float32 [samples], mono, at audio.sample_rate
    mel/ID.npy           float32 [n_mels, frames], frames = num_frames(samples) for the config's mel preset
    train.txt valid.txt test.txt    the split, one id per line
    report.tsv           every skipped input file with its reason

Audio is stored as float32 `.npy` rather than 16-bit WAV so that the mel on disk is exactly the mel of
the stored audio (no requantisation), and so datasets can memory-map a crop without reading a whole file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffwave.config import AudioConfig
from diffwave.errors import DataError
from diffwave.fileio import atomic_write

MANIFEST_NAME = "manifest.json"
FORMAT = "diffwave-features"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Utterance:
    """One preprocessed utterance; paths are relative to the feature folder in the manifest."""

    id: str
    audio: Path
    mel: Path
    samples: int
    frames: int
    split: str


def audio_config_differences(made_with: dict[str, Any], wanted: AudioConfig) -> list[str]:
    """'field: folder value != config value' for each audio setting that differs."""
    wanted_values = dataclasses.asdict(wanted)
    keys = sorted(set(made_with) | set(wanted_values))
    return [f"{key}: {made_with.get(key)!r} != {wanted_values.get(key)!r}" for key in keys
            if made_with.get(key) != wanted_values.get(key)]


def write_manifest(folder: Path, audio_config: AudioConfig, utterances: list[Utterance],
                   complete: bool = True) -> Path:
    """Write manifest.json (and, when complete, the split lists) atomically, sorted by id.

    Preprocess writes an incomplete manifest first, so an interrupted run still records which audio
    settings its files were made with, and readers refuse the folder until a run has finished.
    """
    utterances = sorted(utterances, key=lambda u: u.id)
    entries = [{**dataclasses.asdict(u), "audio": u.audio.as_posix(), "mel": u.mel.as_posix()} for u in utterances]
    document = {"format": FORMAT, "version": FORMAT_VERSION, "complete": complete,
                "audio": dataclasses.asdict(audio_config), "utterances": entries}
    for split in SPLITS if complete else ():
        with atomic_write(folder / f"{split}.txt") as temp:
            temp.write_text("".join(f"{u.id}\n" for u in utterances if u.split == split))
    path = folder / MANIFEST_NAME
    with atomic_write(path) as temp:
        temp.write_text(json.dumps(document, indent=1) + "\n")
    return path


def read_audio_config(folder: Path) -> dict[str, Any] | None:
    """The audio settings a feature folder was made with, or None when it has no manifest yet."""
    path = Path(folder) / MANIFEST_NAME
    return _load(path)["audio"] if path.is_file() else None


def _load(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a readable feature manifest ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise DataError(f"{path}: not a diffwave feature manifest (run 'diffwave preprocess' to make one)")
    if document.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: feature format version {document.get('version')} is not supported "
                        f"(this diffwave reads version {FORMAT_VERSION}); rerun preprocess")
    return document


def read_manifest(folder: Path | str, audio_config: AudioConfig | None = None,
                  split: str | None = None) -> list[Utterance]:
    """Utterances of a feature folder (optionally one split), absolute paths.

    With `audio_config`, features made with other audio settings are refused: a model trained on mels
    of one convention cannot vocode another's.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{folder}: no {MANIFEST_NAME} here; is it the output folder of 'diffwave preprocess'?")
    document = _load(path)
    if not document.get("complete"):
        raise DataError(f"{folder}: preprocessing has not finished here; rerun 'diffwave preprocess' to complete it")
    if audio_config is not None:
        differences = audio_config_differences(document["audio"], audio_config)
        if differences:
            raise DataError(f"{folder}: features were made with other audio settings ({'; '.join(differences)});"
                            " preprocess again with this config")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    return [Utterance(id=e["id"], audio=folder / e["audio"], mel=folder / e["mel"], samples=int(e["samples"]),
                      frames=int(e["frames"]), split=e["split"])
            for e in document["utterances"] if split is None or e["split"] == split]
