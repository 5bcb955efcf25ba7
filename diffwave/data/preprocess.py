"""Corpus -> feature folder: validated, resampled audio and its log-mel per utterance, plus a manifest.

Bad files are skipped and reported (report.tsv, with the reason) instead of stopping the run. Outputs
are written atomically, so an interrupted run leaves only complete files, and a rerun reuses them. The
corpus itself is never written to.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import signal
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
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
WORKER_DIED = "worker died"  # the kind of a file lost with its worker: failed, not skipped for what it holds


@dataclass
class PreprocessResult:
    out_dir: Path
    utterances: list[Utterance]
    reused: int
    problems: list[Problem]

    @property
    def skipped(self) -> list[Problem]:
        """Files left out for what they hold (bad audio, metadata problems)."""
        return [p for p in self.problems if p.skipped and p.kind != WORKER_DIED]

    @property
    def failed(self) -> list[Problem]:
        """Files lost with a worker that died while processing them; a rerun retries them."""
        return [p for p in self.problems if p.kind == WORKER_DIED]

    def summary(self) -> str:
        """One line: "N ok (M reused), k skipped (reason: count, ...)", then ", f failed (...)" if any failed."""
        reasons = Counter(p.kind for p in self.skipped)
        line = f"{len(self.utterances)} ok ({self.reused} reused), {len(self.skipped)} skipped"
        if reasons:
            line += " (" + ", ".join(f"{reason}: {count}" for reason, count in reasons.most_common()) + ")"
        if self.failed:
            line += f", {len(self.failed)} failed ({WORKER_DIED}; rerun to retry them)"
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


@dataclass
class _Worker:
    """One worker process, its end of the pipe, and the item it holds (None while idle)."""

    process: BaseProcess
    connection: Connection
    item: CorpusItem | None = None


def _worker_loop(connection: Connection, out_dir: Path, audio_config: AudioConfig, strict_rate: bool) -> None:
    """Process the items sent down `connection` until None arrives; a programming error goes back as itself."""
    torch.set_num_threads(1)  # one process per core; torch's own threads would oversubscribe
    while (item := connection.recv()) is not None:
        try:
            result: Utterance | Problem | Exception = process_item(item, out_dir, audio_config, strict_rate)
        except Exception as error:  # re-raised by the parent, as a serial run would raise it
            result = error
        connection.send(result)


def _death(worker: _Worker, item: CorpusItem) -> Problem:
    """The Problem of the file a dead worker held: killed, out of memory or a crashing decoder."""
    code = worker.process.exitcode
    how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
    return Problem(str(item.path), WORKER_DIED, f"{item.path}: the worker process (pid {worker.process.pid}) "
                                                f"processing it died ({how}; killed, out of memory or a crashing "
                                                "decoder); the other files went on")


def _run_parallel(items: list[CorpusItem], out_dir: Path, audio_config: AudioConfig, strict_rate: bool,
                  jobs: int) -> Iterator[Utterance | Problem]:
    """Results in completion order. Each worker holds one item at a time, so a worker that dies costs only that
    item (reported as failed) and a fresh worker takes its place; concurrent.futures cannot do this, since one
    dead worker breaks its whole pool and fails every pending item. Idle workers stop once nothing is left."""
    if jobs <= 1:
        yield from (process_item(item, out_dir, audio_config, strict_rate) for item in items)
        return
    # spawn, not fork: forking a process whose torch thread pool already ran can deadlock the children.
    context = multiprocessing.get_context("spawn")
    todo = list(reversed(items))

    def start() -> _Worker:
        parent, child = context.Pipe()
        process = context.Process(target=_worker_loop, args=(child, out_dir, audio_config, strict_rate),
                                  daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def give_work(worker: _Worker) -> None:
        worker.item = todo.pop() if todo else None
        with contextlib.suppress(OSError):  # a worker that just died is found by its sentinel
            worker.connection.send(worker.item)
        if worker.item is not None:
            logger.debug("worker %d: %s", worker.process.pid, worker.item.path)

    workers = [start() for _ in range(min(jobs, len(items)))]
    try:
        for worker in workers:
            give_work(worker)
        while busy := [w for w in workers if w.item is not None]:
            ready = set(wait([w.connection for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                if ready.isdisjoint((worker.connection, worker.process.sentinel)):
                    continue
                result = _receive(worker)
                if result is None:  # it died: its pipe closed, or its process ended with no result sent
                    worker.process.join()
                    yield _death(worker, worker.item)
                    workers.remove(worker)
                    if todo:
                        workers.append(start())
                        give_work(workers[-1])
                    continue
                if isinstance(result, Exception):
                    raise result
                give_work(worker)
                yield result
    finally:  # after the last result every worker was told to stop; after an error, busy ones are killed
        for worker in workers:
            if worker.item is not None:
                worker.process.kill()
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
            worker.connection.close()


def _receive(worker: _Worker) -> Utterance | Problem | Exception | None:
    """The worker's result, or None when there is none to read (a worker killed while sending leaves a pipe
    that reads as closed or a message cut short)."""
    try:
        return worker.connection.recv() if worker.connection.poll() else None
    except (EOFError, OSError, pickle.UnpicklingError):
        return None


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


def _status(problem: Problem) -> str:
    if problem.kind == WORKER_DIED:
        return "failed"
    return "skipped" if problem.skipped else "note"


def _write_report(out_dir: Path, problems: list[Problem]) -> None:
    rows = ["source\tstatus\tkind\treason\n"]
    rows += [f"{p.source}\t{_status(p)}\t{p.kind}\t{p.reason}\n" for p in problems]
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
