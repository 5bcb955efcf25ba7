"""The shipped models: files match their manifest and card, they install as package data, load and vocode."""

import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
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


VOCODERS = [model for model in MODELS if model.task == pretrained.VOCODER]
# What every card says, and what each task's card adds (its own baselines and metrics, its extra voices).
CARD_SECTIONS = ("## Data and licences", "CC-BY-SA-3.0", "Allison Smith", "public domain", "## Training budget",
                 "CPU-hours", "## Config", "## Intended use", "## Limits")
TASK_SECTIONS = {pretrained.VOCODER: ("## Quality on held-out speech", "Griffin-Lim", "STOI",
                                      "## Configurations tried"),
                 pretrained.DENOISER: ("## Quality", "SI-SDRi", "noisereduce", "Wiener", "Carlo", "IvrvoiceRU",
                                       "CC-BY-3.0", "June")}


@pytest.mark.parametrize("task", pretrained.TASKS)
def test_one_default_model_is_shipped_for_each_task(task):
    models = [model for model in MODELS if model.task == task]
    assert models, f"diffwave/pretrained/manifest.json lists no {task}"
    assert sum(model.default for model in models) == 1


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_each_file_matches_the_sha256_of_its_manifest_entry_and_model_card(model):
    data = model.path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert digest == model.sha256
    card = model.card_path.read_text()
    assert re.findall(r"sha256 `([0-9a-f]{64})`", card) == [digest]
    assert len(data) <= 15_000_000
    for section in CARD_SECTIONS + TASK_SECTIONS[model.task]:
        assert section in card, section


def test_the_built_wheel_holds_every_shipped_file(tmp_path):
    """Build the wheel from a copy of the package (as pip installs it; not glob patterns read back) and list it:
    each model's weights (the bytes its manifest vouches for), its card and every figure the card shows, the
    manifest. The demo clips are not package data: `make demo` and the cards read them from a checkout
    (recipes/demo/clips), so the package promises only the files of diffwave/pretrained/."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "diffwave", source / "diffwave", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True,
                           timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("diffwave_toolkit-*.whl")
    folder = "diffwave/pretrained/"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for model in MODELS:
            assert hashlib.sha256(archive.read(folder + model.file)).hexdigest() == model.sha256
            figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", model.card_path.read_text())
            assert figures or model.task != pretrained.VOCODER, "a voice's card shows its training curve"
            assert {folder + name for name in (model.card, *figures)} <= names
    assert folder + pretrained.MANIFEST in names
    data = {folder + p.name for p in (REPO / folder).iterdir() if p.is_file() and p.suffix != ".py"}
    assert data <= names, data - names


def test_from_pretrained_loads_the_default_and_vocodes_a_short_mel():
    vocoder = Vocoder.from_pretrained(device="cpu")
    reference, rate = sf.read(CLIP, dtype="float32")
    mel = vocoder.mel(reference[:rate // 2], rate)
    assert mel.shape[0] == vocoder.n_mels == 80 and vocoder.sample_rate == 22050
    audio = vocoder.vocode(mel, generator=torch.Generator().manual_seed(0))
    assert audio.shape == (mel.shape[-1] * vocoder.hop_length,)
    assert torch.isfinite(audio).all() and audio.abs().max() > 1e-3


HELDOUT_CLIP = "LJ001-0002"  # the shortest of the card's held-out clips (1.9 s): a few seconds to vocode
CARD_SEED = 1  # heldout.compare seeds the card's clip i (LJ001-0001..0004, sorted) with 0 + i
QUALITY = ("log_mel_l1", "mr_stft", "pesq_wb", "stoi")
# The default voice's (step 25361, its default path: the Griffin-Lim + envelope start at K=1, then the envelope
# finish) scores of HELDOUT_CLIP over 5 seeds, measured (2 threads, idle) with
#   .venv/bin/python -c "from tests.test_pretrained import clip_scores; print(clip_scores(range(5)))"
SEED_SCORES = [
    {"log_mel_l1": 0.062, "mr_stft": 1.0641, "pesq_wb": 3.7072, "stoi": 0.9825},
    {"log_mel_l1": 0.062, "mr_stft": 1.0663, "pesq_wb": 3.5745, "stoi": 0.9855},
    {"log_mel_l1": 0.0647, "mr_stft": 1.1199, "pesq_wb": 3.5372, "stoi": 0.9816},
    {"log_mel_l1": 0.0661, "mr_stft": 1.0566, "pesq_wb": 3.9029, "stoi": 0.9839},
    {"log_mel_l1": 0.0632, "mr_stft": 1.1039, "pesq_wb": 3.6618, "stoi": 0.9802},
]
# The card's score and the one measured here may be two draws: the noise is keyed by the mel's bits, and a card
# measured by other code or on another machine need not give its noise back. The difference of two draws spreads
# sqrt(2) times one draw; twice the range of 5 draws (about 4.7 sigma of one draw) rarely fails by chance. Since
# the envelope finish, successive exports differ by less than that on one clip (steps 14052 and 20168: 0.0617 and
# 0.0580 mean log-mel L1 on the seen clips), so the check can no longer tell them apart; it still tells the
# voice's row from either network-free baseline's on the same clip.
SPREADS = 2.0


def clip_scores(seeds) -> list[dict[str, float]]:
    """The default voice's DiffWave scores of HELDOUT_CLIP, as its card computes them, once per seed."""
    vocoder = Vocoder.from_pretrained(device="cpu", dtype="fp32")
    clip = heldout.read_clips(CLIP.parent, vocoder.sample_rate)[HELDOUT_CLIP]
    results = [heldout.compare(vocoder, {HELDOUT_CLIP: clip}, seed=seed, with_griffin_lim=False)[0] for seed in seeds]
    return [{m: round(r.scores["diffwave"][m], 4) for m in QUALITY} for r in results]


