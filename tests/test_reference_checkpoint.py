"""Checkpoints of the reference implementation (lmnt-com/diffwave): written here in its layout by our own code
(torch.save of {'step', 'model', 'params', 'optimizer', 'scaler'} with its params written out by hand), then
loaded by every entry point; and every refusal (truncated, contradicting params, code-running pickle)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from diffwave.checkpoints import export_safetensors, load_checkpoint, load_model, load_safetensors, load_unconditional
from diffwave.config import load_config
from diffwave.diffusion import NoiseSchedule
from diffwave.errors import CheckpointError, VocodeError
from diffwave.inference.vocoder import Vocoder
from diffwave.model import DiffWave
from tests.audio_fixtures import harmonic_tone

# The reference's params.py defaults, with a small network (sizes that its code would build just the same).
REFERENCE_PARAMS = {
    "batch_size": 16, "learning_rate": 2e-4, "max_grad_norm": None,
    "sample_rate": 22050, "n_mels": 80, "n_fft": 1024, "hop_samples": 256, "crop_mel_frames": 62,
    "residual_layers": 4, "residual_channels": 8, "dilation_cycle_length": 2, "unconditional": False,
    "noise_schedule": np.linspace(1e-4, 0.05, 50).tolist(),
    "inference_noise_schedule": [0.0001, 0.001, 0.01, 0.05, 0.2, 0.5],
    "audio_len": 22050 * 5,
}


def our_model(params: dict) -> DiffWave:
    """Our network with the sizes that `params` describe, built from our own config (not the conversion)."""
    config = load_config("base", [f"model.residual_layers={params['residual_layers']}",
                                  f"model.residual_channels={params['residual_channels']}",
                                  f"model.dilation_cycle={params['dilation_cycle_length']}",
                                  f"model.conditional={not params['unconditional']}",
                                  f"audio.n_mels={params['n_mels']}", f"audio.hop_length={params['hop_samples']}",
                                  f"diffusion.num_steps={len(params['noise_schedule'])}"])
    torch.manual_seed(0)
    model = DiffWave.from_config(config)
    torch.nn.init.normal_(model.output_projection.weight, std=0.1)  # a non-zero eps, unlike the init
    return model.eval()


def write_reference(path: Path, params: dict, model: DiffWave | None = None, step: int = 7,
                    weights: dict | None = None) -> Path:
    """What the reference's learner saves (state_dict()): step, model, optimizer, params, scaler."""
    model = model or our_model(params)
    optimizer = torch.optim.Adam(model.parameters(), lr=params["learning_rate"])
    state = {"step": step, "model": weights if weights is not None else model.state_dict(),
             "optimizer": optimizer.state_dict(), "params": dict(params), "scaler": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture
def reference_dir(tmp_path) -> Path:
    """A reference model directory: weights-7.pt and the weights.pt link its learner makes."""
    model_dir = tmp_path / "model"
    write_reference(model_dir / "weights-7.pt", REFERENCE_PARAMS)
    os.symlink("weights-7.pt", model_dir / "weights.pt")
    return model_dir


def test_a_reference_checkpoint_loads_with_its_params_mapped_exactly(tmp_path, caplog):
    model = our_model(REFERENCE_PARAMS)
    path = write_reference(tmp_path / "weights-7.pt", REFERENCE_PARAMS, model)
    with caplog.at_level(logging.INFO, logger="diffwave"):
        loaded, config = load_model(path)
    lines = [r.getMessage() for r in caplog.records if "reference (lmnt-com/diffwave) checkpoint" in r.getMessage()]
    assert len(lines) == 1 and "at step 7" in lines[0] and "lmnt front end" in lines[0]
    audio, net, diffusion = config.audio, config.model, config.diffusion
    assert (audio.mel_preset, audio.sample_rate, audio.n_fft, audio.hop_length, audio.win_length, audio.n_mels,
            audio.f_min, audio.f_max) == ("lmnt", 22050, 1024, 256, 4 * 256, 80, 20.0, None)
    assert (net.conditional, net.residual_layers, net.residual_channels, net.dilation_cycle) == (True, 4, 8, 2)
    assert diffusion.fast_schedule == REFERENCE_PARAMS["inference_noise_schedule"] and diffusion.loss == "l1"
    assert (config.data.crop_frames, config.data.crop_samples) == (62, 22050 * 5)
    # The training betas and their products, against numpy's linspace and cumprod (the reference's own maths).
    schedule = NoiseSchedule.from_config(diffusion)
    betas = np.array(REFERENCE_PARAMS["noise_schedule"])
    np.testing.assert_allclose(schedule.betas.numpy(), betas, rtol=1e-14, atol=0)
    np.testing.assert_allclose(schedule.alpha_bars.numpy(), np.cumprod(1 - betas), rtol=1e-13, atol=0)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x, mel = torch.randn(1, 4 * 256), torch.rand(1, 80, 4)
    t = torch.tensor([12.5])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, loaded.condition(mel)), model(x, t, model.condition(mel)),
                                   rtol=0, atol=1e-6)


