"""Zero-shot denoising quality: SI-SDR (and PESQ/STOI when installed) before and after, per noise and SNR.

    python benchmarks/denoise_eval.py --checkpoint UNCONDITIONAL_CKPT --clean FOLDER_OF_CLEAN_SPEECH
                                      [--snrs 0,5,10,20] [--noises white,pink] [--max-files 8] [--seconds 4]
                                      [--sdedit] [--device cpu|cuda] [--seed 0]

Each clean file (read at the model's rate, mono, cut to --seconds) is mixed with white or pink (1/f power)
Gaussian noise scaled to each SNR (signal power over noise power over the whole clip), denoised with
`diffwave.denoise` (start step chosen from the estimated noise level), and scored against the clean file.
One row per (noise, SNR): files, the mean chosen start step, and each metric's mean before -> after.
PESQ needs `pesq` and STOI `pystoi` (the `eval` extra); without them those columns are left out.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import time

import numpy as np
import torch

from diffwave import denoise, load_unconditional
from diffwave.audio import read_audio
from diffwave.data.corpus import AUDIO_SUFFIXES
from diffwave.evaluation.metrics import pesq_score, si_sdr, stoi_score
from diffwave.inference.files import find_inputs


def coloured_noise(length: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power Gaussian noise: white, or pink (power spectral density proportional to 1/f)."""
    white = rng.standard_normal(length)
    if colour == "white":
        return white
    if colour != "pink":
        raise ValueError(f"noise must be white or pink, got {colour}")
    spectrum = np.fft.rfft(white)
    frequencies = np.arange(spectrum.size, dtype=np.float64)
    frequencies[0] = 1.0  # keep the DC bin finite; it carries no weight after the mean removal below
    pink = np.fft.irfft(spectrum / np.sqrt(frequencies), n=length)
    pink -= pink.mean()
    return pink / np.sqrt(np.mean(pink**2))


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    scale = np.sqrt(np.mean(clean**2) / (np.mean(noise**2) * 10 ** (snr_db / 10)))
    return clean + scale * noise


def available_metrics(sample_rate: int) -> dict:
    """SI-SDR always; PESQ and STOI when their packages (the `eval` extra) are installed."""
    metrics = {"SI-SDR": si_sdr}
    if importlib.util.find_spec("pesq") is not None:
        metrics["PESQ"] = lambda ref, est: pesq_score(ref, est, sample_rate)
    if importlib.util.find_spec("pystoi") is not None:
        metrics["STOI"] = lambda ref, est: stoi_score(ref, est, sample_rate)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an unconditional checkpoint trained on clean speech")
    parser.add_argument("--clean", required=True, help="a folder of clean speech files")
    parser.add_argument("--snrs", default="0,5,10,20")
    parser.add_argument("--noises", default="white,pink")
    parser.add_argument("--max-files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0, help="cut each clean file to this length")
    parser.add_argument("--sdedit", action="store_true", help="use the SDEdit start (fresh noise) instead")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model, config = load_unconditional(args.checkpoint, device=args.device, purpose="denoising")
    rate = config.audio.sample_rate
    paths = find_inputs([args.clean], AUDIO_SUFFIXES)[: args.max_files]
    if not paths:
        raise SystemExit(f"no audio files in {args.clean}")
    cleans = [read_audio(path, rate)[: round(args.seconds * rate)].double().numpy() for path in paths]
    metrics = available_metrics(rate)
    print(f"denoise eval: {args.checkpoint}, {len(cleans)} files from {args.clean} at {rate} Hz, "
          f"{sum(c.size for c in cleans) / rate:.1f} s of audio, {'SDEdit' if args.sdedit else 'scaled-input'} start, "
          f"on {args.device}")
    print(f"{'noise':>6} {'SNR dB':>7} {'files':>5} {'t* mean':>7} " +
          " ".join(f"{name + ' in -> out':>22}" for name in metrics) + f" {'RTF':>7}")
    rng = np.random.default_rng(args.seed)
    for colour in args.noises.split(","):
        for snr_db in (float(s) for s in args.snrs.split(",")):
            scores = {name: ([], []) for name in metrics}
            steps, compute, audio_seconds = [], 0.0, 0.0
            for clean in cleans:
                noisy = mix_at_snr(clean, coloured_noise(clean.size, colour, rng), snr_db)
                start = time.perf_counter()
                result = denoise(torch.from_numpy(noisy).float(), rate, model, config=config, sdedit=args.sdedit,
                                 generator=torch.Generator().manual_seed(args.seed))
                compute += time.perf_counter() - start
                audio_seconds += clean.size / rate
                steps.append(result.start_step)
                reference, noisy_t = torch.from_numpy(clean).float(), torch.from_numpy(noisy).float()
                for name, metric in metrics.items():
                    scores[name][0].append(metric(reference, noisy_t))
                    scores[name][1].append(metric(reference, result.audio))
            cells = " ".join(f"{np.mean(before):9.2f} -> {np.mean(after):9.2f}" for before, after in scores.values())
            print(f"{colour:>6} {snr_db:7.1f} {len(cleans):5d} {np.mean(steps):7.1f} {cells} "
                  f"{compute / audio_seconds:7.3f}", flush=True)


if __name__ == "__main__":
    main()
