"""The shipped models: files match their manifest and card, they install as package data, load and vocode."""

import fnmatch
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from diffwave import pretrained
from diffwave.errors import CheckpointError
from diffwave.evaluation import heldout
from diffwave.inference.vocoder import Vocoder

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "recipes" / "demo" / "clips" / "LJ001-0002.flac"
MODELS = pretrained.shipped()


def test_one_default_model_is_shipped():
    assert MODELS, "diffwave/pretrained/manifest.json lists no model"
    assert sum(model.default for model in MODELS) == 1


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_each_file_matches_the_sha256_of_its_manifest_entry_and_model_card(model):
    data = model.path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert digest == model.sha256
    card = model.card_path.read_text()
    assert re.findall(r"sha256 `([0-9a-f]{64})`", card) == [digest]
    assert len(data) <= 15_000_000
    for section in ("## Data and licences", "CC-BY-SA-3.0", "Allison Smith", "public domain", "## Training budget",
                    "CPU-hours", "## Config", "## Quality on held-out speech", "Griffin-Lim", "STOI",
                    "## Intended use", "## Limits", "## Configurations tried"):
        assert section in card, section


def test_pyproject_installs_every_shipped_file_as_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = patterns["diffwave.pretrained"]
    folder = REPO / "diffwave" / "pretrained"
    data = [p.name for p in folder.iterdir() if p.is_file() and p.suffix != ".py"]
    assert {m.file for m in MODELS} | {m.card for m in MODELS} | {pretrained.MANIFEST} <= set(data)
    assert [name for name in data if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)] == []


def test_from_pretrained_loads_the_default_and_vocodes_a_short_mel():
    vocoder = Vocoder.from_pretrained(device="cpu")
    reference, rate = sf.read(CLIP, dtype="float32")
    mel = vocoder.mel(reference[:rate // 2], rate)
    assert mel.shape[0] == vocoder.n_mels == 80 and vocoder.sample_rate == 22050
    audio = vocoder.vocode(mel, generator=torch.Generator().manual_seed(0))
    assert audio.shape == (mel.shape[-1] * vocoder.hop_length,)
    assert torch.isfinite(audio).all() and audio.abs().max() > 1e-3


def test_unknown_names_and_an_empty_folder_are_refused_with_what_is_shipped(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match=rf"no pretrained model 'nope'; shipped: .*{MODELS[0].name}"):
        Vocoder.from_pretrained("nope")
    monkeypatch.setattr(pretrained, "pretrained_dir", lambda: tmp_path)
    with pytest.raises(CheckpointError, match="no pretrained model is shipped"):
        pretrained.find()


def test_a_damaged_weights_file_is_refused_before_loading(tmp_path, monkeypatch):
    model = pretrained.find()
    shutil.copy(model.path.parent / pretrained.MANIFEST, tmp_path)
    data = bytearray(model.path.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the last weight
    (tmp_path / model.file).write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "pretrained_dir", lambda: tmp_path)
    with pytest.raises(CheckpointError, match="does not match the manifest's"):
        Vocoder.from_pretrained()
    (tmp_path / model.file).unlink()
    with pytest.raises(CheckpointError, match="missing from the package"):
        Vocoder.from_pretrained()


def test_manifest_text_round_trips_and_sorts_by_name(tmp_path):
    models = [pretrained.PretrainedModel("b", "b.safetensors", "0" * 64, "second"),
              pretrained.PretrainedModel("a", "a.safetensors", "1" * 64, "first", default=True, card="a.md")]
    (tmp_path / pretrained.MANIFEST).write_text(pretrained.manifest_text(models))
    assert pretrained.read_manifest(tmp_path) == sorted(models, key=lambda m: m.name)
    (tmp_path / pretrained.MANIFEST).write_text('{"models": [{"name": "x"}]}')
    with pytest.raises(CheckpointError, match="not a valid pretrained manifest"):
        pretrained.read_manifest(tmp_path)


def test_cli_lists_the_shipped_models_and_vocodes_without_a_checkpoint(tmp_path):
    listing = subprocess.run([sys.executable, "-m", "diffwave", "pretrained"], capture_output=True, text=True,
                             timeout=120)
    default = pretrained.find()
    assert listing.returncode == 0, listing.stderr
    assert f"{default.name} (default): {default.description}" in listing.stdout

    reference, rate = sf.read(CLIP, dtype="float32")
    sf.write(tmp_path / "short.wav", reference[:rate // 3], rate)
    result = subprocess.run([sys.executable, "-c", "import sys; from diffwave.cli import vocode_main; "
                             "sys.exit(vocode_main())", str(tmp_path / "short.wav"), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "no --checkpoint given" in line]
    assert lines == [f"INFO diffwave.vocode: no --checkpoint given: using the pretrained model '{default.name}' "
                     f"({default.path})"]
    audio, out_rate = sf.read(tmp_path / "out" / "short.wav")
    assert out_rate == rate and audio.size > 0


def test_means_weigh_the_real_time_factor_by_audio_length():
    # RTF over the set is total synthesis time over total audio: 1 s at RTF 2 plus 3 s at RTF 1 is 5 s / 4 s.
    scores = {system: {name: 1.0 for name in heldout.METRICS} for system in heldout.SYSTEMS}
    short = heldout.ClipResult("a", torch.zeros(100), scores={s: {**v, "rtf": 2.0} for s, v in scores.items()})
    long = heldout.ClipResult("b", torch.zeros(300), scores={s: {**v, "rtf": 1.0, "stoi": 0.5}
                                                            for s, v in scores.items()})
    means = heldout.means([short, long])
    assert means["diffwave"]["rtf"] == pytest.approx(1.25)
    assert means["griffin_lim"]["stoi"] == pytest.approx(0.75)  # other metrics: the plain mean over clips