def test_a_model_folder_stands_for_its_weights_pt(reference_dir):
    vocoder = Vocoder.from_checkpoint(reference_dir, device="cpu")
    assert vocoder.config.audio.mel_preset == "lmnt" and vocoder.n_mels == 80
    mel = torch.rand(80, 5)
    assert vocoder.vocode(mel, generator=torch.Generator().manual_seed(0)).shape == (5 * 256,)


def test_older_checkpoints_without_later_keys_get_the_reference_defaults(tmp_path):
    params = {k: v for k, v in REFERENCE_PARAMS.items() if k not in ("unconditional", "inference_noise_schedule",
                                                                   "audio_len")}
    _, config = load_model(write_reference(tmp_path / "old.pt", params, our_model(REFERENCE_PARAMS)))
    assert config.model.conditional and config.diffusion.fast_schedule == [1e-4, 1e-3, 1e-2, 5e-2, 0.2, 0.5]


def test_training_cannot_resume_from_it_and_says_why(reference_dir):
    with pytest.raises(CheckpointError, match=r"reference \(lmnt-com/diffwave\) checkpoint.*cannot resume"):
        load_checkpoint(reference_dir / "weights.pt")


def test_export_writes_its_weights_and_converted_config(reference_dir, tmp_path):
    out = export_safetensors(reference_dir, tmp_path / "ref.safetensors")
    weights, config = load_safetensors(out)
    original = torch.load(reference_dir / "weights.pt", weights_only=True)
    assert weights.keys() == original["model"].keys()
    assert all(torch.equal(weights[k], v) for k, v in original["model"].items())
    assert config["audio"]["mel_preset"] == "lmnt" and config["diffusion"]["num_steps"] == 50
    model, _ = load_model(out)
    assert model.residual_channels == 8


# --- refusals -----------------------------------------------------------------------------------------
def test_a_truncated_file_is_refused(reference_dir, tmp_path):
    data = (reference_dir / "weights-7.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{truncated.name}: checkpoint is truncated or corrupt"):
        load_model(truncated)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch MARKER",))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_reference(tmp_path / "evil.pt", {**REFERENCE_PARAMS, "hook": _RunsCode()})
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused to load: it references .*system.*no code ran"):
        load_model(path)
    assert not (tmp_path / "MARKER").exists()


CONTRADICTIONS = {
    "residual_channels": 16,
    "residual_layers": 6,
    "n_mels": 64,
    "hop_samples": 300,
    "unconditional": True,
}


