"""Corpus readers: which audio files make up a corpus, with their ids, and what is wrong with it.

Readers never open the audio (preprocess does, in parallel); they report metadata problems with the
line number or id so that a user can fix the corpus, and never stop at the first one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diffwave.errors import DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
LJSPEECH_METADATA = "metadata.csv"
LJSPEECH_FIELDS = 3  # id|transcription|normalized transcription


@dataclass(frozen=True)
class CorpusItem:
    id: str
    path: Path
    text: str | None = None


@dataclass(frozen=True)
class Problem:
    """Something wrong with a corpus entry: `kind` is a short category for summaries, `reason` the full
    sentence; `skipped` says whether the entry was left out."""

    source: str
    kind: str
    reason: str
    skipped: bool = True


@dataclass
class Corpus:
    root: Path
    format: str
    items: list[CorpusItem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _check_root(root: Path) -> None:
    if not root.exists():
        raise DataError(f"corpus folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"corpus {root} is not a folder")


def read_ljspeech(root: str | Path) -> Corpus:
    """LJSpeech layout: metadata.csv rows `id|text|normalized text` and wavs/ID.wav.

    A row whose wav is missing and a malformed row are skipped and reported; a wav with no row is kept
    (a vocoder needs no text) and reported as a note.
    """
    root = Path(root)
    _check_root(root)
    metadata = root / LJSPEECH_METADATA
    if not metadata.is_file():
        raise DataError(
            f"{root} is not an LJSpeech-layout corpus: {LJSPEECH_METADATA} is missing "
            "(use --format folder for a plain folder of audio)"
        )
    corpus = Corpus(root, "ljspeech")
    wavs = root / "wavs"
    seen: set[str] = set()
    for number, raw in enumerate(metadata.read_bytes().splitlines(), start=1):
        where = f"{metadata}:{number}"
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            corpus.problems.append(Problem(where, "bad encoding", "row is not valid UTF-8"))
            continue
        if not line:
            continue
        fields = line.split("|")
        if len(fields) != LJSPEECH_FIELDS or not fields[0]:
            corpus.problems.append(
                Problem(
                    where,
                    "malformed row",
                    f"row has {len(fields)} '|'-separated fields, expected {LJSPEECH_FIELDS} (id|text|normalized text)",
                )
            )
            continue
        item_id = fields[0]
        if item_id in seen:
            corpus.problems.append(Problem(where, "duplicate id", f"id {item_id} appears twice; the first row is used"))
            continue
        seen.add(item_id)
        path = wavs / f"{item_id}.wav"
        if not path.exists():
            corpus.problems.append(
                Problem(item_id, "missing wav", f"metadata row {number} names {path}, which does not exist")
            )
            continue
        corpus.items.append(CorpusItem(item_id, path, fields[2]))
    if wavs.is_dir():
        for path in sorted(wavs.glob("*.wav")):
            if path.stem not in seen:
                corpus.items.append(CorpusItem(path.stem, path))
                corpus.problems.append(
                    Problem(
                        path.stem,
                        "no metadata row",
                        f"{path.name} has no row in {LJSPEECH_METADATA}; used without text",
                        skipped=False,
                    )
                )
    return corpus


def read_folder(root: str | Path) -> Corpus:
    """Every .wav/.flac/.ogg below `root`; the id is the relative path without suffix, '/' as '__'."""
    root = Path(root)
    _check_root(root)
    corpus = Corpus(root, "folder")
    by_id: dict[str, Path] = {}
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        item_id = "__".join(path.relative_to(root).with_suffix("").parts)
        if item_id in by_id:
            corpus.problems.append(
                Problem(str(path), "duplicate id", f"same id '{item_id}' as {by_id[item_id]}; skipped")
            )
            continue
        by_id[item_id] = path
        corpus.items.append(CorpusItem(item_id, path))
    return corpus


def read_corpus(root: str | Path, corpus_format: str = "auto") -> Corpus:
    """`auto` reads LJSpeech when metadata.csv is present, else a plain folder."""
    if corpus_format == "auto":
        corpus_format = "ljspeech" if (Path(root) / LJSPEECH_METADATA).is_file() else "folder"
    if corpus_format == "ljspeech":
        return read_ljspeech(root)
    if corpus_format == "folder":
        return read_folder(root)
    raise DataError(f"unknown corpus format '{corpus_format}', expected ljspeech, folder or auto")
