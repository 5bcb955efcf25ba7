"""`diffwave preprocess` on a tiny LJSpeech-layout corpus with every kind of bad file (RELIABILITY F, B10)."""

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from diffwave.audio import LogMel, read_audio
from diffwave.config import load_config
from diffwave.data.corpus import read_corpus, read_folder, read_ljspeech
from diffwave.data.manifest import read_manifest
from diffwave.data.preprocess import assign_splits, preprocess
from diffwave.errors import DataError
from tests.audio_fixtures import chop, harmonic_tone, pcm16_wav_bytes, write_tone

TINY = load_config("tiny")
RATE = TINY.audio.sample_rate
GOOD = [f"LJ050-{i:04d}" for i in range(1, 7)]


def make_corpus(root: Path) -> Path:
    """Six good clips (one stereo, one at 44.1 kHz, one streamed), five bad ones, and metadata problems."""
    wavs = root / "wavs"
    wavs.mkdir(parents=True)
    for i, item_id in enumerate(GOOD[:3]):
        write_tone(wavs / f"{item_id}.wav", RATE, 0.4 + 0.1 * i, seed=i, f0=150 + 40 * i)
    write_tone(wavs / f"{GOOD[3]}.wav", RATE, 0.5, channels=2, seed=3)
    write_tone(wavs / f"{GOOD[4]}.wav", 44100, 0.5, seed=4)
    streamed = pcm16_wav_bytes(harmonic_tone(RATE, 0.3, seed=5), RATE, riff_size=0xFFFFFFFF, data_size=0xFFFFFFFF)
    (wavs / f"{GOOD[5]}.wav").write_bytes(streamed)
    write_tone(wavs / "LJ051-0001.wav", RATE, 0.5, seed=6)
    chop(wavs / "LJ051-0001.wav", 2000)  # truncated
    (wavs / "LJ051-0002.wav").write_bytes(b"")  # empty
    (wavs / "LJ051-0003.wav").write_text("this is not audio\n")  # text named .wav
    (wavs / "LJ051-0004.wav").write_bytes(pcm16_wav_bytes(np.zeros(0, np.float32), RATE))  # header only
    (wavs / "LJ051-0005.wav").mkdir()  # a folder named .wav
    write_tone(wavs / "LJ052-0001.wav", RATE, 0.3, seed=7)  # a wav with no metadata row
    ids = GOOD + [f"LJ051-000{i}" for i in range(1, 6)] + ["LJ053-0001"]  # LJ053-0001: row without wav
    rows = [f"{item_id}|Text {n}.|Text {n}." for n, item_id in enumerate(ids)]
    rows.insert(3, "LJ054-0001|only two fields")
    text = "\n".join(rows).encode() + b"\nLJ055-0001|caf\xe9|bad encoding\n"
    (root / "metadata.csv").write_bytes(text)
    return root


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffwave", "preprocess", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "LJSpeech-mini")


def test_ljspeech_reader_reports_metadata_problems(corpus):
    read = read_ljspeech(corpus)
    assert {item.id for item in read.items} == set(GOOD) | {f"LJ051-000{i}" for i in range(1, 6)} | {"LJ052-0001"}
    kinds = {(p.kind, p.source.rsplit(":", 1)[-1] if p.kind in ("malformed row", "bad encoding") else p.source)
             for p in read.problems}
    assert ("malformed row", "4") in kinds  # line number of the two-field row
    assert ("bad encoding", "14") in kinds
    assert ("missing wav", "LJ053-0001") in kinds
    assert ("no metadata row", "LJ052-0001") in kinds
    assert next(p for p in read.problems if p.kind == "no metadata row").skipped is False


