"""`diffwave evaluate` and the LJSpeech recipe end to end on a tiny synthetic corpus."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from diffwave.data.manifest import read_manifest
from diffwave.evaluation.folders import evaluate_vocoded, write_evaluation
from tests.conftest import make_tone_corpus

REPO = Path(__file__).resolve().parents[1]


def fake_vocoded(features: Path, out: Path, noise: float) -> list[str]:
    """Write each test utterance's reference plus white noise as OUT/<id>.wav."""
    out.mkdir()
    rng = np.random.default_rng(0)
    ids = []
    for utterance in read_manifest(features, split="test"):
        audio = np.load(utterance.audio) + noise * rng.standard_normal(utterance.samples).astype(np.float32)
        sf.write(out / f"{utterance.id}.wav", np.clip(audio, -1, 1), 8000, subtype="FLOAT")
        ids.append(utterance.id)
    return ids


def test_closer_audio_scores_better(tiny_features, tmp_path):
    fake_vocoded(tiny_features, tmp_path / "clean", 0.0)
    fake_vocoded(tiny_features, tmp_path / "noisy", 0.05)
    clean, noisy = (evaluate_vocoded(tiny_features, tmp_path / name).means() for name in ("clean", "noisy"))
    assert clean["log_mel_l1"] < 1e-3 and clean["si_sdr_db"] > 60
    assert noisy["log_mel_l1"] > clean["log_mel_l1"] + 0.1 and noisy["mr_stft"] > clean["mr_stft"]
    assert noisy["si_sdr_db"] < 30
    write_evaluation(evaluate_vocoded(tiny_features, tmp_path / "noisy"), tmp_path / "summary.tsv")
    lines = (tmp_path / "summary.tsv").read_text().splitlines()
    assert lines[0] == "id\tlog_mel_l1\tmr_stft\tsi_sdr_db" and lines[-1].startswith("mean\t")


def test_evaluate_command_errors_are_one_line(tiny_features, tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "diffwave", "evaluate", "--features", str(tiny_features),
                             "--generated", str(tmp_path / "empty")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "has a generated wav" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_ljspeech_recipe_runs_every_stage(tmp_path):
    corpus = tmp_path / "LJSpeech"
    make_tone_corpus(corpus / "wavs", 8, 8000)
    names = sorted(p.stem for p in (corpus / "wavs").glob("*.wav"))
    (corpus / "metadata.csv").write_text("".join(f"{n}|Text {i}.|Text {i}.\n" for i, n in enumerate(names)))
    command = ["bash", str(REPO / "recipes" / "ljspeech" / "run.sh"), "--corpus", str(corpus), "--out",
               str(tmp_path / "exp"), "--config", "tiny", "--jobs", "1", "data.test_fraction=0.2",
               "train.max_steps=4", "train.save_every=4", "train.sample_every=100", "train.valid_every=100"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={"DIFFWAVE": f"{sys.executable} -m diffwave", "PATH": "/usr/bin:/bin",
                                 "DIFFWAVE_PRECISION_CACHE": "off"})  # not the user's cache (conftest.py)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: LJSpeech-1.1 has 13100 clips, found 8" in result.stderr
    summary = (tmp_path / "exp" / "summary.tsv").read_text().splitlines()
    assert summary[0].startswith("id\t") and summary[-1].startswith("mean\t") and len(summary) >= 3
    assert list((tmp_path / "exp" / "vocoded").glob("*.wav"))