def card_table(card: str, first_column: str) -> dict[str, list[str]]:
    """A Markdown table of a model card, found by its first header: header -> column of cells."""
    lines = card.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return {header: [row[i] for row in rows[2:]] for i, header in enumerate(rows[0])}


def test_the_card_scores_its_weights_on_a_held_out_clip():
    """Re-vocode one held-out clip with the shipped voice as the card did: each quality score in the card's
    row for that clip must lie within the seed-to-seed spread (SEED_SCORES, see SPREADS) of the score measured
    now, so a card that drifts from its weights fails; the tolerance can tell the voice from both baselines."""
    model = pretrained.find()
    card = model.card_path.read_text()
    table = card_table(card, "clip")
    row = next(i for i, (clip, system) in enumerate(zip(table["clip"], table["system"], strict=True))
               if clip == HELDOUT_CLIP and system == heldout.SYSTEMS["diffwave"])
    measured = clip_scores([CARD_SEED])[0]
    for metric in QUALITY:
        written = float(table[heldout.METRICS[metric]][row])  # printed to 3 decimals
        assert abs(measured[metric] - written) <= SPREADS * seed_range(metric) + 5e-4, (metric, measured, written)
    for baseline in ("griffin_lim", "gl_envelope"):
        other = next(i for i, (clip, system) in enumerate(zip(table["clip"], table["system"], strict=True))
                     if clip == HELDOUT_CLIP and system == heldout.SYSTEMS[baseline])
        assert any(SPREADS * seed_range(metric) < abs(float(table[heldout.METRICS[metric]][other]) - measured[metric])
                   for metric in QUALITY), baseline  # the tolerance can tell the voice from a baseline


def seed_range(metric: str) -> float:
    """Max - min of a metric over the 5 seeds of SEED_SCORES."""
    return max(s[metric] for s in SEED_SCORES) - min(s[metric] for s in SEED_SCORES)


def test_unknown_names_and_an_empty_folder_are_refused_with_what_is_shipped(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match=rf"no pretrained vocoder 'nope'; shipped: .*{VOCODERS[0].name}"):
        Vocoder.from_pretrained("nope")
    monkeypatch.setattr(pretrained, "pretrained_dir", lambda: tmp_path)
    with pytest.raises(CheckpointError, match="no pretrained vocoder is shipped"):
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
    assert f"{default.name} ({default.task}, default): {default.description}" in listing.stdout
    config = Vocoder.from_pretrained().config.diffusion
    schedule = ",".join(f"{beta:g}" for beta in config.fast_schedule)
    assert (f"  vocode defaults: --init {config.init} --start-step {config.init_start_step} --finish {config.finish} "
            f"--schedule {schedule}") in listing.stdout

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
