"""recipes/pretrained/gpu_burst.sh on the CPU with a tiny config: the budget's SIGTERM ends training with a
checkpoint, and the EMA export that ship.sh takes loads as a model."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffwave.checkpoints import load_model
from diffwave.data.synthetic import synthesize_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_burst_trains_until_its_budget_and_exports_the_ema_weights(tmp_path):
    data = tmp_path / "data"
    for speaker, clips in (("allison", 6), ("ljspeech_mini", 4)):
        synthesize_corpus(data / speaker, clips, 1.0, 8000, seed=len(speaker))
    voices = tmp_path / "voices"
    for speaker in ("carlo", "ivrvoiceru"):
        synthesize_corpus(voices / speaker, 2, 1.0, 8000, seed=len(speaker))
        for wav in (voices / speaker / "wavs").glob("*.wav"):
            wav.rename(wav.with_name(f"{speaker}_{wav.name}"))
    out = tmp_path / "burst"
    env = os.environ | {"PYTHON": sys.executable, "CONFIG": "tiny", "INIT_FROM": "", "DEVICE": "cpu",
                        "PRECISION": "fp32", "TRAIN_SECONDS": "25", "OMP_NUM_THREADS": "1", "VOICES": str(voices)}
    # max_steps far beyond what 25 s allow: only the budget can stop it.
    result = subprocess.run(["bash", str(ROOT / "recipes" / "pretrained" / "gpu_burst.sh"), str(data), str(out),
                             "train.max_steps=1000000", "train.batch_size=2",
                             "train.save_every=1000000"],
                            capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (out / "train.log").read_text()
    assert "stopped by SIGTERM" in log  # the budget, not max_steps, ended it, and the trainer saved on the way
    model, config = load_model(out / "voice_ema.safetensors")
    assert config.name == "tiny" and config.train.batch_size == 2 and sum(p.numel() for p in model.parameters())
    assert "EMA weights in" in result.stdout and "--continues" in result.stdout
    corpus = {path.name.split("_")[0] for path in (out / "corpus").iterdir()}
    assert {"allison", "carlo", "ivrvoiceru"} <= corpus  # VOICES joined the corpus