@pytest.mark.parametrize("name", CONTRADICTIONS)
def test_params_that_contradict_the_weights_name_the_parameter(tmp_path, name):
    weights = our_model(REFERENCE_PARAMS).state_dict()
    path = write_reference(tmp_path / "w.pt", {**REFERENCE_PARAMS, name: CONTRADICTIONS[name]}, weights=weights)
    with pytest.raises(CheckpointError, match=rf"w\.pt: its params and weights disagree on {name}: the params say "
                                              rf"{CONTRADICTIONS[name]!r}, the weights were made with"):
        load_model(path)


def test_a_schedule_length_that_contradicts_a_stored_step_table_is_named(tmp_path):
    model = our_model(REFERENCE_PARAMS)
    weights = {**model.state_dict(), "diffusion_embedding.embedding": torch.zeros(20, 128)}
    path = write_reference(tmp_path / "w.pt", REFERENCE_PARAMS, weights=weights)
    with pytest.raises(CheckpointError, match=r"disagree on len\(noise_schedule\): the params say 50, .* 20"):
        load_model(path)
    table = {**model.state_dict(), "diffusion_embedding.embedding": torch.zeros(50, 128)}  # consistent: dropped
    load_model(write_reference(tmp_path / "ok.pt", REFERENCE_PARAMS, weights=table))


@pytest.mark.parametrize(("change", "message"), [
    ({"noise_schedule": (np.linspace(1e-4, 0.05, 50) ** 1.5).tolist()}, r"noise_schedule is not linear"),
    ({"residual_channels": 8.0}, r"residual_channels = 8\.0, expected a positive integer"),
    ({"unconditional": "no"}, r"unconditional = 'no', expected True or False"),
    ({"inference_noise_schedule": []}, r"inference_noise_schedule = \[\], expected a non-empty list"),
    ({"inference_noise_schedule": [0.1, 1.5]}, r"its params do not make a valid model .*fast_schedule"),
])
def test_params_that_no_config_can_hold_are_refused(tmp_path, change, message):
    path = write_reference(tmp_path / "w.pt", {**REFERENCE_PARAMS, **change}, model=our_model(REFERENCE_PARAMS))
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_missing_params_are_named(tmp_path):
    params = {k: v for k, v in REFERENCE_PARAMS.items() if k not in ("n_fft", "hop_samples")}
    path = write_reference(tmp_path / "w.pt", params, model=our_model(REFERENCE_PARAMS))
    with pytest.raises(CheckpointError, match=r"its params lack hop_samples, n_fft"):
        load_model(path)


def test_a_transposed_mel_is_named_as_such(reference_dir):
    vocoder = Vocoder.from_checkpoint(reference_dir, device="cpu")
    with pytest.raises(VocodeError, match=r"has 12 bins, model expects 80 .*looks transposed: pass \[n_mels, frames\] "
                                          r"\(e\.g\. mel\.T\)"):
        vocoder.vocode(torch.rand(12, 80))


# --- the commands -------------------------------------------------------------------------------------
def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffwave", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def reference_spec(audio: np.ndarray, params: dict) -> np.ndarray:
    """What the reference's preprocess writes as NAME.wav.spec.npy ([n_mels, frames] in [0, 1])."""
    import torchaudio.transforms as TT

    hop, rate = params["hop_samples"], params["sample_rate"]
    transform = TT.MelSpectrogram(sample_rate=rate, win_length=4 * hop, hop_length=hop, n_fft=params["n_fft"],
                                  f_min=20.0, f_max=rate / 2.0, n_mels=params["n_mels"], power=1.0, normalized=True)
    spec = 20 * torch.log10(torch.clamp(transform(torch.from_numpy(audio).clamp(-1, 1)), min=1e-5)) - 20
    return torch.clamp((spec + 100) / 100, 0.0, 1.0).numpy()