def test_folder_reader_and_format_detection(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    write_tone(tmp_path / "a" / "b" / "x.flac", RATE, 0.2)
    write_tone(tmp_path / "y.wav", RATE, 0.2)
    (tmp_path / "notes.txt").write_text("ignored")
    assert [item.id for item in read_folder(tmp_path).items] == ["a__b__x", "y"]
    assert read_corpus(tmp_path).format == "folder"
    with pytest.raises(DataError, match="does not exist"):
        read_corpus(tmp_path / "missing")
    with pytest.raises(DataError, match="metadata.csv is missing"):
        read_ljspeech(tmp_path)


def test_preprocess_command_on_a_corpus_with_bad_files(corpus, tmp_path):
    before = tree_digest(corpus)
    out = tmp_path / "features"
    result = run_cli(str(corpus), str(out), "--config", "tiny", "--jobs", "2")
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("preprocess: 7 ok (0 reused), 8 skipped (")
    assert "Traceback" not in result.stderr
    assert tree_digest(corpus) == before  # nothing in the corpus changed

    report = (out / "report.tsv").read_text()
    expected_reasons = {"LJ051-0001": "truncated WAV", "LJ051-0002": "empty", "LJ051-0003": "not audio",
                        "LJ051-0004": "empty", "LJ051-0005": "not a file", "LJ053-0001": "missing wav"}
    for item_id, reason in expected_reasons.items():
        line = next(line for line in report.splitlines() if item_id in line)
        assert "\tskipped\t" in line and reason in line, line
    assert "LJ052-0001\tnote" in report

    utterances = {u.id: u for u in read_manifest(out, TINY.audio)}
    assert set(utterances) == set(GOOD) | {"LJ052-0001"}
    front_end = LogMel(TINY.audio)
    for item_id, utterance in utterances.items():
        audio = np.load(utterance.audio, allow_pickle=False)
        mel = np.load(utterance.mel, allow_pickle=False)
        assert audio.dtype == np.float32 and audio.shape == (utterance.samples,)
        assert mel.shape == (TINY.audio.n_mels, utterance.frames)
        assert np.allclose(front_end(read_audio(corpus / "wavs" / f"{item_id}.wav", RATE)).numpy(), mel, atol=1e-5)
    assert utterances[GOOD[4]].samples == round(0.5 * RATE)  # 44.1 kHz resampled to the configured 8 kHz
    assert utterances[GOOD[5]].samples == round(0.3 * RATE)  # streamed header: the real length
    stereo = sf.read(corpus / "wavs" / f"{GOOD[3]}.wav", dtype="float32")[0].mean(axis=1)
    assert np.allclose(np.load(utterances[GOOD[3]].audio), stereo, atol=1e-6)  # mean downmix
    splits = {s: (out / f"{s}.txt").read_text().split() for s in ("train", "valid", "test")}
    assert sorted(sum(splits.values(), [])) == sorted(utterances)

    again = run_cli(str(corpus), str(out), "--config", "tiny")
    assert again.returncode == 0, again.stderr
    assert "7 ok (7 reused), 8 skipped" in again.stdout


def test_strict_rate_refuses_other_rates(corpus, tmp_path):
    result = preprocess(corpus, tmp_path / "strict", TINY, strict_rate=True)
    problem = next(p for p in result.problems if GOOD[4] in p.source)
    assert problem.kind == "wrong sample rate" and "8000 Hz" in problem.reason and "44100 Hz" in problem.reason


def test_nothing_usable_exits_2_with_one_line(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.wav").write_bytes(b"")
    result = run_cli(str(root), str(tmp_path / "out"), "--config", "tiny")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "a.wav: empty" in lines[0]  # the warning naming the skipped file
    assert lines[-1].startswith("diffwave: error: no usable audio in") and "Traceback" not in result.stderr


def test_refuses_to_write_into_the_corpus_or_over_other_features(corpus, tmp_path):
    with pytest.raises(DataError, match="inside the corpus"):
        preprocess(corpus, corpus / "features", TINY)
    out = tmp_path / "f"
    preprocess(corpus, out, TINY)
    with pytest.raises(DataError, match=r"other audio settings \(.*n_mels: 20 != 24"):
        preprocess(corpus, out, load_config("tiny", ["audio.n_mels=24"]))
    with pytest.raises(DataError, match="n_mels: 20 != 24"):
        read_manifest(out, load_config("tiny", ["audio.n_mels=24"]).audio)


KILL_ON_THIRD_SAVE = """
import os, signal, sys
import numpy as np
from diffwave.config import load_config
from diffwave.data import preprocess as module
saves = []
original = module._save_npy
def dying_save(path, array):
    saves.append(path)
    if len(saves) == 3:
        with module.atomic_write(path) as temp, open(temp, "wb") as f:
            f.write(b"half a file")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    original(path, array)
module._save_npy = dying_save
module.preprocess(sys.argv[1], sys.argv[2], load_config("tiny"))
"""


def test_killed_run_resumes_to_the_same_outputs_as_a_clean_run(corpus, tmp_path):
    killed = subprocess.run([sys.executable, "-c", KILL_ON_THIRD_SAVE, str(corpus), str(tmp_path / "resumed")],
                            capture_output=True, timeout=120)
    assert killed.returncode == -9
    with pytest.raises(DataError, match="has not finished"):
        read_manifest(tmp_path / "resumed")
    strays = list((tmp_path / "resumed").rglob("*.tmp"))
    assert len(strays) <= 1
    resumed = preprocess(corpus, tmp_path / "resumed", TINY)
    assert resumed.reused == 1  # the one utterance whose audio and mel were both complete
    preprocess(corpus, tmp_path / "clean", TINY)
    digest = lambda root: {k: v for k, v in tree_digest(root).items() if not k.endswith(".tmp")}  # noqa: E731
    assert digest(tmp_path / "resumed") == digest(tmp_path / "clean")
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert manifest["complete"] is True


def test_splits_are_deterministic_and_hold_out_lj001_lj002():
    ids = [f"LJ00{a}-{b:04d}" for a in range(1, 9) for b in range(1, 26)]
    splits = assign_splits(ids, "ljspeech", TINY.data)
    assert {i for i, s in splits.items() if s == "test"} == {i for i in ids if i[:5] in ("LJ001", "LJ002")}
    assert sum(s == "valid" for s in splits.values()) >= 1
    assert assign_splits(list(reversed(ids)), "ljspeech", TINY.data) == splits
    folder_splits = assign_splits([f"clip{i}" for i in range(200)], "folder", TINY.data)
    assert sum(s == "test" for s in folder_splits.values()) == 4  # test_fraction 0.02


def _workers_of(parent: int) -> list[int]:
    """Live multiprocessing workers whose parent is `parent`, from /proc (the resource tracker is not one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if int(fields[1]) == parent and fields[0] != "Z" and b"multiprocessing-fork" in cmdline:
            found.append(int(entry.name))
    return found


def _hold(path: Path) -> int:
    """A write lease on `path`: a process that opens it blocks until the lease is released (up to the kernel's
    lease-break-time, 45 s by default), so a worker can be caught holding that file for certain."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError as error:
        os.close(fd)
        pytest.skip(f"this filesystem grants no file leases ({error.strerror})")
    return fd


def _wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_killed_worker_costs_only_the_file_it_held(tmp_path):
    """`preprocess --jobs 2`, and one worker really killed (SIGKILL) while it holds a file: that file is failed in
    report.tsv with the reason, a fresh worker does the rest, and the run ends with a summary and exit 2."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):  # the folder reader sorts: a_held0 and a_held1 go to the two workers first
        name = f"a_held{i}" if i < 2 else f"b_clip{i}"
        write_tone(corpus / f"{name}.wav", RATE, 0.3, seed=i, f0=120 + 20 * i)
    breaks: list[int] = []
    previous = signal.signal(signal.SIGIO, lambda signum, frame: breaks.append(signum))  # a lease break
    held = [_hold(corpus / f"a_held{i}.wav") for i in range(2)]
    try:
        process = subprocess.Popen([sys.executable, "-m", "diffwave", "preprocess", str(corpus), str(tmp_path / "out"),
                                    "--config", "tiny", "--jobs", "2"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: len(breaks) >= 2, "both workers to open their held file")
        workers = _workers_of(process.pid)
        assert len(workers) == 2, workers  # both blocked in open(), each on its own held file
        os.kill(workers[0], signal.SIGKILL)
        _wait_for(lambda: len(list((tmp_path / "out" / "mel").glob("b_clip*.npy"))) == 4, "a new worker")
    finally:
        for fd in held:
            os.close(fd)  # releases the lease: the surviving worker's open() returns
        signal.signal(signal.SIGIO, previous)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and "Traceback" not in stderr, stderr
    summary = stdout.strip().splitlines()[-1]
    assert summary.startswith("preprocess: 5 ok (0 reused), 0 skipped, 1 failed (worker died"), summary
    failed = [line.split("\t") for line in (tmp_path / "out" / "report.tsv").read_text().splitlines()
              if "\tfailed\t" in line]
    assert len(failed) == 1
    source, _, kind, reason = failed[0]
    assert Path(source).name in ("a_held0.wav", "a_held1.wav") and kind == "worker died"
    assert f"(pid {workers[0]})" in reason and "killed by SIGKILL" in reason
    assert {u.id for u in read_manifest(tmp_path / "out", TINY.audio)} == (
        {f"b_clip{i}" for i in range(2, 6)} | {"a_held0", "a_held1"} - {Path(source).stem})
    rerun = run_cli(str(corpus), str(tmp_path / "out"), "--config", "tiny", "--jobs", "2")
    assert rerun.returncode == 0 and "6 ok (5 reused), 0 skipped" in rerun.stdout  # the failed file, retried
