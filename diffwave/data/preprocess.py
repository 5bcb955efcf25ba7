"""Corpus -> feature folder: validated, resampled audio and its log-mel per utterance, plus a manifest.

Bad files are skipped and reported (report.tsv, with the reason) instead of stopping the run. Outputs
are written atomically, so an interrupted run leaves only complete files, and a rerun reuses them. The
corpus itself is never written to.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from diffwave.audio import LogMel, min_samples, read_audio
from diffwave.config import AudioConfig, Config, DataConfig
from diffwave.data.corpus import CorpusItem, Problem, read_corpus
from diffwave.data.manifest import Utterance, audio_config_differences, read_audio_config, write_manifest
from diffwave.errors import AudioError, DataError
from diffwave.fileio import atomic_write

logger = logging.getLogger("diffwave.preprocess")

LJSPEECH_TEST_PREFIXES = ("LJ001", "LJ002")  # held out by the reference pretrained model
REPORT_NAME = "report.tsv"


@dataclass
class PreprocessResult:
    out_dir: Path
    utterances: list[Utterance]
    reused: int
    problems: list[Problem]

    @property
    def skipped(self) -> list[Problem]:
        return [p for p in self.problems if p.skipped]

    def summary(self) -> str:
        """One line: "N ok (M reused), k skipped (reason: count, ...)"."""
        reasons = Counter(p.kind for p in self.skipped)
        line = f"{len(self.utterances)} ok ({self.reused} reused), {len(self.skipped)} skipped"
        if reasons:
            line += " (" + ", ".join(f"{reason}: {count}" for reason, count in reasons.most_common()) + ")"
        return line


_FRONT_ENDS: dict[str, LogMel] = {}


def _front_end(audio_config: AudioConfig) -> LogMel:
    """One LogMel per process and config: its filterbank is built once, not per file."""
    key = repr(audio_config)
    if key not in _FRONT_ENDS:
        _FRONT_ENDS[key] = LogMel(audio_config)
    return _FRONT_ENDS[key]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as temp, open(temp, "wb") as file:
        np.save(file, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)


def _relative(item_id: str) -> tuple[Path, Path]:
    return Path("audio") / f"{item_id}.npy", Path("mel") / f"{item_id}.npy"


def _reuse(out_dir: Path, item: CorpusItem) -> Utterance | None:
    """A finished earlier output (both files exist: each was renamed into place only when complete)."""
    audio_path, mel_path = _relative(item.id)
    if not ((out_dir / audio_path).is_file() and (out_dir / mel_path).is_file()):
        return None
    samples = np.load(out_dir / audio_path, mmap_mode="r", allow_pickle=False).shape[0]
    frames = np.load(out_dir / mel_path, mmap_mode="r", allow_pickle=False).shape[1]
    return Utterance(item.id, audio_path, mel_path, samples, frames, split="")


def process_item(item: CorpusItem, out_dir: Path, audio_config: AudioConfig,
                 strict_rate: bool) -> Utterance | Problem:
    """Read, validate and featurise one file; a bad file becomes a Problem naming it and why."""
    try:
        audio = read_audio(item.path, audio_config.sample_rate, strict_rate=strict_rate)
    except AudioError as error:
        return Problem(str(item.path), error.problem, str(error))
    if audio.numel() < min_samples(audio_config):
        return Problem(str(item.path), "too short", f"{item.path}: too short: expected at least "
                                                    f"{min_samples(audio_config)} samples, found {audio.numel()}")
    with torch.inference_mode():
        mel = _front_end(audio_config)(audio)
    audio_path, mel_path = _relative(item.id)
    _save_npy(out_dir / audio_path, audio.numpy())
    _save_npy(out_dir / mel_path, mel.numpy())
    return Utterance(item.id, audio_path, mel_path, audio.numel(), mel.shape[1], split="")


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; torch's own threads would oversubscribe


def _run_parallel(items: list[CorpusItem], out_dir: Path, audio_config: AudioConfig, strict_rate: bool,
                  jobs: int) -> Iterator[Utterance | Problem]:
    if jobs <= 1:
        yield from (process_item(item, out_dir, audio_config, strict_rate) for item in items)
        return
    # spawn, not fork: forking a process whose torch thread pool already ran can deadlock the children.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker) as pool:
        futures = [pool.submit(process_item, item, out_dir, audio_config, strict_rate) for item in items]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def _rank(ids: Iterable[str]) -> list[str]:
    """A stable pseudo-random order of ids (CRC32), so splits do not depend on file order or on reruns."""
    return sorted(ids, key=lambda item_id: (zlib.crc32(item_id.encode()), item_id))


def assign_splits(ids: list[str], corpus_format: str, data_config: DataConfig) -> dict[str, str]:
    """Deterministic train/valid/test split.

    LJSpeech's LJ001*/LJ002* are the test set (when they are a minority, i.e. a full corpus); otherwise
    a CRC32-ranked fraction, stable across reruns and file orders.
    """
    ranked = _rank(ids)
    test = {i for i in ids if i.startswith(LJSPEECH_TEST_PREFIXES)} if corpus_format == "ljspeech" else set()
    if not test or len(test) > len(ids) / 2:  # not LJSpeech's numbering, or a small excerpt of it
        test = set(ranked[: round(data_config.test_fraction * len(ranked))])
    rest = [i for i in ranked if i not in test]
    valid_count = round(data_config.valid_fraction * len(rest))
    if data_config.valid_fraction > 0 and len(rest) >= 2:
        valid_count = max(valid_count, 1)  # validation needs at least one utterance
    valid = set(rest[:valid_count])
    return {i: "test" if i in test else "valid" if i in valid else "train" for i in ids}


def _write_report(out_dir: Path, problems: list[Problem]) -> None:
    rows = ["source\tstatus\tkind\treason\n"]
    rows += [f"{p.source}\t{'skipped' if p.skipped else 'note'}\t{p.kind}\t{p.reason}\n" for p in problems]
    with atomic_write(out_dir / REPORT_NAME) as temp:
        temp.write_text("".join(rows))


def _claim_out_dir(corpus_root: Path, out_dir: Path, audio_config: AudioConfig) -> None:
    """Refuse to write into the corpus or over features made with other audio settings."""
    corpus, out = corpus_root.resolve(), out_dir.resolve()
    if out == corpus or corpus in out.parents:
        raise DataError(f"output folder {out_dir} lies inside the corpus {corpus_root}; preprocess never writes "
                        "into a corpus, choose another folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output {out_dir} exists and is not a folder")
    made_with = read_audio_config(out_dir) if out_dir.is_dir() else None
    if made_with is not None:
        differences = audio_config_differences(made_with, audio_config)
        if differences:
            raise DataError(f"{out_dir} holds features made with other audio settings ({'; '.join(differences)}); "
                            "use a new output folder")
    for sub in ("audio", "mel"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)


def preprocess(corpus_root: str | Path, out_dir: str | Path, config: Config, *, corpus_format: str = "auto",
               jobs: int = 1, strict_rate: bool = False) -> PreprocessResult:
    """Featurise a corpus into `out_dir`; raises DataError when no file at all could be used."""
    corpus_root, out_dir = Path(corpus_root), Path(out_dir)
    corpus = read_corpus(corpus_root, corpus_format)
    _claim_out_dir(corpus_root, out_dir, config.audio)
    write_manifest(out_dir, config.audio, [], complete=False)
    problems = list(corpus.problems)
    utterances: list[Utterance] = []
    todo: list[CorpusItem] = []
    for item in corpus.items:
        done = _reuse(out_dir, item)
        if done is None:
            todo.append(item)
        else:
            utterances.append(done)
    reused = len(utterances)
    results = _run_parallel(todo, out_dir, config.audio, strict_rate, jobs)
    for result in tqdm(results, total=len(todo), desc="preprocess", unit="file", disable=None):
        if isinstance(result, Problem):
            logger.warning("skipped: %s", result.reason)
            problems.append(result)
        else:
            utterances.append(result)
    splits = assign_splits([u.id for u in utterances], corpus.format, config.data)
    utterances = [Utterance(u.id, u.audio, u.mel, u.samples, u.frames, splits[u.id]) for u in utterances]
    _write_report(out_dir, problems)
    if not utterances:
        raise DataError(f"no usable audio in {corpus_root}: {len([p for p in problems if p.skipped])} files "
                        f"skipped (reasons in {out_dir / REPORT_NAME})")
    write_manifest(out_dir, config.audio, utterances)
    return PreprocessResult(out_dir, sorted(utterances, key=lambda u: u.id), reused, problems)