def test_vocode_reads_spec_npy_files_into_name_wav(reference_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        np.save(data / f"{name}.wav.spec.npy", reference_spec(harmonic_tone(22050, 0.2, seed=seed), REFERENCE_PARAMS))
    out = tmp_path / "new" / "out"  # missing, with a missing parent: created
    result = run("vocode", str(data), "--checkpoint", str(reference_dir), "-o", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "reference (lmnt-com/diffwave) checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.wav", "b.wav"]
    frames = np.load(data / "a.wav.spec.npy").shape[1]
    audio, rate = sf.read(out / "a.wav")
    assert rate == 22050 and audio.shape == (frames * 256,)
    single = tmp_path / "one" / "single.wav"
    result = run("vocode", str(data / "b.wav.spec.npy"), "--checkpoint", str(reference_dir / "weights.pt"),
                 "-o", str(single), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in single.parent.iterdir()) == ["single.wav"]


def test_vocode_output_rules(reference_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    audio = harmonic_tone(22050, 0.2, seed=3)
    sf.write(data / "c.wav", audio, 22050)
    np.save(data / "c.wav.spec.npy", reference_spec(audio, REFERENCE_PARAMS))
    np.save(data / "t.npy", reference_spec(audio, REFERENCE_PARAMS).T)
    out = tmp_path / "out"
    result = run("vocode", str(data), "--checkpoint", str(reference_dir), "-o", str(out), "--device", "cpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # c.wav (copy synthesis) and c.wav.spec.npy both map to c.wav: the second is refused, never overwritten
    assert "c.wav.spec.npy: its output" in result.stderr and "is also the output of" in result.stderr
    transposed = "t.npy: mel has 18 bins, model expects 80 (preset lmnt); its shape (18, 80) looks transposed"
    assert transposed in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["c.wav"] and (data / "c.wav").exists()
    two = run("vocode", str(data / "c.wav"), str(data / "c.wav.spec.npy"), "--checkpoint", str(reference_dir),
              "-o", str(tmp_path / "x.wav"))
    assert two.returncode == 2 and "names a single file, but this run has 2 outputs" in two.stderr
    (tmp_path / "a_file").write_text("keep")
    not_a_folder = run("vocode", str(data / "c.wav"), "--checkpoint", str(reference_dir), "-o",
                       str(tmp_path / "a_file"))
    assert not_a_folder.returncode == 2 and "exists and is not a folder" in not_a_folder.stderr
    assert (tmp_path / "a_file").read_text() == "keep"


UNCONDITIONAL = {**REFERENCE_PARAMS, "unconditional": True, "sample_rate": 16000, "audio_len": 16000}


def test_unconditional_reference_checkpoints_generate_and_denoise(tmp_path):
    path = write_reference(tmp_path / "uncond" / "weights-3.pt", UNCONDITIONAL, step=3)
    model, config = load_unconditional(path, device="cpu")
    assert not model.conditional and config.audio.sample_rate == 16000 and config.data.crop_samples == 16000
    result = run("generate", "--checkpoint", str(path), "-n", "1", "--seconds", "0.05", "-o",
                 str(tmp_path / "gen" / "one.wav"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert sf.info(tmp_path / "gen" / "one.wav").frames == 800
    folder = run("generate", "--checkpoint", str(path), "-n", "2", "--seconds", "0.05", "-o", str(tmp_path / "gens"),
                 "--device", "cpu")
    assert folder.returncode == 0, folder.stderr
    assert sorted(p.name for p in (tmp_path / "gens").iterdir()) == ["sample_000.wav", "sample_001.wav"]
    noisy = harmonic_tone(16000, 0.2, seed=4) + 0.05 * np.random.default_rng(0).standard_normal(3200)
    sf.write(tmp_path / "noisy.wav", noisy.astype(np.float32), 16000)
    denoised = run("denoise", str(tmp_path / "noisy.wav"), "--checkpoint", str(path), "-o",
                   str(tmp_path / "clean"), "--device", "cpu")
    assert denoised.returncode == 0, denoised.stderr
    assert sf.info(tmp_path / "clean" / "noisy.wav").frames == 3200
